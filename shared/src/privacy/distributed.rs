//! Distributed differential privacy for secure aggregation: the Skellam mechanism (Agarwal,
//! Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
//! NeurIPS 2021, arXiv:2110.04995). Each client adds a share of integer noise to its own update
//! before masking it, so the sum the server unmasks is already private: the server never sees
//! an update without noise, not even the sum.
//!
//! # A round
//! Client ([`SkellamConfig::encode`]), on an update x with ‖x‖₂ ≤ c:
//! 1. optionally rotates it, x ↦ H·D·x/√D', where D' is d rounded up to a power of two (the vector
//!    is padded with zeros), D a diagonal of random signs from a seed the whole cohort shares and
//!    H the Walsh–Hadamard matrix. The rotation is orthonormal, so the norm stays c, and it
//!    spreads the norm evenly over the coordinates, so that no coordinate of the sum is likely
//!    to reach the edge of the ring;
//! 2. scales by γ and rounds each coordinate to floor or ceiling at random, up with probability
//!    equal to the fraction, and rounds again while the rounded vector's norm is above the bound
//!    Δ₂ of [`Sensitivity::of_rounded`] (conditional randomized rounding, from Kairouz, Liu &
//!    Steinke, "The Distributed Discrete Gaussian Mechanism", ICML 2021, Theorem 1), at most
//!    `max_rounding_tries` times. One rounding is unbiased; the retries bias it slightly towards
//!    smaller norms, the price of a sensitivity that holds always, not just usually;
//! 3. adds Skellam noise Sk(μ) = Poisson(μ/2) − Poisson(μ/2) to each coordinate (variance μ);
//! 4. reduces mod 2^m into u32 words — SecAgg+'s ring: masks are added to the words wrapping
//!    mod 2^32 and reduced to 2^m at the end, exactly as [`crate::secagg`] does.
//!
//! Server ([`SkellamConfig::decode_sum`]), on the unmasked sum mod 2^m of n clients' words: reads
//! each word as a centred integer in [−2^(m−1), 2^(m−1)), divides by γ and undoes the rotation.
//! What comes out is Σ xᵢ + the rounding error + noise of variance n·μ/γ² per coordinate (before
//! the inverse rotation, which keeps the noise's covariance). A coordinate whose true sum lies
//! outside the ring's range comes back shifted by a multiple of 2^m/γ; nothing can detect this
//! from the sum alone, which is why the scale leaves headroom ([`SkellamConfig::with_scale_for`]).
//!
//! # What the accountant assumes
//! - **Neighbouring rounds differ in one client's data, zeroed out**: the client still takes
//!   part and adds its noise, but its update is 0 instead of x̃. The sensitivity of the sum is
//!   then the bound on one client's rounded vector: Δ₂ from conditional rounding and
//!   Δ₁ = min(Δ₂², √D'·Δ₂) (an integer vector's coordinates are each at most their square).
//!   Under replace-one neighbours both bounds double.
//! - **n is the fewest honest clients whose noise is in any released sum**: a client that drops
//!   after masking takes its noise with it, and a client colluding with the server can subtract
//!   its own. Pass the smallest number of survivors the server will unmask with.
//! - **RDP of one round** is the paper's bound for the multi-dimensional Skellam mechanism with
//!   aggregate variance V = n·μ, for integer orders α > 1:
//!   `ε(α) = α·Δ₂²/(2V) + min(((2α − 1)·Δ₂² + 6·Δ₁)/(4V²), 3·Δ₁/(2V))`.
//!   As V grows with Δ₂²/V fixed the second term vanishes and ε(α) tends to the Gaussian's
//!   α·Δ₂²/(2V).
//! - **No amplification by subsampling.** Rounds compose as R·ε(α): the bound is against the
//!   server, which sees every round's sum and knows which clients took part, so a secret sample
//!   does not exist for it to be amplified by. A client sampled in fewer than R rounds is
//!   over-charged, never under-charged.
//! - **(ε, δ)** comes from [`accountant::rdp_to_epsilon`] over [`SKELLAM_ORDERS`] (integers only,
//!   as the bound is stated for integer orders).
//!
//! # Units
//! μ is the per-client variance **in the integer domain**, after scaling by γ. The decoded sum's
//! noise has standard deviation √(n·μ)/γ; divided by c this is the noise multiplier z that the
//! Gaussian accountant would use with q = 1 ([`SkellamConfig::noise_multiplier`]).
//!
//! # Choosing γ and μ
//! The sum fits in the ring when k standard deviations of one coordinate of the aggregate stay
//! below 2^(m−1). That standard deviation is modelled as in the paper's experiments:
//! √(n²·c²γ²/D' + n/4 + n·μ) — the rotated signal of the sum (whose norm is at most n·c: the
//! updates of one round are often aligned, so their norms are added, not their squares), the
//! rounding error (variance at most ¼ per client) and the noise. [`SkellamConfig::with_scale_for`]
//! picks γ for a given μ, [`SkellamConfig::with_noise_for`] μ for a given γ and target ε, and
//! [`SkellamConfig::plan`] both at once: the largest γ whose μ for the target still fits, and
//! stays within [`MAX_NOISE_VARIANCE`] (at 32 bits and 100 clients that cap, not the ring, is
//! what binds; the grid is then so fine that ε is the Gaussian's at the same z to 1e−6).

