//! Server optimizers: how the aggregated update `Δ` moves the global model `x`.
//!
//! `−Δ` plays the role of a gradient (the "pseudo-gradient" of Reddi et al. 2021, "Adaptive
//! Federated Optimization"). The formulas follow Flower's implementations
//! (`flwr/server/strategy/fedavgm.py`, `fedadam.py`, `fedyogi.py`, `fedadagrad.py`) so results
//! can be checked against Flower. Before an optimizer uses `Δ`, it is snapped to the f32 grid of
//! the model (`Δ ← f32(x + Δ) − x`, see `model_space_delta`), as Flower's model-space `Δ` is.
//!
//! State is kept in f64: the moments of FedAdam/FedYogi get small (≈ (1−β2)·Δ²) and f32 would
//! lose digits that Flower's float64 numpy arrays keep. Every step is transactional: the new model
//! and state are computed aside, checked to be finite, and only then committed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StrategyError;
use super::aggregate::layout_difference;
use crate::params::Params;

/// Applies an aggregated update to the global model.
pub trait ServerOptimizer: Send {
    /// Short name for logs, e.g. `"fedadam"`.
    fn name(&self) -> &'static str;
    /// `global ← step(global, delta)`. On error `global` and the optimizer state are unchanged.
    fn step(&mut self, global: &mut Params, delta: &Params) -> Result<(), StrategyError>;
    /// A snapshot of the optimizer's state, for checkpointing next to the model.
    fn state(&self) -> OptimizerState;
    /// Replaces the state with a snapshot taken by [`state`](Self::state) of the same kind of
    /// optimizer. Validated: unknown buffers, mismatched lengths or non-finite values are refused.
    fn restore(&mut self, state: OptimizerState) -> Result<(), StrategyError>;
}

/// Serialisable optimizer state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Steps taken so far (the server round of the last step, 1-based).
    pub steps: u64,
    /// Per-coordinate buffers by name (`"momentum"`, `"m"`, `"v"`); empty before the first step.
    pub buffers: BTreeMap<String, Vec<f64>>,
}

/// Checks shared by all optimizers, then the update as the change of the f32 *model* it implies:
/// `Δ' = f32(x + Δ) − x`, computed exactly in f64.
///
/// Why: Flower and Reddi et al. define the pseudo-gradient from the averaged model
/// (`Δ = x̄ − x`), which is stored in f32, so components of Δ below half an ulp of `x` vanish.
/// Averaging f32 client updates in f64 keeps such residues (e.g. `(0.2000000477 −
/// 0.1999999881)/2 ≈ 3e-8` where the clients' models average to exactly `x`), and the adaptive
/// optimizers are scale-free — `m/(√v + τ) ≈ ±1` whenever `√v ≫ τ` — so a 3e-8 rounding residue
/// would become a full-size step. Snapping to the model's grid removes that and makes the results
/// match Flower's.
fn model_space_delta(global: &Params, delta: &Params, who: &'static str) -> Result<Vec<f64>, StrategyError> {
    if let Some(why) = layout_difference(delta.layout(), global.layout()) {
        return Err(StrategyError::GlobalLayoutMismatch(why));
    }
    if !delta.all_finite() {
        return Err(StrategyError::NonFiniteUpdate);
    }
    let snapped: Vec<f64> = global
        .as_slice()
        .iter()
        .zip(delta.as_slice())
        .map(|(&x, &d)| {
            let x = f64::from(x);
            f64::from((x + f64::from(d)) as f32) - x
        })
        .collect();
    // `x + Δ` past f32::MAX rounds to infinity.
    if !snapped.iter().all(|v| v.is_finite()) {
        return Err(StrategyError::NonFiniteResult(who));
    }
    Ok(snapped)
}

/// Writes `new` into `global` if every value is finite.
fn commit(global: &mut Params, new: Vec<f32>, who: &'static str) -> Result<(), StrategyError> {
    if !new.iter().all(|v| v.is_finite()) {
        return Err(StrategyError::NonFiniteResult(who));
    }
    global.as_mut_slice().copy_from_slice(&new);
    Ok(())
}

