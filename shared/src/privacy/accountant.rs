//! Rényi-DP accounting of the Poisson-subsampled Gaussian mechanism, the mechanism of DP-SGD and
//! of DP-FedAvg (each example, or each client, is included independently with probability q, the
//! sum of the clipped contributions gets Gaussian noise of standard deviation σ times the clip
//! norm).
//!
//! # What is computed
//!
//! **RDP of one step.** With μ₀ = N(0, σ²), μ₁ = N(1, σ²) and μ = (1 − q)μ₀ + qμ₁, the mechanism
//! is (α, ε(α))-RDP with ε(α) = log A_α / (α − 1), A_α = E_{z∼μ₀}[(μ(z)/μ₀(z))^α] (Mironov,
//! Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
//! arXiv:1908.10530). A_α is evaluated
//!
//! - for integer α by the exact binomial expansion (their Section 3.2)
//!   `A_α = Σ_{k=0}^{α} C(α,k) (1−q)^{α−k} q^k exp((k² − k)/(2σ²))`;
//! - for fractional α by the two-series expansion of their Section 3.3: split the integral at
//!   z₀ = σ² log(1/q − 1) + ½, where q·μ₁ = (1 − q)·μ₀, and expand the binomial on each side in
//!   the direction in which it converges:
//!   `A_α = Σ_{i≥0} C(α,i) (1−q)^{α−i} q^i exp((i² − i)/(2σ²)) · ½ erfc((i − z₀)/(√2 σ))`
//!   `    + Σ_{i≥0} C(α,i) q^{α−i} (1−q)^i exp((j² − j)/(2σ²)) · ½ erfc((z₀ − j)/(√2 σ))`,
//!   with j = α − i. Past i = α + 1 the coefficients C(α,i) alternate in sign and the terms of both
//!   series shrink, so the sum is stopped once a term is below 2⁻⁵⁴ of the partial sum (the
//!   alternating tail is then bounded by that term).
//!
//! Everything is done with logarithms (a signed, streaming log-sum-exp), since the factors
//! overflow long before the terms do. Where erfc underflows (arguments above 10) the product
//! `exp((k² − k)/(2σ²)) · erfc(x)` is formed from the exponent `(k(2z₀ − 1) − z₀²)/(2σ²)` and
//! the asymptotic series of `log(e^{x²} erfc x)`, so no `∞ − ∞` arises. Special cases: q = 0 gives
//! 0, q = 1 the plain Gaussian's α/(2σ²), σ = 0 (with q > 0) gives ∞.
//!
//! **Composition.** RDP adds up at each order: T identical steps cost T·ε(α), and
//! [`RdpAccountant`] sums steps of different σ and q.
//!
//! **Conversion to (ε, δ).** As Opacus does, by Balle, Barthe, Gaboardi, Hsu & Sato 2020
//! ("Hypothesis Testing Interpretations and Rényi Differential Privacy", Theorem 21):
//! `ε = rdp(α) − (log δ + log α)/(α − 1) + log((α − 1)/α)`, minimised over the orders (orders that
//! give NaN are skipped); the minimising order is reported too. A result below 0 (possible only
//! with very large orders) is reported as 0, which is implied by it.
//!
//! # Orders
//!
//! [`DEFAULT_ORDERS`] is Opacus's default list: 1.1, 1.2, …, 10.9 (1 + x/10 for x = 1..=99)
//! followed by the integers 12..=63. The finite list puts a floor under the ε any noise can reach
//! (the conversion term at the largest order); [`noise_multiplier_for`] reports targets below it
//! as unattainable.
//!
//! Published reference values (δ = 1e-5, default orders): σ = 1.1, q = 0.01, T = 1000 gives
//! ε ≈ 1.712; σ = 1.0, q = 0.1, T = 100 gives ε ≈ 7.899; σ = 2.0, q = 1, T = 1 gives ε ≈ 2.166.

use std::f64::consts::{LN_2, PI, SQRT_2};

use serde::{Deserialize, Serialize};

/// Opacus's default RDP orders: 1 + x/10 for x in 1..=99, then the integers 12..=63.
pub const DEFAULT_ORDERS: [f64; 151] = default_orders();

const fn default_orders() -> [f64; 151] {
    let mut out = [0.0; 151];
    let mut i = 0;
    while i < 99 {
        out[i] = 1.0 + (i + 1) as f64 / 10.0;
        i += 1;
    }
    while i < 151 {
        out[i] = (i - 99 + 12) as f64;
        i += 1;
    }
    out
}

