//! Training and inference throughput of webfl's engines in this browser, for `www/bench.html`.
//!
//! [`bench_engine`] measures one engine × model × batch × mode and returns samples per second in
//! the steady state. The timing loops ([`train_rate`], [`infer_rate`]) are generic over an async
//! closure that runs the engine once. Both engines are the client's own [`Engine`], forced to one
//! side; a benchmark whose engine falls back to the CPU fails rather than report CPU numbers.
//!
//! Inputs are synthetic (uniform in [0, 1), random labels): throughput does not depend on the
//! values, and every engine on the page gets the same shapes (MNIST, `[1, 28, 28]`, 10 classes).

use wasm_bindgen::prelude::*;
use webfl_shared::Params;
use webfl_shared::backend::{Backend, Engine, Preference};
use webfl_shared::data::Dataset;
use webfl_shared::engine::{Mode, Network};
use webfl_shared::model::ModelSpec;
use webfl_shared::train::TrainPlan;

use rand::Rng as _;

#[wasm_bindgen]
extern "C" {
    // `performance.now()` through the global scope: sub-millisecond, monotonic, and present on
    // pages and in workers alike (`Date.now()` is coarse and can jump).
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

const SAMPLE_SHAPE: [usize; 3] = [1, 28, 28];
const CLASSES: usize = 10;
/// The forward-only batch, fixed so inference numbers compare across engines.
pub const INFER_BATCH: usize = 100;
/// Plain SGD as in McMahan et al. 2017 (momentum 0), the same step for every engine.
const LR: f32 = 0.01;

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Samples per second of `engine` (`cpu`, `webgpu`) running `model` (`2nn`, `cnn`): `mode`
/// `train` is SGD at `batch`, `infer` is forward passes at batch [`INFER_BATCH`] (`batch` is
/// ignored). Each measurement runs for at least `min_seconds` after a warm-up.
#[wasm_bindgen(js_name = benchEngine)]
pub async fn bench_engine(
    engine: String,
    model: String,
    batch: usize,
    mode: String,
    min_seconds: f64,
) -> Result<f64, JsError> {
    if !(min_seconds.is_finite() && min_seconds >= 0.0) {
        return Err(JsError::new(&format!("min_seconds must be a non-negative number, not {min_seconds}")));
    }
    if batch == 0 {
        return Err(JsError::new("batch must be at least 1"));
    }
    let spec = ModelSpec::builtin(&model, &SAMPLE_SHAPE, CLASSES).map_err(js)?;
    // Fixed seeds: the numbers are throughput, but a rerun should do the very same work.
    let mut rng = webfl_shared::rng::derive(0x6265_6e63, &[]);
    let params = spec.init_params(&mut rng).map_err(js)?;
    match (engine.as_str(), mode.as_str()) {
        ("cpu", "infer") => {
            let net = Network::new(&spec).map_err(js)?;
            let mut ws = net.workspace(INFER_BATCH);
            infer_rate(min_seconds, async |data: &Dataset| {
                ws.input_mut(INFER_BATCH).copy_from_slice(&data.features);
                let logits = net.forward(params.as_slice(), &mut ws, INFER_BATCH, Mode::Eval);
                // Keeps the pass observable, so nothing is optimised away.
                std::hint::black_box(logits);
                Ok(())
            })
            .await
        }
        ("cpu" | "webgpu", "train" | "infer") => {
            let preference: Preference = engine.parse().map_err(js)?;
            // A forced preference runs no probe, so the probe's data and plan go unused.
            let plan = TrainPlan { batch_size: batch, lr: LR, ..TrainPlan::default() };
            let mut chosen =
                Engine::select(&spec, preference, &synthetic(batch, 0), &plan, &performance_now).await.map_err(js)?;
            let unavailable =
                |e: &Engine| JsError::new(&format!("the {engine} engine is not available: {}", e.choice().reason));
            if chosen.name() != engine {
                return Err(unavailable(&chosen));
            }
            let samples_per_s = if mode == "train" {
                train_rate(&params, batch, min_seconds, async |params: &Params, data: &Dataset, plan: &TrainPlan| {
                    chosen.train(params, data, plan, &mut rng, &mut |_| {}).await.map(drop).map_err(js)
                })
                .await?
            } else {
                // One batch per call, its loss and accuracy read back: the result is complete when
                // the call returns. (On the GPU the call also writes the weights, a few ms of the total.)
                infer_rate(min_seconds, async |data: &Dataset| {
                    chosen.evaluate(&params, data).await.map(drop).map_err(js)
                })
                .await?
            };
            // A GPU failure mid-benchmark falls back to the CPU: those would be the CPU's numbers.
            if chosen.name() != engine {
                return Err(unavailable(&chosen));
            }
            Ok(samples_per_s)
        }
        ("cpu" | "webgpu", other) => Err(JsError::new(&format!("unknown mode {other:?} (train, infer)"))),
        (other, _) => Err(JsError::new(&format!("unknown engine {other:?} (cpu, webgpu)"))),
    }
}

/// `n` synthetic MNIST-shaped samples: features uniform in [0, 1), labels uniform over the classes.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = webfl_shared::rng::derive(seed, &[n as u64]);
    let len: usize = SAMPLE_SHAPE.iter().product();
    Dataset {
        sample_shape: SAMPLE_SHAPE.to_vec(),
        classes: CLASSES,
        class_names: (0..CLASSES).map(|c| c.to_string()).collect(),
        features: (0..n * len).map(|_| rng.random::<f32>()).collect(),
        labels: (0..n).map(|_| rng.random_range(0..CLASSES as u32)).collect(),
    }
}