use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use super::accountant::{self, PrivacyError};

/// The RDP orders the Skellam bound is evaluated at: the integers 2..=256.
pub const SKELLAM_ORDERS: [f64; 255] = skellam_orders();

const fn skellam_orders() -> [f64; 255] {
    let mut out = [0.0; 255];
    let mut i = 0;
    while i < 255 {
        out[i] = (i + 2) as f64;
        i += 1;
    }
    out
}

/// The paper's β for conditional rounding, e^(−1/2): a try is rejected with probability at most
/// β, so the bound is tight without many retries.
pub const DEFAULT_BETA: f64 = 0.606_530_659_712_633_4;

/// Conditional rounding retries before giving up: with β = e^(−1/2) the chance that all of them
/// fail is below 10^(−21).
pub const DEFAULT_ROUNDING_TRIES: u32 = 100;

/// k in "k standard deviations of the aggregate fit in the ring" (the paper uses 3 or 4).
pub const DEFAULT_HEADROOM: f64 = 3.0;

/// The largest per-client noise variance μ. Poisson(μ/2) is sampled in f64, where past 2^53 not
/// every integer exists: the noise would live on even integers only and leak every coordinate's
/// parity. At μ/2 ≤ 2^50 the sampler keeps two bits below the integers.
pub const MAX_NOISE_VARIANCE: f64 = (1u64 << 51) as f64;

/// The largest scaled clip norm γ·c: rounded values and their sums stay exact in f64 and i64.
pub const MAX_SCALED_NORM: f64 = (1u64 << 50) as f64;

/// An update's norm may exceed the clip norm by this relative amount (f32 rounding of the
/// caller's clipping); conditional rounding still enforces the exact sensitivity bound.
const NORM_SLACK: f64 = 1e-5;

