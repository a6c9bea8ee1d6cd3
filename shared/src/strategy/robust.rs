//! Byzantine-robust aggregators: coordinate-wise median and trimmed mean (Yin et al. 2018),
//! Krum / Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018).
//!
//! All of them need every update of the round at once (a median cannot be streamed), so they
//! buffer the updates; memory is the model size times the number of clients. They are
//! deliberately unweighted: weighting by a client-reported example count would let one attacker
//! claim a huge count and dominate, which is what these rules exist to prevent. Weights are still
//! validated so that a malformed report is rejected the same way everywhere.
//!
//! Ties (equal scores or equal distances) are broken by arrival order, so the result is a
//! deterministic function of the updates and the order they were added in.

use std::sync::Arc;

use super::StrategyError;
use super::aggregate::{Aggregator, check_update, params_from_f64};
use crate::params::{Layout, Params};
use crate::update::Update;

/// The round's updates, validated against the first one's layout.
#[derive(Debug, Clone, Default)]
struct UpdateBuffer {
    updates: Vec<Params>,
}

impl UpdateBuffer {
    /// Keeps a dense copy: the robust rules compare whole updates coordinate by coordinate.
    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        check_update(self.updates.first().map(Params::layout), update, weight)?;
        self.updates.push(update.to_dense());
        Ok(())
    }

    /// The layout and the updates, or `NoUpdates`.
    fn non_empty(&self) -> Result<(&Arc<Layout>, &[Params]), StrategyError> {
        match self.updates.first() {
            Some(first) => Ok((first.layout(), &self.updates)),
            None => Err(StrategyError::NoUpdates),
        }
    }
}

/// Median of `values` (average of the two middle values when the count is even, as numpy's
/// `median` does). Reorders `values`. `values` must not be empty.
fn median(values: &mut [f32]) -> f64 {
    let (len, mid) = (values.len(), values.len() / 2);
    let (lower, upper, _) = values.select_nth_unstable_by(mid, f32::total_cmp);
    let upper = f64::from(*upper);
    if len % 2 == 1 {
        upper
    } else {
        // After selection every element left of `mid` is <= the pivot; the largest is the lower
        // middle value.
        let lower = lower.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (f64::from(lower) + upper) / 2.0
    }
}

/// Applies `f` to every coordinate's column of values across `updates` (in update order).
fn per_coordinate(updates: &[&Params], mut f: impl FnMut(&mut [f32]) -> f64) -> Vec<f64> {
    let d = updates.first().map_or(0, |u| u.len());
    let mut column = vec![0.0f32; updates.len()];
    (0..d)
        .map(|j| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u.as_slice()[j];
            }
            f(&mut column)
        })
        .collect()
}

/// Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
/// Optimal Statistical Rates"). Tolerates up to half of the updates being arbitrary, per
/// coordinate.
#[derive(Debug, Clone, Default)]
pub struct Median {
    buf: UpdateBuffer,
}

impl Median {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Aggregator for Median {
    fn name(&self) -> &'static str {
        "median"
    }

    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        self.buf.add(update, weight)
    }

    fn count(&self) -> usize {
        self.buf.updates.len()
    }

    fn finish(&mut self) -> Result<Params, StrategyError> {
        let (layout, updates) = self.buf.non_empty()?;
        let refs: Vec<&Params> = updates.iter().collect();
        let out = params_from_f64(layout, per_coordinate(&refs, median).into_iter(), self.name())?;
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.buf.updates.clear();
    }
}

/// Coordinate-wise β-trimmed mean (Yin et al. 2018): per coordinate, drop the `⌊β·n⌋` largest and
/// the `⌊β·n⌋` smallest values and average the rest.
#[derive(Debug, Clone)]
pub struct TrimmedMean {
    beta: f64,
    buf: UpdateBuffer,
}

