//! The [`Aggregator`] trait, update validation shared by all aggregators, and the streaming
//! (weighted) mean of FedAvg.

use std::sync::Arc;

use super::StrategyError;
use crate::params::{Layout, Params};
use crate::update::{Update, UpdateView};

/// Combines one round's client updates into a single update.
///
/// Contract for implementations:
/// - [`add`](Self::add) validates before it mutates: an update with a different layout from the
///   round's first one, or a weight that is negative, not finite or above [`MAX_WEIGHT`], is
///   rejected with an error and leaves the state unchanged. Values need no check: an [`Update`]
///   holds finite values by construction.
/// - [`finish`](Self::finish) returns the aggregated update and resets for the next round. When it
///   fails (no updates, zero total weight, too few updates for a robust rule) the buffered updates
///   are kept, so more can be added or [`reset`](Self::reset) called.
pub trait Aggregator: Send {
    /// Short name for logs and errors, e.g. `"fedavg"` or `"krum"`.
    fn name(&self) -> &'static str;
    /// Adds one update `Δ_i = w_i − w_global` with the client's weight (its number of training
    /// examples for FedAvg; unweighted rules validate the weight and then ignore it).
    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError>;
    /// Updates accepted since the last finish or reset.
    fn count(&self) -> usize;
    /// The aggregated update; resets on success.
    fn finish(&mut self) -> Result<Params, StrategyError>;
    /// Drops everything accepted since the last finish.
    fn reset(&mut self);
    /// Whether the result is a (weighted) mean, which a mean computed elsewhere can stand in
    /// for (secure aggregation); rules that look at individual updates are not.
    fn is_mean(&self) -> bool {
        false
    }
}

/// The largest client weight: 2^64, every example count a `u64` can state. With finite f32
/// values (|x| < 2^128) a weighted term is below 2^192 and a sum of fewer than 2^800 of them
/// stays far below f64's 2^1024, so a mean's accumulator cannot overflow.
pub const MAX_WEIGHT: f64 = 18_446_744_073_709_551_616.0;

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