/// The largest order accepted (the expansions take about α terms).
pub const MAX_ORDER: f64 = 10_000.0;

/// A fractional order's series is cut after this many terms even if not yet converged (the
/// alternating tail keeps the error below the last term, which is tiny by then). The terms decay
/// only polynomially once erfc takes over, so near q = ½ with large σ a low order can take this
/// many (about 0.2 s for all of [`DEFAULT_ORDERS`]); typical q ≤ 0.1 needs far fewer.
const MAX_TERMS: u64 = 200_000;

/// Stop a series once a term is below `e^LOG_REL_TOL` (2⁻⁵⁴) of the partial sum.
const LOG_REL_TOL: f64 = -37.43;

/// Above this argument erfc is taken from its asymptotic series (erfc(10) ≈ 2e−45; erfc itself
/// underflows near 27).
const ASYMPTOTIC_FROM: f64 = 10.0;

/// Above this noise multiplier the RDP is below 1e−200: the plain Gaussian's α/(2σ²) (an upper
/// bound on the subsampled one) is returned instead of summing series whose parts overflow.
const HUGE_SIGMA: f64 = 1e100;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("the sampling rate must be in [0, 1], got {0}")]
    SamplingRate(f64),
    #[error("the noise multiplier must be finite and at least 0, got {0}")]
    NoiseMultiplier(f64),
    #[error("δ must be in (0, 1), got {0}")]
    Delta(f64),
    #[error("the target ε must be finite and above 0, got {0}")]
    TargetEpsilon(f64),
    #[error("RDP orders must be finite, above 1 and at most {MAX_ORDER}, got {0}")]
    Order(f64),
    #[error("no RDP orders given")]
    NoOrders,
    #[error("RDP values must be at least 0, got {0}")]
    Rdp(f64),
    #[error("{rdp} RDP values for {orders} orders")]
    LengthMismatch { orders: usize, rdp: usize },
    #[error(
        "ε = {target} at δ = {delta} is unattainable with these RDP orders: even unbounded noise only reaches ε = {floor}"
    )]
    Unattainable { target: f64, delta: f64, floor: f64 },
}

fn check_sampling_rate(q: f64) -> Result<(), PrivacyError> {
    if (0.0..=1.0).contains(&q) { Ok(()) } else { Err(PrivacyError::SamplingRate(q)) }
}

fn check_noise_multiplier(sigma: f64) -> Result<(), PrivacyError> {
    if sigma.is_finite() && sigma >= 0.0 { Ok(()) } else { Err(PrivacyError::NoiseMultiplier(sigma)) }
}

fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 { Ok(()) } else { Err(PrivacyError::Delta(delta)) }
}

fn check_order(alpha: f64) -> Result<(), PrivacyError> {
    if alpha > 1.0 && alpha <= MAX_ORDER { Ok(()) } else { Err(PrivacyError::Order(alpha)) }
}

fn check_orders(orders: &[f64]) -> Result<(), PrivacyError> {
    if orders.is_empty() {
        return Err(PrivacyError::NoOrders);
    }
    orders.iter().try_for_each(|&a| check_order(a))
}

/// RDP at `order` of one step of the sampled Gaussian mechanism with noise multiplier σ and
/// sampling rate q.
pub fn rdp_step(noise_multiplier: f64, sampling_rate: f64, order: f64) -> Result<f64, PrivacyError> {
    check_noise_multiplier(noise_multiplier)?;
    check_sampling_rate(sampling_rate)?;
    check_order(order)?;
    Ok(rdp_step_unchecked(noise_multiplier, sampling_rate, order))
}

/// RDP at each order of `steps` steps of the sampled Gaussian mechanism.
pub fn rdp(noise_multiplier: f64, sampling_rate: f64, steps: u64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    check_noise_multiplier(noise_multiplier)?;
    check_sampling_rate(sampling_rate)?;
    check_orders(orders)?;
    Ok(orders.iter().map(|&a| compose(steps, rdp_step_unchecked(noise_multiplier, sampling_rate, a))).collect())
}

/// The (ε, best order) of RDP values `rdp` at `orders` (Balle et al. 2020, Theorem 21), minimised
/// over the orders. NaN values are skipped; when every order gives NaN the answer is (∞, NaN).
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), PrivacyError> {
    check_orders(orders)?;
    check_delta(delta)?;
    if orders.len() != rdp.len() {
        return Err(PrivacyError::LengthMismatch { orders: orders.len(), rdp: rdp.len() });
    }
    if let Some(&bad) = rdp.iter().find(|r| **r < 0.0) {
        return Err(PrivacyError::Rdp(bad));
    }
    Ok(rdp_to_epsilon_unchecked(orders, rdp, delta))
}

