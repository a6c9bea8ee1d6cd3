//! `webfl simulate`: many federated clients in one process, on all cores, running exactly the
//! training ([`webfl_shared::train`]) and aggregation ([`webfl_shared::strategy`]) code that the
//! browser and the server run in production.
//!
//! Determinism: every random choice draws from a stream derived from the seed and its role
//! (initialisation, partition, round selection, each client's training), and client results are
//! aggregated in selection order whatever order the threads finish in, so the same seed and flags
//! give the same history on the same platform.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use webfl_shared::backend::CpuBackend;
use webfl_shared::codec::{Compression, ErrorFeedback};
use webfl_shared::data::csv::{CsvOptions, LabelColumn};
use webfl_shared::data::partition::{Partition, histogram_table, partition};
use webfl_shared::data::{Dataset, Split};
use webfl_shared::model::{self, ModelSpec};
use webfl_shared::params::Params;
use webfl_shared::pipeline::{self, DpMode, UpdateSpec};
use webfl_shared::privacy::accountant;
use webfl_shared::rng::derive;
use webfl_shared::strategy::{CentralDpConfig, Strategy, StrategyConfig, StrategyKind};
use webfl_shared::train::{EvalStats, TrainPlan};

use crate::{datasets, plot};

/// Roles of derived random streams (the first element of each derivation path).
const STREAM_INIT: u64 = 1;
const STREAM_PARTITION: u64 = 2;
const STREAM_SELECT: u64 = 3;
const STREAM_TRAIN: u64 = 4;
const STREAM_NOISE: u64 = 5;
const STREAM_CODEC: u64 = 6;

/// Everything a simulation run needs; readable from TOML and overridable by flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// `mlp`, `2nn`, `cnn` or a path to a model spec JSON.
    pub model: String,
    /// `mnist` or a path to a CSV file.
    pub dataset: String,
    pub clients: usize,
    /// Fraction C of clients selected each round (at least one is).
    pub fraction: f64,
    pub rounds: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// FedProx μ.
    pub mu: f32,
    pub strategy: StrategyKind,
    pub server_lr: Option<f64>,
    pub server_momentum: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub tau: Option<f64>,
    pub trim_fraction: Option<f64>,
    /// Number of Byzantine clients Krum/Bulyan tolerate.
    pub byzantine: Option<usize>,
    pub multi_krum: Option<usize>,
    /// L2 norm bound applied to every update before aggregation.
    pub norm_bound: Option<f64>,
    pub partition: Partition,
    pub seed: u64,
    /// Report the first round reaching this test accuracy.
    pub target_accuracy: Option<f64>,
    /// CSV only: the label column name (default: "label" or the first column).
    pub label_column: Option<String>,
    /// CSV only: share of rows held out for testing.
    pub test_fraction: f64,
    /// Print the per-client class histogram before training.
    pub show_partition: bool,
    /// Differential privacy: `off`, `local` (clients add noise) or `central` (DP-FedAvg).
    pub dp: DpMode,
    /// L2 clip norm S of every update; required with DP, optional (clipping only) without.
    pub clip: Option<f64>,
    /// Clip each tensor to S/√L instead of the whole update to S.
    pub per_layer_clip: bool,
    /// Noise multiplier z (give this or `target_epsilon` with DP).
    pub noise_multiplier: Option<f64>,
    /// ε to spend over all rounds; z is derived from it with the RDP accountant.
    pub target_epsilon: Option<f64>,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// Central DP only: track the clip norm at the median update norm (Andrew et al. 2021).
    pub adaptive_clip: bool,
    /// Update compression: none, q8, topk:F, randk:F, qsgd:S, topk:F+q8.
    pub compress: Compression,
    /// Compare mode: `key=v1,v2,...` entries; runs the cartesian product of the overrides.
    pub compare: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "2nn".into(),
            dataset: "mnist".into(),
            clients: 100,
            fraction: 0.1,
            rounds: 50,
            epochs: 1,
            batch: 10,
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
            mu: 0.0,
            strategy: StrategyKind::FedAvg,
            server_lr: None,
            server_momentum: None,
            beta1: None,
            beta2: None,
            tau: None,
            trim_fraction: None,
            byzantine: None,
            multi_krum: None,
            norm_bound: None,
            partition: Partition::Iid,
            seed: 0,
            target_accuracy: None,
            label_column: None,
            test_fraction: 0.2,
            show_partition: false,
            dp: DpMode::Off,
            clip: None,
            per_layer_clip: false,
            noise_multiplier: None,
            target_epsilon: None,
            delta: 1e-5,
            adaptive_clip: false,
            compress: Compression::None,
            compare: Vec::new(),
        }
    }
}