/// Training samples per second of `train` (one epoch of `plan` over `data` per call).
///
/// A warm-up call of two steps compiles and sizes everything and estimates the cost of a sample;
/// the timed dataset is then sized so one call lasts about a sixth of `min_seconds` (at least two
/// steps), so per-call costs (copying the model in and out) stay small against the steps while
/// the loop still ends close to `min_seconds`. Whole calls are timed until `min_seconds` have
/// passed and at least three calls ran.
pub async fn train_rate(
    global: &Params,
    batch: usize,
    min_seconds: f64,
    mut train: impl AsyncFnMut(&Params, &Dataset, &TrainPlan) -> Result<(), JsError>,
) -> Result<f64, JsError> {
    let plan = TrainPlan { epochs: 1, batch_size: batch, lr: LR, ..TrainPlan::default() };
    let warm = synthetic(2 * batch, 1);
    let start = performance_now();
    train(global, &warm, &plan).await?;
    let per_sample_s = ((performance_now() - start) / 1e3 / warm.len() as f64).max(1e-9);
    let steps = ((min_seconds / 6.0 / (per_sample_s * batch as f64)).ceil() as usize).clamp(2, 10_000);
    let data = synthetic(steps * batch, 2);
    let (start, mut calls) = (performance_now(), 0usize);
    while calls < 3 || performance_now() - start < min_seconds * 1e3 {
        train(global, &data, &plan).await?;
        calls += 1;
    }
    Ok(rate(calls * data.len(), performance_now() - start))
}

/// Forward-only samples per second of `infer` (one pass over a [`INFER_BATCH`]-sample batch per
/// call, its result complete when the call returns), after one warm-up call.
pub async fn infer_rate(
    min_seconds: f64,
    mut infer: impl AsyncFnMut(&Dataset) -> Result<(), JsError>,
) -> Result<f64, JsError> {
    let data = synthetic(INFER_BATCH, 3);
    infer(&data).await?;
    let (start, mut calls) = (performance_now(), 0usize);
    while calls < 3 || performance_now() - start < min_seconds * 1e3 {
        infer(&data).await?;
        calls += 1;
    }
    Ok(rate(calls * INFER_BATCH, performance_now() - start))
}

fn rate(samples: usize, elapsed_ms: f64) -> f64 {
    samples as f64 / (elapsed_ms.max(1e-3) / 1e3)
}

/// What one SecAgg+ round costs a client in this browser: [`bench_secagg`]'s answer.
#[derive(serde::Serialize)]
struct SecAggTimes {
    clients: u32,
    dim: usize,
    dropout: f64,
    neighbours: u32,
    threshold: u32,
    survivors: usize,
    /// Mean milliseconds per client for each of its stages: key generation, key agreement +
    /// share generation + sealing, masking (opening its shares, quantizing, one PRG mask per
    /// neighbour), unmasking.
    client_keys_ms: f64,
    client_share_ms: f64,
    client_mask_ms: f64,
    client_unmask_ms: f64,
    /// The server's unmasking, here in wasm too (natively: `webfl bench secagg`).
    server_unmask_ms: f64,
}

/// Times every client's stage of a stage-observing SecAgg+ round.
struct StageClock {
    ms: [f64; 4],
}

impl webfl_shared::secagg::Observer for StageClock {
    fn client_work<T>(&mut self, _client: u32, stage: webfl_shared::secagg::Stage, work: impl FnOnce() -> T) -> T {
        let started = performance_now();
        let out = work();
        self.ms[webfl_shared::secagg::client_stage_slot(stage)] += performance_now() - started;
        out
    }
}

/// One whole SecAgg+ round of `clients` clients over inputs of `dim` values, run by the shared
/// machines in this browser's wasm, a share `dropout` of the clients vanishing after sharing
/// their keys (the server then rebuilds their pairwise masks). Returns [`SecAggTimes`] as JSON.
#[wasm_bindgen(js_name = benchSecAgg)]
pub fn bench_secagg(clients: u32, dim: usize, dropout: f64) -> Result<String, JsError> {
    use rand::SeedableRng as _;
    use webfl_shared::secagg::{SecAggConfig, benchmark_cohort, simulate_to_unmask};

    if !(0.0..1.0).contains(&dropout) {
        return Err(JsError::new(&format!("dropout must be in [0, 1), not {dropout}")));
    }
    let config = SecAggConfig::recommended(1, clients, dim, 1);
    config.validate().map_err(js)?;
    // A CSPRNG with a fixed seed: the protocol asks for one; a rerun does the same work.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (inputs, drop_at) = benchmark_cohort(clients, dim, dropout, &mut rng);
    let mut clock = StageClock { ms: [0.0; 4] };
    let pending = simulate_to_unmask(&config, &inputs, &drop_at, &mut rng, &mut clock).map_err(js)?;
    let started = performance_now();
    let sum = pending.finish().map_err(js)?;
    let server_unmask_ms = performance_now() - started;
    let survivors = sum.survivors().len();
    let per = |stage: usize, n: usize| clock.ms[stage] / n.max(1) as f64;
    let times = SecAggTimes {
        clients,
        dim,
        dropout,
        neighbours: config.neighbours,
        threshold: config.threshold,
        survivors,
        client_keys_ms: per(0, clients as usize),
        client_share_ms: per(1, clients as usize),
        client_mask_ms: per(2, survivors),
        client_unmask_ms: per(3, survivors),
        server_unmask_ms,
    };
    serde_json::to_string(&times).map_err(js)
}