fn rdp_to_epsilon_unchecked(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let log_delta = delta.ln();
    let mut best: Option<(f64, f64)> = None;
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let eps = r - (log_delta + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
        if !eps.is_nan() && best.is_none_or(|(e, _)| eps < e) {
            best = Some((eps, alpha));
        }
    }
    match best {
        Some((eps, alpha)) => (eps.max(0.0), alpha),
        None => (f64::INFINITY, f64::NAN),
    }
}

/// (ε, best order) at δ after `steps` steps of the sampled Gaussian mechanism with noise
/// multiplier σ and sampling rate q.
pub fn epsilon(
    noise_multiplier: f64,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    orders: &[f64],
) -> Result<(f64, f64), PrivacyError> {
    check_delta(delta)?;
    let rdp = rdp(noise_multiplier, sampling_rate, steps, orders)?;
    Ok(rdp_to_epsilon_unchecked(orders, &rdp, delta))
}

/// The smallest noise multiplier (to a relative precision of 1e−4 in ε, never above the target)
/// for which `steps` steps at sampling rate q stay within `target_epsilon` at δ.
///
/// Fails with [`PrivacyError::Unattainable`] when the target is at or below what unbounded noise
/// reaches with these orders. Without privacy loss to bound (q = 0 or no steps) the answer is 0.
pub fn noise_multiplier_for(
    target_epsilon: f64,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    orders: &[f64],
) -> Result<f64, PrivacyError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::TargetEpsilon(target_epsilon));
    }
    check_sampling_rate(sampling_rate)?;
    check_delta(delta)?;
    check_orders(orders)?;
    let zeros = vec![0.0; orders.len()];
    let (floor, _) = rdp_to_epsilon_unchecked(orders, &zeros, delta);
    let unattainable = PrivacyError::Unattainable { target: target_epsilon, delta, floor };
    if sampling_rate == 0.0 || steps == 0 {
        return if floor <= target_epsilon { Ok(0.0) } else { Err(unattainable) };
    }
    if floor >= target_epsilon {
        return Err(unattainable);
    }
    let eps_at = |sigma: f64| {
        let rdp: Vec<f64> =
            orders.iter().map(|&a| compose(steps, rdp_step_unchecked(sigma, sampling_rate, a))).collect();
        rdp_to_epsilon_unchecked(orders, &rdp, delta).0
    };

    // Bracket: ε(lo) > target ≥ ε(hi), with hi = 2·lo.
    let (mut lo, mut hi, mut eps_hi);
    let eps_one = eps_at(1.0);
    if eps_one > target_epsilon {
        lo = 1.0;
        loop {
            hi = lo * 2.0;
            eps_hi = eps_at(hi);
            if eps_hi <= target_epsilon {
                break;
            }
            if hi > HUGE_SIGMA {
                return Err(unattainable);
            }
            lo = hi;
        }
    } else {
        hi = 1.0;
        eps_hi = eps_one;
        loop {
            lo = hi / 2.0;
            // σ = 0 has ε = ∞, so this ends at the latest when lo underflows to 0.
            let eps_lo = eps_at(lo);
            if eps_lo > target_epsilon {
                break;
            }
            hi = lo;
            eps_hi = eps_lo;
        }
    }
    // ε is continuous and non-increasing in σ: bisect until ε(hi) is within 1e−4 of the target.
    let want = target_epsilon * (1.0 - 1e-4);
    for _ in 0..200 {
        if eps_hi >= want {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        let eps_mid = eps_at(mid);
        if eps_mid > target_epsilon {
            lo = mid;
        } else {
            hi = mid;
            eps_hi = eps_mid;
        }
    }
    Ok(hi)
}

/// T steps of one mechanism cost T times one step's RDP (0 steps cost nothing, even at σ = 0).
fn compose(steps: u64, rdp_step: f64) -> f64 {
    if steps == 0 { 0.0 } else { steps as f64 * rdp_step }
}

