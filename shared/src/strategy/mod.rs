//! Server-side federated strategies: how one round's client updates change the global model.
//!
//! Clients upload *updates* `Δ_i = w_i − w_global`, never whole models. A [`Strategy`] is
//!
//! 1. optional L2 norm bounding of every update, `Δ_i ← Δ_i · min(1, S/‖Δ_i‖)`
//!    (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"), which caps the influence
//!    any single client can have;
//! 2. an [`Aggregator`] that combines the round's updates into one update `Δ`: the (weighted)
//!    mean of FedAvg (McMahan et al. 2017), or a Byzantine-robust rule — coordinate-wise median and
//!    trimmed mean (Yin et al. 2018), Krum / Multi-Krum (Blanchard et al. 2017), Bulyan
//!    (El Mhamdi et al. 2018);
//! 3. a [`ServerOptimizer`] that applies `Δ` to the global model: plain `x += η·Δ` (FedAvg),
//!    server momentum (FedAvgM, Hsu et al. 2019) or the adaptive FedAdam / FedYogi / FedAdagrad
//!    (Reddi et al. 2021, "Adaptive Federated Optimization").
//!
//! Splitting the aggregation rule from the server optimizer (rather than one type per named
//! algorithm) lets any robust rule be combined with any server optimizer, and keeps each piece
//! small enough to test against hand-computed values. [`StrategyConfig`] maps the named
//! strategies of the command line (`fedavg`, `fedadam`, `krum`, …) onto these parts.
//!
//! Everything here is deterministic and allocation-bounded by the model size times the number of
//! buffered updates; there is no I/O, so simulation and the production server run the same code.

mod aggregate;
mod central_dp;
mod config;
mod robust;
mod server_opt;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::params::{Layout, Params};
use crate::update::Update;

pub(crate) use aggregate::layout_difference;
pub use aggregate::{Aggregator, MAX_WEIGHT, Mean, accumulate, accumulate_le, accumulate_serial};
pub use central_dp::{AdaptiveClipping, CentralDpConfig};
pub use config::{StrategyConfig, StrategyKind};
pub use robust::{Bulyan, Median, MultiKrum, TrimmedMean};
pub use server_opt::{AdaptiveRule, FedAvgM, FedOpt, OptimizerState, ServerOptimizer, ServerSgd};

/// Everything that can go wrong while aggregating or applying updates.
///
/// Errors from [`Aggregator::add`] and [`Strategy::add`] leave the round's state unchanged, so a
/// server can reject one bad client and carry on with the others.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("update does not match the model layout: {0}")]
    LayoutMismatch(String),
    #[error("global model does not match the aggregated update's layout: {0}")]
    GlobalLayoutMismatch(String),
    #[error("update contains NaN or infinite values")]
    NonFiniteUpdate,
    #[error("client weight must be a finite number >= 0, got {0}")]
    InvalidWeight(f64),
    #[error("total client weight would overflow (adding weight {0})")]
    WeightOverflow(f64),
    #[error("no updates to aggregate")]
    NoUpdates,
    #[error("total client weight is zero; cannot form a weighted mean")]
    ZeroTotalWeight,
    #[error("{aggregator} needs at least {needed} updates ({why}), got {got}")]
    TooFewUpdates { aggregator: &'static str, needed: usize, got: usize, why: String },
    #[error("{0} produced NaN or infinite values (overflow); the global model was not changed")]
    NonFiniteResult(&'static str),
    #[error("invalid strategy configuration: {0}")]
    InvalidConfig(String),
    #[error("unknown strategy {name:?}; expected one of: {expected}")]
    UnknownStrategy { name: String, expected: String },
    #[error("optimizer state does not fit: {0}")]
    InvalidState(String),
}

/// What one call to [`Strategy::finish_round`] did, for logs and the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// Updates that entered the aggregate.
    pub updates: usize,
    /// How many of them the norm bound scaled down.
    pub clipped: usize,
    /// `‖Δ‖` of the aggregated update (before the server optimizer).
    pub delta_norm: f64,
    /// `‖x_new − x_old‖`: the step the server optimizer actually took.
    pub step_norm: f64,
}

