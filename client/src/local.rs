//! One round of local training, free of any browser API so it is tested natively too:
//! global model bytes in, update bytes out.

use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use webfl_shared::data::Dataset;
use webfl_shared::gpu::{GpuBackend, GpuContext, GpuError, GpuFault};
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::rng;
use webfl_shared::train::{Backend, CpuBackend, Progress, TrainPlan, TrainStats};

use crate::ClientError;

/// Which engine the page asks for (`?backend=` on the contribute page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preference {
    /// Probe both and take the faster one.
    #[default]
    Auto,
    Cpu,
    WebGpu,
}

impl FromStr for Preference {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, ClientError> {
        match s {
            "" | "auto" => Ok(Preference::Auto),
            "cpu" => Ok(Preference::Cpu),
            "webgpu" | "gpu" => Ok(Preference::WebGpu),
            other => Err(ClientError::Task(format!("unknown backend {other:?}: expected auto, cpu or webgpu"))),
        }
    }
}

/// The engine that trains and why it was chosen; the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendChoice {
    /// `"cpu"` (WebAssembly) or `"webgpu"`.
    pub backend: &'static str,
    pub reason: String,
    /// The WebGPU adapter, when one was found.
    pub adapter: Option<String>,
    /// Training throughput of each engine in the probe, when both were timed.
    pub cpu_samples_per_s: Option<f64>,
    pub gpu_samples_per_s: Option<f64>,
}

impl BackendChoice {
    fn cpu(reason: impl Into<String>, adapter: Option<String>) -> Self {
        Self { backend: "cpu", reason: reason.into(), adapter, cpu_samples_per_s: None, gpu_samples_per_s: None }
    }
}

/// Steps of the round's plan each engine trains in the probe (after one warm-up step, which
/// compiles the GPU pipelines).
const PROBE_STEPS: usize = 4;

/// The training engine for the task's model, kept across rounds so buffers are reused.
///
/// The CPU engine is always there: it is the fallback when WebGPU is missing, slower, or fails
/// mid-round (a lost device, out of memory, a validation error), in which case the round is
/// trained again on the CPU from the same seed and nothing the server asked for is lost.
pub struct Trainer {
    spec: ModelSpec,
    cpu: CpuBackend,
    gpu: Option<GpuBackend>,
    choice: BackendChoice,
    /// Set when the choice changed since the last `take_choice_change`.
    choice_changed: bool,
}

/// What a finished local round hands to the update pipeline.
pub struct LocalUpdate {
    /// `Δ = w_local − w_global`.
    pub delta: Params,
    pub stats: TrainStats,
}

impl Trainer {
    /// A CPU-only trainer (no probing).
    pub fn new(spec: &ModelSpec) -> Result<Self, ClientError> {
        Self::with_choice(spec, None, BackendChoice::cpu("CPU engine requested", None))
    }

    fn with_choice(spec: &ModelSpec, gpu: Option<GpuBackend>, choice: BackendChoice) -> Result<Self, ClientError> {
        let cpu = CpuBackend::new(spec).map_err(|e| ClientError::Task(e.to_string()))?;
        Ok(Self { spec: spec.clone(), cpu, gpu, choice, choice_changed: true })
    }