/// A state buffer sized for `len` coordinates: the stored one, or zeros before the first step.
fn buffer_for(buf: &[f64], len: usize, name: &str) -> Result<Vec<f64>, StrategyError> {
    if buf.is_empty() {
        Ok(vec![0.0; len])
    } else if buf.len() == len {
        Ok(buf.to_vec())
    } else {
        Err(StrategyError::InvalidState(format!("buffer {name:?} holds {} values but the model has {len}", buf.len())))
    }
}

/// Validates a snapshot: only `names` allowed, all of one length, finite (and >= 0 for the
/// names in `non_negative`). Returns the buffers in the order of `names` (empty when absent).
fn take_buffers<const N: usize>(
    mut state: OptimizerState,
    names: [&str; N],
    non_negative: &[&str],
) -> Result<(u64, [Vec<f64>; N]), StrategyError> {
    if let Some(unknown) = state.buffers.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(StrategyError::InvalidState(format!("unknown buffer {unknown:?}; expected {names:?}")));
    }
    let out = names.map(|n| state.buffers.remove(n).unwrap_or_default());
    let len = out.iter().map(Vec::len).max().unwrap_or(0);
    for (name, buf) in names.iter().zip(&out) {
        if buf.len() != len {
            return Err(StrategyError::InvalidState(format!(
                "buffer {name:?} holds {} values, others {len}",
                buf.len()
            )));
        }
        if !buf.iter().all(|v| v.is_finite()) {
            return Err(StrategyError::InvalidState(format!("buffer {name:?} has non-finite values")));
        }
        if non_negative.contains(name) && buf.iter().any(|&v| v < 0.0) {
            return Err(StrategyError::InvalidState(format!("buffer {name:?} has negative values")));
        }
    }
    Ok((state.steps, out))
}

fn check_lr(lr: f64) -> Result<(), StrategyError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(StrategyError::InvalidConfig(format!("server_lr must be a finite number > 0, got {lr}")))
    }
}

fn check_unit_interval(name: &str, v: f64) -> Result<(), StrategyError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(StrategyError::InvalidConfig(format!("{name} must be in [0, 1), got {v}")))
    }
}

/// Plain server step `x ← x + η·Δ`. With `η = 1` this is FedAvg (McMahan et al. 2017): the new
/// model is the aggregate of the client models.
#[derive(Debug, Clone)]
pub struct ServerSgd {
    lr: f64,
    steps: u64,
}

impl ServerSgd {
    pub fn new(lr: f64) -> Result<Self, StrategyError> {
        check_lr(lr)?;
        Ok(Self { lr, steps: 0 })
    }

    /// `η = 1`: FedAvg.
    pub fn fedavg() -> Self {
        Self { lr: 1.0, steps: 0 }
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }
}

impl ServerOptimizer for ServerSgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn step(&mut self, global: &mut Params, delta: &Params) -> Result<(), StrategyError> {
        let delta = model_space_delta(global, delta, self.name())?;
        let new = global.as_slice().iter().zip(&delta).map(|(&x, &d)| (f64::from(x) + self.lr * d) as f32).collect();
        commit(global, new, self.name())?;
        self.steps += 1;
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        OptimizerState { steps: self.steps, buffers: BTreeMap::new() }
    }

    fn restore(&mut self, state: OptimizerState) -> Result<(), StrategyError> {
        let (steps, []) = take_buffers(state, [], &[])?;
        self.steps = steps;
        Ok(())
    }
}

/// FedAvg with server momentum (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data
/// Distribution for Federated Visual Classification"), as Flower's `FedAvgM` computes it:
/// pseudo-gradient `g = −Δ`, momentum `v ← β·v + g` (`v = g` in the first round, which is the
/// same as starting from `v = 0`), `x ← x − η·v` (PyTorch's SGD-momentum convention, no Nesterov).
///
/// Flower's default momentum is 0.0 (which makes FedAvgM plain FedAvg); this project defaults to
/// β = 0.9 so that choosing `fedavgm` actually means momentum.
#[derive(Debug, Clone)]
pub struct FedAvgM {
    lr: f64,
    momentum: f64,
    buf: Vec<f64>,
    steps: u64,
}

