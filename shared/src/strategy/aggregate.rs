//! The [`Aggregator`] trait, update validation shared by all aggregators, and the streaming
//! (weighted) mean of FedAvg.

use std::sync::Arc;

use super::StrategyError;
use crate::params::{Layout, Params};

/// Combines one round's client updates into a single update.
///
/// Contract for implementations:
/// - [`add`](Self::add) validates before it mutates: an update with a different layout from the
///   round's first one, a non-finite value, or a weight that is negative or not finite is
///   rejected with an error and leaves the state unchanged.
/// - [`finish`](Self::finish) returns the aggregated update and resets for the next round. When it
///   fails (no updates, zero total weight, too few updates for a robust rule) the buffered updates
///   are kept, so more can be added or [`reset`](Self::reset) called.
pub trait Aggregator: Send {
    /// Short name for logs and errors, e.g. `"fedavg"` or `"krum"`.
    fn name(&self) -> &'static str;
    /// Adds one update `Δ_i = w_i − w_global` with the client's weight (its number of training
    /// examples for FedAvg; unweighted rules validate the weight and then ignore it).
    fn add(&mut self, update: &Params, weight: f64) -> Result<(), StrategyError>;
    /// Updates accepted since the last finish or reset.
    fn count(&self) -> usize;
    /// The aggregated update; resets on success.
    fn finish(&mut self) -> Result<Params, StrategyError>;
    /// Drops everything accepted since the last finish.
    fn reset(&mut self);
}

/// `None` when the layouts are the same, otherwise a description of the first difference.
pub(crate) fn layout_difference(expected: &Arc<Layout>, got: &Arc<Layout>) -> Option<String> {
    if Arc::ptr_eq(expected, got) || **expected == **got {
        return None;
    }
    let (e, g) = (expected.tensors(), got.tensors());
    let first_diff = e.iter().zip(g).position(|(a, b)| a != b);
    Some(match first_diff {
        Some(i) => {
            format!("tensor #{i} is {:?} {:?}, expected {:?} {:?}", g[i].name, g[i].shape, e[i].name, e[i].shape)
        }
        None => format!(
            "{} tensors ({} values), expected {} tensors ({} values)",
            g.len(),
            got.len(),
            e.len(),
            expected.len()
        ),
    })
}

/// The checks every aggregator runs before touching its state.
pub(crate) fn check_update(expected: Option<&Arc<Layout>>, update: &Params, weight: f64) -> Result<(), StrategyError> {
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(StrategyError::InvalidWeight(weight));
    }
    if let Some(why) = expected.and_then(|l| layout_difference(l, update.layout())) {
        return Err(StrategyError::LayoutMismatch(why));
    }
    if !update.all_finite() {
        return Err(StrategyError::NonFiniteUpdate);
    }
    Ok(())
}

/// Builds the aggregate from f64 values, refusing a result that overflowed f32.
pub(crate) fn params_from_f64(
    layout: &Arc<Layout>,
    values: impl Iterator<Item = f64>,
    who: &'static str,
) -> Result<Params, StrategyError> {
    let data: Vec<f32> = values.map(|v| v as f32).collect();
    if !data.iter().all(|v| v.is_finite()) {
        return Err(StrategyError::NonFiniteResult(who));
    }
    // The buffer is built from the layout's own length, so this cannot fail; map rather than
    // unwrap all the same.
    Params::from_vec(layout.clone(), data).map_err(|e| StrategyError::LayoutMismatch(e.to_string()))
}

/// Mean of the updates, either weighted by the client weights (FedAvg, McMahan et al. 2017:
/// `Δ = Σ n_i Δ_i / Σ n_i` with `n_i` the client's example count) or unweighted.
///
/// Streaming: only a running f64 sum is kept, never the updates, so memory is one model no matter
/// how many clients report. Accumulating in f64 makes the result independent of client order up
/// to f64 rounding, far below the f32 resolution of the output.
#[derive(Debug, Clone)]
pub struct Mean {
    weighted: bool,
    layout: Option<Arc<Layout>>,
    sum: Vec<f64>,
    total_weight: f64,
    count: usize,
}

impl Mean {
    /// FedAvg's example-weighted mean.
    pub fn weighted() -> Self {
        Self::new(true)
    }

    /// Plain mean; client weights are validated but otherwise ignored.
    pub fn unweighted() -> Self {
        Self::new(false)
    }

    fn new(weighted: bool) -> Self {
        Self { weighted, layout: None, sum: Vec::new(), total_weight: 0.0, count: 0 }
    }

    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// Sum of the weights added this round (the update count when unweighted).
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }
}

