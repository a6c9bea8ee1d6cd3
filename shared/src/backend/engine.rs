//! [`Engine`]: the engine a client trains with — the GPU engine where it exists and pays off,
//! else the CPU engine — and the rules for falling back from one to the other.

use super::{Backend, BackendChoice, CpuBackend, Preference};
use crate::data::Dataset;
use crate::model::{ModelError, ModelSpec};
use crate::params::Params;
use crate::rng::Rng;
use crate::train::{EvalStats, Progress, TrainError, TrainPlan, TrainStats};

#[cfg(feature = "gpu")]
use crate::gpu::{GpuBackend, GpuContext, GpuFault};

/// Steps of the round's plan each engine trains in the probe (after one warm-up step, which
/// compiles the GPU pipelines).
#[cfg(feature = "gpu")]
const PROBE_STEPS: usize = 4;

/// The training engine for one model, kept across rounds so buffers are reused.
///
/// The CPU engine is always there: it is the fallback when the GPU is missing, slower, or fails
/// mid-round (a lost device, out of memory, a validation error), in which case the round is
/// trained again on the CPU from the same random stream and nothing the caller asked for is lost.
/// Without the `gpu` feature it is the CPU engine alone.
pub struct Engine {
    spec: ModelSpec,
    cpu: CpuBackend,
    #[cfg(feature = "gpu")]
    gpu: Option<GpuBackend>,
    choice: BackendChoice,
    /// Set when the choice changed since the last `take_choice_change`.
    choice_changed: bool,
}

impl Engine {
    /// The CPU engine alone (no probing).
    pub fn cpu(spec: &ModelSpec) -> Result<Self, ModelError> {
        Self::on_cpu(spec, BackendChoice::cpu("CPU engine requested", None))
    }

    fn on_cpu(spec: &ModelSpec, choice: BackendChoice) -> Result<Self, ModelError> {
        Ok(Self {
            spec: spec.clone(),
            cpu: CpuBackend::new(spec)?,
            #[cfg(feature = "gpu")]
            gpu: None,
            choice,
            choice_changed: true,
        })
    }

    #[cfg(feature = "gpu")]
    fn on_gpu(spec: &ModelSpec, gpu: GpuBackend, choice: BackendChoice) -> Result<Self, ModelError> {
        Ok(Self { gpu: Some(gpu), ..Self::on_cpu(spec, choice)? })
    }

    /// Picks the engine for `spec`: the GPU when there is one, it can run the model and — under
    /// [`Preference::Auto`] — it trains `plan`'s batches on `data` faster than the CPU in a short
    /// probe timed with `now_ms` (milliseconds from any origin; this crate reads no clocks).
    /// Never fails for lack of a GPU: every GPU problem becomes the reason the CPU was chosen.
    pub async fn select(
        spec: &ModelSpec,
        preference: Preference,
        data: &Dataset,
        plan: &TrainPlan,
        now_ms: &dyn Fn() -> f64,
    ) -> Result<Self, TrainError> {
        if preference == Preference::Cpu {
            return Ok(Self::on_cpu(spec, BackendChoice::cpu("CPU chosen by the caller (backend=cpu)", None))?);
        }
        Self::select_gpu(spec, preference, data, plan, now_ms).await
    }

    #[cfg(not(feature = "gpu"))]
    async fn select_gpu(
        spec: &ModelSpec,
        _: Preference,
        _: &Dataset,
        _: &TrainPlan,
        _: &dyn Fn() -> f64,
    ) -> Result<Self, TrainError> {
        Ok(Self::on_cpu(spec, BackendChoice::cpu("this build has no GPU engine (feature gpu)", None))?)
    }

