//! The backend conformance suite for the CPU engine and for wgpu (lavapipe in CI).
#![cfg(feature = "gpu")]

mod cpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::CpuEngine::default(), native);
}

mod gpu {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::GpuEngine::new().await, native);
}

/// Device failures surface through the `Backend` seam as `TrainError::Device`, never a panic
/// (each on its own device).
mod faults {
    use std::sync::Arc;

    use webfl_shared::backend::Backend;
    use webfl_shared::data::Dataset;
    use webfl_shared::gpu::{GpuBackend, GpuContext, GpuFault, block_on};
    use webfl_shared::model::ModelSpec;
    use webfl_shared::rng::derive;
    use webfl_shared::train::{TrainError, TrainPlan};

    fn data() -> Dataset {
        Dataset {
            sample_shape: vec![4],
            classes: 2,
            class_names: vec!["a".into(), "b".into()],
            features: (0..400).map(|i| (i % 7) as f32 * 0.1).collect(),
            labels: (0..100).map(|i| i % 2).collect(),
        }
    }

    /// A backend on a fresh device, and a training run on it after `before` did its worst.
    fn train_after(fault: Option<GpuFault>, before: impl FnOnce(&GpuContext)) -> Result<(), TrainError> {
        let ctx = Arc::new(GpuContext::new_blocking().expect("no wgpu adapter (install mesa-vulkan-drivers)"));
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let global = spec.init_params(&mut derive(1, &[])).unwrap();
        let mut be = GpuBackend::new(ctx.clone(), &spec).unwrap();
        if let Some(fault) = fault {
            be.inject_fault(fault);
        }
        before(&ctx);
        let plan = TrainPlan { batch_size: 1, epochs: 2, ..Default::default() };
        block_on(be.train(&global, &data(), &plan, &mut derive(2, &[]), &mut |_| {})).map(drop)
    }

    fn device_error(r: Result<(), TrainError>) -> String {
        match r {
            Err(TrainError::Device(message)) => message,
            other => panic!("expected a device error, got {other:?}"),
        }
    }

    #[test]
    fn validation_error_is_reported() {
        let e = device_error(train_after(Some(GpuFault::ValidationError), |_| {}));
        assert!(e.contains("validation"), "{e}");
    }

    #[test]
    fn device_loss_is_reported() {
        let e = device_error(train_after(Some(GpuFault::DeviceLost), |_| {}));
        assert!(e.contains("lost"), "{e}");
    }

    /// An error outside any error scope reaches the device's handler, not the call that caused
    /// it: the next training that finishes on the device reports it.
    #[test]
    fn an_error_outside_any_error_scope_fails_the_next_training() {
        let e = device_error(train_after(None, |ctx| {
            // A mapped-at-creation size must be a multiple of 4: invalid by construction.
            let _invalid = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("invalid"),
                size: 3,
                usage: wgpu::BufferUsages::MAP_WRITE,
                mapped_at_creation: true,
            });
        }));
        assert!(e.contains("validation"), "{e}");
    }
}
