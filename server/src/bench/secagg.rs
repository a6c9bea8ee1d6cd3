//! `webfl bench secagg`: one whole SecAgg+ round in this process, through the same client and
//! server machines the server and the browser drive, timed stage by stage: each client stage's
//! seconds (mean per client), the server's unmasking alone, and the bytes each client sends and
//! receives as JSON messages. A share `dropout` of the clients vanishes after sharing its keys —
//! the costly case for the server, which must rebuild their pairwise masks.

use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use webfl_shared::secagg::{
    Observer, SecAggConfig, Stage, ToClient, ToServer, benchmark_cohort, client_stage_slot, simulate_to_unmask,
};

/// What one SecAgg+ round cost.
#[derive(Debug, Serialize)]
pub struct SecAggBench {
    pub clients: u32,
    pub dim: usize,
    pub dropout: f64,
    pub neighbours: u32,
    pub threshold: u32,
    pub survivors: usize,
    /// The server's unmasking: reconstructing seeds and keys, removing the masks, dequantizing.
    pub server_unmask_s: f64,
    /// Mean seconds per client: key generation, share generation and sealing, masking, unmasking.
    pub client_keys_s: f64,
    pub client_share_s: f64,
    pub client_mask_s: f64,
    pub client_unmask_s: f64,
    /// Mean bytes a surviving client sends and receives in the round (JSON messages).
    pub bytes_per_client: f64,
    /// The same client's dense f32 update, for scale.
    pub dense_f32_bytes: usize,
}

#[derive(Default)]
struct Watch {
    seconds: [f64; 4],
    bytes: Vec<usize>,
}

impl Observer for Watch {
    fn client_work<T>(&mut self, _client: u32, stage: Stage, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        self.seconds[client_stage_slot(stage)] += started.elapsed().as_secs_f64();
        out
    }
    fn to_server(&mut self, client: u32, message: &ToServer) {
        self.bytes[client as usize] += serde_json::to_vec(message).map_or(0, |b| b.len());
    }
    fn to_client(&mut self, client: u32, message: &ToClient) {
        self.bytes[client as usize] += serde_json::to_vec(message).map_or(0, |b| b.len());
    }
}

pub fn bench_secagg(clients: u32, dim: usize, dropout: f64, neighbours: Option<u32>) -> Result<SecAggBench> {
    anyhow::ensure!((0.0..1.0).contains(&dropout), "--dropout must be in [0, 1)");
    let mut config = SecAggConfig::recommended(1, clients, dim, 1);
    if let Some(k) = neighbours {
        config = config.with_neighbours(k);
    }
    config.validate().context("the SecAgg+ settings")?;
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (inputs, drop_at) = benchmark_cohort(clients, dim, dropout, &mut rng);
    let mut watch = Watch { bytes: vec![0; clients as usize], ..Watch::default() };
    let pending = simulate_to_unmask(&config, &inputs, &drop_at, &mut rng, &mut watch)?;
    let started = Instant::now();
    let sum = pending.finish()?;
    let server_unmask_s = started.elapsed().as_secs_f64();
    let survivors = sum.survivors().len();
    let per = |stage: usize, n: usize| watch.seconds[stage] / n.max(1) as f64;
    let bytes: usize = sum.survivors().iter().map(|&c| watch.bytes[c as usize]).sum();
    Ok(SecAggBench {
        clients,
        dim,
        dropout,
        neighbours: config.neighbours,
        threshold: config.threshold,
        survivors,
        server_unmask_s,
        client_keys_s: per(0, clients as usize),
        client_share_s: per(1, clients as usize),
        client_mask_s: per(2, survivors),
        client_unmask_s: per(3, survivors),
        bytes_per_client: bytes as f64 / survivors.max(1) as f64,
        dense_f32_bytes: 4 * dim,
    })
}

pub fn print(b: &SecAggBench) {
    println!(
        "secagg+ n = {}, d = {}, k = {}, t = {}, dropout {} ({} survivors)",
        b.clients, b.dim, b.neighbours, b.threshold, b.dropout, b.survivors
    );
    println!("  server unmask            {:>10.3} s", b.server_unmask_s);
    for (what, s) in [
        ("client keys", b.client_keys_s),
        ("client share + seal", b.client_share_s),
        ("client mask", b.client_mask_s),
        ("client unmask", b.client_unmask_s),
    ] {
        println!("  {what:<24} {:>10.3} ms per client", s * 1e3);
    }
    println!(
        "  bytes per client         {:>10.0} ({:.2}x a dense f32 update of {} bytes)",
        b.bytes_per_client,
        b.bytes_per_client / b.dense_f32_bytes as f64,
        b.dense_f32_bytes
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_round_is_measured_and_its_dropouts_counted() {
        let b = bench_secagg(20, 500, 0.1, None).unwrap();
        assert_eq!((b.clients, b.survivors), (20, 18));
        assert!(b.server_unmask_s > 0.0 && b.client_mask_s > 0.0);
        // At least the masked input (4 bytes per coordinate, base64) crosses the wire.
        assert!(b.bytes_per_client > (4 * 500) as f64, "{}", b.bytes_per_client);
        assert!(bench_secagg(20, 500, 1.5, None).is_err());
    }
}
