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
//!   [`AbandonReason`] before anyone is asked to reveal anything for it.
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
#[cfg(test)]
mod tests;

pub use client::{ClientError, SecAggClient, ShareKind};
pub use messages::*;
pub use server::{AbandonReason, SecAggServer, SecAggSum, ServerError, StageTimeouts};

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
            neighbours,
            // The smallest t with 2t > k + 1.
            threshold: neighbours.div_ceil(2) + 1,
            modulus_bits: 32,
            dim,
            clipping_range: 8.0,
            quantization_levels: levels,
            graph_seed,
        }
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

impl ToServer {
    pub fn stage(&self) -> Stage {
        match self {
            ToServer::AdvertiseKeys(_) => Stage::AdvertiseKeys,
            ToServer::ShareKeys(_) => Stage::ShareKeys,
            ToServer::MaskedInput(_) => Stage::MaskedInput,
            ToServer::Unmask(_) => Stage::Unmask,
        }
    }
}

/// The stage at which a simulated client goes silent: it never sends that stage's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropAt {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    Unmask,
}

impl DropAt {
    fn stage(self) -> Stage {
        match self {
            DropAt::AdvertiseKeys => Stage::AdvertiseKeys,
            DropAt::ShareKeys => Stage::ShareKeys,
            DropAt::MaskedInput => Stage::MaskedInput,
            DropAt::Unmask => Stage::Unmask,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{got} inputs and {drops} dropout entries for a cohort of {clients}")]
    Cohort { got: usize, drops: usize, clients: u32 },
    #[error("client {client} refused: {source}")]
    Client { client: u32, source: ClientError },
    #[error("the server refused client {client}: {source}")]
    Server { client: u32, source: ServerError },
    #[error("round abandoned: {0}")]
    Abandoned(AbandonReason),
}

/// A simulated round with every unmask response collected but not yet handed to the server:
/// [`PendingUnmask::finish`] is the server's unmasking alone, for timing it.
pub struct PendingUnmask {
    server: SecAggServer,
    responses: Vec<(u32, ToServer)>,
    now_ms: u64,
}

impl PendingUnmask {
    pub fn finish(mut self) -> Result<SecAggSum, SimulationError> {
        for (client, message) in self.responses {
            self.server
                .handle(client, message, self.now_ms)
                .map_err(|source| SimulationError::Server { client, source })?;
        }
        let_deadline_pass(&mut self.server, &mut self.now_ms, Stage::Unmask);
        match self.server.into_outcome() {
            Some(Ok(sum)) => Ok(sum),
            Some(Err(reason)) => Err(SimulationError::Abandoned(reason)),
            None => unreachable!("a closed unmask stage leaves an outcome"),
        }
    }
}

/// One whole round in process: client `i` contributes `inputs[i]` unless `drop_at[i]` names the
/// stage at which it goes silent. The server's deadlines pass on a virtual clock.
pub fn simulate_round(
    config: &SecAggConfig,
    inputs: &[Vec<f32>],
    drop_at: &[Option<DropAt>],
    rng: &mut impl rand::CryptoRng,
) -> Result<SecAggSum, SimulationError> {
    simulate_to_unmask(config, inputs, drop_at, rng)?.finish()
}

/// [`simulate_round`] up to the unmask responses, which are held back (see [`PendingUnmask`]).
pub fn simulate_to_unmask(
    config: &SecAggConfig,
    inputs: &[Vec<f32>],
    drop_at: &[Option<DropAt>],
    rng: &mut impl rand::CryptoRng,
) -> Result<PendingUnmask, SimulationError> {
    config.validate()?;
    if inputs.len() != config.clients as usize || drop_at.len() != inputs.len() {
        return Err(SimulationError::Cohort { got: inputs.len(), drops: drop_at.len(), clients: config.clients });
    }
    let silent_at = |client: u32, stage| drop_at[client as usize].map(DropAt::stage) == Some(stage);
    let rejected = |client| move |source| SimulationError::Server { client, source };
    let mut now_ms = 0;
    let mut server = SecAggServer::new(config.clone(), StageTimeouts::default(), now_ms)?;
    let mut clients = Vec::new();
    for client in (0..config.clients).filter(|&c| !silent_at(c, Stage::AdvertiseKeys)) {
        let (machine, keys) = SecAggClient::new(config.clone(), client, rng)
            .map_err(|source| SimulationError::Client { client, source })?;
        server.handle(client, ToServer::AdvertiseKeys(keys), now_ms).map_err(rejected(client))?;
        clients.push(machine);
    }
    let mut responses = Vec::new();
    for (previous, stage) in [
        (Stage::AdvertiseKeys, Stage::ShareKeys),
        (Stage::ShareKeys, Stage::MaskedInput),
        (Stage::MaskedInput, Stage::Unmask),
    ] {
        let_deadline_pass(&mut server, &mut now_ms, previous);
        if let Some(Err(reason)) = server.outcome() {
            return Err(SimulationError::Abandoned(reason.clone()));
        }
        let mut answered = Vec::new();
        for machine in clients.iter_mut().filter(|c| !silent_at(c.id(), stage)) {
            let id = machine.id();
            let reply = match server.message_for(id) {
                Some(ToClient::ShareKeys(keys)) => machine.share_keys(&keys, rng).map(ToServer::ShareKeys),
                Some(ToClient::MaskedInput(shares)) => {
                    machine.mask_input(&shares, &inputs[id as usize], rng).map(ToServer::MaskedInput)
                }
                Some(ToClient::Unmask(request)) => machine.unmask(&request).map(ToServer::Unmask),
                None => continue,
            };
            match reply {
                // A client left with too few neighbours cannot take part: to the server it has
                // dropped out, as it would have over a network.
                Err(ClientError::TooFewNeighbours { .. }) => continue,
                Err(source) => return Err(SimulationError::Client { client: id, source }),
                Ok(message @ ToServer::Unmask(_)) => responses.push((id, message)),
                Ok(message) => {
                    server.handle(id, message, now_ms).map_err(rejected(id))?;
                }
            }
            answered.push(id);
        }
        clients.retain(|c| answered.contains(&c.id()));
    }
    Ok(PendingUnmask { server, responses, now_ms })
}

/// Runs the virtual clock to the deadline of `stage` if the server is still waiting in it.
fn let_deadline_pass(server: &mut SecAggServer, now_ms: &mut u64, stage: Stage) {
    if server.stage() == stage {
        *now_ms = server.deadline_ms().unwrap_or(*now_ms);
        server.tick(*now_ms);
    }
}