impl FedAvgM {
    pub const DEFAULT_LR: f64 = 1.0;
    pub const DEFAULT_MOMENTUM: f64 = 0.9;

    pub fn new(lr: f64, momentum: f64) -> Result<Self, StrategyError> {
        check_lr(lr)?;
        check_unit_interval("server_momentum", momentum)?;
        Ok(Self { lr, momentum, buf: Vec::new(), steps: 0 })
    }
}

impl ServerOptimizer for FedAvgM {
    fn name(&self) -> &'static str {
        "fedavgm"
    }

    fn step(&mut self, global: &mut Params, delta: &Params) -> Result<(), StrategyError> {
        let delta = model_space_delta(global, delta, self.name())?;
        let mut buf = buffer_for(&self.buf, delta.len(), "momentum")?;
        let mut new = Vec::with_capacity(global.len());
        for ((v, &x), &d) in buf.iter_mut().zip(global.as_slice()).zip(&delta) {
            *v = self.momentum * *v - d;
            new.push((f64::from(x) - self.lr * *v) as f32);
        }
        commit(global, new, self.name())?;
        self.buf = buf;
        self.steps += 1;
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut buffers = BTreeMap::new();
        if !self.buf.is_empty() {
            buffers.insert("momentum".to_string(), self.buf.clone());
        }
        OptimizerState { steps: self.steps, buffers }
    }

    fn restore(&mut self, state: OptimizerState) -> Result<(), StrategyError> {
        let (steps, [buf]) = take_buffers(state, ["momentum"], &[])?;
        self.steps = steps;
        self.buf = buf;
        Ok(())
    }
}

/// The second-moment rule of a [`FedOpt`] optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdaptiveRule {
    /// `v ← β2·v + (1−β2)·Δ²`, with Adam's bias-corrected step size.
    Adam,
    /// `v ← v − (1−β2)·Δ²·sign(v − Δ²)` (Zaheer et al. 2018's Yogi): `v` moves towards `Δ²` by a
    /// fixed fraction of `Δ²` rather than of `v`, so it adapts more slowly to sudden large updates.
    Yogi,
    /// `v ← v + Δ²`.
    Adagrad,
}

/// FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021, Algorithm 2), as Flower implements them:
///
/// ```text
/// m ← β1·m + (1−β1)·Δ
/// v ← rule(v, Δ²)                       (see AdaptiveRule)
/// x ← x + η_t · m / (√v + τ)
/// ```
///
/// with `η_t = η` for Yogi and Adagrad, and for Adam Flower's bias-corrected
/// `η_t = η·√(1 − β2^(t+1)) / (1 − β1^(t+1))` where `t` is the 1-based server round
/// (`fedadam.py`: "`eta_norm` is `alpha_t` in Kingma & Ba, 2014"; note Flower's exponent is
/// `server_round + 1`, kept here so results match Flower). `m` and `v` start at zero.
///
/// Flower's defaults ([`FedOpt::flower_default`]): FedAdam η = 0.1, β1 = 0.9, β2 = 0.99,
/// τ = 1e-9; FedYogi η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3; FedAdagrad η = 0.1, τ = 1e-9 and
/// β1 = 0 (Flower's `FedAdagrad` passes `beta_1=0.0` to `FedOpt` and has no momentum, so
/// `m = Δ`).
#[derive(Debug, Clone)]
pub struct FedOpt {
    rule: AdaptiveRule,
    eta: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    steps: u64,
}