    #[cfg(feature = "gpu")]
    async fn select_gpu(
        spec: &ModelSpec,
        preference: Preference,
        data: &Dataset,
        plan: &TrainPlan,
        now_ms: &dyn Fn() -> f64,
    ) -> Result<Self, TrainError> {
        use std::sync::Arc;

        use crate::rng;

        let ctx = match GpuContext::new().await {
            // Single-threaded in the browser; the engine API shares the context through an Arc.
            #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
            Ok(ctx) => Arc::new(ctx),
            Err(e) => return Ok(Self::on_cpu(spec, BackendChoice::cpu(format!("WebGPU unavailable: {e}"), None))?),
        };
        let adapter = Some(ctx.describe());
        let mut gpu = match GpuBackend::new(ctx, spec) {
            Ok(gpu) => gpu,
            Err(e) => {
                let reason = format!("WebGPU cannot run this model: {e}");
                return Ok(Self::on_cpu(spec, BackendChoice::cpu(reason, adapter))?);
            }
        };
        if preference == Preference::WebGpu {
            let choice = BackendChoice {
                backend: "webgpu",
                reason: "WebGPU chosen by the caller (backend=webgpu)".into(),
                adapter,
                cpu_samples_per_s: None,
                gpu_samples_per_s: None,
            };
            return Ok(Self::on_gpu(spec, gpu, choice)?);
        }
        let mut cpu = CpuBackend::new(spec)?;
        let global = spec.init_params(&mut rng::derive(0, &[]))?;
        let batch = plan.batch_size.clamp(1, data.len().max(1));
        let warmup = probe_data(data, batch);
        let timed = probe_data(data, batch * PROBE_STEPS);
        let probe_plan = TrainPlan { epochs: 1, ..plan.clone() };
        let gpu_rate = async {
            gpu.train(&global, &warmup, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {}).await?;
            let started = now_ms();
            gpu.train(&global, &timed, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {}).await?;
            Ok::<f64, TrainError>(rate(timed.len(), now_ms() - started))
        }
        .await;
        let gpu_rate = match gpu_rate {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("WebGPU failed its probe: {e}");
                return Ok(Self::on_cpu(spec, BackendChoice::cpu(reason, adapter))?);
            }
        };
        cpu.train(&global, &warmup, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {})?;
        let started = now_ms();
        cpu.train(&global, &timed, &probe_plan, &mut rng::derive(1, &[]), &mut |_| {})?;
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
        Ok(if backend == "webgpu" { Self::on_gpu(spec, gpu, choice)? } else { Self::on_cpu(spec, choice)? })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn choice(&self) -> &BackendChoice {
        &self.choice
    }

    /// The choice, once after each change (the page is told about it).
    pub fn take_choice_change(&mut self) -> Option<BackendChoice> {
        std::mem::take(&mut self.choice_changed).then(|| self.choice.clone())
    }

    /// Makes the GPU engine fail for real in its next training or evaluation (tests of the
    /// fallback). False when the engine is not on the GPU.
    #[cfg(feature = "gpu")]
    #[doc(hidden)]
    pub fn inject_gpu_fault(&mut self, fault: GpuFault) -> bool {
        self.gpu.as_mut().map(|gpu| gpu.inject_fault(fault)).is_some()
    }

    /// Drops the GPU engine for good and says why.
    #[cfg(feature = "gpu")]
    fn fall_back(&mut self, reason: String) {
        let adapter = self.choice.adapter.take();
        self.choice = BackendChoice::cpu(reason, adapter);
        self.choice_changed = true;
        self.gpu = None;
    }
}

impl Backend for Engine {
    fn name(&self) -> &'static str {
        self.choice.backend
    }

    async fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu.as_mut() {
            // The CPU retrains from the stream the GPU started from: the round's result is then
            // exactly the CPU engine's, as if the GPU had never been tried.
            let start = rng.clone();
            match gpu.train(global, data, plan, rng, progress).await {
                Err(TrainError::Device(e)) => {
                    self.fall_back(format!("WebGPU failed mid-round ({e}); the round was trained again on the CPU"));
                    *rng = start;
                }
                // Bad plans, data or divergence fail the same way on any engine.
                done => return done,
            }
        }
        self.cpu.train(global, data, plan, rng, progress)
    }

    async fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu.as_mut() {
            match gpu.evaluate(params, data).await {
                Err(TrainError::Device(e)) => {
                    self.fall_back(format!("WebGPU failed while evaluating ({e}); the evaluation ran again on the CPU"))
                }
                done => return done,
            }
        }
        self.cpu.evaluate(params, data)
    }
}

/// The first `n` examples (or all of them), to time training steps on.
#[cfg(feature = "gpu")]
fn probe_data(data: &Dataset, n: usize) -> Dataset {
    let indices: Vec<usize> = (0..n.min(data.len())).collect();
    data.subset(&indices)
}