/// Stop a search once the ε reached is within this relative distance below the target.
const EPSILON_TOLERANCE: f64 = 1e-4;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DistributedError {
    #[error("invalid Skellam configuration: {0}")]
    Invalid(&'static str),
    #[error("the update has {got} values, the configuration {want}")]
    UpdateLength { got: usize, want: usize },
    #[error("the sum has {got} words, the ring vector {want}")]
    SumLength { got: usize, want: usize },
    #[error("value {index} of the update is not finite")]
    NotFinite { index: usize },
    #[error("the update's L2 norm {norm} exceeds the clip norm {clip}")]
    NotClipped { norm: f64, clip: f64 },
    #[error("conditional rounding stayed above the norm bound in all {tries} tries")]
    RoundingRejected { tries: u32 },
    #[error("the per-client noise variance must be finite and in [0, {MAX_NOISE_VARIANCE}], got {0}")]
    NoiseVariance(f64),
    #[error("the Skellam bound holds for integer orders above 1 (at most {max}), got {order}", max = accountant::MAX_ORDER)]
    Order { order: f64 },
    #[error("sensitivities must be finite and at least 0, got L1 {l1} and L2 {l2}")]
    InvalidSensitivity { l1: f64, l2: f64 },
    #[error("the noise variance must be finite and at least 0, got {0}")]
    Variance(f64),
    #[error("at least one client's noise must be in the sum")]
    NoClients,
    #[error("the headroom must be finite and above 0 standard deviations, got {0}")]
    Headroom(f64),
    #[error("the ring 2^{modulus_bits} cannot hold {clients} clients' sum at {headroom} standard deviations")]
    NoRoom { modulus_bits: u32, clients: u32, headroom: f64 },
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

/// The L1 and L2 sensitivity of one client's contribution to the sum, in the integer domain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sensitivity {
    pub l1: f64,
    pub l2: f64,
}

impl Sensitivity {
    /// The bounds on a vector of dimension `dim` and L2 norm at most `norm` after conditional
    /// randomized rounding with parameter β (Kairouz, Liu & Steinke 2021, Theorem 1):
    /// Δ₂ = min(norm + √dim, √(norm² + dim/4 + √(2·ln(1/β))·(norm + √dim/2))), where β = 0 means
    /// unconditional rounding (only the first bound), and Δ₁ = min(Δ₂², √dim·Δ₂).
    pub fn of_rounded(norm: f64, dim: usize, beta: f64) -> Sensitivity {
        let l2 = rounded_norm_bound_squared(norm, dim, beta).sqrt();
        Sensitivity { l1: (l2 * l2).min((dim as f64).sqrt() * l2), l2 }
    }

    fn check(self) -> Result<(), DistributedError> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if ok(self.l1) && ok(self.l2) {
            Ok(())
        } else {
            Err(DistributedError::InvalidSensitivity { l1: self.l1, l2: self.l2 })
        }
    }
}

/// Δ₂² of [`Sensitivity::of_rounded`].
fn rounded_norm_bound_squared(norm: f64, dim: usize, beta: f64) -> f64 {
    let root_d = (dim as f64).sqrt();
    let always = (norm + root_d) * (norm + root_d);
    if beta <= 0.0 {
        return always;
    }
    let conditional = norm * norm + dim as f64 / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (norm + root_d / 2.0);
    always.min(conditional)
}

fn check_variance(variance: f64) -> Result<(), DistributedError> {
    if variance.is_finite() && variance >= 0.0 { Ok(()) } else { Err(DistributedError::Variance(variance)) }
}

fn check_order(order: f64) -> Result<(), DistributedError> {
    if order > 1.0 && order <= accountant::MAX_ORDER && order.fract() == 0.0 {
        Ok(())
    } else {
        Err(DistributedError::Order { order })
    }
}

fn check_orders(orders: &[f64]) -> Result<(), DistributedError> {
    if orders.is_empty() {
        return Err(PrivacyError::NoOrders.into());
    }
    orders.iter().try_for_each(|&a| check_order(a))
}

/// RDP at integer `order` of one release of a sum with sensitivity `sensitivity` and Skellam
/// noise of total variance `variance` (n·μ for n clients' shares).
pub fn rdp_release(sensitivity: Sensitivity, variance: f64, order: f64) -> Result<f64, DistributedError> {
    sensitivity.check()?;
    check_variance(variance)?;
    check_order(order)?;
    Ok(rdp_release_unchecked(sensitivity, variance, order))
}

fn rdp_release_unchecked(s: Sensitivity, variance: f64, alpha: f64) -> f64 {
    if s.l2 == 0.0 && s.l1 == 0.0 {
        return 0.0;
    }
    if variance == 0.0 {
        return f64::INFINITY;
    }
    let l2_sq = s.l2 * s.l2;
    let gaussian = alpha * l2_sq / (2.0 * variance);
    let discrete =
        (((2.0 * alpha - 1.0) * l2_sq + 6.0 * s.l1) / (4.0 * variance * variance)).min(3.0 * s.l1 / (2.0 * variance));
    gaussian + discrete
}