impl SimConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn plan(&self) -> TrainPlan {
        TrainPlan {
            epochs: self.epochs,
            batch_size: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            prox_mu: self.mu,
        }
    }

    pub fn strategy_config(&self) -> StrategyConfig {
        StrategyConfig {
            kind: self.strategy,
            server_lr: self.server_lr,
            server_momentum: self.server_momentum,
            beta1: self.beta1,
            beta2: self.beta2,
            tau: self.tau,
            trim_fraction: self.trim_fraction.unwrap_or(StrategyConfig::default().trim_fraction),
            byzantine_f: self.byzantine.unwrap_or(StrategyConfig::default().byzantine_f),
            multi_krum_m: self.multi_krum.unwrap_or(StrategyConfig::default().multi_krum_m),
            norm_bound: self.norm_bound,
            central_dp: None,
        }
    }

    /// The noise multiplier: given, or the smallest that keeps `target_epsilon` over all rounds.
    pub fn noise_multiplier(&self) -> Result<f64> {
        match (self.noise_multiplier, self.target_epsilon) {
            (Some(z), None) => Ok(z),
            (None, Some(eps)) => Ok(accountant::noise_multiplier_for(
                eps,
                self.sampling_rate(),
                self.rounds as u64,
                self.delta,
                &accountant::DEFAULT_ORDERS,
            )?),
            (Some(_), Some(_)) => bail!("give --noise-multiplier or --target-epsilon, not both"),
            (None, None) => bail!("--dp {} needs --noise-multiplier or --target-epsilon", self.dp),
        }
    }

    /// Per-round sampling rate the accountant uses: C for central DP; 1 for local DP (a client's
    /// own guarantee; its participation is not hidden from the server).
    pub fn sampling_rate(&self) -> f64 {
        match self.dp {
            DpMode::Central => self.clients_per_round() as f64 / self.clients as f64,
            _ => 1.0,
        }
    }

    /// The client half of the pipeline, central DP's settings for the server half, and the
    /// noise multiplier (`None` without DP).
    pub fn update_pipeline(&self) -> Result<(UpdateSpec, Option<CentralDpConfig>, Option<f64>)> {
        if self.dp != DpMode::Off && self.clip.is_none() {
            bail!("--dp {} needs --clip S", self.dp);
        }
        let z = if self.dp == DpMode::Off { None } else { Some(self.noise_multiplier()?) };
        let (spec, central) = pipeline::privacy_stages(
            self.dp,
            self.clip,
            self.per_layer_clip,
            z.unwrap_or(0.0),
            self.adaptive_clip,
            self.clients_per_round(),
            self.compress.clone(),
        )?;
        Ok((spec, central, z))
    }

    fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            bail!("--fraction must be in (0, 1], got {}", self.fraction);
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        self.plan().validate()?;
        if !(self.delta > 0.0 && self.delta < 1.0) {
            bail!("--delta must be in (0, 1), got {}", self.delta);
        }
        let (_, central, _) = self.update_pipeline()?;
        let mut strategy = self.strategy_config();
        strategy.central_dp = central;
        strategy.validate()?;
        Ok(())
    }

    /// Clients selected per round: max(1, round(C·K)) as in McMahan et al.
    pub fn clients_per_round(&self) -> usize {
        ((self.fraction * self.clients as f64).round() as usize).clamp(1, self.clients)
    }

    /// Applies `key=value` as if it had been written in the TOML file.
    pub fn with_override(&self, key: &str, value: &str) -> Result<Self> {
        let mut table = toml::Table::try_from(self)?;
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        if !table.contains_key(key) && !is_optional_key(key) {
            bail!("cannot compare over unknown setting {key:?}");
        }
        table.insert(key.to_string(), parsed);
        table.try_into().with_context(|| format!("setting {key} = {value}"))
    }
}