/// An aggregator, a server optimizer and an optional per-update L2 norm bound.
///
/// Usage per round: [`add`](Self::add) every accepted client update, then
/// [`finish_round`](Self::finish_round) with the global model.
pub struct Strategy {
    aggregator: Box<dyn Aggregator>,
    optimizer: Box<dyn ServerOptimizer>,
    norm_bound: Option<f64>,
    /// Layout of the first accepted update this round; checked against the global model
    /// *before* the aggregator is drained, so a mismatch cannot throw a round away.
    round_layout: Option<Arc<Layout>>,
    clipped: usize,
    /// Central DP (DP-FedAvg): replaces the norm bound by its own (possibly adaptive) clip, and
    /// turns the mean into a noised fixed-denominator average.
    central_dp: Option<central_dp::CentralDp>,
    /// Updates behind a mean combined elsewhere ([`add_mean`](Self::add_mean)) this round.
    combined: Option<usize>,
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strategy")
            .field("aggregator", &self.aggregator.name())
            .field("optimizer", &self.optimizer.name())
            .field("norm_bound", &self.norm_bound)
            .field("pending", &self.aggregator.count())
            .finish()
    }
}

impl Strategy {
    /// `norm_bound`, when given, must be finite and > 0.
    pub fn new(
        aggregator: Box<dyn Aggregator>,
        optimizer: Box<dyn ServerOptimizer>,
        norm_bound: Option<f64>,
    ) -> Result<Self, StrategyError> {
        if let Some(s) = norm_bound {
            if !(s.is_finite() && s > 0.0) {
                return Err(StrategyError::InvalidConfig(format!("norm_bound must be a finite number > 0, got {s}")));
            }
        }
        Ok(Self { aggregator, optimizer, norm_bound, round_layout: None, clipped: 0, central_dp: None, combined: None })
    }

    /// Adds central DP (see [`CentralDpConfig`]); the aggregator must be a mean, and every update
    /// then counts with weight 1 (bounded influence is what the noise is calibrated to).
    /// Noise needs a source: [`set_noise_source`](Self::set_noise_source).
    pub fn with_central_dp(mut self, config: CentralDpConfig) -> Result<Self, StrategyError> {
        if self.norm_bound.is_some() {
            return Err(StrategyError::InvalidConfig("central DP clips updates itself: drop norm_bound".into()));
        }
        self.central_dp = Some(central_dp::CentralDp::new(config)?);
        Ok(self)
    }

    /// Where central DP's noise comes from: a CSPRNG seeded from OS entropy in production, a
    /// seeded generator only in simulation.
    pub fn set_noise_source(&mut self, rng: Box<dyn rand::RngCore + Send>) {
        if let Some(dp) = &mut self.central_dp {
            dp.set_noise_source(rng);
        }
    }

    /// The clip norm central DP applies now (it moves with adaptive clipping).
    pub fn central_clip_norm(&self) -> Option<f64> {
        self.central_dp.as_ref().map(|dp| dp.clip_norm())
    }