/// RDP at each order of `releases` releases, composed without amplification.
pub fn rdp(
    sensitivity: Sensitivity,
    variance: f64,
    releases: u64,
    orders: &[f64],
) -> Result<Vec<f64>, DistributedError> {
    sensitivity.check()?;
    check_variance(variance)?;
    check_orders(orders)?;
    Ok(rdp_unchecked(sensitivity, variance, releases, orders))
}

fn rdp_unchecked(s: Sensitivity, variance: f64, releases: u64, orders: &[f64]) -> Vec<f64> {
    // 0 releases cost nothing, even without noise (0 · ∞ would be NaN).
    let compose = |r: f64| if releases == 0 { 0.0 } else { releases as f64 * r };
    orders.iter().map(|&a| compose(rdp_release_unchecked(s, variance, a))).collect()
}

/// (ε, best order) at δ after `releases` releases.
pub fn epsilon(
    sensitivity: Sensitivity,
    variance: f64,
    releases: u64,
    delta: f64,
    orders: &[f64],
) -> Result<(f64, f64), DistributedError> {
    let rdp = rdp(sensitivity, variance, releases, orders)?;
    Ok(accountant::rdp_to_epsilon(orders, &rdp, delta)?)
}

/// The smallest total noise variance (to a relative precision of 1e−4 in ε, never above the
/// target) for which `releases` releases stay within `target_epsilon` at δ. Fails with
/// [`PrivacyError::Unattainable`] when even unbounded noise does not reach the target with these
/// orders. Nothing to protect (no releases, or zero sensitivity) needs no noise.
pub fn variance_for(
    target_epsilon: f64,
    sensitivity: Sensitivity,
    releases: u64,
    delta: f64,
    orders: &[f64],
) -> Result<f64, DistributedError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::TargetEpsilon(target_epsilon).into());
    }
    sensitivity.check()?;
    check_orders(orders)?;
    let eps_at = |variance: f64| -> Result<f64, DistributedError> {
        Ok(accountant::rdp_to_epsilon(orders, &rdp_unchecked(sensitivity, variance, releases, orders), delta)?.0)
    };
    let floor = accountant::rdp_to_epsilon(orders, &vec![0.0; orders.len()], delta)?.0;
    if floor >= target_epsilon {
        return Err(PrivacyError::Unattainable { target: target_epsilon, delta, floor }.into());
    }
    if releases == 0 || (sensitivity.l1 == 0.0 && sensitivity.l2 == 0.0) {
        return Ok(0.0);
    }

    // Bracket ε(lo) > target ≥ ε(hi) with hi = 2·lo, starting where the Gaussian term alone is ½.
    let start = (sensitivity.l2 * sensitivity.l2).max(f64::MIN_POSITIVE);
    let (mut lo, mut hi);
    let mut eps_hi = eps_at(start)?;
    if eps_hi > target_epsilon {
        lo = start;
        loop {
            hi = lo * 2.0;
            eps_hi = eps_at(hi)?;
            if eps_hi <= target_epsilon {
                break;
            }
            // ε → floor < target as the variance grows, so this ends; the guard is for overflow.
            if !hi.is_finite() {
                return Err(PrivacyError::Unattainable { target: target_epsilon, delta, floor }.into());
            }
            lo = hi;
        }
    } else {
        hi = start;
        loop {
            lo = hi / 2.0;
            // Zero variance has ε = ∞, so this ends at the latest when lo underflows.
            let eps_lo = eps_at(lo)?;
            if eps_lo > target_epsilon {
                break;
            }
            hi = lo;
            eps_hi = eps_lo;
        }
    }
    // ε is continuous and non-increasing in the variance.
    let want = target_epsilon * (1.0 - EPSILON_TOLERANCE);
    for _ in 0..200 {
        if eps_hi >= want {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        let eps_mid = eps_at(mid)?;
        if eps_mid > target_epsilon {
            lo = mid;
        } else {
            hi = mid;
            eps_hi = eps_mid;
        }
    }
    Ok(hi)
}

