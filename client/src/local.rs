//! One round of local training, free of any browser API so it is tested natively too:
//! global model bytes in, update bytes out.

use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::rng;
use webfl_shared::train::{Backend, CpuBackend, Progress, TrainPlan, TrainStats};

use crate::ClientError;

/// The training engine for the task's model, kept across rounds so buffers are reused.
///
/// Backend choice lives here: today the CPU engine; a WebGPU engine slots in behind the same
/// [`Backend`] trait, chosen when the trainer is built.
pub struct Trainer {
    spec: ModelSpec,
    backend: Box<dyn Backend>,
}

/// What a finished local round hands to the update pipeline.
pub struct LocalUpdate {
    /// `Δ = w_local − w_global`.
    pub delta: Params,
    pub stats: TrainStats,
}

impl Trainer {
    pub fn new(spec: &ModelSpec) -> Result<Self, ClientError> {
        let backend = CpuBackend::new(spec).map_err(|e| ClientError::Task(e.to_string()))?;
        Ok(Self { spec: spec.clone(), backend: Box::new(backend) })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Trains from the global model in `global_bytes` (safetensors) on `data` following `plan`;
    /// `seed` drives shuffling and dropout.
    pub fn train_round(
        &mut self,
        global_bytes: &[u8],
        data: &Dataset,
        plan: &TrainPlan,
        seed: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<LocalUpdate, ClientError> {
        let layout = self.spec.layout().map_err(|e| ClientError::Task(e.to_string()))?;
        let global = Params::from_safetensors(std::sync::Arc::new(layout), global_bytes)
            .map_err(|e| ClientError::Protocol(format!("the downloaded model does not fit the task: {e}")))?;
        let mut rng = rng::derive(seed, &[]);
        let (local, stats) = self
            .backend
            .train(&global, data, plan, &mut rng, progress)
            .map_err(|e| ClientError::Training(e.to_string()))?;
        let delta = local.delta_from(&global).map_err(|e| ClientError::Training(e.to_string()))?;
        Ok(LocalUpdate { delta, stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let update = trainer
            .train_round(&global.to_safetensors().unwrap(), &toy_data(40), &plan, 7, &mut |p| steps = p.step)
            .unwrap();
        assert_eq!(steps, 16);
        assert_eq!(update.stats.examples, 40);
        assert!(update.delta.l2_norm() > 0.0);
        // Same seed, same update: the round is a pure function of its inputs.
        let again =
            trainer.train_round(&global.to_safetensors().unwrap(), &toy_data(40), &plan, 7, &mut |_| {}).unwrap();
        assert_eq!(again.delta.as_slice(), update.delta.as_slice());
    }

    #[test]
    fn a_model_of_another_shape_is_refused() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let other = ModelSpec::builtin("2nn", &[5], 2).unwrap();
        let bytes = other.init_params(&mut rng::derive(0, &[1])).unwrap().to_safetensors().unwrap();
        let err = Trainer::new(&spec)
            .unwrap()
            .train_round(&bytes, &toy_data(10), &TrainPlan::default(), 0, &mut |_| {})
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }
}
