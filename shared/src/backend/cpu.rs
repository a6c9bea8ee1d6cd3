//! [`CpuBackend`]: the CPU engine ([`crate::engine::Network`]) as a [`Backend`].

use rand::seq::SliceRandom;

use super::Backend;
use crate::data::Dataset;
use crate::engine::{Mode, Network, Workspace, loss};
use crate::model::{ModelError, ModelSpec};
use crate::params::Params;
use crate::rng::Rng;
use crate::train::{EvalStats, Progress, Sgd, TrainError, TrainPlan, TrainStats, check_fits};

/// Batch size used for evaluation; large enough to amortise GEMM setup.
const EVAL_BATCH: usize = 256;

/// The CPU engine as a [`Backend`]. Its inherent `train` and `evaluate` are synchronous (the
/// CPU never waits), so threaded callers such as the simulator call them directly.
pub struct CpuBackend {
    net: Network,
    ws: Option<Workspace>,
}

impl CpuBackend {
    pub fn new(spec: &ModelSpec) -> Result<Self, ModelError> {
        Ok(Self { net: Network::new(spec)?, ws: None })
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    fn check_data(&self, data: &Dataset) -> Result<(), TrainError> {
        check_fits(data, self.net.input_len(), self.net.classes())
    }

    fn workspace(&mut self, capacity: usize) -> Workspace {
        match self.ws.take() {
            Some(ws) if ws.capacity() >= capacity => ws,
            _ => self.net.workspace(capacity),
        }
    }

    pub fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError> {
        plan.validate()?;
        self.check_data(data)?;
        global.check_same_layout(&Params::zeros(self.net.layout().clone()))?;
        if data.is_empty() {
            return Err(TrainError::Empty);
        }
        let n = data.len();
        let batch = plan.batch_size.min(n);
        let mut ws = self.workspace(batch);
        let mut params = global.as_slice().to_vec();
        let mut grads = vec![0.0; params.len()];
        let mut sgd = Sgd::default();
        let mut order: Vec<usize> = (0..n).collect();
        let steps_per_epoch = n.div_ceil(batch);
        let total_steps = steps_per_epoch * plan.epochs;
        let sample_len = data.sample_len();
        let mut labels = Vec::with_capacity(batch);
        let mut stats = TrainStats { examples: n, ..Default::default() };
        for epoch in 0..plan.epochs {
            order.shuffle(rng);
            let (mut loss_sum, mut correct) = (0.0, 0);
            for (i, chunk) in order.chunks(batch).enumerate() {
                let input = ws.input_mut(chunk.len());
                labels.clear();
                for (slot, &idx) in input.chunks_exact_mut(sample_len).zip(chunk) {
                    slot.copy_from_slice(data.sample(idx));
                    labels.push(data.labels[idx]);
                }
                let (loss, ok) = self.net.loss_and_grad(&params, &mut ws, &labels, rng, &mut grads);
                if !loss.is_finite() {
                    self.ws = Some(ws);
                    return Err(TrainError::Diverged { step: stats.steps });
                }
                sgd.step(plan, &mut params, &grads, global.as_slice());
                stats.steps += 1;
                loss_sum += loss * chunk.len() as f64;
                correct += ok;
                let seen = (i * batch + chunk.len()) as f64;
                progress(Progress { epoch, step: stats.steps, total_steps, loss: loss_sum / seen });
            }
            stats.loss = loss_sum / n as f64;
            stats.accuracy = correct as f64 / n as f64;
        }
        self.ws = Some(ws);
        let local = Params::from_vec(global.layout().clone(), params)?;
        Ok((local, stats))
    }

    pub fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError> {
        self.check_data(data)?;
        if data.is_empty() {
            return Err(TrainError::Empty);
        }
        let cap = EVAL_BATCH.min(data.len());
        let mut ws = self.workspace(cap);
        let classes = self.net.classes();
        let (mut loss_sum, mut correct) = (0.0, 0);
        let sample_len = data.sample_len();
        for start in (0..data.len()).step_by(cap) {
            let end = (start + cap).min(data.len());
            ws.input_mut(end - start).copy_from_slice(&data.features[start * sample_len..end * sample_len]);
            let logits = self.net.forward(params.as_slice(), &mut ws, end - start, Mode::Eval);
            let (loss, ok) = loss::softmax_cross_entropy(logits, &data.labels[start..end], classes, None);
            loss_sum += loss * (end - start) as f64;
            correct += ok;
        }
        self.ws = Some(ws);
        let n = data.len() as f64;
        Ok(EvalStats { loss: loss_sum / n, accuracy: correct as f64 / n, examples: data.len() })
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    async fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError> {
        CpuBackend::train(self, global, data, plan, rng, progress)
    }

    async fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError> {
        CpuBackend::evaluate(self, params, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive;

    fn toy_data() -> Dataset {
        // Two linearly separable blobs; structure only matters for determinism/decrease checks.
        let mut rng = derive(11, &[]);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..64 {
            let c = (i % 2) as u32;
            let centre = if c == 0 { -1.0 } else { 1.0 };
            for _ in 0..4 {
                features.push(centre + rand::Rng::random_range(&mut rng, -0.5..0.5));
            }
            labels.push(c);
        }
        Dataset { sample_shape: vec![4], classes: 2, class_names: vec!["a".into(), "b".into()], features, labels }
    }

    #[test]
    fn training_is_deterministic_and_reduces_loss() {
        let data = toy_data();
        let spec = ModelSpec::builtin("mlp", &[4], 2).unwrap();
        let global = spec.init_params(&mut derive(1, &[])).unwrap();
        let plan = TrainPlan { epochs: 5, batch_size: 8, lr: 0.1, momentum: 0.5, ..Default::default() };
        let run = || {
            let mut be = CpuBackend::new(&spec).unwrap();
            let before = be.evaluate(&global, &data).unwrap();
            let mut steps = 0;
            let (local, stats) = be.train(&global, &data, &plan, &mut derive(2, &[]), &mut |p| steps = p.step).unwrap();
            let after = be.evaluate(&local, &data).unwrap();
            assert_eq!(steps, 40);
            assert_eq!(stats.steps, 40);
            (before, after, local)
        };
        let (before, after, a) = run();
        let (_, _, b) = run();
        assert_eq!(a, b, "same seed must give identical weights");
        assert!(after.loss < before.loss * 0.5, "{before:?} -> {after:?}");
        assert_eq!(after.accuracy, 1.0);
    }

    #[test]
    fn fedprox_keeps_the_model_closer_to_the_global_one() {
        let data = toy_data();
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let global = spec.init_params(&mut derive(1, &[])).unwrap();
        let drift = |mu| {
            let plan = TrainPlan { epochs: 5, batch_size: 8, lr: 0.1, prox_mu: mu, ..Default::default() };
            let mut be = CpuBackend::new(&spec).unwrap();
            let (local, _) = be.train(&global, &data, &plan, &mut derive(2, &[]), &mut |_| {}).unwrap();
            local.delta_from(&global).unwrap().l2_norm()
        };
        assert!(drift(1.0) < 0.8 * drift(0.0));
    }

    #[test]
    fn bad_plans_and_mismatched_data_are_rejected() {
        let data = toy_data();
        let spec = ModelSpec::builtin("2nn", &[5], 2).unwrap();
        let global = spec.init_params(&mut derive(1, &[])).unwrap();
        let mut be = CpuBackend::new(&spec).unwrap();
        let err = be.train(&global, &data, &TrainPlan::default(), &mut derive(0, &[]), &mut |_| {}).unwrap_err();
        assert_eq!(err, TrainError::InputMismatch { model: 5, data: 4 });
        let plan = TrainPlan { lr: f32::NAN, ..Default::default() };
        assert!(matches!(plan.validate(), Err(TrainError::BadPlan(_))));
    }
}