/// What a task asks of its noise: at most ε at δ after `rounds` rounds, each sum holding the
/// noise of at least `clients` honest clients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub epsilon: f64,
    pub delta: f64,
    pub rounds: u64,
    pub clients: u32,
}

/// Everything a cohort agrees on for the Skellam mechanism; the server hands it to every client
/// with the round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkellamConfig {
    /// m: the ring is the integers mod 2^m (SecAgg+'s `modulus_bits`).
    pub modulus_bits: u32,
    /// d: the length of an update.
    pub dim: usize,
    /// c: the L2 norm every update is clipped to.
    pub clip: f64,
    /// γ: updates are scaled by this before rounding to integers.
    pub scale: f64,
    /// μ: each client's Skellam noise variance per coordinate, in the integer domain.
    pub noise_variance: f64,
    /// β in [0, 1) of conditional rounding; 0 rounds once, unconditionally.
    pub beta: f64,
    pub max_rounding_tries: u32,
    /// The cohort's seed for the random signs of the Hadamard rotation; `None` for no rotation.
    pub rotation_seed: Option<u64>,
}

impl SkellamConfig {
    /// A configuration with the paper's β, a scale of 1 and no noise: set the scale and noise
    /// with [`Self::plan`] (or [`Self::with_scale_for`] and [`Self::with_noise_for`]).
    pub fn new(modulus_bits: u32, dim: usize, clip: f64, rotation_seed: Option<u64>) -> SkellamConfig {
        SkellamConfig {
            modulus_bits,
            dim,
            clip,
            scale: 1.0,
            noise_variance: 0.0,
            beta: DEFAULT_BETA,
            max_rounding_tries: DEFAULT_ROUNDING_TRIES,
            rotation_seed,
        }
    }