/// One step's RDP; the arguments are valid (σ ≥ 0 finite, q ∈ [0, 1], 1 < α ≤ [`MAX_ORDER`]).
fn rdp_step_unchecked(sigma: f64, q: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    // σ = 0, or so small that 1/σ² overflows: the RDP is beyond f64.
    if sigma == 0.0 || !(1.0 / (sigma * sigma)).is_finite() {
        return f64::INFINITY;
    }
    if q == 1.0 || sigma > HUGE_SIGMA {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 { log_a_integer(q, sigma, alpha) } else { log_a_fractional(q, sigma, alpha) };
    // A_α ≥ 1 (Jensen), so the RDP is ≥ 0; clamp the last bit of rounding.
    let rdp = log_a / (alpha - 1.0);
    if rdp.is_nan() { rdp } else { rdp.max(0.0) }
}

/// log A_α for integer α: the finite binomial expansion.
fn log_a_integer(q: f64, sigma: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let n = alpha as u64;
    let mut sum = LogSum::new();
    let mut log_binom = 0.0;
    for k in 0..=n {
        let fk = k as f64;
        if k > 0 {
            log_binom += (alpha - fk + 1.0).ln() - fk.ln();
        }
        sum.add(true, log_binom + fk * log_q + (alpha - fk) * log_1mq + (fk * fk - fk) / two_var);
    }
    sum.ln()
}

/// log A_α for fractional α: the two series of Mironov et al. Section 3.3.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let z0 = sigma * sigma * (log_1mq - log_q) + 0.5;
    let mut sum = LogSum::new();
    // log |C(α, i)| and its sign, updated by C(α, i) = C(α, i − 1)·(α − i + 1)/i.
    let mut log_binom = 0.0;
    let mut positive = true;
    let mut i = 0u64;
    loop {
        let fi = i as f64;
        if i > 0 {
            let factor = alpha - fi + 1.0;
            log_binom += factor.abs().ln() - fi.ln();
            if factor < 0.0 {
                positive = !positive;
            }
        }
        let j = alpha - fi;
        let below = log_binom + fi * log_q + j * log_1mq + log_weighted_half_erfc(fi, z0, sigma, 1.0);
        let above = log_binom + j * log_q + fi * log_1mq + log_weighted_half_erfc(j, z0, sigma, -1.0);
        sum.add(positive, below);
        sum.add(positive, above);
        let total = sum.ln();
        if !total.is_finite() || i >= MAX_TERMS || (fi > alpha + 1.0 && below.max(above) < total + LOG_REL_TOL) {
            return total;
        }
        i += 1;
    }
}

/// `log(exp((k² − k)/(2σ²)) · ½ erfc(s·(k − z₀)/(√2 σ)))` for s = ±1, without overflow: for large
/// erfc arguments x the exponent and −x² are combined first, `(k² − k) − (k − z₀)² =
/// k(2z₀ − 1) − z₀²`.
fn log_weighted_half_erfc(k: f64, z0: f64, sigma: f64, s: f64) -> f64 {
    let x = s * (k - z0) / (SQRT_2 * sigma);
    let two_var = 2.0 * sigma * sigma;
    if x > ASYMPTOTIC_FROM {
        (k * (2.0 * z0 - 1.0) - z0 * z0) / two_var + log_erfcx_asymptotic(x) - LN_2
    } else {
        (k * k - k) / two_var + libm::erfc(x).ln() - LN_2
    }
}

/// log erfc(x), also where erfc(x) underflows (x above about 27).
pub fn log_erfc(x: f64) -> f64 {
    if x > ASYMPTOTIC_FROM { -(x * x) + log_erfcx_asymptotic(x) } else { libm::erfc(x).ln() }
}

/// log(e^{x²} erfc x) for x ≥ [`ASYMPTOTIC_FROM`] from the asymptotic series
/// `erfc x = e^{−x²}/(x√π) · Σ_n (−1)ⁿ (2n − 1)!!/(2x²)ⁿ`. Its terms shrink while n < x², so at
/// x ≥ 10 they fall below 1e−17 within about 15 terms.
fn log_erfcx_asymptotic(x: f64) -> f64 {
    let inv = 1.0 / (2.0 * x * x);
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..=40u32 {
        term *= -f64::from(2 * n - 1) * inv;
        sum += term;
        if term.abs() < 1e-17 {
            break;
        }
    }
    sum.ln() - x.ln() - 0.5 * PI.ln()
}

/// A streaming sum of signed terms given by their logarithms: the value is `scaled · e^max`.
struct LogSum {
    max: f64,
    scaled: f64,
}

impl LogSum {
    fn new() -> Self {
        Self { max: f64::NEG_INFINITY, scaled: 0.0 }
    }