impl FedOpt {
    /// `eta > 0`, `beta1, beta2 ∈ [0, 1)` (`beta2` is unused by Adagrad), `tau > 0` (it keeps
    /// `m / (√v + τ)` defined where `v = 0`).
    pub fn new(rule: AdaptiveRule, eta: f64, beta1: f64, beta2: f64, tau: f64) -> Result<Self, StrategyError> {
        check_lr(eta)?;
        check_unit_interval("beta1", beta1)?;
        check_unit_interval("beta2", beta2)?;
        if !(tau.is_finite() && tau > 0.0) {
            return Err(StrategyError::InvalidConfig(format!("tau must be a finite number > 0, got {tau}")));
        }
        Ok(Self { rule, eta, beta1, beta2, tau, m: Vec::new(), v: Vec::new(), steps: 0 })
    }

    /// Flower's default hyperparameters for `rule`: `(eta, beta1, beta2, tau)`.
    pub fn flower_defaults(rule: AdaptiveRule) -> (f64, f64, f64, f64) {
        match rule {
            AdaptiveRule::Adam => (0.1, 0.9, 0.99, 1e-9),
            AdaptiveRule::Yogi => (0.01, 0.9, 0.99, 1e-3),
            AdaptiveRule::Adagrad => (0.1, 0.0, 0.0, 1e-9),
        }
    }

    /// The optimizer with Flower's defaults.
    pub fn flower_default(rule: AdaptiveRule) -> Self {
        let (eta, beta1, beta2, tau) = Self::flower_defaults(rule);
        Self { rule, eta, beta1, beta2, tau, m: Vec::new(), v: Vec::new(), steps: 0 }
    }

    pub fn rule(&self) -> AdaptiveRule {
        self.rule
    }

    /// The step size used in server round `t` (1-based).
    fn step_size(&self, t: u64) -> f64 {
        match self.rule {
            AdaptiveRule::Adam => {
                let e = t as f64 + 1.0;
                self.eta * (1.0 - self.beta2.powf(e)).sqrt() / (1.0 - self.beta1.powf(e))
            }
            AdaptiveRule::Yogi | AdaptiveRule::Adagrad => self.eta,
        }
    }
}

