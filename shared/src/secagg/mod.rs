//! SecAgg+ (Bell et al., CCS 2020; the semi-honest protocol with dropout recovery, shaped like
//! Flower's `SecAggPlusWorkflow`) as two sans-I/O state machines: [`SecAggClient`] and
//! [`SecAggServer`]. They take [`messages`] (and the server the time, for its deadlines) and
//! return messages; a driver carries them — HTTP, the browser worker, or [`simulate_round`].
//!
//! # A round
//! Setup fixes the cohort `0..n`, the Shamir threshold t, the neighbour count k and the ring
//! 2^m ([`SecAggConfig`]). Clients are joined in a random k-regular graph ([`Graph`]); all
//! secret sharing and masking happens among neighbours, which is what makes SecAgg+ O(log n)
//! per client where SecAgg is O(n).
//! 1. **Advertise keys.** Each client makes two X25519 pairs — *sealing* (c) and *mask* (s) —
//!    and sends the public halves; the server relays each client its neighbours' keys.
//! 2. **Share keys.** Each client draws a self-mask seed b and Shamir-shares b and its mask
//!    secret key t-of-(neighbours + itself), sealing each neighbour's pair of shares with
//!    ChaCha20-Poly1305 under HKDF(X25519(c_u, c_v)), bound to round, sender and recipient.
//! 3. **Masked input.** Each client uploads y = q(x) + PRG(b) + Σ_v ±PRG(s_uv) mod 2^m over the
//!    neighbours whose shares it received (+ when u < v), s_uv = HKDF(X25519(s_u, s_v)).
//!    The server only ever adds uploads into one running sum.
//! 4. **Unmask.** The server names each surviving client's surviving and dropped neighbours;
//!    it answers with self-mask shares for the first and mask-key shares for the second. With t
//!    shares per secret the server removes the survivors' self masks and the dropped clients'
//!    pairwise masks, leaving Σ q(x) over the survivors, which it dequantizes.
//!
//! # Invariants
//! - The server never holds an individual unmasked update: it keeps only the sum of masked
//!   uploads, and it can unmask a client's upload only with both b and s of that client.
//! - A client never reveals both shares for one neighbour: a request naming a neighbour as
//!   survivor and dropped, or asking for the other kind than it answered before, is refused.
//!   t > (k + 1) / 2 is required so a server cannot gather t shares of both kinds by asking
//!   different holders different questions.
//! - A round with fewer than t share holders left for any secret it needs is abandoned with an
//!   [`Abandoned`] before anyone is asked to reveal anything for it.
//! - Secrets (key pairs, seeds, shares, agreed keys) are zeroized when dropped; randomness comes
//!   from the driver's CSPRNG — this module reads no clock and no OS entropy.
//!
//! Outside the semi-honest model (a server that lies about who dropped to different clients)
//! the paper's malicious variant adds signatures and a consistency round; this one does not.

pub mod client;
pub mod crypto;
pub mod messages;
pub mod quantize;
pub mod server;
pub mod shamir;
mod simulate;
#[cfg(test)]
mod tests;