    fn add(&mut self, positive: bool, log_abs: f64) {
        let sign = if positive { 1.0 } else { -1.0 };
        if self.max == f64::INFINITY || log_abs == f64::NEG_INFINITY {
            return;
        }
        if log_abs == f64::INFINITY {
            self.max = f64::INFINITY;
            self.scaled = sign;
        } else if log_abs > self.max {
            self.scaled = self.scaled * (self.max - log_abs).exp() + sign;
            self.max = log_abs;
        } else {
            // A NaN term lands here and makes the sum NaN.
            self.scaled += sign * (log_abs - self.max).exp();
        }
    }

    /// The log of the sum (NaN if it is not positive).
    fn ln(&self) -> f64 {
        if self.max == f64::INFINITY { self.max * self.scaled.signum() } else { self.max + self.scaled.ln() }
    }
}

/// `steps` steps of the sampled Gaussian mechanism with one noise multiplier and sampling rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianSteps {
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub steps: u64,
}

/// Accumulates the privacy cost of sampled-Gaussian steps that may differ in noise and sampling
/// rate, and reports the (ε, δ) of their composition. Serialisable, so a server can persist it
/// with its task and resume counting after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    history: Vec<GaussianSteps>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self { orders: DEFAULT_ORDERS.to_vec(), history: Vec::new() }
    }
}

impl RdpAccountant {
    /// An accountant over [`DEFAULT_ORDERS`] with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// An accountant over the given orders.
    pub fn with_orders(orders: &[f64]) -> Result<Self, PrivacyError> {
        check_orders(orders)?;
        Ok(Self { orders: orders.to_vec(), history: Vec::new() })
    }

    /// Records `steps` steps with noise multiplier σ and sampling rate q. Consecutive records with
    /// the same σ and q are merged.
    pub fn record(&mut self, noise_multiplier: f64, sampling_rate: f64, steps: u64) -> Result<(), PrivacyError> {
        check_noise_multiplier(noise_multiplier)?;
        check_sampling_rate(sampling_rate)?;
        match self.history.last_mut() {
            Some(last) if last.noise_multiplier == noise_multiplier && last.sampling_rate == sampling_rate => {
                last.steps = last.steps.saturating_add(steps);
            }
            _ => self.history.push(GaussianSteps { noise_multiplier, sampling_rate, steps }),
        }
        Ok(())
    }

    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// What has been recorded, in order.
    pub fn history(&self) -> &[GaussianSteps] {
        &self.history
    }

    /// Total number of steps recorded.
    pub fn steps(&self) -> u64 {
        self.history.iter().fold(0u64, |n, h| n.saturating_add(h.steps))
    }

    /// The composed RDP at each order (the state is re-validated, as it may have been
    /// deserialised).
    pub fn rdp(&self) -> Result<Vec<f64>, PrivacyError> {
        check_orders(&self.orders)?;
        let mut total = vec![0.0; self.orders.len()];
        for h in &self.history {
            for (t, r) in total.iter_mut().zip(rdp(h.noise_multiplier, h.sampling_rate, h.steps, &self.orders)?) {
                *t += r;
            }
        }
        Ok(total)
    }