/// numpy's `sign`: 0 at 0 (unlike `f64::signum`, which gives ±1), as Flower's Yogi relies on in
/// the first round where `v − Δ² = 0` for coordinates with `Δ = 0`.
fn np_sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl ServerOptimizer for FedOpt {
    fn name(&self) -> &'static str {
        match self.rule {
            AdaptiveRule::Adam => "fedadam",
            AdaptiveRule::Yogi => "fedyogi",
            AdaptiveRule::Adagrad => "fedadagrad",
        }
    }

    fn step(&mut self, global: &mut Params, delta: &Params) -> Result<(), StrategyError> {
        let delta = model_space_delta(global, delta, self.name())?;
        let n = delta.len();
        let mut m = buffer_for(&self.m, n, "m")?;
        let mut v = buffer_for(&self.v, n, "v")?;
        let t = self.steps + 1;
        let eta_t = self.step_size(t);
        let (b1, b2) = (self.beta1, self.beta2);
        let mut new = Vec::with_capacity(n);
        for (((mi, vi), &x), &d) in m.iter_mut().zip(v.iter_mut()).zip(global.as_slice()).zip(&delta) {
            let d2 = d * d;
            *mi = b1 * *mi + (1.0 - b1) * d;
            *vi = match self.rule {
                AdaptiveRule::Adam => b2 * *vi + (1.0 - b2) * d2,
                AdaptiveRule::Yogi => *vi - (1.0 - b2) * d2 * np_sign(*vi - d2),
                AdaptiveRule::Adagrad => *vi + d2,
            };
            new.push((f64::from(x) + eta_t * *mi / (vi.sqrt() + self.tau)) as f32);
        }
        commit(global, new, self.name())?;
        self.m = m;
        self.v = v;
        self.steps = t;
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut buffers = BTreeMap::new();
        if !self.m.is_empty() {
            buffers.insert("m".to_string(), self.m.clone());
            buffers.insert("v".to_string(), self.v.clone());
        }
        OptimizerState { steps: self.steps, buffers }
    }

    fn restore(&mut self, state: OptimizerState) -> Result<(), StrategyError> {
        let (steps, [m, v]) = take_buffers(state, ["m", "v"], &["v"])?;
        self.steps = steps;
        self.m = m;
        self.v = v;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, layout, params};
    use super::*;

    /// w0 = [1, −1, 0.5]; clients return the models [1.2, −0.8, 0.5] and [0.8, −0.9, 0.7] with
    /// equal weight every round, so Δ_t = [1.0, −0.85, 0.6] − x_{t−1}.
    fn two_rounds(opt: &mut dyn ServerOptimizer) -> (Vec<f32>, Vec<f32>) {
        let l = layout(3);
        let mut x = params(&l, &[1.0, -1.0, 0.5]);
        let target = params(&l, &[1.0, -0.85, 0.6]);
        let mut out = Vec::new();
        for _ in 0..2 {
            let delta = target.delta_from(&x).unwrap();
            opt.step(&mut x, &delta).unwrap();
            out.push(x.as_slice().to_vec());
        }
        (out[0].clone(), out[1].clone())
    }

    #[test]
    fn fedadam_reference() {
        // Round 1: Δ = [0, 0.15, 0.1]; m = 0.1Δ; v = 0.01Δ²; m/√v = [0, 1, 1];
        // η_1 = 0.1·√(1−0.99²)/(1−0.9²) = 0.0742460 → x = [1, −0.9257540, 0.5742460].
        let (r1, r2) = two_rounds(&mut FedOpt::flower_default(AdaptiveRule::Adam));
        assert_close(&r1, &[1.0, -0.92575403, 0.57424597], 1e-6);
        assert_close(&r2, &[1.0, -0.84567716, 0.64586907], 1e-6);
    }

    #[test]
    fn fedyogi_hand_computed() {
        // η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3.
        // Round 1: Δ = [0, 0.15, 0.1]; m = [0, 0.015, 0.01]; v = 0 − 0.01·Δ²·sign(0 − Δ²) =
        //   [0, 2.25e-4, 1e-4] (sign(0) = 0 for the first coordinate); √v = [0, 0.015, 0.01];
        //   x = x + 0.01·m/(√v + 1e-3) = [1, −1 + 0.01·0.015/0.016, 0.5 + 0.01·0.01/0.011]
        //     = [1, −0.990625, 0.5090909].
        // Round 2: Δ = [0, 0.140625, 0.0909091]; m = 0.9m + 0.1Δ = [0, 0.0275625, 0.0180909];
        //   Δ² = [0, 0.0197754, 0.00826446] > v, so v = v + 0.01Δ² = [0, 4.227539e-4, 1.826446e-4];
        //   √v = [0, 0.0205610, 0.0135146];
        //   x = [1, −0.990625 + 0.01·0.0275625/0.0215610, 0.5090909 + 0.01·0.0180909/0.0145146]
        //     = [1, −0.9778415, 0.5215548].
        let (r1, r2) = two_rounds(&mut FedOpt::flower_default(AdaptiveRule::Yogi));
        assert_close(&r1, &[1.0, -0.990625, 0.50909091], 1e-6);
        assert_close(&r2, &[1.0, -0.97784149, 0.52155484], 1e-6);
    }

    #[test]
    fn fedadagrad_hand_computed() {
        // η = 0.1, β1 = 0 (m = Δ), τ = 1e-9.
        // Round 1: Δ = [0, 0.15, 0.1]; v = Δ²; x = x + 0.1·Δ/|Δ| = [1, −0.9, 0.6].
        // Round 2: Δ = [0, 0.05, 0]; v = [0, 0.0225 + 0.0025, 0.01];
        //   x = [1, −0.9 + 0.1·0.05/√0.025, 0.6] = [1, −0.8683772, 0.6].
        let (r1, r2) = two_rounds(&mut FedOpt::flower_default(AdaptiveRule::Adagrad));
        assert_close(&r1, &[1.0, -0.9, 0.6], 1e-6);
        assert_close(&r2, &[1.0, -0.86837722, 0.6], 1e-6);
    }

    #[test]
    fn fedadagrad_with_momentum() {
        // β1 = 0.5: round 1 m = 0.5Δ = [0, 0.075, 0.05], v = Δ²: x = [1, −0.95, 0.55].
        let mut opt = FedOpt::new(AdaptiveRule::Adagrad, 0.1, 0.5, 0.0, 1e-9).unwrap();
        let (r1, _) = two_rounds(&mut opt);
        assert_close(&r1, &[1.0, -0.95, 0.55], 1e-6);
    }

    #[test]
    fn fedavgm_hand_computed() {
        // η = 1, β = 0.9. Round 1: g = −Δ = [0, −0.15, −0.1]; v = g; x = x − v = [1, −0.85, 0.6].
        // Round 2: Δ = 0 (the clients return the current model); v = 0.9v = [0, −0.135, −0.09];
        //   x = [1, −0.85 + 0.135, 0.6 + 0.09] = [1, −0.715, 0.69] — momentum keeps moving.
        let (r1, r2) = two_rounds(&mut FedAvgM::new(1.0, 0.9).unwrap());
        assert_close(&r1, &[1.0, -0.85, 0.6], 1e-6);
        assert_close(&r2, &[1.0, -0.715, 0.69], 1e-6);
        // η = 0.5: x1 = [1, −0.925, 0.55]; Δ2 = [0, 0.075, 0.05]; v = 0.9·(−[0, .15, .1]) − Δ2 =
        //   [0, −0.21, −0.14]; x2 = x1 − 0.5v = [1, −0.82, 0.62].
        let (r1, r2) = two_rounds(&mut FedAvgM::new(0.5, 0.9).unwrap());
        assert_close(&r1, &[1.0, -0.925, 0.55], 1e-6);
        assert_close(&r2, &[1.0, -0.82, 0.62], 1e-6);
    }

    #[test]
    fn sgd_with_lr_one_is_fedavg() {
        let (r1, r2) = two_rounds(&mut ServerSgd::fedavg());
        assert_close(&r1, &[1.0, -0.85, 0.6], 1e-7);
        assert_close(&r2, &[1.0, -0.85, 0.6], 1e-7);
        let (r1, _) = two_rounds(&mut ServerSgd::new(0.5).unwrap());
        assert_close(&r1, &[1.0, -0.925, 0.55], 1e-7);
    }

    #[test]
    fn invalid_hyperparameters_are_rejected() {
        for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            assert!(ServerSgd::new(bad).is_err(), "{bad}");
            assert!(FedAvgM::new(bad, 0.9).is_err(), "{bad}");
            assert!(FedOpt::new(AdaptiveRule::Adam, bad, 0.9, 0.99, 1e-9).is_err(), "{bad}");
            assert!(FedOpt::new(AdaptiveRule::Adam, 0.1, 0.9, 0.99, bad).is_err(), "{bad}");
        }
        for bad in [1.0, -0.1, 1.5, f64::NAN] {
            assert!(FedAvgM::new(1.0, bad).is_err(), "{bad}");
            assert!(FedOpt::new(AdaptiveRule::Yogi, 0.1, bad, 0.99, 1e-3).is_err(), "{bad}");
            assert!(FedOpt::new(AdaptiveRule::Yogi, 0.1, 0.9, bad, 1e-3).is_err(), "{bad}");
        }
        let err = FedOpt::new(AdaptiveRule::Adam, 0.1, 0.9, 0.99, 0.0).unwrap_err();
        assert!(err.to_string().contains("tau"), "{err}");
    }

    #[test]
    fn failed_steps_change_nothing() {
        let l = layout(2);
        let mut opt = FedOpt::flower_default(AdaptiveRule::Adam);
        let mut x = params(&l, &[1.0, 2.0]);
        // Layout mismatch.
        let err = opt.step(&mut x, &params(&layout(3), &[0.0; 3])).unwrap_err();
        assert!(matches!(err, StrategyError::GlobalLayoutMismatch(_)), "{err}");
        // Non-finite update.
        assert_eq!(opt.step(&mut x, &params(&l, &[f32::NAN, 0.0])), Err(StrategyError::NonFiniteUpdate));
        // Overflow: a step that would leave the f32 range.
        let mut sgd = ServerSgd::new(10.0).unwrap();
        let mut big = params(&l, &[f32::MAX, 0.0]);
        assert_eq!(sgd.step(&mut big, &params(&l, &[f32::MAX, 1.0])), Err(StrategyError::NonFiniteResult("sgd")));
        assert_eq!(big.as_slice(), &[f32::MAX, 0.0]);
        assert_eq!(sgd.state().steps, 0);
        assert_eq!(x.as_slice(), &[1.0, 2.0]);
        assert_eq!(opt.state(), OptimizerState::default());
        // A later step with a model of another size is refused by the state check.
        opt.step(&mut x, &params(&l, &[0.1, 0.1])).unwrap();
        let mut y = params(&layout(3), &[0.0; 3]);
        let err = opt.step(&mut y, &params(&layout(3), &[0.1; 3])).unwrap_err();
        assert!(matches!(err, StrategyError::InvalidState(_)), "{err}");
    }

    #[test]
    fn state_round_trips_and_is_validated() {
        let l = layout(3);
        let mut a = FedAvgM::new(1.0, 0.9).unwrap();
        let mut x = params(&l, &[0.0; 3]);
        a.step(&mut x, &params(&l, &[1.0, 2.0, 3.0])).unwrap();
        let s = a.state();
        assert_eq!(s.steps, 1);
        assert_eq!(s.buffers["momentum"], vec![-1.0, -2.0, -3.0]);
        let mut b = FedAvgM::new(1.0, 0.9).unwrap();
        b.restore(s.clone()).unwrap();
        assert_eq!(b.state(), s);

        let mut adam = FedOpt::flower_default(AdaptiveRule::Adam);
        let bad = |buffers: &[(&str, Vec<f64>)]| OptimizerState {
            steps: 3,
            buffers: buffers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        for state in [
            bad(&[("momentum", vec![0.0])]),
            bad(&[("m", vec![0.0, 1.0]), ("v", vec![0.0])]),
            bad(&[("m", vec![0.0]), ("v", vec![-1.0])]),
            bad(&[("m", vec![f64::NAN]), ("v", vec![1.0])]),
        ] {
            assert!(matches!(adam.restore(state), Err(StrategyError::InvalidState(_))));
        }
        adam.restore(bad(&[("m", vec![0.0]), ("v", vec![1.0])])).unwrap();
        assert_eq!(adam.state().steps, 3);
        assert!(ServerSgd::fedavg().restore(bad(&[("m", vec![])])).is_err());
    }

    #[test]
    fn sub_ulp_residues_do_not_move_the_model() {
        // 1.2f32 − 1 and 0.8f32 − 1 average to ≈ 2.98e-8, below half an ulp of 1.0 (5.96e-8):
        // the averaged model is exactly 1.0, so Adam must not take a step.
        let l = layout(1);
        let mut x = params(&l, &[1.0]);
        let mut opt = FedOpt::flower_default(AdaptiveRule::Adam);
        opt.step(&mut x, &params(&l, &[2.98e-8])).unwrap();
        assert_eq!(x.as_slice(), &[1.0]);
        assert_eq!(opt.state().buffers["m"], vec![0.0]);
        // One ulp is a real change and is kept exactly.
        let ulp = f32::EPSILON;
        let mut opt = ServerSgd::fedavg();
        opt.step(&mut x, &params(&l, &[ulp])).unwrap();
        assert_eq!(x.as_slice(), &[1.0 + ulp]);
    }

    #[test]
    fn numpy_sign() {
        assert_eq!(np_sign(0.0), 0.0);
        assert_eq!(np_sign(-0.0), 0.0);
        assert_eq!(np_sign(2.0), 1.0);
        assert_eq!(np_sign(-2.0), -1.0);
    }
}