#[cfg(feature = "gpu")]
fn rate(samples: usize, ms: f64) -> f64 {
    samples as f64 / (ms.max(1e-3) / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive;

    use crate::data::toy_two_class as toy_data;

    fn spec() -> ModelSpec {
        ModelSpec::builtin("2nn", &[4], 2).unwrap()
    }

    fn plan() -> TrainPlan {
        TrainPlan { epochs: 2, batch_size: 5, lr: 0.1, ..TrainPlan::default() }
    }

    /// Drives a future that never waits (the CPU engine's), without any executor.
    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the CPU engine awaited"),
        }
    }

    #[test]
    fn the_cpu_engine_trains_a_round_as_a_pure_function_of_its_inputs() {
        let global = spec().init_params(&mut derive(0, &[1])).unwrap();
        let mut engine = Engine::cpu(&spec()).unwrap();
        assert_eq!(engine.name(), "cpu");
        let mut steps = 0;
        let (a, stats) =
            ready(engine.train(&global, &toy_data(40), &plan(), &mut derive(7, &[]), &mut |p| steps = p.step)).unwrap();
        assert_eq!((steps, stats.steps, stats.examples), (16, 16, 40));
        let (b, _) = ready(engine.train(&global, &toy_data(40), &plan(), &mut derive(7, &[]), &mut |_| {})).unwrap();
        assert_eq!(a, b);
        assert!(a.delta_from(&global).unwrap().l2_norm() > 0.0);
    }

    #[test]
    fn the_caller_can_force_the_cpu_and_is_told_once() {
        let (spec, data, plan) = (spec(), toy_data(40), plan());
        let mut engine = ready(Engine::select(&spec, Preference::Cpu, &data, &plan, &|| 0.0)).unwrap();
        let choice = engine.take_choice_change().expect("the first choice is reported");
        assert_eq!(choice.backend, "cpu");
        assert!(choice.reason.contains("backend=cpu"), "{choice:?}");
        assert!(engine.take_choice_change().is_none(), "reported once");
    }

    /// Natively the GPU engine runs on Vulkan (lavapipe in CI); the same paths run in a browser
    /// in client/tests/webgpu.rs.
    #[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
    mod gpu {
        use super::*;
        use crate::gpu::block_on;

        fn now_ms() -> f64 {
            thread_local!(static START: std::time::Instant = std::time::Instant::now());
            START.with(|t| t.elapsed().as_secs_f64() * 1e3)
        }

        fn select(preference: Preference) -> Engine {
            block_on(Engine::select(&spec(), preference, &toy_data(40), &plan(), &now_ms)).unwrap()
        }

        #[test]
        fn auto_selection_times_both_engines_and_explains_its_choice() {
            let mut engine = select(Preference::Auto);
            let choice = engine.take_choice_change().unwrap();
            let (cpu, gpu) = (choice.cpu_samples_per_s.unwrap(), choice.gpu_samples_per_s.unwrap());
            assert!(cpu > 0.0 && gpu > 0.0, "{choice:?}");
            assert_eq!(choice.backend, if gpu > cpu { "webgpu" } else { "cpu" });
            assert_eq!(engine.name(), choice.backend);
            assert!(choice.reason.contains("faster"), "{choice:?}");
            assert!(choice.adapter.is_some());
            assert!(engine.take_choice_change().is_none(), "reported once");
        }

        /// A lost device or a validation error mid-round: the round is trained again on the CPU
        /// from the same random stream, so the result is exactly the CPU's, and the caller is
        /// told why.
        #[test]
        fn a_gpu_failure_mid_round_falls_back_to_the_cpu_without_losing_the_round() {
            let global = spec().init_params(&mut derive(0, &[1])).unwrap();
            let data = toy_data(40);
            let mut reference_rng = derive(3, &[]);
            let reference =
                block_on(Engine::cpu(&spec()).unwrap().train(&global, &data, &plan(), &mut reference_rng, &mut |_| {}))
                    .unwrap();
            for (fault, words) in [(GpuFault::DeviceLost, "lost"), (GpuFault::ValidationError, "alidation")] {
                let mut engine = select(Preference::WebGpu);
                assert_eq!(engine.name(), "webgpu", "{:?}", engine.choice());
                engine.take_choice_change();
                assert!(engine.inject_gpu_fault(fault));
                let mut rng = derive(3, &[]);
                let trained = block_on(engine.train(&global, &data, &plan(), &mut rng, &mut |_| {})).unwrap();
                assert_eq!(trained, reference);
                assert_eq!(rng, reference_rng, "the stream ends where the CPU's does");
                let choice = engine.take_choice_change().expect("the fallback is reported");
                assert_eq!((choice.backend, engine.name()), ("cpu", "cpu"));
                assert!(choice.reason.contains(words) && choice.reason.contains("again on the CPU"), "{choice:?}");
                assert!(choice.adapter.is_some(), "the adapter tried is still named");
            }
        }

        #[test]
        fn a_gpu_failure_while_evaluating_falls_back_to_the_cpu() {
            let params = spec().init_params(&mut derive(0, &[1])).unwrap();
            let data = toy_data(40);
            let reference = CpuBackend::new(&spec()).unwrap().evaluate(&params, &data).unwrap();
            let mut engine = select(Preference::WebGpu);
            assert!(engine.inject_gpu_fault(GpuFault::DeviceLost));
            let stats = block_on(engine.evaluate(&params, &data)).unwrap();
            assert_eq!(stats, reference);
            assert_eq!(engine.name(), "cpu");
            assert!(engine.choice().reason.contains("evaluation ran again on the CPU"), "{:?}", engine.choice());
        }

        /// Errors of the request, not of the device, are not retried on the CPU.
        #[test]
        fn a_bad_plan_fails_on_the_gpu_without_a_fallback() {
            let global = spec().init_params(&mut derive(0, &[1])).unwrap();
            let mut engine = select(Preference::WebGpu);
            let bad = TrainPlan { lr: -1.0, ..plan() };
            let err = block_on(engine.train(&global, &toy_data(40), &bad, &mut derive(3, &[]), &mut |_| {}));
            assert!(matches!(err, Err(TrainError::BadPlan(_))), "{err:?}");
            assert_eq!(engine.name(), "webgpu");
        }
    }
}