impl Aggregator for Mean {
    fn name(&self) -> &'static str {
        if self.weighted { "fedavg" } else { "mean" }
    }

    fn add(&mut self, update: &Params, weight: f64) -> Result<(), StrategyError> {
        check_update(self.layout.as_ref(), update, weight)?;
        let w = if self.weighted { weight } else { 1.0 };
        let total = self.total_weight + w;
        if !total.is_finite() {
            return Err(StrategyError::WeightOverflow(weight));
        }
        if self.layout.is_none() {
            self.layout = Some(update.layout().clone());
            self.sum = vec![0.0; update.len()];
        }
        for (s, &x) in self.sum.iter_mut().zip(update.as_slice()) {
            *s += w * f64::from(x);
        }
        self.total_weight = total;
        self.count += 1;
        Ok(())
    }

    fn count(&self) -> usize {
        self.count
    }

    fn finish(&mut self) -> Result<Params, StrategyError> {
        let Some(layout) = self.layout.as_ref().filter(|_| self.count > 0) else {
            return Err(StrategyError::NoUpdates);
        };
        if self.total_weight <= 0.0 {
            return Err(StrategyError::ZeroTotalWeight);
        }
        let total = self.total_weight;
        let out = params_from_f64(layout, self.sum.iter().map(|s| s / total), self.name())?;
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.layout = None;
        self.sum = Vec::new();
        self.total_weight = 0.0;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::test_util::{assert_close, layout, params};
    use super::*;
    use crate::params::TensorSpec;

    #[test]
    fn weighted_and_unweighted_means() {
        let l = layout(2);
        let mut w = Mean::weighted();
        let mut u = Mean::unweighted();
        for (v, n) in [([1.0, 0.0], 1.0), ([0.0, 1.0], 3.0)] {
            w.add(&params(&l, &v), n).unwrap();
            u.add(&params(&l, &v), n).unwrap();
        }
        assert_eq!(w.count(), 2);
        assert_close(w.finish().unwrap().as_slice(), &[0.25, 0.75], 1e-7);
        assert_close(u.finish().unwrap().as_slice(), &[0.5, 0.5], 1e-7);
        // Both reset after finishing.
        assert_eq!(w.count(), 0);
        assert_eq!(w.finish(), Err(StrategyError::NoUpdates));
    }

    #[test]
    fn zero_weight_clients_count_but_do_not_pull() {
        let l = layout(1);
        let mut m = Mean::weighted();
        m.add(&params(&l, &[4.0]), 2.0).unwrap();
        m.add(&params(&l, &[100.0]), 0.0).unwrap();
        assert_eq!(m.count(), 2);
        assert_close(m.finish().unwrap().as_slice(), &[4.0], 0.0);
    }

    #[test]
    fn zero_total_weight_is_an_error_and_keeps_state() {
        let l = layout(1);
        let mut m = Mean::weighted();
        m.add(&params(&l, &[4.0]), 0.0).unwrap();
        assert_eq!(m.finish(), Err(StrategyError::ZeroTotalWeight));
        assert_eq!(m.count(), 1);
        m.add(&params(&l, &[2.0]), 1.0).unwrap();
        assert_close(m.finish().unwrap().as_slice(), &[2.0], 0.0);
    }

    #[test]
    fn rejected_updates_leave_state_unchanged() {
        let l = layout(2);
        let mut m = Mean::weighted();
        m.add(&params(&l, &[1.0, 1.0]), 1.0).unwrap();

        let other = Arc::new(Layout::new(vec![TensorSpec::new("v", vec![2])]).unwrap());
        let err = m.add(&params(&other, &[9.0, 9.0]), 1.0).unwrap_err();
        assert!(matches!(&err, StrategyError::LayoutMismatch(msg) if msg.contains("\"v\"")), "{err}");
        let err = m.add(&params(&layout(3), &[9.0; 3]), 1.0).unwrap_err();
        assert!(matches!(err, StrategyError::LayoutMismatch(_)), "{err}");
        assert_eq!(m.add(&params(&l, &[f32::NAN, 0.0]), 1.0), Err(StrategyError::NonFiniteUpdate));
        assert_eq!(m.add(&params(&l, &[0.0, f32::NEG_INFINITY]), 1.0), Err(StrategyError::NonFiniteUpdate));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(m.add(&params(&l, &[9.0, 9.0]), bad), Err(StrategyError::InvalidWeight(_))));
        }
        m.add(&params(&l, &[0.0, 0.0]), f64::MAX).unwrap();
        assert_eq!(m.add(&params(&l, &[9.0, 9.0]), f64::MAX), Err(StrategyError::WeightOverflow(f64::MAX)));

        assert_eq!(m.count(), 2);
        let out = m.finish().unwrap();
        // (1·1 + MAX·0) / (1 + MAX) ≈ 0.
        assert_close(out.as_slice(), &[0.0, 0.0], 1e-30);
    }

    #[test]
    fn nothing_added_is_an_error() {
        assert_eq!(Mean::unweighted().finish(), Err(StrategyError::NoUpdates));
    }

    fn direct_weighted_mean(clients: &[(Vec<f32>, f64)]) -> Vec<f64> {
        let total: f64 = clients.iter().map(|(_, w)| w).sum();
        let d = clients[0].0.len();
        (0..d).map(|j| clients.iter().map(|(v, w)| w * f64::from(v[j])).sum::<f64>() / total).collect()
    }

    fn clients_strategy() -> impl Strategy<Value = (Vec<(Vec<f32>, f64)>, Vec<usize>)> {
        (1usize..6, 1usize..12)
            .prop_flat_map(|(d, n)| {
                prop::collection::vec((prop::collection::vec(-10.0f32..10.0, d), 0.01f64..1000.0), n)
            })
            .prop_flat_map(|clients| {
                let order: Vec<usize> = (0..clients.len()).collect();
                (Just(clients), Just(order).prop_shuffle())
            })
    }

    proptest! {
        #[test]
        fn fedavg_is_order_invariant_and_equals_direct_weighted_mean(
            (clients, order) in clients_strategy()
        ) {
            let l = layout(clients[0].0.len());
            let run = |idx: &mut dyn Iterator<Item = usize>| {
                let mut m = Mean::weighted();
                for i in idx {
                    m.add(&params(&l, &clients[i].0), clients[i].1).unwrap();
                }
                m.finish().unwrap()
            };
            let forward = run(&mut (0..clients.len()));
            let shuffled = run(&mut order.iter().copied());
            let want = direct_weighted_mean(&clients);
            for ((&a, &b), &w) in forward.as_slice().iter().zip(shuffled.as_slice()).zip(&want) {
                prop_assert!((f64::from(a) - w).abs() <= 1e-5 * (1.0 + w.abs()), "{a} vs {w}");
                prop_assert!((f64::from(a) - f64::from(b)).abs() <= 1e-5 * (1.0 + w.abs()), "{a} vs {b}");
            }
        }
    }
}