impl TrimmedMean {
    /// `beta` is the fraction trimmed from *each* end, in `[0, 0.5)`.
    pub fn new(beta: f64) -> Result<Self, StrategyError> {
        if !(0.0..0.5).contains(&beta) {
            return Err(StrategyError::InvalidConfig(format!(
                "trim_fraction must be in [0, 0.5) (it is trimmed from each end), got {beta}"
            )));
        }
        Ok(Self { beta, buf: UpdateBuffer::default() })
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Values trimmed from each end for `n` updates. The small epsilon keeps e.g. 0.29·100 =
    /// 28.999999999999996 from flooring to 28; the cap keeps at least one value.
    fn trim_count(&self, n: usize) -> usize {
        let k = (self.beta * n as f64 + 1e-9).floor() as usize;
        k.min(n.saturating_sub(1) / 2)
    }
}

impl Aggregator for TrimmedMean {
    fn name(&self) -> &'static str {
        "trimmed-mean"
    }

    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        self.buf.add(update, weight)
    }

    fn count(&self) -> usize {
        self.buf.updates.len()
    }

    fn finish(&mut self) -> Result<Params, StrategyError> {
        let (layout, updates) = self.buf.non_empty()?;
        let n = updates.len();
        let k = self.trim_count(n);
        let refs: Vec<&Params> = updates.iter().collect();
        let values = per_coordinate(&refs, |col| {
            col.sort_unstable_by(f32::total_cmp);
            let kept = &col[k..n - k];
            kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64
        });
        let out = params_from_f64(layout, values.into_iter(), self.name())?;
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.buf.updates.clear();
    }
}

/// Squared Euclidean distances between all pairs, row-major `n × n`, accumulated in f64. Each
/// pair is computed once and mirrored, so `d[i][j] == d[j][i]` exactly and mutual-neighbour ties
/// are exact ties.
fn pairwise_sq_distances(updates: &[&Params]) -> Vec<f64> {
    let n = updates.len();
    let mut d = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let dist: f64 = updates[i]
                .as_slice()
                .iter()
                .zip(updates[j].as_slice())
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            d[i * n + j] = dist;
            d[j * n + i] = dist;
        }
    }
    d
}

/// Krum scores of the updates `active` (indices into the `n × n` matrix `dist`): for each, the
/// sum of squared distances to its `|active| − f − 2` nearest other active updates. Like Flower's
/// `aggregate_krum`, at least one neighbour is used, which only matters inside Bulyan's
/// iteration where the candidate set shrinks below `2f + 3`.
fn krum_scores(dist: &[f64], n: usize, active: &[usize], f: usize) -> Vec<f64> {
    let neighbours = active.len().saturating_sub(f + 2).max(1);
    let mut row = Vec::with_capacity(active.len());
    active
        .iter()
        .map(|&i| {
            row.clear();
            row.extend(active.iter().filter(|&&j| j != i).map(|&j| dist[i * n + j]));
            row.sort_unstable_by(f64::total_cmp);
            row.iter().take(neighbours).sum()
        })
        .collect()
}

/// Position of the smallest score; the earliest on ties.
fn argmin(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.total_cmp(&scores[best]).is_lt() {
            best = i;
        }
    }
    best
}

/// Mean of the given updates, in f64.
fn mean_of(layout: &Arc<Layout>, chosen: &[&Params], who: &'static str) -> Result<Params, StrategyError> {
    let k = chosen.len() as f64;
    let mut sum = vec![0.0f64; layout.len()];
    for u in chosen {
        for (s, &v) in sum.iter_mut().zip(u.as_slice()) {
            *s += f64::from(v);
        }
    }
    params_from_f64(layout, sum.into_iter().map(|s| s / k), who)
}

/// Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
/// Tolerant Gradient Descent").
///
/// Each update is scored by the sum of squared distances to its `n − f − 2` nearest other
/// updates; Multi-Krum averages the `m` lowest-scoring updates and Krum is `m = 1` (it returns
/// the single most central update). The paper's guarantee needs `n > 2f + 2`, which `finish`
/// enforces.
#[derive(Debug, Clone)]
pub struct MultiKrum {
    f: usize,
    m: usize,
    buf: UpdateBuffer,
}