/// Optional settings are absent from a serialised config until set.
fn is_optional_key(key: &str) -> bool {
    matches!(
        key,
        "server_lr"
            | "server_momentum"
            | "beta1"
            | "beta2"
            | "tau"
            | "trim_fraction"
            | "byzantine"
            | "multi_krum"
            | "norm_bound"
            | "target_accuracy"
            | "label_column"
            | "clip"
            | "noise_multiplier"
            | "target_epsilon"
    )
}

/// One row of `history.json` / `history.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    pub clients: usize,
    pub examples: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub update_norm: f64,
    /// Bytes uploaded by all clients this round (encoded updates).
    pub bytes_up: usize,
    /// (ε, δ = `delta`) spent so far; `None` without DP.
    pub epsilon: Option<f64>,
    pub seconds: f64,
}

/// The data and model a run trains, prepared once and shared by every configuration of a
/// comparison that uses the same dataset.
pub struct Prepared {
    pub split: Split,
}

pub fn prepare(cfg: &SimConfig) -> Result<Prepared> {
    let csv = CsvOptions {
        label_column: cfg.label_column.clone().map_or(LabelColumn::Auto, LabelColumn::Name),
        ..CsvOptions::default()
    };
    let split = datasets::load(&cfg.dataset, &csv, cfg.test_fraction, cfg.seed)?;
    Ok(Prepared { split })
}

fn resolve_model(cfg: &SimConfig, train: &Dataset) -> Result<ModelSpec> {
    let arg = if cfg.model.ends_with(".json") {
        std::fs::read_to_string(&cfg.model).with_context(|| format!("reading model spec {}", cfg.model))?
    } else {
        cfg.model.clone()
    };
    Ok(model::resolve(&arg, &train.sample_shape, train.classes)?)
}

/// Evaluates on all cores: the test set is cut into chunks evaluated in parallel and combined in
/// order, so the result does not depend on scheduling.
pub fn evaluate(spec: &ModelSpec, params: &Params, data: &Dataset) -> Result<EvalStats> {
    let chunk = data.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    let idx: Vec<usize> = (0..data.len()).collect();
    let parts: Vec<EvalStats> = idx
        .par_chunks(chunk)
        .map(|c| -> Result<EvalStats> {
            let mut be = CpuBackend::new(spec)?;
            Ok(be.evaluate(params, &data.subset(c))?)
        })
        .collect::<Result<_>>()?;
    let n: usize = parts.iter().map(|p| p.examples).sum();
    let w = |f: fn(&EvalStats) -> f64| parts.iter().map(|p| f(p) * p.examples as f64).sum::<f64>() / n as f64;
    Ok(EvalStats { loss: w(|p| p.loss), accuracy: w(|p| p.accuracy), examples: n })
}

