//! Task files: what `webfl serve --config TASK.toml` trains. Every field has a default, so an
//! empty file (or no file) is the default task: MNIST, the `2nn` model, FedAvg.
//!
//! ```toml
//! name = "mnist-cnn"
//! model = "cnn"              # mlp | 2nn | cnn | path/to/model.json
//! dataset = "mnist"          # mnist | path/to/data.csv
//! seed = 0                   # initial weights
//!
//! [plan]                     # what each client does with the model
//! epochs = 1
//! batch_size = 10
//! lr = 0.05
//!
//! [strategy]                 # how updates are combined (see `webfl simulate --help`)
//! kind = "fedadam"
//! server_lr = 0.01
//!
//! [rounds]
//! target_reports = 4         # a round closes when this many updates are in ...
//! over_selection = 1.3       # ... of ceil(target · over_selection) selected clients
//! min_reports = 2            # ... or at its deadline with at least this many
//! deadline_secs = 60
//! retry_after_secs = 2
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use webfl_shared::codec::Compression;
use webfl_shared::coordinator::RoundPolicy;
use webfl_shared::data::csv::CsvOptions;
use webfl_shared::model;
use webfl_shared::pipeline::{self, DpMode, UpdateSpec};
use webfl_shared::privacy::PrivacyBudget;
use webfl_shared::privacy::accountant;
use webfl_shared::protocol::DatasetInfo;
use webfl_shared::strategy::CentralDpConfig;
use webfl_shared::strategy::StrategyConfig;
use webfl_shared::train::TrainPlan;

use crate::datasets;
use crate::service::TaskSetup;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    pub model: String,
    pub dataset: String,
    /// CSV only: share of rows held out to evaluate each new version.
    pub test_fraction: f64,
    pub seed: u64,
    pub plan: TrainPlan,
    pub strategy: StrategyConfig,
    pub rounds: RoundsConfig,
    /// Largest accepted update body; default: the model's f32 bytes plus 64 KiB.
    pub upload_limit_bytes: Option<usize>,
    /// How clients compress updates: none, q8, topk:F, randk:F, qsgd:S, topk:F+q8.
    pub compression: Compression,
    pub privacy: PrivacyConfig,
}

/// `[privacy]`: differential privacy of the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// off, local (clients add noise) or central (DP-FedAvg on the server).
    pub mode: DpMode,
    /// L2 clip norm S; required with DP (clipping alone is allowed without).
    pub clip: Option<f64>,
    pub per_layer_clip: bool,
    /// z; or give `target_epsilon` and `max_rounds` to derive it.
    pub noise_multiplier: Option<f64>,
    /// Total ε budget: rounds stop when the next would exceed it.
    pub target_epsilon: Option<f64>,
    /// Rounds the budget is spread over when z is derived from `target_epsilon`.
    pub max_rounds: Option<u64>,
    pub delta: f64,
    /// Central DP: how many clients the round's `target_reports` are drawn from (q = target /
    /// population). The accountant assumes Poisson sampling from this population.
    pub population: Option<u64>,
    /// Central DP: adapt the clip norm to the median update norm (Andrew et al. 2021).
    pub adaptive_clip: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            mode: DpMode::Off,
            clip: None,
            per_layer_clip: false,
            noise_multiplier: None,
            target_epsilon: None,
            max_rounds: None,
            delta: 1e-5,
            population: None,
            adaptive_clip: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundsConfig {
    pub target_reports: usize,
    pub over_selection: f64,
    pub min_reports: usize,
    pub deadline_secs: f64,
    pub retry_after_secs: f64,
}

impl Default for RoundsConfig {
    fn default() -> Self {
        Self { target_reports: 4, over_selection: 1.3, min_reports: 2, deadline_secs: 60.0, retry_after_secs: 2.0 }
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            name: "mnist".into(),
            model: "2nn".into(),
            dataset: "mnist".into(),
            test_fraction: 0.2,
            seed: 0,
            plan: TrainPlan { epochs: 1, batch_size: 10, lr: 0.1, ..TrainPlan::default() },
            strategy: StrategyConfig::default(),
            rounds: RoundsConfig::default(),
            upload_limit_bytes: None,
            compression: Compression::None,
            privacy: PrivacyConfig::default(),
        }
    }
}

