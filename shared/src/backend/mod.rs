//! The one engine seam: [`Backend`] trains and evaluates a model, whatever runs it.
//! [`CpuBackend`] is the reference engine; `crate::gpu::GpuBackend` (feature `gpu`) the wgpu
//! one; [`Engine`] picks between them and falls back to the CPU when the GPU fails, and is what
//! the browser client drives.

mod cpu;
mod engine;

use std::str::FromStr;

use serde::Serialize;

pub use cpu::CpuBackend;
pub use engine::Engine;

use crate::data::Dataset;
use crate::params::Params;
use crate::rng::Rng;
use crate::train::{EvalStats, Progress, TrainError, TrainPlan, TrainStats};

/// A training engine, at the granularity of a whole local training so a GPU keeps parameters on
/// the device for all of `train` and reads them back once at the end. The waits are `async`
/// because a GPU's are: the browser cannot block on them. The CPU engine never awaits.
///
/// `async fn` in a public trait: callers hold concrete engines (no `dyn Backend`), and nothing
/// needs the futures to be `Send` (the browser is single-threaded; natively they are blocked on).
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// `"cpu"` or `"webgpu"`.
    fn name(&self) -> &'static str;

    /// Trains a copy of `global` on `data` following `plan`; returns the local model. `rng`
    /// drives shuffling (and dropout); `progress` is called after every step.
    async fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError>;

    /// Loss and accuracy of `params` on `data`.
    async fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError>;
}

/// Which engine a caller asks for (`?backend=` on the contribute page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preference {
    /// Probe both and take the faster one.
    #[default]
    Auto,
    Cpu,
    WebGpu,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown backend {0:?}: expected auto, cpu or webgpu")]
pub struct UnknownPreference(pub String);

impl FromStr for Preference {
    type Err = UnknownPreference;
    fn from_str(s: &str) -> Result<Self, UnknownPreference> {
        match s {
            "" | "auto" => Ok(Preference::Auto),
            "cpu" => Ok(Preference::Cpu),
            "webgpu" | "gpu" => Ok(Preference::WebGpu),
            other => Err(UnknownPreference(other.to_string())),
        }
    }
}

/// The engine that trains and why it was chosen; the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendChoice {
    /// `"cpu"` or `"webgpu"`.
    pub backend: &'static str,
    pub reason: String,
    /// The GPU adapter, when one was found.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_parse_and_unknown_ones_are_refused() {
        assert_eq!("".parse::<Preference>(), Ok(Preference::Auto));
        assert_eq!("cpu".parse::<Preference>(), Ok(Preference::Cpu));
        assert_eq!("webgpu".parse::<Preference>(), Ok(Preference::WebGpu));
        assert_eq!("cuda".parse::<Preference>(), Err(UnknownPreference("cuda".into())));
    }
}