/// Runs one configuration and returns its history.
pub fn run(cfg: &SimConfig, prepared: &Prepared, label: &str, show_table: bool) -> Result<Vec<RoundRecord>> {
    cfg.validate()?;
    let Split { train, test } = &prepared.split;
    let spec = resolve_model(cfg, train)?;
    let plan = cfg.plan();
    let (update_spec, central_dp, noise_multiplier) = cfg.update_pipeline()?;
    let mut strategy_config = cfg.strategy_config();
    strategy_config.central_dp = central_dp;
    let mut strategy: Strategy = strategy_config.build()?;
    // Seeded noise: simulations are reproducible; production seeds from platform entropy.
    strategy.set_noise_source(Box::new(ChaCha20Rng::from_rng(&mut derive(cfg.seed, &[STREAM_NOISE]))));
    let mut global = spec.init_params(&mut derive(cfg.seed, &[STREAM_INIT]))?;
    let parts = partition(&train.labels, train.classes, cfg.clients, &cfg.partition, partition_seed(cfg.seed))?;
    if cfg.show_partition {
        println!("{}", histogram_table(&train.labels, train.classes, &parts));
    }
    let client_data: Vec<Dataset> = parts.iter().map(|p| train.subset(p)).collect();
    let per_round = cfg.clients_per_round();
    // Error-feedback residuals live with their clients across rounds, as in the browser.
    let mut memories: Vec<Option<ErrorFeedback>> = (0..cfg.clients)
        .map(|_| cfg.compress.uses_error_feedback().then(|| ErrorFeedback::new(global.len())))
        .collect();
    let mut participations = vec![0u64; cfg.clients];

    let bar = ProgressBar::new(cfg.rounds as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] round {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    if show_table {
        say(
            &bar,
            format!(
                "{:>5} {:>7} {:>10} {:>9} {:>9} {:>8}",
                "round", "clients", "train_loss", "test_loss", "test_acc", "seconds"
            ),
        );
    }
    let mut history = Vec::with_capacity(cfg.rounds);
    for round in 1..=cfg.rounds {
        let started = Instant::now();
        let mut select_rng = derive(cfg.seed, &[STREAM_SELECT, round as u64]);
        let mut selected = sample(&mut select_rng, cfg.clients, per_round).into_vec();
        selected.retain(|&c| !client_data[c].is_empty());
        let taken: Vec<Option<ErrorFeedback>> = selected.iter().map(|&c| memories[c].take()).collect();
        let mut results: Vec<(Vec<u8>, webfl_shared::train::TrainStats, Option<ErrorFeedback>)> = selected
            .par_iter()
            .zip(taken)
            .map(|(&c, mut memory)| -> Result<_> {
                let mut be = CpuBackend::new(&spec)?;
                let mut rng = derive(cfg.seed, &[STREAM_TRAIN, round as u64, c as u64]);
                let (local, stats) = be.train(&global, &client_data[c], &plan, &mut rng, &mut |_| {})?;
                let mut delta = local.delta_from(&global)?;
                let mut noise = ChaCha20Rng::from_rng(&mut derive(cfg.seed, &[STREAM_NOISE, round as u64, c as u64]));
                let mut codec_rng = derive(cfg.seed, &[STREAM_CODEC, round as u64, c as u64]);
                let prepared =
                    pipeline::prepare(&mut delta, &update_spec, memory.as_mut(), &mut noise, &mut codec_rng)?;
                Ok((prepared.body, stats, memory))
            })
            .collect::<Result<_>>()?;
        let mut bytes_up = 0;
        for (&c, (body, stats, memory)) in selected.iter().zip(&mut results) {
            // The server half: decode exactly as `webfl serve` does.
            let update = pipeline::decode(body, global.layout().clone(), &update_spec)?;
            strategy.add(&update, stats.examples as f64)?;
            bytes_up += body.len();
            memories[c] = memory.take();
            participations[c] += 1;
        }
        let epsilon = match noise_multiplier {
            None => None,
            Some(z) => {
                // Central: every round is one subsampled step; local: the most-used client's count.
                let steps = match cfg.dp {
                    DpMode::Central => round as u64,
                    _ => participations.iter().copied().max().unwrap_or(0),
                };
                Some(accountant::epsilon(z, cfg.sampling_rate(), steps, cfg.delta, &accountant::DEFAULT_ORDERS)?.0)
            }
        };
        let summary = strategy.finish_round(&mut global)?;
        let eval = evaluate(&spec, &global, test)?;
        let examples: usize = results.iter().map(|r| r.1.examples).sum();
        let mean = |f: fn(&webfl_shared::train::TrainStats) -> f64| {
            results.iter().map(|r| f(&r.1) * r.1.examples as f64).sum::<f64>() / examples.max(1) as f64
        };
        let record = RoundRecord {
            round,
            clients: results.len(),
            examples,
            train_loss: mean(|s| s.loss),
            train_accuracy: mean(|s| s.accuracy),
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            update_norm: summary.delta_norm,
            bytes_up,
            epsilon,
            seconds: started.elapsed().as_secs_f64(),
        };
        if show_table {
            say(
                &bar,
                format!(
                    "{:>5} {:>7} {:>10.4} {:>9.4} {:>9.4} {:>8.2}",
                    record.round,
                    record.clients,
                    record.train_loss,
                    record.test_loss,
                    record.test_accuracy,
                    record.seconds
                ),
            );
        }
        bar.set_message(format!("acc {:.4}", record.test_accuracy));
        bar.inc(1);
        history.push(record);
    }
    bar.finish();
    Ok(history)
}

/// Prints above the progress bar, or plainly when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
}

/// The partitioner's seed for a run with `seed`; `webfl partition` uses it too, so that it shows
/// exactly the split `simulate` trains on.
pub fn partition_seed(seed: u64) -> u64 {
    derive_u64(seed, STREAM_PARTITION)
}