pub use client::{ClientError, SecAggClient};
pub use messages::*;
pub use server::{Abandoned, SecAggServer, SecAggSum, ServerError, StageCounts, StageTimeouts};
pub use simulate::{
    Observer, PendingUnmask, SimulationError, Unobserved, benchmark_cohort, client_stage_slot, simulate_round,
    simulate_to_unmask,
};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Everything both sides must agree on for one round; the server hands it to every client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecAggConfig {
    /// Bound into every derived key and sealed message, so nothing carries over between rounds.
    pub round: u64,
    /// The cohort: clients `0..clients`.
    pub clients: u32,
    /// k, each client's neighbour count: even, or `clients − 1` (everyone neighbours everyone).
    pub neighbours: u32,
    /// t, the Shamir threshold among a client's k + 1 share holders (its neighbours and itself).
    pub threshold: u32,
    /// m: masked vectors live in the ring of integers mod 2^m.
    pub modulus_bits: u32,
    /// d, the length of each input vector.
    pub dim: usize,
    /// r: inputs are clipped to [−r, r] before quantization.
    pub clipping_range: f32,
    /// L: quantized values lie in [0, L].
    pub quantization_levels: u32,
    /// Seeds the random order of the cohort the neighbour graph is built on.
    pub graph_seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid SecAgg+ configuration: {0}")]
    Invalid(&'static str),
    #[error("{clients} sums of values up to {levels} overflow the ring 2^{modulus_bits}")]
    NoHeadroom { clients: u32, levels: u32, modulus_bits: u32 },
}

impl SecAggConfig {
    /// Flower's defaults (r = 8, L = 2^22, m = 32; L shrinks where n · L would not fit), with
    /// k = 2⌈log2 n⌉ neighbours (capped at n − 1) and the smallest majority threshold.
    pub fn recommended(round: u64, clients: u32, dim: usize, graph_seed: u64) -> SecAggConfig {
        let log2 = u32::BITS - clients.saturating_sub(1).leading_zeros();
        let neighbours = (2 * log2).min(clients.saturating_sub(1));
        let levels = (1u32 << 22).min(u32::MAX / clients.max(1));
        SecAggConfig {
            round,
            clients,
            neighbours: 0,
            threshold: 0,
            modulus_bits: 32,
            dim,
            clipping_range: 8.0,
            quantization_levels: levels,
            graph_seed,
        }
        .with_neighbours(neighbours)
    }

    /// `k` neighbours per client and the smallest majority threshold: the smallest t with
    /// 2t > k + 1.
    pub fn with_neighbours(mut self, k: u32) -> SecAggConfig {
        self.neighbours = k;
        self.threshold = k.div_ceil(2) + 1;
        self
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why| Err(ConfigError::Invalid(why));
        let (n, k, t) = (self.clients, self.neighbours, self.threshold);
        if n < 2 {
            return bad("a cohort needs at least two clients");
        }
        if k == 0 || k >= n || (k % 2 == 1 && k != n - 1) {
            return bad("neighbours must be even and below the cohort size, or the cohort size − 1");
        }
        if t > k + 1 || 2 * t <= k + 1 {
            return bad("the threshold must be a majority of the k + 1 share holders, at most k + 1");
        }
        if !(1..=32).contains(&self.modulus_bits) {
            return bad("modulus bits must be within 1..=32");
        }
        if self.dim == 0 || self.quantization_levels == 0 {
            return bad("dimension and quantization levels must be positive");
        }
        if !(self.clipping_range.is_finite() && self.clipping_range > 0.0) {
            return bad("the clipping range must be positive and finite");
        }
        // The unmasked sum is exact only if every possible sum of n quantized values fits.
        if u64::from(n) * u64::from(self.quantization_levels) >= 1u64 << self.modulus_bits {
            return Err(ConfigError::NoHeadroom {
                clients: n,
                levels: self.quantization_levels,
                modulus_bits: self.modulus_bits,
            });
        }
        Ok(())
    }

    /// 2^m − 1: reduces a u32 mod 2^m.
    fn ring_mask(&self) -> u32 {
        u32::MAX >> (32 - self.modulus_bits)
    }
}

/// Who shares with whom: a random Harary graph, as in Bell et al. — the cohort in a seeded
/// random order around a ring, each client joined to the k/2 nearest on either side — so every
/// client has exactly k neighbours and none chooses its own.
#[derive(Clone, Debug)]
pub struct Graph {
    order: Vec<u32>,
    position: Vec<u32>,
    half: u32,
    complete: bool,
}

impl Graph {
    pub fn new(config: &SecAggConfig) -> Graph {
        let mut order: Vec<u32> = (0..config.clients).collect();
        order.shuffle(&mut crate::rng::derive(config.graph_seed, &[config.round]));
        let mut position = vec![0; order.len()];
        for (i, &client) in order.iter().enumerate() {
            position[client as usize] = i as u32;
        }
        let complete = config.neighbours + 1 >= config.clients;
        Graph { order, position, half: config.neighbours / 2, complete }
    }

    /// `client`'s neighbours, ascending (the client itself not included).
    pub fn neighbours(&self, client: u32) -> Vec<u32> {
        let n = self.order.len() as u32;
        let mut out: Vec<u32> = if self.complete {
            (0..n).filter(|&v| v != client).collect()
        } else {
            let p = self.position[client as usize];
            (1..=self.half)
                .flat_map(|o| [self.order[((p + o) % n) as usize], self.order[((p + n - o) % n) as usize]])
                .collect()
        };
        out.sort_unstable();
        out
    }
}

/// The stages of a round; messages carry theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    Unmask,
    Finished,
    Abandoned,
}

/// The two secrets each client shares: which one a holder reveals depends on whether the owner
/// survived (its self-mask seed) or dropped (its mask key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ShareKind {
    SelfMask,
    MaskKey,
}

/// A holder's Shamir x coordinate: its id + 1, since x = 0 is where the secret sits.
fn holder_x(client: u32) -> u64 {
    u64::from(client) + 1
}
