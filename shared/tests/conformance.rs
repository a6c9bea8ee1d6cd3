//! The backend conformance suite for the CPU engine and for wgpu (lavapipe in CI).
#![cfg(feature = "gpu")]

mod cpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::CpuEngine, native);
}

mod gpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::GpuEngine::new().await, native);
}