fn derive_u64(seed: u64, stream: u64) -> u64 {
    rand::RngCore::next_u64(&mut derive(seed, &[stream]))
}

/// First round whose test accuracy reaches `target`.
pub fn rounds_to(history: &[RoundRecord], target: f64) -> Option<usize> {
    history.iter().find(|r| r.test_accuracy >= target).map(|r| r.round)
}

pub fn write_history(dir: &Path, history: &[RoundRecord]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("history.json"), serde_json::to_string_pretty(history)?)?;
    let mut csv = String::from(
        "round,clients,examples,train_loss,train_accuracy,test_loss,test_accuracy,update_norm,bytes_up,epsilon,seconds\n",
    );
    for r in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.round,
            r.clients,
            r.examples,
            r.train_loss,
            r.train_accuracy,
            r.test_loss,
            r.test_accuracy,
            r.update_norm,
            r.bytes_up,
            r.epsilon.map_or(String::new(), |e| e.to_string()),
            r.seconds
        ));
    }
    std::fs::write(dir.join("history.csv"), csv)?;
    Ok(())
}

fn series(history: &[RoundRecord], label: &str) -> (plot::Series, plot::Series) {
    let acc = history.iter().map(|r| (r.round as f64, r.test_accuracy)).collect();
    let loss = history.iter().map(|r| (r.round as f64, r.test_loss)).collect();
    (plot::Series { label: label.to_string(), points: acc }, plot::Series { label: label.to_string(), points: loss })
}

/// Expands compare entries into the cartesian product of labelled configurations. An entry is
/// either `key=v1,v2,...` (one setting, several values) or alternatives joined by `|`, each a
/// set of `key=value` assignments joined by `&`, for settings that only make sense together:
/// `strategy=fedavg | strategy=fedadam&server_lr=0.01`.
pub fn expand_compare(base: &SimConfig) -> Result<Vec<(String, SimConfig)>> {
    let mut runs = vec![(String::new(), base.clone())];
    for entry in &base.compare {
        let alternatives: Vec<Vec<(String, String)>> = if entry.contains('|') {
            entry
                .split('|')
                .map(|alt| alt.split('&').map(assignment).collect::<Result<Vec<_>>>())
                .collect::<Result<_>>()?
        } else {
            let (key, values) = assignment(entry)?;
            values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| vec![(key.clone(), v.to_string())])
                .collect()
        };
        let mut next = Vec::new();
        for (label, cfg) in &runs {
            for alt in &alternatives {
                let mut cfg = cfg.clone();
                for (key, value) in alt {
                    cfg = cfg.with_override(key, value)?;
                }
                let text = alt.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                next.push((if label.is_empty() { text } else { format!("{label} {text}") }, cfg));
            }
        }
        runs = next;
    }
    for (_, cfg) in &mut runs {
        cfg.compare.clear();
    }
    Ok(runs)
}