/// The checks every aggregator runs before touching its state: the weight and the layout (an
/// [`Update`]'s values are finite by construction).
pub(crate) fn check_update(expected: Option<&Arc<Layout>>, update: &Update, weight: f64) -> Result<(), StrategyError> {
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(StrategyError::InvalidWeight(weight));
    }
    if weight > MAX_WEIGHT {
        return Err(StrategyError::WeightOverflow(weight));
    }
    if let Some(why) = expected.and_then(|l| layout_difference(l, update.layout())) {
        return Err(StrategyError::LayoutMismatch(why));
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
    if !crate::params::all_finite(&data) {
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
/// to f64 rounding, far below the f32 resolution of the output, and (weights at most
/// [`MAX_WEIGHT`], values finite) it cannot overflow. A sparse update touches only its sent
/// coordinates; a dense one is added at memory speed ([`accumulate`]).
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

    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        check_update(self.layout.as_ref(), update, weight)?;
        let w = if self.weighted { weight } else { 1.0 };
        let total = self.total_weight + w;
        if !total.is_finite() {
            return Err(StrategyError::WeightOverflow(weight));
        }
        // Nothing below can fail: the state changes only from here on.
        if self.layout.is_none() {
            self.layout = Some(update.layout().clone());
            // Into the last round's buffer when there is one: its pages are mapped already,
            // where a fresh allocation would fault on every page of a model-sized sum.
            self.sum.clear();
            self.sum.resize(update.len(), 0.0);
        }
        match update.view() {
            UpdateView::Dense(p) => accumulate(&mut self.sum, p.as_slice(), w),
            UpdateView::Received(r) => {
                for (range, bytes) in r.tensors() {
                    accumulate_le(&mut self.sum[range], bytes, w);
                }
            }
            UpdateView::Sparse(s) => {
                for (&i, &x) in s.indices().iter().zip(s.values()) {
                    self.sum[i as usize] += w * f64::from(x);
                }
            }
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

    /// Keeps the sum's allocation for the next round (one model of f64s).
    fn reset(&mut self) {
        self.layout = None;
        self.sum.clear();
        self.total_weight = 0.0;
        self.count = 0;
    }

    fn is_mean(&self) -> bool {
        true
    }
}

/// Coordinates per shard of [`accumulate`]: 256 KiB of the f64 sum, so a shard's part of the sum
/// and of the input stay in a core's L2 while it works on them.
#[cfg(feature = "parallel")]
const SHARD: usize = 1 << 15;

/// `sum[j] += w · x[j]` for every coordinate.
///
/// With feature `parallel` (the server's) the coordinates are split into shards added on all
/// cores; each coordinate still gets exactly the same operations in the same order, so the
/// result is bit for bit that of the single-threaded loop. Without it (the browser's wasm32)
/// the same loop runs on one thread.
pub fn accumulate(sum: &mut [f64], x: &[f32], w: f64) {
    assert_eq!(sum.len(), x.len(), "accumulate: lengths differ");
    #[cfg(feature = "parallel")]
    if x.len() >= 2 * SHARD {
        use rayon::prelude::*;
        sum.par_chunks_mut(SHARD).zip(x.par_chunks(SHARD)).for_each(|(s, x)| accumulate_serial(s, x, w));
        return;
    }
    accumulate_serial(sum, x, w);
}

/// The single-threaded kernel of [`accumulate`]: a plain loop the compiler vectorises
/// (widen, multiply, add; no fused multiply-add, so every build rounds alike).
pub fn accumulate_serial(sum: &mut [f64], x: &[f32], w: f64) {
    for (s, &x) in sum.iter_mut().zip(x) {
        *s += w * f64::from(x);
    }
}

/// [`accumulate`] with `x` as little-endian f32 bytes (4 per coordinate), read where they were
/// received; the same operations, so the same sum bit for bit.
pub fn accumulate_le(sum: &mut [f64], x: &[u8], w: f64) {
    assert_eq!(4 * sum.len(), x.len(), "accumulate_le: lengths differ");
    #[cfg(feature = "parallel")]
    if sum.len() >= 2 * SHARD {
        use rayon::prelude::*;
        sum.par_chunks_mut(SHARD).zip(x.par_chunks(4 * SHARD)).for_each(|(s, x)| accumulate_le_serial(s, x, w));
        return;
    }
    accumulate_le_serial(sum, x, w);
}

fn accumulate_le_serial(sum: &mut [f64], x: &[u8], w: f64) {
    for (s, c) in sum.iter_mut().zip(x.chunks_exact(4)) {
        *s += w * f64::from(f32::from_le_bytes(c.try_into().expect("chunks of 4")));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::test_util::{assert_close, layout, params, update};
    use super::*;
    use crate::params::TensorSpec;
    use crate::update::SparseUpdate;

    #[test]
    fn weighted_and_unweighted_means() {
        let l = layout(2);
        let mut w = Mean::weighted();
        let mut u = Mean::unweighted();
        for (v, n) in [([1.0, 0.0], 1.0), ([0.0, 1.0], 3.0)] {
            w.add(&update(&l, &v), n).unwrap();
            u.add(&update(&l, &v), n).unwrap();
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
        m.add(&update(&l, &[4.0]), 2.0).unwrap();
        m.add(&update(&l, &[100.0]), 0.0).unwrap();
        assert_eq!(m.count(), 2);
        assert_close(m.finish().unwrap().as_slice(), &[4.0], 0.0);
    }

    #[test]
    fn zero_total_weight_is_an_error_and_keeps_state() {
        let l = layout(1);
        let mut m = Mean::weighted();
        m.add(&update(&l, &[4.0]), 0.0).unwrap();
        assert_eq!(m.finish(), Err(StrategyError::ZeroTotalWeight));
        assert_eq!(m.count(), 1);
        m.add(&update(&l, &[2.0]), 1.0).unwrap();
        assert_close(m.finish().unwrap().as_slice(), &[2.0], 0.0);
    }

    #[test]
    fn rejected_updates_leave_state_unchanged() {
        let l = layout(2);
        let mut m = Mean::weighted();
        m.add(&update(&l, &[1.0, 1.0]), 1.0).unwrap();

        let other = Arc::new(Layout::new(vec![TensorSpec::new("v", vec![2])]).unwrap());
        let err = m.add(&update(&other, &[9.0, 9.0]), 1.0).unwrap_err();
        assert!(matches!(&err, StrategyError::LayoutMismatch(msg) if msg.contains("\"v\"")), "{err}");
        let err = m.add(&update(&layout(3), &[9.0; 3]), 1.0).unwrap_err();
        assert!(matches!(err, StrategyError::LayoutMismatch(_)), "{err}");
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(m.add(&update(&l, &[9.0, 9.0]), bad), Err(StrategyError::InvalidWeight(_))));
        }
        let too_heavy = MAX_WEIGHT * 2.0;
        assert_eq!(m.add(&update(&l, &[9.0, 9.0]), too_heavy), Err(StrategyError::WeightOverflow(too_heavy)));
        // The heaviest allowed weight with the largest values: the sum stays finite.
        m.add(&update(&l, &[f32::MAX, -f32::MAX]), MAX_WEIGHT).unwrap();
        m.add(&update(&l, &[f32::MAX, -f32::MAX]), MAX_WEIGHT).unwrap();

        assert_eq!(m.count(), 3);
        let out = m.finish().unwrap();
        // (1·1 + 2·2^64·MAX) / (1 + 2·2^64) = MAX up to rounding.
        assert_close(out.as_slice(), &[f64::from(f32::MAX), -f64::from(f32::MAX)], 1e25);
    }

    fn sparse(l: &Arc<Layout>, indices: &[u32], values: &[f32]) -> Update {
        Update::sparse(SparseUpdate::new(l.clone(), indices.to_vec(), values.to_vec()).unwrap())
    }

    #[test]
    fn sparse_and_dense_updates_mix_in_one_round() {
        let l = layout(4);
        let mut m = Mean::weighted();
        m.add(&sparse(&l, &[1, 3], &[2.0, -4.0]), 1.0).unwrap();
        m.add(&update(&l, &[1.0, 1.0, 1.0, 1.0]), 3.0).unwrap();
        m.add(&sparse(&l, &[], &[]), 4.0).unwrap();
        assert_eq!(m.count(), 3);
        assert_close(m.finish().unwrap().as_slice(), &[0.375, 0.625, 0.375, -0.125], 1e-7);
        // A sparse update of another model is refused like a dense one.
        m.add(&update(&l, &[1.0; 4]), 1.0).unwrap();
        let err = m.add(&sparse(&layout(5), &[4], &[1.0]), 1.0).unwrap_err();
        assert!(matches!(err, StrategyError::LayoutMismatch(_)), "{err}");
        assert_close(m.finish().unwrap().as_slice(), &[1.0; 4], 0.0);
    }

    /// A refusal at any point leaves the sum exactly as it was: the round then finishes bit for
    /// bit like one that never saw the refused update.
    #[test]
    fn a_refused_update_leaves_the_sum_bit_for_bit_unchanged() {
        let n = 3 * (1 << 16) + 5;
        let l = layout(n);
        let values = |k: f32| (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect::<Vec<f32>>();
        let (a, b) = (update(&l, &values(1.0)), update(&l, &values(2.0)));
        let mut clean = Mean::weighted();
        clean.add(&a, 3.0).unwrap();
        clean.add(&b, 5.0).unwrap();
        let mut refused = Mean::weighted();
        refused.add(&a, 3.0).unwrap();
        for (bad, w) in [(&b, -1.0), (&b, f64::NAN), (&b, MAX_WEIGHT * 4.0)] {
            assert!(refused.add(bad, w).is_err());
        }
        assert!(refused.add(&update(&layout(n - 1), &values(0.0)[1..]), 1.0).is_err());
        refused.add(&b, 5.0).unwrap();
        assert_eq!(refused.count(), 2);
        assert_eq!(refused.finish().unwrap(), clean.finish().unwrap());
    }

    /// An update kept as the received body's bytes (safetensors with tensors in another order
    /// than the layout's, or the `none` codec) adds exactly what its decoded copy adds.
    #[test]
    fn received_bytes_add_exactly_like_decoded_values() {
        let l = Arc::new(Layout::new(vec![TensorSpec::new("b", vec![3]), TensorSpec::new("a", vec![70_000])]).unwrap());
        let values: Vec<f32> = (0..l.len()).map(|i| (i as f32 * 0.013).cos()).collect();
        let p = params(&l, &values);
        let safetensors = bytes::Bytes::from(p.to_safetensors().unwrap());
        let none = bytes::Bytes::from(
            crate::codec::encode(&values, &crate::codec::Compression::None, None, &mut crate::rng::derive(0, &[]))
                .unwrap(),
        );
        let received = [
            Update::from_safetensors(l.clone(), &safetensors).unwrap(),
            crate::pipeline::decode(&none, l.clone(), &Default::default()).unwrap(),
        ];
        for r in received {
            assert!(matches!(r.view(), UpdateView::Received(_)));
            assert_eq!(r.to_dense(), p);
            assert_eq!(r.l2_norm(), update(&l, &values).l2_norm());
            let (mut by_bytes, mut by_values) = (Mean::weighted(), Mean::weighted());
            for w in [1.0, 7.5] {
                by_bytes.add(&r, w).unwrap();
                by_values.add(&update(&l, &values), w).unwrap();
            }
            assert_eq!(by_bytes.finish().unwrap(), by_values.finish().unwrap());
        }
    }

    #[test]
    fn the_kernel_adds_every_coordinate_like_the_plain_loop() {
        // Lengths around the shard size, so ragged last shards are covered when sharding is on.
        for n in [0usize, 1, 7, (1 << 16) - 1, 1 << 16, (1 << 17) + 3, 300_001] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let start: Vec<f64> = (0..n).map(|i| (i % 13) as f64 * 0.1).collect();
            let mut sharded = start.clone();
            accumulate(&mut sharded, &x, 3.25);
            let mut serial = start.clone();
            accumulate_serial(&mut serial, &x, 3.25);
            let plain: Vec<f64> = start.iter().zip(&x).map(|(s, &x)| s + 3.25 * f64::from(x)).collect();
            assert!(sharded.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
            assert!(serial.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
        }
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

    /// Per coordinate: whether the client sent it, and its value.
    type SparseClient = (Vec<(bool, f32)>, f64);

    /// Clients whose updates are sparse (a subset of coordinates with values), each with a weight.
    fn sparse_clients() -> impl Strategy<Value = (usize, Vec<SparseClient>)> {
        (1usize..40, 1usize..8).prop_flat_map(|(d, n)| {
            let client = (prop::collection::vec((any::<bool>(), -1.0e3f32..1.0e3), d), 0.0f64..1.0e6);
            (Just(d), prop::collection::vec(client, n))
        })
    }

    proptest! {
        /// Adding only the sent coordinates gives exactly what adding the densified update gives
        /// (the zeros it skips change no sum).
        #[test]
        fn sparse_accumulation_equals_dense_accumulation((d, clients) in sparse_clients()) {
            let l = layout(d);
            let (mut by_sparse, mut by_dense) = (Mean::weighted(), Mean::weighted());
            for (coords, w) in &clients {
                let (idx, vals): (Vec<u32>, Vec<f32>) =
                    coords.iter().enumerate().filter(|(_, (kept, _))| *kept).map(|(i, &(_, v))| (i as u32, v)).unzip();
                let s = sparse(&l, &idx, &vals);
                by_sparse.add(&s, *w).unwrap();
                by_dense.add(&Update::dense(s.to_dense()).unwrap(), *w).unwrap();
            }
            match (by_sparse.finish(), by_dense.finish()) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert_eq!(a.unwrap_err(), b.unwrap_err()),
            }
        }

        #[test]
        fn fedavg_is_order_invariant_and_equals_direct_weighted_mean(
            (clients, order) in clients_strategy()
        ) {
            let l = layout(clients[0].0.len());
            let run = |idx: &mut dyn Iterator<Item = usize>| {
                let mut m = Mean::weighted();
                for i in idx {
                    m.add(&update(&l, &clients[i].0), clients[i].1).unwrap();
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