impl MultiKrum {
    /// `f`: how many Byzantine clients to tolerate; `m >= 1`: how many updates to average.
    pub fn new(f: usize, m: usize) -> Result<Self, StrategyError> {
        if m == 0 {
            return Err(StrategyError::InvalidConfig("multi_krum_m must be at least 1 (1 = Krum)".into()));
        }
        Ok(Self { f, m, buf: UpdateBuffer::default() })
    }

    /// Plain Krum.
    pub fn krum(f: usize) -> Self {
        Self { f, m: 1, buf: UpdateBuffer::default() }
    }
}

impl Aggregator for MultiKrum {
    fn name(&self) -> &'static str {
        if self.m == 1 { "krum" } else { "multi-krum" }
    }

    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        self.buf.add(update, weight)
    }

    fn count(&self) -> usize {
        self.buf.updates.len()
    }

    fn finish(&mut self) -> Result<Params, StrategyError> {
        let (layout, updates) = self.buf.non_empty()?;
        let n = updates.len();
        let needed = (2 * self.f + 3).max(self.m);
        if n < needed {
            return Err(StrategyError::TooFewUpdates {
                aggregator: self.name(),
                needed,
                got: n,
                why: format!("n >= 2f + 3 and n >= m, with f = {} and m = {}", self.f, self.m),
            });
        }
        let refs: Vec<&Params> = updates.iter().collect();
        let dist = pairwise_sq_distances(&refs);
        let all: Vec<usize> = (0..n).collect();
        let scores = krum_scores(&dist, n, &all, self.f);
        let mut order = all;
        // Stable sort: equal scores keep arrival order.
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let chosen: Vec<&Params> = order[..self.m].iter().map(|&i| refs[i]).collect();
        let out = mean_of(layout, &chosen, self.name())?;
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.buf.updates.clear();
    }
}

/// Bulyan (El Mhamdi, Guerraoui, Rouault 2018, "The Hidden Vulnerability of Distributed
/// Learning in Byzantium"), with Krum as the selection rule.
///
/// 1. Select `θ = n − 2f` updates by iterated Krum: repeatedly pick the Krum winner among the
///    remaining updates and move it to the selection.
/// 2. Per coordinate, average the `β = θ − 2f` selected values closest to the selection's median.
///
/// Requires `n >= 4f + 3`.
#[derive(Debug, Clone)]
pub struct Bulyan {
    f: usize,
    buf: UpdateBuffer,
}

impl Bulyan {
    pub fn new(f: usize) -> Self {
        Self { f, buf: UpdateBuffer::default() }
    }
}