fn assignment(text: &str) -> Result<(String, String)> {
    let (k, v) = text.split_once('=').with_context(|| format!("--compare {text:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Runs the configuration (or, with `compare`, every configuration of the comparison) and writes
/// histories, CSVs and PNG charts into `out`.
pub fn run_all(base: &SimConfig, out: &Path) -> Result<()> {
    let runs = expand_compare(base)?;
    for (label, cfg) in &runs {
        cfg.validate().with_context(|| {
            if label.is_empty() { "invalid settings".into() } else { format!("invalid settings for {label}") }
        })?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.toml"), toml::to_string(base)?)?;
    if base.compare.is_empty() {
        let prepared = prepare(base)?;
        let history = run(base, &prepared, "simulate", true)?;
        write_history(out, &history)?;
        let (acc, loss) = series(&history, &format!("{} {} {}", base.model, base.strategy, base.partition));
        plot::accuracy_and_loss(&out.join("history.png"), "webfl simulate", &[acc], &[loss])?;
        if let Some(t) = base.target_accuracy {
            match rounds_to(&history, t) {
                Some(r) => println!("reached test accuracy {t} in {r} rounds"),
                None => println!("did not reach test accuracy {t} in {} rounds", history.len()),
            }
        }
        println!("wrote {}", out.join("history.json").display());
        return Ok(());
    }
    let mut prepared: Option<(String, Prepared)> = None;
    let (mut accs, mut losses, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for (label, cfg) in &runs {
        if prepared.as_ref().is_none_or(|(d, _)| *d != cfg.dataset) {
            prepared = Some((cfg.dataset.clone(), prepare(cfg)?));
        }
        let data = &prepared.as_ref().context("dataset not loaded")?.1;
        let history = run(cfg, data, label, false)?;
        let dir: PathBuf = out.join(slug(label));
        write_history(&dir, &history)?;
        let (a, l) = series(&history, label);
        accs.push(a);
        losses.push(l);
        let last = history.last().context("empty history")?;
        let best = history.iter().map(|r| r.test_accuracy).fold(0.0, f64::max);
        let reach = cfg.target_accuracy.map(|t| rounds_to(&history, t));
        let bytes =
            history.iter().map(|r| r.bytes_up as f64 / r.clients.max(1) as f64).sum::<f64>() / history.len() as f64;
        rows.push(SummaryRow {
            label: label.clone(),
            last: last.test_accuracy,
            best,
            reach,
            rounds: cfg.rounds,
            bytes_per_update: bytes,
            epsilon: last.epsilon,
        });
    }
    plot::accuracy_and_loss(&out.join("comparison.png"), "webfl simulate: comparison", &accs, &losses)?;
    write_summary(out, &rows)?;
    // Trade-off charts when the runs differ in what they cost.
    if rows.iter().any(|r| r.epsilon.is_some()) {
        let points: Vec<plot::TradeoffPoint> = rows
            .iter()
            .map(|r| plot::TradeoffPoint {
                label: r.label.clone(),
                x: r.epsilon.unwrap_or(f64::INFINITY),
                accuracy: r.last,
            })
            .collect();
        plot::tradeoff(&out.join("privacy_utility.png"), "privacy vs utility", "ε (δ as configured)", &points)?;
        println!("wrote {}", out.join("privacy_utility.png").display());
    }
    let dense = rows.first().map(|r| r.bytes_per_update);
    if rows.iter().any(|r| Some(r.bytes_per_update) != dense) {
        let points: Vec<plot::TradeoffPoint> = rows
            .iter()
            .map(|r| plot::TradeoffPoint { label: r.label.clone(), x: r.bytes_per_update, accuracy: r.last })
            .collect();
        plot::tradeoff(&out.join("compression_accuracy.png"), "compression vs accuracy", "bytes per update", &points)?;
        println!("wrote {}", out.join("compression_accuracy.png").display());
    }
    println!("wrote {}", out.join("comparison.png").display());
    Ok(())
}

/// One configuration's line in `summary.csv` and the printed table.
struct SummaryRow {
    label: String,
    last: f64,
    best: f64,
    reach: Option<Option<usize>>,
    rounds: usize,
    /// Mean encoded bytes one client uploads per round.
    bytes_per_update: f64,
    /// ε spent by the end (`None` without DP).
    epsilon: Option<f64>,
}

fn write_summary(out: &Path, rows: &[SummaryRow]) -> Result<()> {
    let mut summary =
        String::from("configuration,final_accuracy,best_accuracy,rounds_to_target,bytes_per_update,epsilon\n");
    println!(
        "\n{:<44} {:>8} {:>8} {:>8} {:>14} {:>8}",
        "configuration", "final", "best", "to target", "bytes/update", "ε"
    );
    for r in rows {
        let reach = match r.reach {
            Some(Some(n)) => n.to_string(),
            Some(None) => format!(">{}", r.rounds),
            None => "-".into(),
        };
        let eps = r.epsilon.map_or("∞".to_string(), |e| format!("{e:.3}"));
        println!(
            "{:<44} {:>8.4} {:>8.4} {:>8} {:>14.0} {:>8}",
            r.label, r.last, r.best, reach, r.bytes_per_update, eps
        );
        summary.push_str(&format!(
            "\"{}\",{},{},{reach},{:.0},{}\n",
            r.label.replace('"', "\"\""),
            r.last,
            r.best,
            r.bytes_per_update,
            r.epsilon.map_or(String::new(), |e| e.to_string())
        ));
    }
    std::fs::write(out.join("summary.csv"), summary)?;
    Ok(())
}

fn slug(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}
