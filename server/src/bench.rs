//! `webfl bench`: throughput of the CPU engine and of the wgpu engine (Vulkan natively: lavapipe
//! where there is no GPU), and of the server's update intake ([`server`]), measured side by side
//! in one process because wall-clock numbers are only meaningful as ratios on a shared machine.

mod secagg;
mod server;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use webfl_shared::backend::{Backend, CpuBackend};
use webfl_shared::data::Dataset;
use webfl_shared::engine::gemm::{Mat, gemm};
use webfl_shared::gpu::{self, GpuBackend, GpuContext};
use webfl_shared::model::ModelSpec;
use webfl_shared::rng::derive;
use webfl_shared::train::TrainPlan;

#[derive(Args)]
pub struct BenchArgs {
    /// gemm | train | gpu | server | secagg | all. `gpu` times the wgpu engine's matmul and
    /// training steps next to the CPU engine's; `server` the aggregation and decoding of updates
    /// next to a memory-copy baseline; `secagg` one SecAgg+ round (not part of `all`).
    #[arg(default_value = "all")]
    what: String,
    /// Square GEMM sizes (CPU).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    sizes: Vec<usize>,
    /// Square matmul sizes for the GPU engine.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    gpu_sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2nn,cnn")]
    models: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    batches: Vec<usize>,
    /// Models whose updates `server` aggregates.
    #[arg(long, value_delimiter = ',', default_value = "cnn")]
    server_models: Vec<String>,
    /// Distinct client updates per round in `server`.
    #[arg(long, default_value_t = 100)]
    updates: usize,
    /// Seconds to measure each case (after a warm-up of the same length / 4).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// `secagg`: clients in the round.
    #[arg(long, default_value_t = 100, help_heading = "SecAgg+ (bench secagg)")]
    clients: u32,
    /// `secagg`: coordinates of the update (199,210: the 2NN).
    #[arg(long, default_value_t = 199_210, help_heading = "SecAgg+ (bench secagg)")]
    dim: usize,
    /// `secagg`: share of the clients that drops out after sharing its keys.
    #[arg(long, default_value_t = 0.1, help_heading = "SecAgg+ (bench secagg)")]
    dropout: f64,
    /// `secagg`: neighbours per client [default: 2⌈log2 n⌉].
    #[arg(long, help_heading = "SecAgg+ (bench secagg)")]
    neighbours: Option<u32>,
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    case: String,
    value: f64,
    unit: &'static str,
}

/// Repeats `f` until `secs` have passed; returns calls per second of the best of 5 slices, which
/// is the least disturbed by other work on the machine.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(secs / 4.0) {
        f();
    }
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs / 5.0) {
            f();
            n += 1;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

pub fn gemm_gflops(n: usize, secs: f64) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.02).collect();
    let mut c = vec![0.0f32; n * n];
    let per_sec = rate(secs, || gemm(1.0, Mat::new(&a, n, n), Mat::new(&b, n, n), 0.0, &mut c));
    per_sec * 2.0 * (n * n * n) as f64 / 1e9
}

/// Steady-state training samples per second at `batch`: each call trains one epoch of
/// `STEPS_PER_CALL` steps, so per-call setup (copying the model, allocating buffers) is amortised
/// as it is in a real round.
const STEPS_PER_CALL: usize = 20;

/// Training samples per second of the CPU engine.
pub fn train_samples_per_sec(model: &str, batch: usize, secs: f64) -> Result<f64> {
    let spec = ModelSpec::builtin(model, &[1, 28, 28], 10)?;
    train_rate(&mut CpuBackend::new(&spec)?, &spec, batch, secs)
}