    pub fn validate(&self) -> Result<(), DistributedError> {
        let bad = |why| Err(DistributedError::Invalid(why));
        if !(2..=32).contains(&self.modulus_bits) {
            return bad("modulus bits must be within 2..=32");
        }
        if self.dim == 0 {
            return bad("the dimension must be positive");
        }
        if self.rotation_seed.is_some() && self.dim.checked_next_power_of_two().is_none() {
            return bad("the dimension is too large to pad to a power of two");
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad("the clip norm must be positive and finite");
        }
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale * self.clip <= MAX_SCALED_NORM) {
            return bad("the scale must be positive and keep scale · clip within 2^50");
        }
        if !(0.0..1.0).contains(&self.beta) {
            return bad("β must be in [0, 1)");
        }
        if self.max_rounding_tries == 0 {
            return bad("conditional rounding needs at least one try");
        }
        if !(self.noise_variance.is_finite() && (0.0..=MAX_NOISE_VARIANCE).contains(&self.noise_variance)) {
            return Err(DistributedError::NoiseVariance(self.noise_variance));
        }
        Ok(())
    }

    /// The length of the ring vector: d, or d padded to a power of two when rotating.
    pub fn ring_dim(&self) -> usize {
        match self.rotation_seed {
            Some(_) => self.dim.checked_next_power_of_two().unwrap_or(self.dim),
            None => self.dim,
        }
    }

    /// One client's sensitivity after scaling and conditional rounding.
    pub fn sensitivity(&self) -> Sensitivity {
        Sensitivity::of_rounded(self.scale * self.clip, self.ring_dim(), self.beta)
    }

    /// The modelled standard deviation of one coordinate of the sum of `clients` contributions,
    /// in the integer domain (see the module documentation).
    pub fn aggregate_std(&self, clients: u32) -> f64 {
        let n = f64::from(clients);
        let signal = n * self.scale * self.clip;
        (signal * signal / self.ring_dim() as f64 + n / 4.0 + n * self.noise_variance).sqrt()
    }

    /// How many of those standard deviations fit between 0 and the ring's edge, 2^(m−1).
    pub fn headroom(&self, clients: u32) -> f64 {
        half_ring(self.modulus_bits) / self.aggregate_std(clients)
    }

    /// The noise multiplier z the decoded sum's noise amounts to: its standard deviation
    /// √(n·μ)/γ over the clip norm c.
    pub fn noise_multiplier(&self, clients: u32) -> f64 {
        (f64::from(clients) * self.noise_variance).sqrt() / (self.scale * self.clip)
    }

    /// (ε, best order) at δ after `rounds` rounds whose sums each hold the noise of `clients`
    /// clients, over [`SKELLAM_ORDERS`].
    pub fn epsilon(&self, clients: u32, rounds: u64, delta: f64) -> Result<(f64, f64), DistributedError> {
        self.validate()?;
        if clients == 0 {
            return Err(DistributedError::NoClients);
        }
        epsilon(self.sensitivity(), f64::from(clients) * self.noise_variance, rounds, delta, &SKELLAM_ORDERS)
    }

    /// This configuration with the smallest per-client μ that meets `target` at its scale.
    pub fn with_noise_for(mut self, target: &Target) -> Result<SkellamConfig, DistributedError> {
        self.noise_variance = 0.0;
        self.validate()?;
        if target.clients == 0 {
            return Err(DistributedError::NoClients);
        }
        let total = variance_for(target.epsilon, self.sensitivity(), target.rounds, target.delta, &SKELLAM_ORDERS)?;
        let n = f64::from(target.clients);
        let mut mu = total / n;
        // Division may round down; the noise must never fall below what the target needs.
        while mu * n < total {
            mu = mu.next_up();
        }
        if mu > MAX_NOISE_VARIANCE {
            return Err(DistributedError::NoiseVariance(mu));
        }
        self.noise_variance = mu;
        Ok(self)
    }

    /// This configuration with the largest scale γ at which `headroom` standard deviations of
    /// the sum of `clients` contributions fit in the ring, at its μ.
    pub fn with_scale_for(mut self, clients: u32, headroom: f64) -> Result<SkellamConfig, DistributedError> {
        self.validate()?;
        if clients == 0 {
            return Err(DistributedError::NoClients);
        }
        if !(headroom.is_finite() && headroom > 0.0) {
            return Err(DistributedError::Headroom(headroom));
        }
        let n = f64::from(clients);
        let room = half_ring(self.modulus_bits) / headroom;
        let for_signal = room * room - n / 4.0 - n * self.noise_variance;
        let scale = (for_signal * self.ring_dim() as f64).sqrt() / (n * self.clip);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(DistributedError::NoRoom { modulus_bits: self.modulus_bits, clients, headroom });
        }
        self.scale = scale.min(MAX_SCALED_NORM / self.clip);
        Ok(self)
    }

    /// This configuration with the largest scale γ, and the μ that meets `target` at it, for
    /// which `headroom` standard deviations of the sum fit in the ring and μ stays within
    /// [`MAX_NOISE_VARIANCE`]. A larger γ means a finer grid (less rounding error relative to
    /// the noise); it is bounded because the μ needed grows with γ² and the noise must fit too.
    pub fn plan(self, target: &Target, headroom: f64) -> Result<SkellamConfig, DistributedError> {
        let ceiling = SkellamConfig { noise_variance: 0.0, ..self }.with_scale_for(target.clients, headroom)?;
        let no_room = DistributedError::NoRoom { modulus_bits: self.modulus_bits, clients: target.clients, headroom };
        // The noise for the target at `scale`, if it fits; ε's infeasibility does not depend
        // on the scale, so it ends the search.
        let fitting = |scale: f64| -> Result<Option<SkellamConfig>, DistributedError> {
            match (SkellamConfig { scale, ..ceiling.clone() }).with_noise_for(target) {
                Ok(config) if config.headroom(target.clients) >= headroom => Ok(Some(config)),
                Ok(_) | Err(DistributedError::NoiseVariance(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        if let Some(config) = fitting(ceiling.scale)? {
            return Ok(config);
        }
        // Fitting is monotone in γ: bracket below, then bisect on log γ.
        let mut hi = ceiling.scale;
        let mut lo = hi / 2.0;
        let mut best = loop {
            if let Some(config) = fitting(lo)? {
                break config;
            }
            hi = lo;
            lo /= 2.0;
            if lo < ceiling.scale * 1e-12 {
                return Err(no_room);
            }
        };
        for _ in 0..60 {
            if hi / lo < 1.0 + 1e-6 {
                break;
            }
            let mid = (lo * hi).sqrt();
            match fitting(mid)? {
                Some(config) => {
                    lo = mid;
                    best = config;
                }
                None => hi = mid,
            }
        }
        Ok(best)
    }

    /// A client's contribution: `update` (‖update‖₂ ≤ c) rotated, scaled, conditionally rounded,
    /// noised and reduced mod 2^m, as [`Self::ring_dim`] words. Randomness is the caller's CSPRNG.
    pub fn encode(&self, update: &[f32], rng: &mut impl CryptoRng) -> Result<Vec<u32>, DistributedError> {
        self.validate()?;
        if update.len() != self.dim {
            return Err(DistributedError::UpdateLength { got: update.len(), want: self.dim });
        }
        if let Some(index) = update.iter().position(|v| !v.is_finite()) {
            return Err(DistributedError::NotFinite { index });
        }
        let x: Vec<f64> = update.iter().map(|&v| f64::from(v)).collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > self.clip * (1.0 + NORM_SLACK) {
            return Err(DistributedError::NotClipped { norm, clip: self.clip });
        }
        let mut x = match self.rotation_seed {
            Some(seed) => Rotation::new(seed, self.dim)?.forward(&x)?,
            None => x,
        };
        x.iter_mut().for_each(|v| *v *= self.scale);
        let mut words = self.round_conditionally(&x, rng)?;

        if self.noise_variance > 0.0 {
            let poisson = Poisson::new(self.noise_variance / 2.0)
                .map_err(|_| DistributedError::NoiseVariance(self.noise_variance))?;
            for v in &mut words {
                // Both halves are below 2^52 (μ/2 ≤ 2^50 plus many standard deviations): exact.
                let a: f64 = poisson.sample(rng);
                let b: f64 = poisson.sample(rng);
                *v += a as i64 - b as i64;
            }
        }
        let ring = ring_mask(self.modulus_bits);
        // Two's complement: the low m bits of a negative value are its residue mod 2^m.
        Ok(words.into_iter().map(|v| (v as u64 & ring) as u32).collect())
    }

    /// Randomized rounding of `x`, repeated until the result's squared norm is within Δ₂².
    fn round_conditionally(&self, x: &[f64], rng: &mut impl RngCore) -> Result<Vec<i64>, DistributedError> {
        // Δ₂² formed exactly as the accountant forms it, so the two cannot disagree by a rounding;
        // the squared norm is an integer, so comparing with ⌊Δ₂²⌋ is exact.
        let l2 = self.sensitivity().l2;
        let bound = (l2 * l2).floor() as u128;
        let mut out = vec![0i64; x.len()];
        for _ in 0..self.max_rounding_tries {
            let mut norm_sq: u128 = 0;
            for (o, &v) in out.iter_mut().zip(x) {
                let floor = v.floor();
                let up = rng.random::<f64>() < v - floor;
                *o = floor as i64 + i64::from(up);
                norm_sq += u128::from(o.unsigned_abs()).pow(2);
            }
            if norm_sq <= bound {
                return Ok(out);
            }
        }
        Err(DistributedError::RoundingRejected { tries: self.max_rounding_tries })
    }

    /// The server's end: `sum`, the unmasked sum of the clients' words mod 2^m (words above
    /// 2^m are reduced), as the sum of their updates plus noise. A coordinate whose true sum
    /// lies outside [−2^(m−1), 2^(m−1)) comes back shifted by a multiple of 2^m/γ.
    pub fn decode_sum(&self, sum: &[u32]) -> Result<Vec<f32>, DistributedError> {
        self.validate()?;
        let want = self.ring_dim();
        if sum.len() != want {
            return Err(DistributedError::SumLength { got: sum.len(), want });
        }
        let ring = ring_mask(self.modulus_bits);
        let half = 1u64 << (self.modulus_bits - 1);
        let scaled: Vec<f64> = sum
            .iter()
            .map(|&w| {
                let v = u64::from(w) & ring;
                let centred = if v >= half { v as i64 - (ring as i64 + 1) } else { v as i64 };
                centred as f64 / self.scale
            })
            .collect();
        let values = match self.rotation_seed {
            Some(seed) => Rotation::new(seed, self.dim)?.inverse(&scaled)?,
            None => scaled,
        };
        Ok(values.into_iter().map(|v| v as f32).collect())
    }
}

/// 2^m − 1.
fn ring_mask(modulus_bits: u32) -> u64 {
    (1u64 << modulus_bits) - 1
}

/// 2^(m−1), the largest magnitude a centred sum can have.
fn half_ring(modulus_bits: u32) -> f64 {
    (1u64 << (modulus_bits - 1)) as f64
}

/// The randomized Hadamard rotation x ↦ H·D·pad(x)/√D' on vectors of length d, D' = d rounded
/// up to a power of two: orthonormal, so [`Self::inverse`] is its transpose D·H/√D'.
#[derive(Clone, Debug)]
pub struct Rotation {
    dim: usize,
    signs: Vec<bool>,
}

impl Rotation {
    /// The rotation for vectors of length `dim` with the random signs from `seed` (ChaCha20, so
    /// every client and the server draw the same signs on any platform).
    pub fn new(seed: u64, dim: usize) -> Result<Rotation, DistributedError> {
        let padded = dim
            .checked_next_power_of_two()
            .ok_or(DistributedError::Invalid("the dimension is too large to pad to a power of two"))?;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut signs = Vec::with_capacity(padded);
        while signs.len() < padded {
            let bits = rng.next_u64();
            let take = (padded - signs.len()).min(64);
            signs.extend((0..take).map(|i| (bits >> i) & 1 == 1));
        }
        Ok(Rotation { dim, signs })
    }

    /// D', the length of a rotated vector.
    pub fn padded_dim(&self) -> usize {
        self.signs.len()
    }

    /// H·D·pad(x)/√D'.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<f64>, DistributedError> {
        if x.len() != self.dim {
            return Err(DistributedError::UpdateLength { got: x.len(), want: self.dim });
        }
        let mut y = vec![0.0; self.padded_dim()];
        for ((y, &x), &negative) in y.iter_mut().zip(x).zip(&self.signs) {
            *y = if negative { -x } else { x };
        }
        walsh_hadamard_normalised(&mut y);
        Ok(y)
    }

    /// D·H·y/√D', cut back to d values.
    pub fn inverse(&self, y: &[f64]) -> Result<Vec<f64>, DistributedError> {
        if y.len() != self.padded_dim() {
            return Err(DistributedError::SumLength { got: y.len(), want: self.padded_dim() });
        }
        let mut x = y.to_vec();
        walsh_hadamard_normalised(&mut x);
        x.truncate(self.dim);
        for (x, &negative) in x.iter_mut().zip(&self.signs) {
            if negative {
                *x = -*x;
            }
        }
        Ok(x)
    }
}

/// In place, H·v/√len for a power-of-two length (the fast Walsh–Hadamard butterflies).
fn walsh_hadamard_normalised(v: &mut [f64]) {
    let n = v.len();
    let mut half = 1;
    while half < n {
        for block in v.chunks_exact_mut(2 * half) {
            let (a, b) = block.split_at_mut(half);
            for (a, b) in a.iter_mut().zip(b) {
                let (s, d) = (*a + *b, *a - *b);
                *a = s;
                *b = d;
            }
        }
        half *= 2;
    }
    let norm = 1.0 / (n as f64).sqrt();
    v.iter_mut().for_each(|x| *x *= norm);
}

#[cfg(test)]
mod tests;
