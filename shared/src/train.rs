//! Local training: the plan a client runs, the SGD optimizer (PyTorch semantics plus the FedProx
//! proximal term), evaluation, and the [`Backend`] seam where the GPU engine will plug in.

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::engine::{Mode, Network, Workspace, loss};
use crate::model::{ModelError, ModelSpec};
use crate::params::Params;
use crate::rng::Rng;
use rand::seq::SliceRandom;

/// What a client does with the global model in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args), command(next_help_heading = "Training plan [plan]"))]
pub struct TrainPlan {
    /// Local epochs per round.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub epochs: usize,
    /// Local minibatch size.
    #[cfg_attr(feature = "cli", arg(long, visible_alias = "batch", default_value_t = 10))]
    pub batch_size: usize,
    /// Local SGD learning rate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.1))]
    pub lr: f32,
    /// Local SGD momentum, in [0, 1).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub momentum: f32,
    /// L2 weight decay.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub weight_decay: f32,
    /// FedProx μ: adds μ/2‖w − w_global‖² to the local objective (Li et al. 2020). 0 disables it.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long, visible_alias = "mu", default_value_t = 0.0))]
    pub prox_mu: f32,
}

impl Default for TrainPlan {
    /// The seed's plan: one epoch of SGD, lr 0.01, batch 32.
    fn default() -> Self {
        Self { epochs: 1, batch_size: 32, lr: 0.01, momentum: 0.0, weight_decay: 0.0, prox_mu: 0.0 }
    }
}

impl TrainPlan {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::BadPlan(what.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be a positive number");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be non-negative");
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return bad("FedProx mu must be non-negative");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("invalid training plan: {0}")]
    BadPlan(String),
    #[error("dataset samples have {data} values but the model expects {model}")]
    InputMismatch { model: usize, data: usize },
    #[error("dataset has {data} classes but the model predicts {model}")]
    ClassMismatch { model: usize, data: usize },
    #[error("no training data")]
    Empty,
    #[error("training diverged (loss is not finite) at step {step}")]
    Diverged { step: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Params(#[from] crate::params::ParamsError),
    /// A failure of the device running a non-CPU backend (lost, out of memory, ...).
    #[error("device error: {0}")]
    Device(String),
}

/// Stochastic gradient descent with PyTorch's `torch.optim.SGD` semantics (dampening 0, no
/// Nesterov): `d = g + wd·w + μ(w − w_global)`, `buf = momentum·buf + d`, `w −= lr·buf`.
#[derive(Clone, Debug, Default)]
pub struct Sgd {
    buf: Vec<f32>,
}

impl Sgd {
    pub fn step(&mut self, plan: &TrainPlan, params: &mut [f32], grads: &[f32], anchor: &[f32]) {
        if self.buf.len() != params.len() {
            self.buf = vec![0.0; params.len()];
        }
        let (lr, m, wd, mu) = (plan.lr, plan.momentum, plan.weight_decay, plan.prox_mu);
        for (((w, &g), b), &w0) in params.iter_mut().zip(grads).zip(&mut self.buf).zip(anchor) {
            let d = g + wd * *w + mu * (*w - w0);
            // A zero buffer makes the first step `buf = d`, which is PyTorch's initialisation.
            *b = m * *b + d;
            *w -= lr * *b;
        }
    }
}

/// Training progress, reported after every step (drives progress bars).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    /// Mean loss of the current epoch so far.
    pub loss: f64,
}

/// What local training did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    /// Number of local examples (the FedAvg weight).
    pub examples: usize,
    pub steps: usize,
    /// Mean loss and accuracy over the last epoch's batches, as seen during training.
    pub loss: f64,
    pub accuracy: f64,
}

/// Loss and accuracy of a model on a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    pub loss: f64,
    pub accuracy: f64,
    pub examples: usize,
}

/// A training engine. The CPU engine is the reference; a GPU engine keeps parameters on the
/// device for the whole of `train` and reads them back once at the end.
pub trait Backend {
    fn name(&self) -> &'static str;

    /// Trains a copy of `global` on `data` following `plan`; returns the local model.
    fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError>;

    fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError>;
}

/// Whether `data` fits a model with `input_len` values per sample and `classes` outputs; every
/// backend checks this before training or evaluating.
pub fn check_fits(data: &Dataset, input_len: usize, classes: usize) -> Result<(), TrainError> {
    if data.sample_len() != input_len {
        return Err(TrainError::InputMismatch { model: input_len, data: data.sample_len() });
    }
    if data.classes > classes {
        return Err(TrainError::ClassMismatch { model: classes, data: data.classes });
    }
    Ok(())
}

/// Batch size used for evaluation; large enough to amortise GEMM setup.
const EVAL_BATCH: usize = 256;

/// The CPU engine as a [`Backend`].
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
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn train(
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

    fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive;

    #[test]
    fn sgd_matches_pytorch_update_rule() {
        // Two steps of torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01) by hand, plus
        // FedProx μ=0.5 around anchor 0.2:
        // step 1: d = 0.5 + 0.01·1 + 0.5·(1 − 0.2) = 0.91; buf = 0.91; w = 1 − 0.091 = 0.909
        // step 2: d = 0.5 + 0.00909 + 0.5·0.709 = 0.86359; buf = 0.819 + 0.86359 = 1.68259;
        //         w = 0.909 − 0.168259 = 0.740741
        let plan = TrainPlan { lr: 0.1, momentum: 0.9, weight_decay: 0.01, prox_mu: 0.5, ..Default::default() };
        let mut sgd = Sgd::default();
        let mut w = [1.0f32];
        sgd.step(&plan, &mut w, &[0.5], &[0.2]);
        assert!((w[0] - 0.909).abs() < 1e-6, "{}", w[0]);
        sgd.step(&plan, &mut w, &[0.5], &[0.2]);
        assert!((w[0] - 0.740_741).abs() < 1e-6, "{}", w[0]);
    }

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