/// Training samples per second of any engine on synthetic MNIST-shaped data.
pub fn train_rate(be: &mut impl Backend, spec: &ModelSpec, batch: usize, secs: f64) -> Result<f64> {
    let mut rng = derive(0, &[]);
    let global = spec.init_params(&mut rng)?;
    let n = batch * STEPS_PER_CALL;
    let data = Dataset {
        sample_shape: vec![1, 28, 28],
        classes: 10,
        class_names: (0..10).map(|d| d.to_string()).collect(),
        features: (0..n * 784).map(|i| (i % 255) as f32 / 255.0).collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
    };
    let plan = TrainPlan { epochs: 1, batch_size: batch, lr: 0.01, ..Default::default() };
    let mut err = None;
    let epochs = rate(secs, || {
        if let Err(e) = pollster::block_on(be.train(&global, &data, &plan, &mut rng, &mut |_| {})) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(epochs * n as f64)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    let all = args.what == "all";
    if all || args.what == "gemm" {
        for &n in &args.sizes {
            rows.push(Row { case: format!("gemm {n}x{n}x{n}"), value: gemm_gflops(n, args.seconds), unit: "GFLOP/s" });
            emit(&rows, args.json);
        }
    }
    if all || args.what == "train" {
        for model in &args.models {
            for &b in &args.batches {
                let v = train_samples_per_sec(model, b, args.seconds)?;
                rows.push(Row { case: format!("train-step {model} batch {b}"), value: v, unit: "samples/s" });
                emit(&rows, args.json);
            }
        }
    }
    if all || args.what == "gpu" {
        bench_gpu(args, &mut rows)?;
    }
    if all || args.what == "server" {
        for model in &args.server_models {
            let bench = server::bench_server(model, args.updates, args.seconds, |row| emit_row(row, args.json))?;
            rows.extend(bench.rows);
        }
    }
    if args.what == "secagg" {
        let bench = secagg::bench_secagg(args.clients, args.dim, args.dropout, args.neighbours)?;
        match args.json {
            true => println!("{}", serde_json::to_string(&bench)?),
            false => secagg::print(&bench),
        }
        return Ok(());
    }
    if rows.is_empty() {
        anyhow::bail!("unknown benchmark {:?}: expected gemm, train, gpu, server, secagg or all", args.what);
    }
    Ok(())
}

/// The wgpu engine next to the CPU engine: matmul GFLOP/s with the training kernel, and training
/// samples/s for each model and batch size with the CPU figure and the ratio beside it.
fn bench_gpu(args: &BenchArgs, rows: &mut Vec<Row>) -> Result<()> {
    let ctx = match GpuContext::new_blocking() {
        Ok(ctx) => std::sync::Arc::new(ctx),
        // `webfl bench` (all) still measures the CPU on a machine without any Vulkan driver.
        Err(e) if args.what == "all" => {
            println!("gpu: skipped ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if !args.json {
        println!("gpu adapter: {}", ctx.describe());
    }
    let start = Instant::now();
    let now_ms = || start.elapsed().as_secs_f64() * 1e3;
    for &n in &args.gpu_sizes {
        // One product first, to size the timed batch to about `seconds`.
        let once = pollster::block_on(gpu::bench_matmul(&ctx, n, 1, &now_ms))?;
        let flop = 2.0 * (n * n * n) as f64;
        let reps = ((args.seconds * once * 1e9 / flop).ceil() as usize).clamp(1, 1000);
        let gflops = pollster::block_on(gpu::bench_matmul(&ctx, n, reps, &now_ms))?;
        rows.push(Row { case: format!("gpu matmul {n}x{n}x{n}"), value: gflops, unit: "GFLOP/s" });
        emit(rows, args.json);
    }
    for model in &args.models {
        let spec = ModelSpec::builtin(model, &[1, 28, 28], 10)?;
        for &b in &args.batches {
            let cpu = train_rate(&mut CpuBackend::new(&spec)?, &spec, b, args.seconds)?;
            let gpu = train_rate(&mut GpuBackend::new(ctx.clone(), &spec)?, &spec, b, args.seconds)?;
            rows.push(Row { case: format!("train-step {model} batch {b} cpu"), value: cpu, unit: "samples/s" });
            emit(rows, args.json);
            rows.push(Row { case: format!("train-step {model} batch {b} gpu"), value: gpu, unit: "samples/s" });
            emit(rows, args.json);
            rows.push(Row { case: format!("train-step {model} batch {b} gpu/cpu"), value: gpu / cpu, unit: "x" });
            emit(rows, args.json);
        }
    }
    Ok(())
}

fn emit(rows: &[Row], json: bool) {
    if let Some(r) = rows.last() {
        emit_row(r, json);
    }
}

fn emit_row(r: &Row, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        // Ratios need more digits than rates.
        let digits = if r.unit == "x" { 3 } else { 1 };
        println!("{:<52} {:>12.digits$} {}", r.case, r.value, r.unit);
    }
}
