//! Local training: the plan a client runs, the SGD optimizer (PyTorch semantics plus the FedProx
//! proximal term), what training and evaluation report, and the input checks every engine runs.
//! The engines themselves are behind [`crate::backend::Backend`].

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::model::ModelError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
