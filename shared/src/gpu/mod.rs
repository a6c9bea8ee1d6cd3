//! The WebGPU/wgpu training engine: the same models and training semantics as the CPU engine
//! ([`crate::engine`]), with parameters, gradients, optimizer state and activations kept on the
//! device for a whole `train()`. Runs in the browser (WebGPU) and natively (Vulkan/Metal/DX12).

mod backend;
#[doc(hidden)]
pub mod conformance;
mod context;
mod kernels;

#[doc(hidden)]
pub use backend::matmul_strided;
pub use backend::{GpuBackend, GpuFault, bench_matmul};
pub use context::GpuContext;

use crate::model::ModelError;
use crate::train::TrainError;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("this browser does not expose WebGPU (navigator.gpu is missing)")]
    NoWebGpu,
    #[error("no suitable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU adapter refused to create a device: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
    #[error("internal GPU error: {0}")]
    Internal(String),
    #[error("{what} needs {bytes} bytes but this GPU allows at most {limit} per buffer")]
    TooLarge { what: String, bytes: u64, limit: u64 },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Runs a future to completion on this thread (native only; tests and the CLI use it).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