    /// (ε, best order) of everything recorded so far, at δ.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        check_delta(delta)?;
        let rdp = self.rdp()?;
        Ok(rdp_to_epsilon_unchecked(&self.orders, &rdp, delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELTA: f64 = 1e-5;

    fn eps(sigma: f64, q: f64, steps: u64) -> f64 {
        epsilon(sigma, q, steps, DELTA, &DEFAULT_ORDERS).unwrap().0
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    #[test]
    fn default_orders_are_opacus_list() {
        assert_eq!(DEFAULT_ORDERS.len(), 151);
        assert_eq!(DEFAULT_ORDERS[0], 1.1);
        assert_eq!(DEFAULT_ORDERS[8], 1.9);
        assert_eq!(DEFAULT_ORDERS[98], 1.0 + 99.0 / 10.0);
        assert_eq!(DEFAULT_ORDERS[99], 12.0);
        assert_eq!(DEFAULT_ORDERS[150], 63.0);
        assert!(DEFAULT_ORDERS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn published_reference_values() {
        for (sigma, q, steps, want) in [(1.1, 0.01, 1000, 1.712), (1.0, 0.1, 100, 7.899), (2.0, 1.0, 1, 2.166)] {
            let got = eps(sigma, q, steps);
            assert!((got - want).abs() < 5e-4, "σ={sigma} q={q} T={steps}: ε = {got}, published {want}");
        }
    }

    #[test]
    fn full_batch_is_the_plain_gaussian() {
        for &alpha in &DEFAULT_ORDERS {
            let r = rdp(2.0, 1.0, 7, &[alpha]).unwrap()[0];
            assert_eq!(r, 7.0 * alpha / 8.0);
        }
        // The q = 1 shortcut agrees with the series for q just below 1.
        for alpha in [2.0, 3.0, 2.5, 7.3] {
            let near = rdp_step(1.5, 1.0 - 1e-12, alpha).unwrap();
            assert!(close(near, alpha / 4.5, 1e-9), "α={alpha}: {near}");
        }
    }

    #[test]
    fn special_cases() {
        assert_eq!(rdp_step(1.0, 0.0, 2.5).unwrap(), 0.0);
        assert_eq!(rdp_step(0.0, 0.1, 2.5).unwrap(), f64::INFINITY);
        assert_eq!(rdp_step(0.0, 0.1, 3.0).unwrap(), f64::INFINITY);
        assert_eq!(rdp(0.0, 0.1, 0, &[2.0]).unwrap(), vec![0.0]);
        let (e, order) = epsilon(0.0, 0.1, 10, DELTA, &DEFAULT_ORDERS).unwrap();
        assert_eq!(e, f64::INFINITY);
        assert_eq!(order, 1.1);
        // Tiny and enormous σ stay finite / well defined.
        assert_eq!(rdp_step(1e-200, 0.01, 2.5).unwrap(), f64::INFINITY);
        let huge = rdp_step(1e120, 0.01, 2.5).unwrap();
        assert!((0.0..1e-200).contains(&huge));
        assert!(rdp_step(1e6, 0.01, 2.5).unwrap() < 1e-14);
    }

    #[test]
    fn integer_orders_match_closed_forms() {
        // α = 2: A = (1−q)² + 2q(1−q) + q² e^{1/σ²} = 1 + q²(e^{1/σ²} − 1).
        for (q, sigma) in [(0.01f64, 1.1f64), (0.3, 0.7), (0.9, 4.0)] {
            let want = (q * q * ((1.0 / (sigma * sigma)).exp_m1())).ln_1p();
            assert!(close(rdp_step(sigma, q, 2.0).unwrap(), want, 1e-9));
        }
    }

    #[test]
    fn fractional_series_agrees_with_integer_expansion() {
        for (q, sigma) in [(0.01, 1.1), (0.1, 1.0), (0.5, 0.8), (0.9, 2.0), (0.001, 5.0), (0.2, 0.3)] {
            for alpha in [2.0, 3.0, 5.0, 12.0, 40.0] {
                let exact = log_a_integer(q, sigma, alpha);
                // The two-series expansion is exact for integer α too (both series terminate).
                let series = log_a_fractional(q, sigma, alpha);
                assert!(close(exact, series, 1e-9), "q={q} σ={sigma} α={alpha}: {exact} vs {series}");
                // And it is continuous: just off the integer it is just off the exact value.
                let below = rdp_step(sigma, q, alpha - 1e-7).unwrap();
                let above = rdp_step(sigma, q, alpha + 1e-7).unwrap();
                let at = rdp_step(sigma, q, alpha).unwrap();
                assert!(below <= at * (1.0 + 1e-9) && at <= above * (1.0 + 1e-9), "q={q} σ={sigma} α={alpha}");
                assert!(close(below, at, 1e-5) && close(above, at, 1e-5), "{below} {at} {above}");
            }
        }
    }

    #[test]
    fn rdp_is_monotone_in_order() {
        for (q, sigma) in [(0.01, 1.1), (0.1, 1.0), (0.5, 0.8), (0.9, 2.0), (1e-4, 0.6), (0.05, 4.0)] {
            let r = rdp(sigma, q, 1, &DEFAULT_ORDERS).unwrap();
            for (w, a) in r.windows(2).zip(DEFAULT_ORDERS.windows(2)) {
                assert!(
                    w[0] <= w[1] * (1.0 + 1e-12),
                    "q={q} σ={sigma}: rdp({}) = {} > rdp({}) = {}",
                    a[0],
                    w[0],
                    a[1],
                    w[1]
                );
            }
            assert!(r.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
    }

    #[test]
    fn rdp_grows_with_q_and_steps_and_shrinks_with_sigma() {
        for &alpha in &[1.5, 2.0, 4.7, 20.0] {
            let by_q: Vec<f64> =
                [0.001, 0.01, 0.1, 0.5, 1.0].iter().map(|&q| rdp_step(1.0, q, alpha).unwrap()).collect();
            assert!(by_q.windows(2).all(|w| w[0] < w[1]), "α={alpha}: {by_q:?}");
            let by_sigma: Vec<f64> =
                [0.5, 0.8, 1.0, 2.0, 10.0].iter().map(|&s| rdp_step(s, 0.05, alpha).unwrap()).collect();
            assert!(by_sigma.windows(2).all(|w| w[0] > w[1]), "α={alpha}: {by_sigma:?}");
        }
        assert!(eps(1.0, 0.01, 100) < eps(1.0, 0.01, 1000));
        assert!(eps(1.0, 0.01, 100) < eps(1.0, 0.02, 100));
        assert!(eps(1.2, 0.01, 100) < eps(1.0, 0.01, 100));
    }

    #[test]
    fn small_q_matches_the_leading_order_approximation() {
        // For small q and moderate α, ε(α) ≈ q²·α/σ²·(e^{1/σ²}−1)·σ²/2 ≈ α q² (e^{1/σ²}−1)/2.
        let (q, sigma, alpha) = (1e-4f64, 2.0f64, 3.5f64);
        let want = alpha * q * q * (1.0 / (sigma * sigma)).exp_m1() / 2.0;
        assert!(close(rdp_step(sigma, q, alpha).unwrap(), want, 1e-3));
    }

    #[test]
    fn log_erfc_is_accurate_past_underflow() {
        for x in [-3.0, -0.5, 0.0, 0.7, 3.0, 9.9] {
            assert!(close(log_erfc(x), libm::erfc(x).ln(), 1e-15));
        }
        // Where both exist, the asymptotic series matches erfc.
        for x in [10.5, 12.0, 15.0, 20.0, 25.0] {
            let direct = libm::erfc(x).ln();
            let asym = -(x * x) + log_erfcx_asymptotic(x);
            assert!(close(direct, asym, 1e-14), "x={x}: {direct} vs {asym}");
        }
        assert_eq!(libm::erfc(40.0), 0.0);
        // erfc(40) = 1.8969610599662765e−697 (mpmath, 40 digits).
        let l = log_erfc(40.0);
        assert!(close(l, 1.8969610599662765f64.ln() - 697.0 * 10f64.ln(), 1e-15), "{l}");
        assert!(close(log_erfc(100.0), -10005.177585122664, 1e-15));
        assert_eq!(log_erfc(f64::INFINITY), f64::NEG_INFINITY);
    }

    #[test]
    fn noise_multiplier_round_trips() {
        for (sigma, q, steps) in
            [(1.1, 0.01, 1000), (1.0, 0.1, 100), (2.0, 1.0, 1), (0.7, 0.003, 20000), (5.0, 0.5, 50)]
        {
            let target = eps(sigma, q, steps);
            let found = noise_multiplier_for(target, q, steps, DELTA, &DEFAULT_ORDERS).unwrap();
            assert!(close(found, sigma, 1e-3), "σ={sigma} q={q} T={steps}: ε={target} → σ={found}");
            let achieved = eps(found, q, steps);
            assert!(achieved <= target && achieved >= target * (1.0 - 1e-4), "{achieved} vs {target}");
        }
    }

    #[test]
    fn noise_multiplier_for_edge_cases() {
        // The floor with the default orders at δ = 1e−5 is about 0.103 (order 63).
        let err = noise_multiplier_for(0.05, 0.01, 100, DELTA, &DEFAULT_ORDERS).unwrap_err();
        assert!(matches!(err, PrivacyError::Unattainable { .. }), "{err}");
        assert_eq!(noise_multiplier_for(1.0, 0.0, 100, DELTA, &DEFAULT_ORDERS).unwrap(), 0.0);
        assert_eq!(noise_multiplier_for(1.0, 0.3, 0, DELTA, &DEFAULT_ORDERS).unwrap(), 0.0);
        // A large budget needs little noise; a small one a lot.
        let small = noise_multiplier_for(50.0, 0.01, 10, DELTA, &DEFAULT_ORDERS).unwrap();
        let large = noise_multiplier_for(0.5, 0.01, 10_000, DELTA, &DEFAULT_ORDERS).unwrap();
        assert!(small < 0.5 && large > 2.0, "{small} {large}");
        assert!(eps(small, 0.01, 10) <= 50.0 && eps(large, 0.01, 10_000) <= 0.5);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let got = noise_multiplier_for(bad, 0.01, 10, DELTA, &DEFAULT_ORDERS);
            assert!(matches!(got, Err(PrivacyError::TargetEpsilon(_))), "{bad}: {got:?}");
        }
    }

    #[test]
    fn inputs_are_validated() {
        use PrivacyError::*;
        assert_eq!(rdp_step(1.0, 1.5, 2.0), Err(SamplingRate(1.5)));
        assert_eq!(rdp_step(1.0, -0.1, 2.0), Err(SamplingRate(-0.1)));
        assert!(matches!(rdp_step(1.0, f64::NAN, 2.0), Err(SamplingRate(_))));
        assert_eq!(rdp_step(-1.0, 0.1, 2.0), Err(NoiseMultiplier(-1.0)));
        assert_eq!(rdp_step(f64::INFINITY, 0.1, 2.0), Err(NoiseMultiplier(f64::INFINITY)));
        assert_eq!(rdp_step(1.0, 0.1, 1.0), Err(Order(1.0)));
        assert_eq!(rdp_step(1.0, 0.1, 0.5), Err(Order(0.5)));
        assert!(matches!(rdp_step(1.0, 0.1, f64::NAN), Err(Order(_))));
        assert_eq!(epsilon(1.0, 0.1, 10, 0.0, &DEFAULT_ORDERS), Err(Delta(0.0)));
        assert_eq!(epsilon(1.0, 0.1, 10, 1.0, &DEFAULT_ORDERS), Err(Delta(1.0)));
        assert_eq!(epsilon(1.0, 0.1, 10, 1e-5, &[]), Err(NoOrders));
        assert_eq!(rdp_to_epsilon(&[2.0], &[1.0, 2.0], 1e-5), Err(LengthMismatch { orders: 1, rdp: 2 }));
        assert_eq!(rdp_to_epsilon(&[2.0], &[-1.0], 1e-5), Err(Rdp(-1.0)));
        let mut acc = RdpAccountant::new();
        assert_eq!(acc.record(1.0, 2.0, 1), Err(SamplingRate(2.0)));
        assert!(acc.history().is_empty());
    }

    #[test]
    fn conversion_skips_nan_orders() {
        let (e, order) = rdp_to_epsilon(&[2.0, 3.0], &[f64::NAN, 0.5], 1e-5).unwrap();
        assert_eq!(order, 3.0);
        assert!(close(e, 0.5 + (1e5f64.ln() - 3f64.ln()) / 2.0 + (2.0f64 / 3.0).ln(), 1e-12));
        let (e, order) = rdp_to_epsilon(&[2.0], &[f64::NAN], 1e-5).unwrap();
        assert!(e == f64::INFINITY && order.is_nan());
    }

    #[test]
    fn accountant_composes_heterogeneous_steps() {
        let mut acc = RdpAccountant::new();
        acc.record(1.1, 0.01, 400).unwrap();
        acc.record(1.1, 0.01, 600).unwrap();
        assert_eq!(acc.history().len(), 1);
        let (e, order) = acc.epsilon(DELTA).unwrap();
        assert_eq!((e, order), epsilon(1.1, 0.01, 1000, DELTA, &DEFAULT_ORDERS).unwrap());

        acc.record(2.0, 0.05, 30).unwrap();
        assert_eq!(acc.steps(), 1030);
        let a = rdp(1.1, 0.01, 1000, &DEFAULT_ORDERS).unwrap();
        let b = rdp(2.0, 0.05, 30, &DEFAULT_ORDERS).unwrap();
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(acc.rdp().unwrap(), sum);
        assert_eq!(acc.epsilon(DELTA).unwrap(), rdp_to_epsilon(&DEFAULT_ORDERS, &sum, DELTA).unwrap());
        assert!(acc.epsilon(DELTA).unwrap().0 > e);

        let json = serde_json::to_string(&acc).unwrap();
        let back: RdpAccountant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, acc);
        assert_eq!(back.epsilon(DELTA).unwrap(), acc.epsilon(DELTA).unwrap());

        // A tampered state is rejected, not computed on.
        let bad: RdpAccountant = serde_json::from_str(
            r#"{"orders":[2.0],"history":[{"noise_multiplier":1.0,"sampling_rate":3.0,"steps":1}]}"#,
        )
        .unwrap();
        assert_eq!(bad.epsilon(DELTA), Err(PrivacyError::SamplingRate(3.0)));
        assert_eq!(RdpAccountant::with_orders(&[1.0]), Err(PrivacyError::Order(1.0)));
    }
}
