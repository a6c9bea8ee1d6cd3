//! Seeded randomness. Everything stochastic in training and simulation draws from a [`Rng`]
//! derived from the run's seed, so the same seed gives the same run on the same platform.
//! (Privacy noise in production must not use this; it takes OS/browser entropy.)

use rand::{RngCore, SeedableRng};

/// ChaCha8: portable, fast, and identical on wasm32 and native.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator for a sub-stream identified by `path` under `seed`, e.g. `[round, client]`.
/// Streams for different paths are independent; the mixing is SplitMix64.
pub fn derive(seed: u64, path: &[u64]) -> Rng {
    let mut state = splitmix(seed ^ 0x5745_4246_4c00_0000);
    for &p in path {
        state = splitmix(state ^ splitmix(p.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    }
    Rng::seed_from_u64(state)
}

/// The role of a random stream: the first element of every derivation path, so that two roles
/// never share a stream. Every driver (browser, `webfl simulate`, `webfl partition`, the server)
/// derives its draws through these, which is what makes a page, a simulated client and the
/// partition table agree for the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Initial model parameters.
    Init = 1,
    /// Which examples each client holds.
    Partition = 2,
    /// Simulation: the order in which clients reach the coordinator in a round.
    Selection = 3,
    /// A client's local training (shuffling, dropout), per round and client.
    Training = 4,
    /// Privacy noise in simulation (production draws it from platform entropy).
    Noise = 5,
    /// Randomised compression (random-k, stochastic rounding), per round and client.
    Codec = 6,
    /// Simulation: client speeds, network times and dropouts.
    Behaviour = 7,
    /// A client's secure-aggregation keys, seeds, shares and stochastic rounding in simulation
    /// (production draws them from the platform's CSPRNG, like privacy noise).
    SecureAggregation = 8,
}

/// The generator for `role` under `seed`, further split by `path` (e.g. `[round, client]`).
pub fn stream(seed: u64, role: Stream, path: &[u64]) -> Rng {
    let mut full = Vec::with_capacity(path.len() + 1);
    full.push(role as u64);
    full.extend_from_slice(path);
    derive(seed, &full)
}

/// The partitioner's seed for a run with `seed`: every driver that splits data among clients
/// (the contribute page's demo partition, `webfl simulate`, `webfl partition`) uses this one.
pub fn partition_seed(seed: u64) -> u64 {
    stream(seed, Stream::Partition, &[]).next_u64()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    #[test]
    fn derived_streams_are_reproducible_and_distinct() {
        let a = super::derive(7, &[1, 2]).next_u64();
        assert_eq!(a, super::derive(7, &[1, 2]).next_u64());
        assert_ne!(a, super::derive(7, &[2, 1]).next_u64());
        assert_ne!(a, super::derive(8, &[1, 2]).next_u64());
    }

    #[test]
    fn a_role_stream_is_the_derivation_under_its_role() {
        use super::{Stream, stream};
        assert_eq!(stream(3, Stream::Training, &[2, 9]).next_u64(), super::derive(3, &[4, 2, 9]).next_u64());
        assert_eq!(super::partition_seed(0), super::derive(0, &[2]).next_u64());
    }
}
