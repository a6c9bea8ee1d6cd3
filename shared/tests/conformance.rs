//! The backend conformance suite for the CPU engine and for wgpu (lavapipe in CI).
#![cfg(feature = "gpu")]

mod cpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::CpuEngine, native);
}

mod gpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::GpuEngine::new().await, native);
}

/// Injected faults surface as the matching GpuError, never a panic (each on its own device).
mod faults {
    use std::sync::Arc;

    use webfl_shared::gpu::{GpuBackend, GpuContext, GpuError, GpuFault, block_on};
    use webfl_shared::model::ModelSpec;
    use webfl_shared::rng::derive;
    use webfl_shared::train::TrainPlan;

    fn run(fault: GpuFault) -> GpuError {
        let ctx = Arc::new(GpuContext::new_blocking().expect("no wgpu adapter (install mesa-vulkan-drivers)"));
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let global = spec.init_params(&mut derive(1, &[])).unwrap();
        let data = webfl_shared::data::Dataset {
            sample_shape: vec![4],
            classes: 2,
            class_names: vec!["a".into(), "b".into()],
            features: (0..400).map(|i| (i % 7) as f32 * 0.1).collect(),
            labels: (0..100).map(|i| i % 2).collect(),
        };
        let mut be = GpuBackend::new(ctx, &spec).unwrap();
        be.inject_fault(fault);
        let plan = TrainPlan { batch_size: 1, epochs: 2, ..Default::default() };
        block_on(be.train(&global, &data, &plan, &mut derive(2, &[]), &mut |_| {})).unwrap_err()
    }

    #[test]
    fn validation_error_is_reported() {
        let e = run(GpuFault::ValidationError);
        assert!(matches!(e, GpuError::Validation(_)), "{e}");
    }

    #[test]
    fn device_loss_is_reported() {
        let e = run(GpuFault::DeviceLost);
        assert!(matches!(e, GpuError::DeviceLost(_)), "{e}");
    }
}