    /// Adds one client update `Δ_i = w_i − w_global` with its weight (for FedAvg the client's
    /// number of training examples; robust aggregators ignore it). The update is norm-bounded
    /// first when a bound is set. On error nothing changes.
    pub fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        let (clipped, weight) = match (&mut self.central_dp, self.norm_bound) {
            (Some(dp), _) => {
                // Checked before the DP stage counts the update, so a refused one leaves no trace.
                if let Some(layout) = &self.round_layout {
                    if let Some(why) = aggregate::layout_difference(layout, update.layout()) {
                        return Err(StrategyError::GlobalLayoutMismatch(why));
                    }
                }
                (dp.clip_update(update), 1.0)
            }
            (None, Some(bound)) => (update.clipped(bound), weight),
            (None, None) => (None, weight),
        };
        self.aggregator.add(clipped.as_ref().unwrap_or(update), weight)?;
        if clipped.is_some() {
            self.clipped += 1;
        }
        if self.round_layout.is_none() {
            self.round_layout = Some(update.layout().clone());
        }
        Ok(())
    }

    /// Whether this strategy can take a mean combined elsewhere ([`add_mean`](Self::add_mean)):
    /// only a plain mean can, since norm bounding, central DP and robust rules each need the
    /// individual updates (or a bit per client).
    pub fn takes_combined_mean(&self) -> Result<(), StrategyError> {
        let refuse = |why: &str| Err(StrategyError::InvalidConfig(why.to_string()));
        if self.norm_bound.is_some() {
            return refuse("server-side norm bounding clips each update, but secure aggregation yields only their sum");
        }
        if let Some(dp) = &self.central_dp {
            return refuse(if dp.is_adaptive() {
                "adaptive clipping needs each client's clipped-or-not bit, but secure aggregation yields only the sum"
            } else {
                "central DP clips each update on the server, but secure aggregation yields only their sum"
            });
        }
        if !self.aggregator.is_mean() {
            return Err(StrategyError::InvalidConfig(format!(
                "{} needs the individual updates, but secure aggregation yields only their sum",
                self.aggregator.name()
            )));
        }
        Ok(())
    }

    /// Adds the (weighted) mean of `updates` client updates combined elsewhere — the sum secure
    /// aggregation reconstructs, divided by its total weight — as the round's one aggregated
    /// update, so that [`finish_round`](Self::finish_round) applies the server optimizer to it.
    /// Refused unless [`takes_combined_mean`](Self::takes_combined_mean), or when the round
    /// already holds an update; on error nothing changes.
    pub fn add_mean(&mut self, mean: &Update, updates: usize, total_weight: f64) -> Result<(), StrategyError> {
        self.takes_combined_mean()?;
        if self.aggregator.count() > 0 {
            return Err(StrategyError::InvalidConfig("a combined mean is a round's only update".into()));
        }
        self.aggregator.add(mean, total_weight)?;
        self.round_layout = Some(mean.layout().clone());
        self.combined = Some(updates);
        Ok(())
    }

    /// Updates accepted so far this round.
    pub fn count(&self) -> usize {
        self.aggregator.count()
    }

    /// Aggregates the round's updates and applies the result to `global`.
    ///
    /// If the aggregator cannot finish (no updates, too few for a robust rule, zero weight) the
    /// buffered updates are kept, so the caller may add more and retry, or call
    /// [`discard_round`](Self::discard_round). If the optimizer fails afterwards (only possible
    /// through numeric overflow) `global` is unchanged and the round's updates are gone.
    pub fn finish_round(&mut self, global: &mut Params) -> Result<RoundSummary, StrategyError> {
        if let Some(layout) = &self.round_layout {
            if let Some(why) = aggregate::layout_difference(layout, global.layout()) {
                return Err(StrategyError::GlobalLayoutMismatch(why));
            }
        }
        if let Some(dp) = &self.central_dp {
            dp.check_ready()?;
        }
        let updates = self.combined.unwrap_or(self.aggregator.count());
        let mut delta = self.aggregator.finish()?;
        self.combined = None;
        if let Some(dp) = &mut self.central_dp {
            dp.finish(&mut delta, updates)?;
        }
        let clipped = std::mem::take(&mut self.clipped);
        self.round_layout = None;
        let before = global.clone();
        self.optimizer.step(global, &delta)?;
        let step_norm = global
            .as_slice()
            .iter()
            .zip(before.as_slice())
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(RoundSummary { updates, clipped, delta_norm: delta.l2_norm(), step_norm })
    }

    /// Drops the updates buffered for the current round (e.g. the round was abandoned).
    pub fn discard_round(&mut self) {
        self.aggregator.reset();
        self.round_layout = None;
        self.clipped = 0;
        self.combined = None;
        if let Some(dp) = &mut self.central_dp {
            dp.discard_round();
        }
    }

    pub fn norm_bound(&self) -> Option<f64> {
        self.norm_bound
    }

    pub fn aggregator(&self) -> &dyn Aggregator {
        self.aggregator.as_ref()
    }

    pub fn optimizer(&self) -> &dyn ServerOptimizer {
        self.optimizer.as_ref()
    }

    /// The server optimizer's state (moments, momentum, step count), to store next to a model
    /// version so a restarted server continues exactly where it stopped.
    pub fn optimizer_state(&self) -> OptimizerState {
        let mut state = self.optimizer.state();
        if let Some(dp) = &self.central_dp {
            state.buffers.insert(central_dp::CLIP_STATE_KEY.into(), vec![dp.clip_norm()]);
        }
        state
    }

    pub fn restore_optimizer_state(&mut self, mut state: OptimizerState) -> Result<(), StrategyError> {
        let clip = state.buffers.remove(central_dp::CLIP_STATE_KEY);
        if let (Some(dp), Some(&[c])) = (&mut self.central_dp, clip.as_deref()) {
            dp.restore_clip(c);
        }
        self.optimizer.restore(state)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use crate::params::{Layout, Params, TensorSpec};
    use crate::update::Update;

    pub fn layout(n: usize) -> Arc<Layout> {
        Arc::new(Layout::new(vec![TensorSpec::new("w", vec![n])]).unwrap())
    }

    pub fn params(layout: &Arc<Layout>, v: &[f32]) -> Params {
        Params::from_vec(layout.clone(), v.to_vec()).unwrap()
    }

    pub fn update(layout: &Arc<Layout>, v: &[f32]) -> Update {
        Update::dense(params(layout, v)).unwrap()
    }

    pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((f64::from(g) - w).abs() <= tol, "coordinate {i}: got {g}, want {w} (all: {got:?})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{assert_close, layout, params, update};
    use super::*;

    /// Runs one round where every client returns the given *model*; updates are model − global.
    fn round(strategy: &mut Strategy, global: &mut Params, models: &[&[f32]]) -> RoundSummary {
        for m in models {
            let model = params(global.layout(), m);
            let delta = Update::dense(model.delta_from(global).unwrap()).unwrap();
            strategy.add(&delta, 1.0).unwrap();
        }
        strategy.finish_round(global).unwrap()
    }

    const M1: &[f32] = &[1.2, -0.8, 0.5];
    const M2: &[f32] = &[0.8, -0.9, 0.7];

    fn w0() -> Params {
        params(&layout(3), &[1.0, -1.0, 0.5])
    }

    #[test]
    fn fedadam_matches_flower_reference_over_two_rounds() {
        let cfg = StrategyConfig {
            server_lr: Some(0.1),
            beta1: Some(0.9),
            beta2: Some(0.99),
            tau: Some(1e-9),
            ..StrategyConfig::new(StrategyKind::FedAdam)
        };
        let mut s = cfg.build().unwrap();
        let mut w = w0();
        round(&mut s, &mut w, &[M1, M2]);
        assert_close(w.as_slice(), &[1.0, -0.92575403, 0.57424597], 1e-6);
        round(&mut s, &mut w, &[M1, M2]);
        assert_close(w.as_slice(), &[1.0, -0.84567716, 0.64586907], 1e-6);
        assert_eq!(s.optimizer_state().steps, 2);
    }

    #[test]
    fn fedadam_defaults_are_flowers() {
        let mut s = StrategyConfig::new(StrategyKind::FedAdam).build().unwrap();
        let mut w = w0();
        round(&mut s, &mut w, &[M1, M2]);
        assert_close(w.as_slice(), &[1.0, -0.92575403, 0.57424597], 1e-6);
    }

    #[test]
    fn fedavg_moves_global_to_weighted_mean_of_models() {
        let mut s = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let mut w = w0();
        // Weights 3 and 1: x = (3·M1 + M2)/4.
        for (m, weight) in [(M1, 3.0), (M2, 1.0)] {
            let u = Update::dense(params(w.layout(), m).delta_from(&w).unwrap()).unwrap();
            s.add(&u, weight).unwrap();
        }
        let summary = s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[1.1, -0.825, 0.55], 1e-6);
        assert_eq!(summary.updates, 2);
        assert_eq!(summary.clipped, 0);
        // Δ = [0.1, 0.175, 0.05]; the plain optimizer with η = 1 steps by exactly Δ.
        let norm = (0.1f64.powi(2) + 0.175f64.powi(2) + 0.05f64.powi(2)).sqrt();
        assert!((summary.delta_norm - norm).abs() < 1e-6);
        assert!((summary.step_norm - norm).abs() < 1e-6);
    }

    #[test]
    fn norm_bound_scales_only_large_updates() {
        // S = 1: [3, 4] has norm 5 and becomes [0.6, 0.8]; [0.3, 0.4] (norm 0.5) is untouched.
        // Unweighted mean: [(0.6 + 0.3)/2, (0.8 + 0.4)/2] = [0.45, 0.6].
        let cfg = StrategyConfig { norm_bound: Some(1.0), ..StrategyConfig::new(StrategyKind::Mean) };
        let mut s = cfg.build().unwrap();
        let l = layout(2);
        s.add(&update(&l, &[3.0, 4.0]), 1.0).unwrap();
        s.add(&update(&l, &[0.3, 0.4]), 1.0).unwrap();
        let mut w = params(&l, &[0.0, 0.0]);
        let summary = s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[0.45, 0.6], 1e-6);
        assert_eq!(summary.clipped, 1);
        assert_eq!(summary.updates, 2);
    }

    #[test]
    fn clipped_update_lands_on_the_bound() {
        let l = layout(3);
        let u = update(&l, &[10.0, -20.0, 5.0]);
        let c = u.clipped(2.5).unwrap();
        assert!((c.l2_norm() - 2.5).abs() < 1e-6);
        assert!(u.clipped(1e6).is_none());
    }

    #[test]
    fn norm_bound_with_robust_aggregator() {
        // Median of clipped updates: S = 1, updates [0.5, 0], [0, 0.5], [10, 0] → [1, 0] after
        // clipping; coordinate-wise median = [0.5, 0].
        let cfg = StrategyConfig { norm_bound: Some(1.0), ..StrategyConfig::new(StrategyKind::Median) };
        let mut s = cfg.build().unwrap();
        let l = layout(2);
        for u in [[0.5, 0.0], [0.0, 0.5], [10.0, 0.0]] {
            s.add(&update(&l, &u), 1.0).unwrap();
        }
        let mut w = params(&l, &[1.0, 1.0]);
        let summary = s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[1.5, 1.0], 1e-6);
        assert_eq!(summary.clipped, 1);
    }

    #[test]
    fn invalid_norm_bound_is_rejected() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = StrategyConfig { norm_bound: Some(bad), ..StrategyConfig::new(StrategyKind::FedAvg) };
            assert!(matches!(cfg.build(), Err(StrategyError::InvalidConfig(_))), "{bad}");
        }
    }

    #[test]
    fn bad_updates_are_rejected_and_round_continues() {
        let mut s =
            StrategyConfig { norm_bound: Some(1.0), ..StrategyConfig::new(StrategyKind::FedAvg) }.build().unwrap();
        let l = layout(2);
        s.add(&update(&l, &[0.2, 0.0]), 2.0).unwrap();
        let err = s.add(&update(&layout(3), &[0.0, 0.0, 0.0]), 1.0).unwrap_err();
        assert!(matches!(err, StrategyError::LayoutMismatch(_)), "{err}");
        // A rejected update that would have been clipped must not count as clipped.
        assert!(matches!(s.add(&update(&l, &[5.0, 0.0]), -1.0), Err(StrategyError::InvalidWeight(_))));
        assert_eq!(s.count(), 1);
        let mut w = params(&l, &[0.0, 0.0]);
        let summary = s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[0.2, 0.0], 1e-7);
        assert_eq!(summary.clipped, 0);
    }

    #[test]
    fn global_layout_mismatch_keeps_the_round() {
        let mut s = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let l = layout(2);
        s.add(&update(&l, &[1.0, 2.0]), 1.0).unwrap();
        let mut wrong = params(&layout(3), &[0.0; 3]);
        assert!(matches!(s.finish_round(&mut wrong), Err(StrategyError::GlobalLayoutMismatch(_))));
        assert_eq!(s.count(), 1);
        let mut w = params(&l, &[0.0, 0.0]);
        s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[1.0, 2.0], 0.0);
    }

    #[test]
    fn finishing_an_empty_round_fails_and_discard_clears() {
        let mut s = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let mut w = w0();
        assert_eq!(s.finish_round(&mut w), Err(StrategyError::NoUpdates));
        assert_eq!(w, w0());
        s.add(&update(w.layout(), &[1.0, 1.0, 1.0]), 1.0).unwrap();
        s.discard_round();
        assert_eq!(s.count(), 0);
        assert_eq!(s.finish_round(&mut w), Err(StrategyError::NoUpdates));
    }

    #[test]
    fn a_mean_combined_elsewhere_is_the_rounds_one_update_and_only_plain_means_take_it() {
        // FedAdam on the mean [0.1, -0.2] of 3 updates weighing 1.5 in all: the same step as on
        // the updates themselves, and the summary counts the 3.
        let l = layout(2);
        let mut s = StrategyConfig::new(StrategyKind::FedAdam).build().unwrap();
        s.add_mean(&update(&l, &[0.1, -0.2]), 3, 1.5).unwrap();
        let twice = s.add_mean(&update(&l, &[0.1, -0.2]), 3, 1.5).unwrap_err();
        assert!(twice.to_string().contains("only update"), "{twice}");
        let mut w = params(&l, &[0.0, 0.0]);
        let summary = s.finish_round(&mut w).unwrap();
        let mut reference = StrategyConfig::new(StrategyKind::FedAdam).build().unwrap();
        for (v, weight) in [([0.3, -0.6], 0.5), ([0.0, 0.0], 0.5), ([0.0, 0.0], 0.5)] {
            reference.add(&update(&l, &v), weight).unwrap();
        }
        let mut expected = params(&l, &[0.0, 0.0]);
        reference.finish_round(&mut expected).unwrap();
        assert_close(w.as_slice(), &expected.as_slice().iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), 1e-7);
        assert_eq!(summary.updates, 3);
        for kind in [StrategyKind::Median, StrategyKind::TrimmedMean, StrategyKind::Krum, StrategyKind::Bulyan] {
            let mut robust = StrategyConfig::new(kind).build().unwrap();
            assert!(robust.add_mean(&update(&l, &[0.1, 0.1]), 3, 1.0).is_err(), "{kind}");
            assert_eq!(robust.count(), 0);
        }
        let bounded = StrategyConfig { norm_bound: Some(1.0), ..StrategyConfig::new(StrategyKind::FedAvg) };
        assert!(bounded.build().unwrap().takes_combined_mean().is_err());
        assert!(StrategyConfig::new(StrategyKind::Mean).build().unwrap().takes_combined_mean().is_ok());
    }

    #[test]
    fn optimizer_state_survives_a_restart() {
        // Two rounds in one strategy == one round, save state, new strategy, restore, one round.
        let cfg = StrategyConfig::new(StrategyKind::FedYogi);
        let mut a = cfg.build().unwrap();
        let mut wa = w0();
        round(&mut a, &mut wa, &[M1, M2]);
        round(&mut a, &mut wa, &[M1, M2]);

        let mut b = cfg.build().unwrap();
        let mut wb = w0();
        round(&mut b, &mut wb, &[M1, M2]);
        let saved = serde_json::to_string(&b.optimizer_state()).unwrap();
        let mut c = cfg.build().unwrap();
        c.restore_optimizer_state(serde_json::from_str(&saved).unwrap()).unwrap();
        round(&mut c, &mut wb, &[M1, M2]);
        assert_eq!(wa, wb);
    }
}
