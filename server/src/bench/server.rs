//! `webfl bench server`: how fast the server takes in updates, beside what the memory of this
//! machine allows, measured in the same run.
//!
//! - *memcpy*: two threads copying a buffer the size of all the updates (bytes of the source
//!   per second): what streaming the updates through memory can cost at best.
//! - *aggregate*: FedAvg's accumulation of already decoded f32 updates and the round's finish
//!   (bytes of update input per second), on all cores and on one, and its ratio to memcpy.
//! - *decode+aggregate*: what an upload costs the server after the body is read — decoding
//!   through the same function the upload handler uses (safetensors and `x-webfl-update`
//!   bodies), validating and adding to the strategy.
//! - *uploads/s* of `topk:0.01+q8` bodies into an open round (sparse: only the kept values
//!   touch the sum), beside dense ones.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use webfl_shared::codec::{self, Compression};
use webfl_shared::model::ModelSpec;
use webfl_shared::params::{Layout, Params};
use webfl_shared::pipeline::UpdateSpec;
use webfl_shared::protocol::UPDATE_CONTENT_TYPE;
use webfl_shared::rng::derive;
use webfl_shared::strategy::{Aggregator, Mean, Strategy, StrategyConfig, StrategyKind};
use webfl_shared::update::Update;

use super::{Row, rate};
use crate::service::decode_update;

/// What one model's server benchmark measured.
pub struct ServerBench {
    pub rows: Vec<Row>,
}

/// Runs every server case for `model` with `updates` distinct client updates, each case for
/// about `secs`.
pub fn bench_server(model: &str, updates: usize, secs: f64, mut emit: impl FnMut(&Row)) -> Result<ServerBench> {
    let spec = ModelSpec::builtin(model, &[1, 28, 28], 10)?;
    let layout = Arc::new(spec.layout()?);
    let n = layout.len();
    let input_bytes = (updates * n * 4) as f64;
    let mut rows = Vec::new();
    let mut push = |rows: &mut Vec<Row>, case: String, value: f64, unit: &'static str| {
        rows.push(Row { case, value, unit });
        emit(rows.last().expect("just pushed"));
    };

    let copy = memcpy_bytes_per_sec(updates * n, 2, secs);
    push(&mut rows, format!("server memcpy 2 threads ({} MB)", input_bytes as u64 / 1_000_000), copy / 1e9, "GB/s");

    let clients = random_updates(&layout, updates);
    let dense: Vec<Update> = clients.iter().map(|p| Update::dense(p.clone())).collect::<Result<_, _>>()?;
    let mut mean = Mean::weighted();
    let aggregate = input_bytes * rate(secs, || mean_of(&mut mean, &dense));
    push(&mut rows, format!("server aggregate {model} f32"), aggregate / 1e9, "GB/s");
    push(&mut rows, format!("server aggregate {model} f32 / memcpy"), aggregate / copy, "x");
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let serial = input_bytes * one_thread.install(|| rate(secs, || mean_of(&mut mean, &dense)));
    push(&mut rows, format!("server aggregate {model} f32 1 thread"), serial / 1e9, "GB/s");
    drop(dense);

    let plain = UpdateSpec::default();
    let safetensors: Vec<Bytes> =
        clients.iter().map(|p| p.to_safetensors().map(Bytes::from)).collect::<Result<_, _>>()?;
    let mut strategy = fedavg();
    let per_sec = rate(secs, || {
        decode_and_aggregate(&mut strategy, &plain, "application/octet-stream", &safetensors, &layout, true)
    });
    push(&mut rows, format!("server decode+aggregate {model} safetensors"), per_sec * input_bytes / 1e9, "GB/s");
    push(&mut rows, format!("server decode+aggregate {model} safetensors"), per_sec * updates as f64, "uploads/s");
    drop(safetensors);

    let mut rng = derive(1, &[]);
    let none: Vec<Bytes> = clients
        .iter()
        .map(|p| codec::encode(p.as_slice(), &Compression::None, None, &mut rng).map(Bytes::from))
        .collect::<Result<_, _>>()?;
    let per_sec = rate(secs, || decode_and_aggregate(&mut strategy, &plain, UPDATE_CONTENT_TYPE, &none, &layout, true));
    push(&mut rows, format!("server decode+aggregate {model} none"), per_sec * input_bytes / 1e9, "GB/s");
    drop(none);

    let topk = UpdateSpec { compression: Compression::TopKQ8 { fraction: 0.01 }, ..UpdateSpec::default() };
    let sparse: Vec<Bytes> = clients
        .iter()
        .map(|p| codec::encode(p.as_slice(), &topk.compression, None, &mut rng).map(Bytes::from))
        .collect::<Result<_, _>>()?;
    let body_bytes = sparse.iter().map(Bytes::len).sum::<usize>() / updates.max(1);
    let mut strategy = fedavg();
    let per_sec =
        rate(secs, || decode_and_aggregate(&mut strategy, &topk, UPDATE_CONTENT_TYPE, &sparse, &layout, false));
    push(
        &mut rows,
        format!("server decode+aggregate {model} topk:0.01+q8 ({} KB)", body_bytes / 1000),
        per_sec * updates as f64,
        "uploads/s",
    );
    Ok(ServerBench { rows })
}

