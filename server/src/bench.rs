//! `webfl bench`: throughput of the CPU engine, for comparing against other engines in the same
//! session (wall-clock numbers are only meaningful as ratios on a shared machine).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use webfl_shared::data::Dataset;
use webfl_shared::engine::gemm::{Mat, gemm};
use webfl_shared::model::ModelSpec;
use webfl_shared::rng::derive;
use webfl_shared::train::{Backend, CpuBackend, TrainPlan};

#[derive(Args)]
pub struct BenchArgs {
    /// gemm | train | all
    #[arg(default_value = "all")]
    what: String,
    /// Square GEMM sizes.
    #[arg(long, value_delimiter = ',', default_value = "512")]
    sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2nn,cnn")]
    models: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    batches: Vec<usize>,
    /// Seconds to measure each case (after a warm-up of the same length / 4).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
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

pub fn train_samples_per_sec(model: &str, batch: usize, secs: f64) -> Result<f64> {
    let spec = ModelSpec::builtin(model, &[1, 28, 28], 10)?;
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
    let mut be = CpuBackend::new(&spec)?;
    let mut err = None;
    let epochs = rate(secs, || {
        if let Err(e) = be.train(&global, &data, &plan, &mut rng, &mut |_| {}) {
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
    if rows.is_empty() {
        anyhow::bail!("unknown benchmark {:?}: expected gemm, train or all", args.what);
    }
    Ok(())
}

fn emit(rows: &[Row], json: bool) {
    if let Some(r) = rows.last() {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!("{:<32} {:>12.1} {}", r.case, r.value, r.unit);
        }
    }
}