    /// Picks the engine for `spec`: WebGPU when the browser has it, it can run the model and —
    /// under [`Preference::Auto`] — it trains `plan`'s batches on `data` faster than the CPU in
    /// a short probe timed with `now_ms`. Never fails for lack of a GPU: every WebGPU problem
    /// becomes the reason the CPU was chosen.
    pub async fn select(
        spec: &ModelSpec,
        preference: Preference,
        data: &Dataset,
        plan: &TrainPlan,
        now_ms: &dyn Fn() -> f64,
    ) -> Result<Self, ClientError> {
        if preference == Preference::Cpu {
            return Self::with_choice(spec, None, BackendChoice::cpu("CPU chosen by the page (backend=cpu)", None));
        }
        let ctx = match GpuContext::new().await {
            // Single-threaded in the browser; the engine API shares the context through an Arc.
            #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
            Ok(ctx) => Arc::new(ctx),
            Err(e) => {
                return Self::with_choice(spec, None, BackendChoice::cpu(format!("WebGPU unavailable: {e}"), None));
            }
        };
        let adapter = Some(ctx.describe());
        let mut gpu = match GpuBackend::new(ctx, spec) {
            Ok(gpu) => gpu,
            Err(e) => {
                let reason = format!("WebGPU cannot run this model: {e}");
                return Self::with_choice(spec, None, BackendChoice::cpu(reason, adapter));
            }
        };
        if preference == Preference::WebGpu {
            let choice = BackendChoice {
                backend: "webgpu",
                reason: "WebGPU chosen by the page (backend=webgpu)".into(),
                adapter,
                cpu_samples_per_s: None,
                gpu_samples_per_s: None,
            };
            return Self::with_choice(spec, Some(gpu), choice);
        }
        let mut cpu = CpuBackend::new(spec).map_err(|e| ClientError::Task(e.to_string()))?;
        let global = spec.init_params(&mut rng::derive(0, &[])).map_err(|e| ClientError::Task(e.to_string()))?;
        let batch = plan.batch_size.clamp(1, data.len().max(1));
        let warmup = probe_data(data, batch);
        let timed = probe_data(data, batch * PROBE_STEPS);
        let probe_plan = TrainPlan { epochs: 1, ..plan.clone() };
        let gpu_rate = async {
            gpu.train(&global, &warmup, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {}).await?;
            let started = now_ms();
            gpu.train(&global, &timed, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {}).await?;
            Ok::<f64, GpuError>(rate(timed.len(), now_ms() - started))
        }
        .await;
        let gpu_rate = match gpu_rate {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("WebGPU failed its probe: {e}");
                return Self::with_choice(spec, None, BackendChoice::cpu(reason, adapter));
            }
        };
        let train_cpu = |cpu: &mut CpuBackend, data: &Dataset| {
            cpu.train(&global, data, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {})
                .map_err(|e| ClientError::Training(e.to_string()))
        };
        train_cpu(&mut cpu, &warmup)?;
        let started = now_ms();
        train_cpu(&mut cpu, &timed)?;
        let cpu_rate = rate(timed.len(), now_ms() - started);
        let (backend, reason) = if gpu_rate > cpu_rate {
            ("webgpu", format!("WebGPU trained {:.1}× faster than the CPU in a probe", gpu_rate / cpu_rate))
        } else {
            ("cpu", format!("the CPU trained {:.1}× faster than WebGPU in a probe", cpu_rate / gpu_rate))
        };
        let choice = BackendChoice {
            backend,
            reason,
            adapter,
            cpu_samples_per_s: Some(cpu_rate),
            gpu_samples_per_s: Some(gpu_rate),
        };
        Self::with_choice(spec, (backend == "webgpu").then_some(gpu), choice)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn backend_name(&self) -> &'static str {
        self.choice.backend
    }

    pub fn choice(&self) -> &BackendChoice {
        &self.choice
    }

    /// The choice, once after each change (the page is told about it).
    pub fn take_choice_change(&mut self) -> Option<BackendChoice> {
        std::mem::take(&mut self.choice_changed).then(|| self.choice.clone())
    }

    /// Makes the WebGPU engine fail for real in its next round (tests of the fallback).
    #[doc(hidden)]
    pub fn inject_gpu_fault(&mut self, fault: GpuFault) -> bool {
        self.gpu.as_mut().map(|gpu| gpu.inject_fault(fault)).is_some()
    }

    /// Trains from the global model in `global_bytes` (safetensors) on `data` following `plan`;
    /// `seed` drives shuffling and dropout.
    pub async fn train_round(
        &mut self,
        global_bytes: &[u8],
        data: &Dataset,
        plan: &TrainPlan,
        seed: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<LocalUpdate, ClientError> {
        let layout = self.spec.layout().map_err(|e| ClientError::Task(e.to_string()))?;
        let global = Params::from_safetensors(Arc::new(layout), global_bytes)
            .map_err(|e| ClientError::Protocol(format!("the downloaded model does not fit the task: {e}")))?;
        let training = |e: &dyn std::fmt::Display| ClientError::Training(e.to_string());
        let trained = match self.gpu.as_mut() {
            Some(gpu) => match gpu.train(&global, data, plan, &mut rng::derive(seed, &[]), progress).await {
                Ok(trained) => Some(trained),
                // Bad plans, data or divergence fail the same way on any engine.
                Err(GpuError::Train(e)) => return Err(training(&e)),
                Err(e) => {
                    let adapter = self.choice.adapter.clone();
                    let reason = format!("WebGPU failed mid-round ({e}); the round was trained again on the CPU");
                    self.choice = BackendChoice::cpu(reason, adapter);
                    self.choice_changed = true;
                    self.gpu = None;
                    None
                }
            },
            None => None,
        };
        let (local, stats) = match trained {
            Some(trained) => trained,
            None => {
                self.cpu.train(&global, data, plan, &mut rng::derive(seed, &[]), progress).map_err(|e| training(&e))?
            }
        };
        let delta = local.delta_from(&global).map_err(|e| training(&e))?;
        Ok(LocalUpdate { delta, stats })
    }
}

/// The first `n` examples (or all of them), to time training steps on.
fn probe_data(data: &Dataset, n: usize) -> Dataset {
    let indices: Vec<usize> = (0..n.min(data.len())).collect();
    data.subset(&indices)
}

fn rate(samples: usize, ms: f64) -> f64 {
    samples as f64 / (ms.max(1e-3) / 1e3)
}