/// Bytes of the source per second for `threads` threads each copying its share of a buffer of
/// `len` f32s.
pub fn memcpy_bytes_per_sec(len: usize, threads: usize, secs: f64) -> f64 {
    let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; len];
    let share = len.div_ceil(threads.max(1)).max(1);
    let per_sec = rate(secs, || {
        std::thread::scope(|s| {
            for (d, from) in dst.chunks_mut(share).zip(src.chunks(share)) {
                s.spawn(move || d.copy_from_slice(from));
            }
        });
    });
    std::hint::black_box(&dst);
    per_sec * (len * 4) as f64
}

/// `count` different updates of `layout`, small uniform values as a trained Δ has.
fn random_updates(layout: &Arc<Layout>, count: usize) -> Vec<Params> {
    use rand::Rng as _;
    (0..count)
        .map(|c| {
            let mut rng = derive(7, &[c as u64]);
            let values = (0..layout.len()).map(|_| rng.random_range(-0.01f32..0.01)).collect();
            Params::from_vec(layout.clone(), values).expect("sized from the layout")
        })
        .collect()
}

/// One round of FedAvg over `updates` (weights 1..), finished. `mean` lives across rounds, as
/// the server's does.
fn mean_of(mean: &mut Mean, updates: &[Update]) {
    for (i, u) in updates.iter().enumerate() {
        mean.add(u, (i + 1) as f64).expect("valid updates");
    }
    std::hint::black_box(mean.finish().expect("a round of valid updates"));
}

/// Decodes every body as the upload handler does and adds it to the task's FedAvg strategy
/// (which lives across rounds, as the server's does); finishes the round when `finish` (dense
/// rounds are timed whole, sparse uploads as they enter an open round).
fn decode_and_aggregate(
    strategy: &mut Strategy,
    spec: &UpdateSpec,
    content_type: &str,
    bodies: &[Bytes],
    layout: &Arc<Layout>,
    finish: bool,
) {
    for (i, body) in bodies.iter().enumerate() {
        let update = decode_update(spec, content_type, body, layout.clone()).expect("a valid body");
        strategy.add(&update, (i + 1) as f64).expect("a valid update");
    }
    if finish {
        let mut global = Params::zeros(layout.clone());
        std::hint::black_box(strategy.finish_round(&mut global).expect("a round of valid updates"));
    }
}

fn fedavg() -> Strategy {
    StrategyConfig::new(StrategyKind::FedAvg).build().expect("the default strategy builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use webfl_shared::strategy::{accumulate, accumulate_le, accumulate_serial};

    /// The server builds the shared crate with `parallel`: its sharded accumulation must give
    /// the single-threaded loop's sum bit for bit.
    #[test]
    fn sharded_accumulation_equals_unsharded() {
        for n in [1usize, 65_535, 65_536, 1_000_003] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let start: Vec<f64> = (0..n).map(|i| (i % 13) as f64 * 0.1).collect();
            let le: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let (mut sharded, mut from_bytes, mut serial) = (start.clone(), start.clone(), start);
            for w in [1.0, 3.25, 1e9] {
                accumulate(&mut sharded, &x, w);
                accumulate_le(&mut from_bytes, &le, w);
                accumulate_serial(&mut serial, &x, w);
            }
            assert!(sharded.iter().zip(&serial).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
            assert!(from_bytes.iter().zip(&serial).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
        }
    }

    #[test]
    fn the_server_benchmark_runs_every_case() {
        let bench = bench_server("2nn", 3, 0.01, |_| {}).unwrap();
        let cases: Vec<&str> = bench.rows.iter().map(|r| r.case.as_str()).collect();
        assert_eq!(bench.rows.len(), 8, "{cases:?}");
        assert!(bench.rows.iter().all(|r| r.value.is_finite() && r.value > 0.0), "{cases:?}");
    }
}