impl TaskConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in task file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: TaskConfig = toml::from_str(text)?;
        cfg.plan.validate()?;
        cfg.strategy.validate()?;
        cfg.policy()?.validate()?;
        cfg.update_pipeline()?;
        Ok(cfg)
    }

    pub fn policy(&self) -> Result<RoundPolicy> {
        let ms = |secs: f64, what: &str| -> Result<u64> {
            anyhow::ensure!(secs.is_finite() && secs > 0.0, "{what} must be a positive number of seconds");
            Ok((secs * 1000.0).round() as u64)
        };
        Ok(RoundPolicy {
            target_reports: self.rounds.target_reports,
            over_selection: self.rounds.over_selection,
            min_reports: self.rounds.min_reports,
            deadline_ms: ms(self.rounds.deadline_secs, "rounds.deadline_secs")?,
            retry_after_ms: ms(self.rounds.retry_after_secs, "rounds.retry_after_secs")?,
        })
    }

    /// Loads the data and the model and builds what the HTTP layer serves. Only the held-out
    /// split stays on the server: training data lives on the clients.
    /// The clients' update spec, central DP for the strategy, and the privacy budget.
    pub fn update_pipeline(&self) -> Result<(UpdateSpec, Option<CentralDpConfig>, Option<PrivacyBudget>)> {
        let p = &self.privacy;
        let stages = |z| {
            pipeline::privacy_stages(
                p.mode,
                p.clip,
                p.per_layer_clip,
                z,
                p.adaptive_clip,
                self.rounds.target_reports,
                self.compression.clone(),
            )
        };
        if p.mode == DpMode::Off {
            let (spec, _) = stages(0.0)?;
            return Ok((spec, None, None));
        }
        anyhow::ensure!(p.clip.is_some(), "privacy.mode = {} needs privacy.clip", p.mode);
        let sampling_rate = match p.mode {
            DpMode::Central => {
                let population =
                    p.population.context("central DP needs privacy.population (q = target / population)")?;
                anyhow::ensure!(
                    population >= self.rounds.target_reports as u64,
                    "privacy.population must be at least rounds.target_reports"
                );
                self.rounds.target_reports as f64 / population as f64
            }
            _ => 1.0,
        };
        let z = match (p.noise_multiplier, p.target_epsilon, p.max_rounds) {
            (Some(z), _, _) => z,
            (None, Some(eps), Some(rounds)) => {
                accountant::noise_multiplier_for(eps, sampling_rate, rounds, p.delta, &accountant::DEFAULT_ORDERS)?
            }
            _ => anyhow::bail!("privacy needs noise_multiplier, or target_epsilon with max_rounds"),
        };
        let (spec, central) = stages(z)?;
        let budget = PrivacyBudget {
            mode: p.mode.to_string(),
            noise_multiplier: z,
            sampling_rate,
            delta: p.delta,
            target_epsilon: p.target_epsilon,
        };
        Ok((spec, central, Some(budget)))
    }

    pub fn setup(&self) -> Result<TaskSetup> {
        let split = datasets::load(&self.dataset, &CsvOptions::default(), self.test_fraction, self.seed)?;
        let test = split.test;
        // MNIST is public: demo clients take their partition of its training split from the
        // server. A CSV task's data is the operator's own and is not served.
        let demo_data = (self.dataset == "mnist").then(datasets::mnist_path);
        let dataset = DatasetInfo {
            name: self.dataset.clone(),
            sample_shape: test.sample_shape.clone(),
            classes: test.classes,
            demo_data_url: demo_data.as_ref().map(|_| "/data/mnist.wfds".to_string()),
        };
        let arg = if self.model.ends_with(".json") {
            std::fs::read_to_string(&self.model).with_context(|| format!("reading model spec {}", self.model))?
        } else {
            self.model.clone()
        };
        let spec = model::resolve(&arg, &test.sample_shape, test.classes)?;
        let (update, central_dp, privacy) = self.update_pipeline()?;
        let mut strategy = self.strategy.clone();
        strategy.central_dp = central_dp;
        let initial = spec.init_params(&mut webfl_shared::rng::derive(self.seed, &[1]))?;
        Ok(TaskSetup {
            name: self.name.clone(),
            spec,
            plan: self.plan.clone(),
            policy: self.policy()?,
            strategy,
            test,
            initial,
            upload_limit_bytes: self.upload_limit_bytes,
            dataset,
            demo_data,
            update,
            privacy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webfl_shared::strategy::StrategyKind;

    #[test]
    fn an_empty_file_is_the_default_task() {
        assert_eq!(TaskConfig::from_toml("").unwrap(), TaskConfig::default());
    }

    #[test]
    fn sections_override_defaults() {
        let cfg = TaskConfig::from_toml(
            r#"
            name = "cnn-task"
            model = "cnn"
            [plan]
            epochs = 2
            batch_size = 20
            lr = 0.05
            [strategy]
            kind = "fedadam"
            server_lr = 0.01
            [rounds]
            target_reports = 10
            min_reports = 5
            deadline_secs = 30
            "#,
        )
        .unwrap();
        assert_eq!(cfg.model, "cnn");
        assert_eq!((cfg.plan.epochs, cfg.plan.batch_size), (2, 20));
        assert_eq!(cfg.strategy.kind, StrategyKind::FedAdam);
        let policy = cfg.policy().unwrap();
        assert_eq!((policy.target_reports, policy.min_reports, policy.deadline_ms), (10, 5, 30_000));
        assert_eq!(policy.over_selection, 1.3);
    }

    #[test]
    fn bad_task_files_name_the_problem() {
        let err = |text: &str| format!("{:#}", TaskConfig::from_toml(text).unwrap_err());
        assert!(err("nmae = \"x\"").contains("nmae"));
        assert!(err("[rounds]\nmin_reports = 9").contains("minimum reports"));
        assert!(err("[plan]\nepochs = 0\nbatch_size = 1\nlr = 0.1").contains("epochs"));
        assert!(err("[strategy]\nkind = \"nope\"").contains("nope"));
        assert!(err("[rounds]\ndeadline_secs = -1").contains("deadline_secs"));
    }
}