// Natively the engines run on this machine's CPU and Vulkan driver; the same paths run in a
// browser in tests/webgpu.rs.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use webfl_shared::gpu::block_on;

    pub(crate) fn toy_data(n: usize) -> Dataset {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 2) as u32;
            let s = if label == 1 { 1.0 } else { -1.0 };
            features.extend([s, 0.5 * s, (i % 7) as f32 / 7.0, -s]);
            labels.push(label);
        }
        Dataset { sample_shape: vec![4], classes: 2, class_names: vec!["a".into(), "b".into()], features, labels }
    }

    #[test]
    fn a_local_round_returns_the_difference_to_the_global_model() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let global = spec.init_params(&mut rng::derive(0, &[1])).unwrap();
        let plan = TrainPlan { epochs: 2, batch_size: 5, lr: 0.1, ..TrainPlan::default() };
        let mut trainer = Trainer::new(&spec).unwrap();
        let mut steps = 0;
        let update =
            block_on(
                trainer
                    .train_round(&global.to_safetensors().unwrap(), &toy_data(40), &plan, 7, &mut |p| steps = p.step),
            )
            .unwrap();
        assert_eq!(steps, 16);
        assert_eq!(update.stats.examples, 40);
        assert!(update.delta.l2_norm() > 0.0);
        // Same seed, same update: the round is a pure function of its inputs.
        let again =
            block_on(trainer.train_round(&global.to_safetensors().unwrap(), &toy_data(40), &plan, 7, &mut |_| {}))
                .unwrap();
        assert_eq!(again.delta.as_slice(), update.delta.as_slice());
    }

    #[test]
    fn a_model_of_another_shape_is_refused() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let other = ModelSpec::builtin("2nn", &[5], 2).unwrap();
        let bytes = other.init_params(&mut rng::derive(0, &[1])).unwrap().to_safetensors().unwrap();
        let mut trainer = Trainer::new(&spec).unwrap();
        let err =
            block_on(trainer.train_round(&bytes, &toy_data(10), &TrainPlan::default(), 0, &mut |_| {})).err().unwrap();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }

    fn now_ms() -> f64 {
        thread_local!(static START: std::time::Instant = std::time::Instant::now());
        START.with(|t| t.elapsed().as_secs_f64() * 1e3)
    }

    #[test]
    fn preferences_parse_and_unknown_ones_are_refused() {
        assert_eq!("".parse::<Preference>().unwrap(), Preference::Auto);
        assert_eq!("cpu".parse::<Preference>().unwrap(), Preference::Cpu);
        assert_eq!("webgpu".parse::<Preference>().unwrap(), Preference::WebGpu);
        assert!("cuda".parse::<Preference>().is_err());
    }

    #[test]
    fn the_page_can_force_the_cpu() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let plan = TrainPlan { batch_size: 5, ..TrainPlan::default() };
        let trainer = block_on(Trainer::select(&spec, Preference::Cpu, &toy_data(40), &plan, &now_ms)).unwrap();
        assert_eq!(trainer.backend_name(), "cpu");
        assert!(trainer.choice().reason.contains("backend=cpu"), "{:?}", trainer.choice());
    }

    /// Natively the WebGPU engine runs on Vulkan (lavapipe in CI): auto selection times both
    /// engines and reports the numbers behind its choice.
    #[test]
    fn auto_selection_times_both_engines_and_explains_its_choice() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let plan = TrainPlan { batch_size: 5, lr: 0.1, ..TrainPlan::default() };
        let mut trainer = block_on(Trainer::select(&spec, Preference::Auto, &toy_data(40), &plan, &now_ms)).unwrap();
        let choice = trainer.take_choice_change().unwrap();
        let (cpu, gpu) = (choice.cpu_samples_per_s.unwrap(), choice.gpu_samples_per_s.unwrap());
        assert!(cpu > 0.0 && gpu > 0.0, "{choice:?}");
        assert_eq!(choice.backend, if gpu > cpu { "webgpu" } else { "cpu" });
        assert!(choice.reason.contains("faster"), "{choice:?}");
        assert!(choice.adapter.is_some());
        assert!(trainer.take_choice_change().is_none(), "reported once");
    }

    /// A lost device or a validation error mid-round: the round is trained again on the CPU
    /// from the same seed, so the update is exactly the CPU's, and the page is told why.
    #[test]
    fn a_gpu_failure_mid_round_falls_back_to_the_cpu_without_losing_the_round() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let global = spec.init_params(&mut rng::derive(0, &[1])).unwrap().to_safetensors().unwrap();
        let plan = TrainPlan { epochs: 2, batch_size: 5, lr: 0.1, ..TrainPlan::default() };
        let data = toy_data(40);
        let reference =
            block_on(Trainer::new(&spec).unwrap().train_round(&global, &data, &plan, 3, &mut |_| {})).unwrap();
        for (fault, words) in [(GpuFault::DeviceLost, "lost"), (GpuFault::ValidationError, "alidation")] {
            let mut trainer = block_on(Trainer::select(&spec, Preference::WebGpu, &data, &plan, &now_ms)).unwrap();
            assert_eq!(trainer.backend_name(), "webgpu", "{:?}", trainer.choice());
            trainer.take_choice_change();
            assert!(trainer.inject_gpu_fault(fault));
            let update = block_on(trainer.train_round(&global, &data, &plan, 3, &mut |_| {})).unwrap();
            assert_eq!(update.delta.as_slice(), reference.delta.as_slice());
            let choice = trainer.take_choice_change().expect("the fallback is reported");
            assert_eq!(choice.backend, "cpu");
            assert!(choice.reason.contains(words) && choice.reason.contains("again on the CPU"), "{choice:?}");
        }
    }
}