impl Aggregator for Bulyan {
    fn name(&self) -> &'static str {
        "bulyan"
    }

    fn add(&mut self, update: &Update, weight: f64) -> Result<(), StrategyError> {
        self.buf.add(update, weight)
    }

    fn count(&self) -> usize {
        self.buf.updates.len()
    }

    fn finish(&mut self) -> Result<Params, StrategyError> {
        let (layout, updates) = self.buf.non_empty()?;
        let (n, f) = (updates.len(), self.f);
        let needed = 4 * f + 3;
        if n < needed {
            return Err(StrategyError::TooFewUpdates {
                aggregator: self.name(),
                needed,
                got: n,
                why: format!("n >= 4f + 3 with f = {f}"),
            });
        }
        let theta = n - 2 * f;
        let beta = theta - 2 * f;

        let refs: Vec<&Params> = updates.iter().collect();
        let dist = pairwise_sq_distances(&refs);
        let mut remaining: Vec<usize> = (0..n).collect();
        let mut selected: Vec<&Params> = Vec::with_capacity(theta);
        while selected.len() < theta {
            let scores = krum_scores(&dist, n, &remaining, f);
            // `remove` keeps arrival order among the rest, so ties stay deterministic.
            selected.push(refs[remaining.remove(argmin(&scores))]);
        }

        let mut scratch = vec![0.0f32; theta];
        let mut by_distance: Vec<(f64, f64)> = Vec::with_capacity(theta);
        let values = per_coordinate(&selected, |col| {
            scratch.copy_from_slice(col);
            let med = median(&mut scratch);
            by_distance.clear();
            by_distance.extend(col.iter().map(|&v| ((f64::from(v) - med).abs(), f64::from(v))));
            // Stable: equal distances keep selection order.
            by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
            by_distance[..beta].iter().map(|&(_, v)| v).sum::<f64>() / beta as f64
        });
        let out = params_from_f64(layout, values.into_iter(), self.name())?;
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.buf.updates.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, layout, update};
    use super::*;

    /// Six honest updates around [1, 2] and one attacker at [50, −40].
    const SET: [[f32; 2]; 7] =
        [[1.0, 2.0], [1.1, 1.9], [0.9, 2.1], [1.05, 2.05], [0.95, 1.95], [1.0, 2.2], [50.0, -40.0]];

    fn run(agg: &mut dyn Aggregator, set: &[[f32; 2]]) -> Result<Params, StrategyError> {
        let l = layout(2);
        for u in set {
            agg.add(&update(&l, u), 1.0)?;
        }
        agg.finish()
    }

    #[test]
    fn median_of_reference_set() {
        // Sorted x: 0.9 0.95 1 1 1.05 1.1 50 → 1; sorted y: −40 1.9 1.95 2 2.05 2.1 2.2 → 2.
        let out = run(&mut Median::new(), &SET).unwrap();
        assert_close(out.as_slice(), &[1.0, 2.0], 1e-6);
    }

    #[test]
    fn median_of_even_count_averages_the_middle_pair() {
        let out = run(&mut Median::new(), &SET[..6]).unwrap();
        // x: 0.9 0.95 [1 1] 1.05 1.1 → 1; y: 1.9 1.95 [2 2.05] 2.1 2.2 → 2.025.
        assert_close(out.as_slice(), &[1.0, 2.025], 1e-6);
        let out = run(&mut Median::new(), &[[3.0, -1.0]]).unwrap();
        assert_close(out.as_slice(), &[3.0, -1.0], 0.0);
    }

    #[test]
    fn trimmed_mean_of_reference_set() {
        // n = 7, β = 0.2 → ⌊1.4⌋ = 1 trimmed per side.
        // x: drop 0.9 and 50 → (0.95 + 1 + 1 + 1.05 + 1.1)/5 = 1.02.
        // y: drop −40 and 2.2 → (1.9 + 1.95 + 2 + 2.05 + 2.1)/5 = 2.0.
        let out = run(&mut TrimmedMean::new(0.2).unwrap(), &SET).unwrap();
        assert_close(out.as_slice(), &[1.02, 2.0], 1e-6);
    }

    #[test]
    fn trimmed_mean_edge_fractions() {
        // β = 0 is the plain mean.
        let out = run(&mut TrimmedMean::new(0.0).unwrap(), &[[1.0, 0.0], [3.0, 0.0]]).unwrap();
        assert_close(out.as_slice(), &[2.0, 0.0], 0.0);
        // β just below 0.5 never trims everything: the cap keeps at least one value for any n.
        let t = TrimmedMean::new(0.499_999_999_9).unwrap();
        assert_eq!(t.trim_count(2), 0);
        assert_eq!(t.trim_count(3), 1);
        assert_eq!(t.trim_count(4), 1);
        assert_eq!(TrimmedMean::new(0.29).unwrap().trim_count(100), 29);
        for bad in [-0.1, 0.5, 0.9, f64::NAN] {
            assert!(matches!(TrimmedMean::new(bad), Err(StrategyError::InvalidConfig(_))), "{bad}");
        }
    }

    #[test]
    fn krum_of_reference_set() {
        // f = 1, n = 7 → 4 nearest neighbours. Squared distances to the honest others and the
        // score (sum of the 4 smallest):
        //   #0 [1,2]:       #1 0.02, #2 0.02, #3 0.005, #4 0.005, #5 0.04  → 0.05
        //   #3 [1.05,2.05]: #0 0.005, #1 0.025, #2 0.025, #4 0.02, #5 0.025 → 0.075
        //   #4 [0.95,1.95]: #0 0.005, #1 0.025, #2 0.025, #3 0.02, #5 0.065 → 0.075
        //   #2 [0.9,2.1]:   #0 0.02, #1 0.08, #3 0.025, #4 0.025, #5 0.02  → 0.09
        //   #1 0.15, #5 0.15, #6 (the attacker) ≈ 16641.8.
        // The winner is #0 = [1, 2].
        let out = run(&mut MultiKrum::krum(1), &SET).unwrap();
        assert_close(out.as_slice(), &[1.0, 2.0], 1e-6);
    }

    #[test]
    fn multi_krum_averages_the_m_best() {
        // With the scores above, the four best are #0 (0.05), #3 and #4 (0.075), #2 (0.09);
        // the next is 0.15, so the set is unambiguous although #3 and #4 tie.
        // Mean: x = (1 + 1.05 + 0.95 + 0.9)/4 = 0.975, y = (2 + 2.05 + 1.95 + 2.1)/4 = 2.025.
        let out = run(&mut MultiKrum::new(1, 4).unwrap(), &SET).unwrap();
        assert_close(out.as_slice(), &[0.975, 2.025], 1e-6);
        // m = n is the plain mean, attacker included.
        let out = run(&mut MultiKrum::new(1, 7).unwrap(), &SET).unwrap();
        let mean_x = SET.iter().map(|u| f64::from(u[0])).sum::<f64>() / 7.0;
        assert!((f64::from(out.as_slice()[0]) - mean_x).abs() < 1e-5);
    }

    #[test]
    fn krum_needs_enough_updates() {
        // f = 1 needs n >= 5.
        let err = run(&mut MultiKrum::krum(1), &SET[..4]).unwrap_err();
        assert!(matches!(err, StrategyError::TooFewUpdates { needed: 5, got: 4, .. }), "{err}");
        let mut k = MultiKrum::new(0, 4).unwrap();
        let err = run(&mut k, &SET[..3]).unwrap_err();
        assert!(matches!(err, StrategyError::TooFewUpdates { needed: 4, got: 3, .. }), "{err}");
        // The buffered updates survive the error; one more makes it work.
        assert_eq!(k.count(), 3);
        k.add(&update(&layout(2), &SET[3]), 1.0).unwrap();
        assert!(k.finish().is_ok());
        assert!(matches!(MultiKrum::new(1, 0), Err(StrategyError::InvalidConfig(_))));
    }

    #[test]
    fn bulyan_hand_computed() {
        // n = 7, f = 1 → θ = 5 selected, β = 3 averaged per coordinate. Values chosen so that
        // every selection step has a clear winner except exact mutual-neighbour ties, which are
        // broken by arrival order.
        const U: [[f32; 2]; 7] = [
            [0.0, 1.0],     // #0
            [0.1, 0.8],     // #1
            [0.3, 1.6],     // #2
            [0.7, 0.0],     // #3
            [1.5, 1.2],     // #4
            [3.1, 0.4],     // #5
            [100.0, -50.0], // #6 attacker
        ];
        // Iterated Krum (f = 1; neighbours = max(1, |R| − 3)):
        //  R = {0..6}, 4 neighbours: scores 4.28, 3.85, 5.45, 7.29, 8.09, 27.56, 49174.6 → #1
        //  R = {0,2,3,4,5,6}, 3 nb:  4.23, 4.77, 6.29, 5.97, 18.4, 36613.95           → #0
        //  R = {2,3,4,5,6}, 2 nb:    4.32, 4.80, 3.68, 9.12, 24253.46                 → #4
        //  R = {2,3,5,6}, 1 nb:      2.72, 2.72, 5.92, 11929.77  (tie #2/#3)          → #2
        //  R = {3,5,6}, 1 nb:        5.92, 5.92, 11929.77        (tie #3/#5)          → #3
        // Selected {1, 0, 4, 2, 3}: #5 and the attacker are out.
        // x values 0.1 0 1.5 0.3 0.7: median 0.3; closest three 0.3, 0.1, 0 → 0.4/3 = 0.13333…
        // y values 0.8 1 1.2 1.6 0: median 1.0; closest three 1.0, 0.8, 1.2 → 3.0/3 = 1.0
        let out = run(&mut Bulyan::new(1), &U).unwrap();
        assert_close(out.as_slice(), &[0.4 / 3.0, 1.0], 1e-6);
    }

    #[test]
    fn bulyan_excludes_the_attacker_in_reference_set() {
        // The honest updates of SET are placed symmetrically, so several selections tie; every
        // tie-break yields a selection without the attacker and a result within 0.05 of [1, 2].
        let out = run(&mut Bulyan::new(1), &SET).unwrap();
        let v = out.as_slice();
        assert!((v[0] - 1.0).abs() < 0.05 && (v[1] - 2.0).abs() < 0.05, "{v:?}");
    }

    #[test]
    fn bulyan_needs_4f_plus_3() {
        let mut b = Bulyan::new(1);
        let err = run(&mut b, &SET[..6]).unwrap_err();
        assert_eq!(
            err,
            StrategyError::TooFewUpdates {
                aggregator: "bulyan",
                needed: 7,
                got: 6,
                why: "n >= 4f + 3 with f = 1".into()
            }
        );
        assert!(err.to_string().contains("at least 7"), "{err}");
        assert_eq!(b.count(), 6);
        // f = 2 needs 11.
        let err = run(&mut Bulyan::new(2), &SET).unwrap_err();
        assert!(matches!(err, StrategyError::TooFewUpdates { needed: 11, got: 7, .. }));
    }

    #[test]
    fn bulyan_with_f0_is_the_mean() {
        let out = run(&mut Bulyan::new(0), &SET[..3]).unwrap();
        assert_close(out.as_slice(), &[1.0, 2.0], 1e-6);
    }

    #[test]
    fn robust_aggregators_validate_and_reset() {
        let aggs: Vec<Box<dyn Aggregator>> = vec![
            Box::new(Median::new()),
            Box::new(TrimmedMean::new(0.2).unwrap()),
            Box::new(MultiKrum::krum(0)),
            Box::new(Bulyan::new(0)),
        ];
        for mut a in aggs {
            assert_eq!(a.finish(), Err(StrategyError::NoUpdates), "{}", a.name());
            let l = layout(2);
            a.add(&update(&l, &[1.0, 2.0]), 1.0).unwrap();
            assert!(matches!(a.add(&update(&layout(3), &[1.0, 2.0, 3.0]), 1.0), Err(StrategyError::LayoutMismatch(_))));
            assert!(matches!(a.add(&update(&l, &[1.0, 2.0]), -3.0), Err(StrategyError::InvalidWeight(_))));
            assert_eq!(a.count(), 1, "{}", a.name());
            a.add(&update(&l, &[1.0, 2.0]), 0.0).unwrap();
            a.add(&update(&l, &[1.0, 2.0]), 5.0).unwrap();
            let out = a.finish().unwrap();
            assert_close(out.as_slice(), &[1.0, 2.0], 0.0);
            assert_eq!(a.count(), 0, "{}", a.name());
        }
    }

    #[test]
    fn robust_aggregators_ignore_weights() {
        let l = layout(1);
        let mut m = Median::new();
        for (v, w) in [(1.0, 1.0), (2.0, 1000.0), (3.0, 1.0)] {
            m.add(&update(&l, &[v]), w).unwrap();
        }
        assert_close(m.finish().unwrap().as_slice(), &[2.0], 0.0);
        let mut m = Median::new();
        for (v, w) in [(1.0, 1000.0), (2.0, 1.0), (3.0, 1.0)] {
            m.add(&update(&l, &[v]), w).unwrap();
        }
        assert_close(m.finish().unwrap().as_slice(), &[2.0], 0.0);
    }
}
