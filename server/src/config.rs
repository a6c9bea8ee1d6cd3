//! Task configuration, defined once: the same [`TaskConfig`] is a task file for
//! `webfl serve --config`, a configuration for `webfl simulate --config`, and (through
//! `clap::Args` derived on the same sections) the flags of `webfl simulate`. Every setting has a
//! default, written once in its `#[arg(default_value…)]`; [`TaskConfig::default`] is an empty
//! command line, which is also what an empty file means.
//!
//! ```toml
//! name = "mnist-cnn"
//! model = "cnn"              # mlp | 2nn | cnn | path/to/model.json
//! dataset = "mnist"          # mnist | path/to/data.csv
//! seed = 0                   # initial weights, partition, simulated behaviour
//! compression = "none"       # none | q8 | topk:F | randk:F | qsgd:S | topk:F+q8
//!
//! [plan]                     # what each client does with the model
//! epochs = 1
//! batch_size = 10
//! lr = 0.05
//!
//! [strategy]                 # how updates are combined
//! kind = "fedadam"
//! server_lr = 0.01
//!
//! [rounds]
//! target_reports = 4         # a round closes when this many updates are in ...
//! over_selection = 1.3       # ... of ceil(target · over_selection) selected clients
//! min_reports = 2            # ... or at its deadline with at least this many
//! deadline_secs = 60
//! retry_after_secs = 2
//!
//! [privacy]
//! mode = "central"           # off | local | central
//! clip = 1.0
//! target_epsilon = 4
//! max_rounds = 100
//! population = 1000
//!
//! [secure_aggregation]       # SecAgg+: the server sees only each round's sum (simulate: --secagg)
//! threshold = 4              # t: the fewest clients a sum is made of [default: a majority of k + 1]
//! neighbours = 6             # k [default: 2⌈log2 n⌉ for a cohort of n]
//! cohort_secs = 10           # the cohort is fixed when the selection is full, or after this
//!
//! [simulation]               # `webfl simulate` only; `webfl serve` ignores it
//! clients = 100
//! rounds = 50
//! partition = "dirichlet:0.3"
//! stragglers = "0.2:10"
//! ```
//!
//! Flags override a file: [`TaskConfig::from_matches`] overlays exactly the flags given on the
//! command line (`ValueSource::CommandLine`) onto the file's values. `--compare` keys name the
//! same settings, by field name (`lr`, `target_reports`) or by flag (`batch`, `strategy`, `dp`).

use std::path::Path;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webfl_shared::codec::Compression;
use webfl_shared::coordinator::{RoundPolicy, SecAggPolicy};
use webfl_shared::data::Split;
use webfl_shared::data::csv::{CsvOptions, LabelColumn};
use webfl_shared::data::partition::Partition;
use webfl_shared::model::{self, ModelSpec};
use webfl_shared::params::Params;
use webfl_shared::pipeline::{self, DpMode, UpdateSpec};
use webfl_shared::privacy::PrivacyBudget;
use webfl_shared::privacy::accountant;
use webfl_shared::protocol::DatasetInfo;
use webfl_shared::rng::{self, Stream};
use webfl_shared::strategy::{CentralDpConfig, StrategyConfig};
use webfl_shared::train::TrainPlan;

use crate::datasets;
use crate::service::TaskSetup;

/// Room for the safetensors header on top of the raw f32 payload when sizing the upload limit.
const UPLOAD_HEADER_SLACK_BYTES: usize = 64 * 1024;

/// The largest update body a task accepts: the configured limit, or by default the model's f32
/// bytes plus room for a safetensors header (`webfl serve` and `webfl simulate` alike).
pub fn upload_limit_bytes(configured: Option<usize>, params: usize) -> usize {
    configured.unwrap_or(params * 4 + UPLOAD_HEADER_SLACK_BYTES)
}
use crate::simulate::behaviour::{Byzantine, ClientSpeed, Stragglers};

/// A task: what `webfl serve` trains and what `webfl simulate` simulates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Task")]
pub struct TaskConfig {
    /// Task name: the store keeps the task's versions under it.
    #[arg(long, default_value = "mnist")]
    pub name: String,
    /// Model: mlp | 2nn | cnn | PATH.json (a model spec).
    #[arg(long, default_value = "2nn")]
    pub model: String,
    /// Dataset: mnist | PATH.csv.
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// CSV only: share of rows held out to evaluate each new version.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// CSV only: the label column [default: `label`, else the first column].
    #[arg(long)]
    pub label_column: Option<String>,
    /// Seed of the initial model, the partition and every simulated random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How clients compress updates: none | q8 | topk:F | randk:F | qsgd:S | topk:F+q8.
    #[arg(long = "compress", default_value = "none")]
    pub compression: Compression,
    /// Largest accepted update body in bytes [default: the model's f32 bytes plus 64 KiB].
    #[arg(long)]
    pub upload_limit_bytes: Option<usize>,
    #[command(flatten)]
    pub plan: TrainPlan,
    #[command(flatten)]
    pub strategy: StrategyConfig,
    #[command(flatten)]
    pub rounds: RoundsConfig,
    #[command(flatten)]
    pub privacy: PrivacyConfig,
    /// `[secure_aggregation]`: present (or `--secagg`), every round sums its updates by SecAgg+.
    #[command(flatten)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecAggPolicy>,
    #[command(flatten)]
    pub simulation: SimulationConfig,
    /// `webfl serve` only, and not part of the task: changing it keeps the task's history.
    #[arg(skip)]
    pub server: ServerConfig,
}

/// `[rounds]`: how synchronous rounds are run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Rounds [rounds]")]
pub struct RoundsConfig {
    /// Updates that close a round (clients per round).
    #[arg(long, default_value_t = 4)]
    pub target_reports: usize,
    /// Clients selected per round = ceil(target_reports · over_selection).
    #[arg(long, default_value_t = 1.3)]
    pub over_selection: f64,
    /// Fewest updates a round is aggregated from when its deadline passes.
    #[arg(long, default_value_t = 2)]
    pub min_reports: usize,
    /// Seconds a round stays open.
    #[arg(long, default_value_t = 60.0)]
    pub deadline_secs: f64,
    /// Seconds a client that cannot be selected now waits before checking in again.
    #[arg(long, default_value_t = 2.0)]
    pub retry_after_secs: f64,
    /// Largest FedAvg weight (local examples) one update may claim; more is refused
    /// [default: the size of the task's training data].
    #[arg(long)]
    pub max_examples: Option<u64>,
}

/// `[privacy]`: differential privacy of the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Privacy [privacy]")]
pub struct PrivacyConfig {
    /// off | local (clients add noise) | central (DP-FedAvg on the server).
    #[arg(long = "dp", default_value = "off")]
    pub mode: DpMode,
    /// L2 clip norm S of every update; required with DP (clipping alone is allowed without)
    /// [default: none].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Clip each tensor to S/√L instead of the whole update to S.
    #[arg(long)]
    pub per_layer_clip: bool,
    /// Noise multiplier z; or give --target-epsilon (and --max-rounds) to derive it [default: none].
    #[arg(long, conflicts_with = "target_epsilon")]
    pub noise_multiplier: Option<f64>,
    /// Total ε budget: rounds stop when the next would exceed it [default: none].
    #[arg(long)]
    pub target_epsilon: Option<f64>,
    /// Rounds the budget is spread over when z is derived [simulate: --rounds].
    #[arg(long)]
    pub max_rounds: Option<u64>,
    /// δ of the reported (ε, δ).
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Central DP: clients the round's target_reports are drawn from (q = target / population)
    /// [simulate: --clients].
    #[arg(long)]
    pub population: Option<u64>,
    /// Central DP: adapt the clip norm to the median update norm (Andrew et al. 2021).
    #[arg(long)]
    pub adaptive_clip: bool,
}

/// `[simulation]`: the simulated population and how its clients behave (`webfl simulate` only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Simulation [simulation]")]
pub struct SimulationConfig {
    /// Simulated clients (the population rounds select from).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rounds to run (settled rounds: closed or abandoned).
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
    /// How the training data is split among clients: iid | shards:K | dirichlet:ALPHA | quantity:SIGMA.
    #[arg(long, default_value = "iid")]
    pub partition: Partition,
    /// Report the first round that reaches this test accuracy (0..1) [default: none].
    #[arg(long)]
    pub target_accuracy: Option<f64>,
    /// Print each client's class histogram before training.
    #[arg(long)]
    pub show_partition: bool,
    /// Training speed of a client at factor 1, in examples per second.
    #[arg(long, default_value_t = 2000.0)]
    pub samples_per_s: f64,
    /// Per-client speed factor: fixed (1) | lognormal:SIGMA (e^N(0, σ²)).
    #[arg(long, default_value = "fixed")]
    pub client_speed: ClientSpeed,
    /// FRACTION:FACTOR: that share of clients trains FACTOR× slower (e.g. 0.2:10) | none.
    #[arg(long, default_value = "none")]
    pub stragglers: Stragglers,
    /// Round-trip network latency of every exchange, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub latency_ms: f64,
    /// Network bandwidth of every client, in megabits per second (both directions).
    #[arg(long, default_value_t = 20.0)]
    pub bandwidth_mbps: f64,
    /// Probability that a selected client vanishes mid-round (never uploads, comes back later).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// The engine simulated clients train on: cpu (all cores, one client per core) or gpu (the
    /// wgpu engine, one client at a time; falls back to the CPU, saying why, without a GPU).
    #[arg(long, value_enum, default_value_t = SimBackend::Cpu)]
    pub backend: SimBackend,
    /// Byzantine clients: FRACTION:sign-flip[:SCALE] (upload −SCALE·Δ) | FRACTION:scale:FACTOR
    /// (upload FACTOR·Δ) | none.
    #[arg(long, default_value = "none")]
    pub attack: Byzantine,
}

/// `[server]`: how `webfl serve` guards itself and whom it serves — connections, timeouts, rate
/// limits, operator access, CORS and which versions the store keeps. Rates are per minute; 0
/// means unlimited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Open connections at most (clamped below the process's descriptor limit); beyond it new
    /// connections are answered `503` with `Retry-After` and closed.
    pub max_connections: usize,
    /// Seconds a connection has to send a request's headers; also how long it may sit idle
    /// between requests.
    pub header_timeout_secs: f64,
    /// Seconds a request body has to arrive in full.
    pub body_timeout_secs: f64,
    /// Upload bodies held in memory at once (being received or waiting for a core), in MiB.
    /// When it is full the server stops reading upload bodies until room frees (TCP slows the
    /// senders); an upload that waits longer than `body_timeout_secs` is answered `503` with
    /// `Retry-After`.
    pub upload_buffer_mib: usize,
    /// New identities one address may register per minute.
    pub registrations_per_minute: u32,
    /// Check-ins one client may make per minute (a polling browser makes about 30).
    pub checkins_per_minute: u32,
    /// Uploads one client may make per minute.
    pub uploads_per_minute: u32,
    /// Check-ins and uploads one address may make per minute, all its clients together (many
    /// browsers can share an address behind NAT).
    pub requests_per_minute_per_address: u32,
    /// A client not seen for this many hours is forgotten (it registers anew if it returns).
    pub forget_clients_after_hours: f64,
    /// Bearer token for the operator endpoints (`/api/clients`, `/metrics`); the environment
    /// variable `WEBFL_OPERATOR_TOKEN` overrides it. Without one they answer only loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<String>,
    /// Other origins (e.g. `https://example.org`) whose pages may call the client API; the
    /// server's own pages always may.
    pub cors_origins: Vec<String>,
    /// The store keeps the last this many model versions ...
    pub keep_last_versions: u64,
    /// ... and every version divisible by this (0: no others). Version 0 is always kept.
    pub keep_every_versions: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            header_timeout_secs: 15.0,
            body_timeout_secs: 30.0,
            upload_buffer_mib: 32,
            registrations_per_minute: 60,
            checkins_per_minute: 120,
            uploads_per_minute: 20,
            requests_per_minute_per_address: 12_000,
            forget_clients_after_hours: 72.0,
            operator_token: None,
            cors_origins: Vec::new(),
            keep_last_versions: 20,
            keep_every_versions: 50,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.max_connections > 0, "server.max_connections must be at least 1");
        anyhow::ensure!(self.upload_buffer_mib > 0, "server.upload_buffer_mib must be at least 1");
        for (what, secs) in [
            ("server.header_timeout_secs", self.header_timeout_secs),
            ("server.body_timeout_secs", self.body_timeout_secs),
            ("server.forget_clients_after_hours", self.forget_clients_after_hours),
        ] {
            anyhow::ensure!(secs.is_finite() && secs > 0.0, "{what} must be a positive number");
        }
        anyhow::ensure!(self.keep_last_versions >= 1, "server.keep_last_versions must be at least 1");
        for origin in &self.cors_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.trim_end_matches('/').contains(['*', ' '])
                && origin.matches('/').count() == 2;
            anyhow::ensure!(ok, "server.cors_origins: {origin:?} is not an origin like \"https://example.org\"");
        }
        Ok(())
    }

    /// The operator token: `WEBFL_OPERATOR_TOKEN`, else the task file's.
    pub fn operator_token(&self) -> Option<String> {
        std::env::var("WEBFL_OPERATOR_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| self.operator_token.clone())
    }
}

/// The training engine of `webfl simulate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SimBackend {
    #[default]
    Cpu,
    Gpu,
}

/// A section's defaults: its flags parsed from an empty command line.
fn parsed_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd.try_get_matches_from(std::iter::empty::<&str>());
    match matches.and_then(|m| T::from_arg_matches(&m)) {
        Ok(v) => v,
        // The defaults are constants of this file; a unit test parses them.
        Err(e) => panic!("the built-in defaults do not parse: {e}"),
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        parsed_defaults()
    }
}

impl Default for RoundsConfig {
    fn default() -> Self {
        parsed_defaults()
    }
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        parsed_defaults()
    }
}

impl Default for SimulationConfig {
    fn default() -> Self {
        parsed_defaults()
    }
}

/// The sections and the clap ids of their settings (an id is the serde field name).
fn sections() -> Vec<(Option<&'static str>, clap::Command)> {
    let cmd = |name: &'static str| clap::Command::new(name);
    let sections = vec![
        (Some("plan"), TrainPlan::augment_args(cmd("plan"))),
        (Some("strategy"), StrategyConfig::augment_args(cmd("strategy"))),
        (Some("rounds"), RoundsConfig::augment_args(cmd("rounds"))),
        (Some("privacy"), PrivacyConfig::augment_args(cmd("privacy"))),
        (Some("secure_aggregation"), SecAggPolicy::augment_args(cmd("secure_aggregation"))),
        (Some("simulation"), SimulationConfig::augment_args(cmd("simulation"))),
    ];
    let nested: Vec<String> =
        sections.iter().flat_map(|(_, c)| c.get_arguments().map(|a| a.get_id().to_string())).collect();
    let mut top = cmd("task");
    for arg in TaskConfig::augment_args(cmd("task")).get_arguments() {
        if !nested.iter().any(|id| id == arg.get_id().as_str()) {
            top = top.arg(arg.clone());
        }
    }
    let mut all = vec![(None, top)];
    all.extend(sections);
    all
}

/// Where a setting lives: its section (`None` for the top level) and its field name. `key` is
/// the field name or the flag (`batch`, `dp`, `strategy`, `compress`), with `-` or `_`.
pub fn locate(key: &str) -> Option<(Option<&'static str>, String)> {
    let key = key.trim().replace('-', "_");
    for (section, cmd) in sections() {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let flags = arg.get_long_and_visible_aliases().unwrap_or_default();
            if id == key || flags.iter().any(|f| f.replace('-', "_") == key) {
                return Some((section, id.to_string()));
            }
        }
    }
    None
}

fn slot<'a>(value: &'a mut Value, section: Option<&str>) -> Result<&'a mut serde_json::Map<String, Value>> {
    let obj = value.as_object_mut().context("a task configuration is a table")?;
    let obj = match section {
        None => obj,
        Some(s) => obj
            .entry(s.to_string())
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()
            .with_context(|| format!("[{s}] must be a table"))?,
    };
    Ok(obj)
}

/// Writes `file` over `base`, table by table.
fn merge(base: &mut Value, file: Value) {
    match (base, file) {
        (Value::Object(base), Value::Object(file)) => {
            for (k, v) in file {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, file) => *base = file,
    }
}

impl TaskConfig {
    /// The settings that define the task, as the store keeps them: everything but `[server]`,
    /// which can change between runs (and holds the operator's secret).
    pub fn identity_json(&self) -> Result<String> {
        // Through text, so f32 settings keep their shortest form (0.1, not 0.10000000149011612).
        let mut value: Value = serde_json::from_str(&serde_json::to_string(self)?)?;
        if let Some(table) = value.as_object_mut() {
            table.remove("server");
        }
        Ok(value.to_string())
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in task file {}", path.display()))
    }

    /// A task file: every setting it leaves out keeps its default.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg = Self::from_value(Self::toml_value(text)?)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The defaults with a task file's values written over them, as a JSON value.
    fn toml_value(text: &str) -> Result<Value> {
        let table: toml::Table = toml::from_str(text)?;
        let mut value = serde_json::to_value(Self::default())?;
        merge(&mut value, serde_json::to_value(table)?);
        Ok(value)
    }

    fn from_value(value: Value) -> Result<Self> {
        Ok(serde_json::from_value(value)?)
    }

    /// `webfl simulate`'s settings: the file (or the defaults), then every flag that was given
    /// on the command line. `matches` are the subcommand's, which flattens [`TaskConfig`].
    pub fn from_matches(matches: &ArgMatches, file: Option<&Path>) -> Result<Self> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Self::toml_value(&text).with_context(|| format!("in task file {}", path.display()))?
            }
            None => serde_json::to_value(Self::default())?,
        };
        let flags = serde_json::to_value(Self::from_arg_matches(matches)?)?;
        // Secure aggregation is on when any of its flags (`--secagg` itself sets none) is given.
        if flags.get("secure_aggregation").is_some_and(Value::is_object) {
            slot(&mut value, Some("secure_aggregation"))?;
        }
        for (section, cmd) in sections() {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches.value_source(id) != Some(ValueSource::CommandLine) {
                    continue;
                }
                let given = match section {
                    None => flags.get(id),
                    Some(s) => flags.get(s).and_then(|t| t.get(id)),
                };
                if let Some(given) = given {
                    slot(&mut value, section)?.insert(id.to_string(), given.clone());
                }
            }
        }
        let cfg = Self::from_value(value)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets `key` (see [`locate`]) to `value`, read as a TOML value (or else a string), as if it
    /// had been written in the task file.
    pub fn with_override(&self, key: &str, value: &str) -> Result<Self> {
        let (section, id) = locate(key).with_context(|| format!("cannot compare over unknown setting {key:?}"))?;
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut cfg = serde_json::to_value(self)?;
        slot(&mut cfg, section)?.insert(id, serde_json::to_value(parsed)?);
        Self::from_value(cfg).with_context(|| format!("setting {key} = {value}"))
    }

    /// Checks every section (privacy as `webfl simulate` resolves it; `webfl serve` also needs
    /// `privacy.population` and `privacy.max_rounds` where they matter, see [`Self::setup`]).
    pub fn validate(&self) -> Result<()> {
        self.plan.validate()?;
        let policy = self.policy(1)?;
        policy.validate()?;
        let (update, central_dp, _) = self.simulation_pipeline()?;
        let mut strategy = self.strategy.clone();
        strategy.central_dp = central_dp;
        let built = strategy.build()?;
        if let Some(secure) = &self.secure_aggregation {
            secure.validate(&policy, &update, &built)?;
        }
        self.server.validate()?;
        let s = &self.simulation;
        anyhow::ensure!(s.clients > 0, "simulation.clients (--clients) must be at least 1");
        anyhow::ensure!(s.rounds > 0, "simulation.rounds (--rounds) must be at least 1");
        anyhow::ensure!(
            s.samples_per_s.is_finite() && s.samples_per_s > 0.0,
            "simulation.samples_per_s must be positive"
        );
        anyhow::ensure!(s.latency_ms.is_finite() && s.latency_ms >= 0.0, "simulation.latency_ms must be >= 0");
        anyhow::ensure!(
            s.bandwidth_mbps.is_finite() && s.bandwidth_mbps > 0.0,
            "simulation.bandwidth_mbps must be positive"
        );
        anyhow::ensure!((0.0..1.0).contains(&s.dropout), "simulation.dropout must be in [0, 1)");
        anyhow::ensure!(
            self.privacy.delta > 0.0 && self.privacy.delta < 1.0,
            "privacy.delta (--delta) must be in (0, 1), got {}",
            self.privacy.delta
        );
        Ok(())
    }

    /// The round policy; `train_examples` (the task's training data) is the default cap on the
    /// examples one update may claim.
    pub fn policy(&self, train_examples: u64) -> Result<RoundPolicy> {
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
            max_examples: self.rounds.max_examples.unwrap_or(train_examples.max(1)),
        })
    }

    /// Serve's privacy: the population and rounds the budget is spread over are
    /// `privacy.population` and `privacy.max_rounds`.
    pub fn update_pipeline(&self) -> Result<ResolvedPrivacy> {
        self.resolve_privacy(self.privacy.population, self.privacy.max_rounds)
    }

    /// Simulate's privacy: the population defaults to `simulation.clients` and the rounds to
    /// `simulation.rounds`.
    pub fn simulation_pipeline(&self) -> Result<ResolvedPrivacy> {
        let population = self.privacy.population.or(Some(self.simulation.clients as u64));
        self.resolve_privacy(population, self.privacy.max_rounds.or(Some(self.simulation.rounds as u64)))
    }

    /// The clients' update spec, central DP for the strategy, and the privacy budget; the
    /// noise multiplier is given or derived from the target ε over `rounds`.
    fn resolve_privacy(&self, population: Option<u64>, rounds: Option<u64>) -> Result<ResolvedPrivacy> {
        let p = &self.privacy;
        let target = self.rounds.target_reports;
        let stages = |z| {
            pipeline::privacy_stages(
                p.mode,
                p.clip,
                p.per_layer_clip,
                z,
                p.adaptive_clip,
                target,
                self.compression.clone(),
            )
        };
        if p.mode == DpMode::Off {
            let (spec, _) = stages(0.0)?;
            return Ok((spec, None, None));
        }
        anyhow::ensure!(p.clip.is_some(), "privacy.mode = {} needs privacy.clip (--clip)", p.mode);
        let sampling_rate = match p.mode {
            DpMode::Central => {
                let population = population.context("central DP needs privacy.population (q = target / population)")?;
                anyhow::ensure!(
                    population >= target as u64,
                    "privacy.population must be at least rounds.target_reports"
                );
                target as f64 / population as f64
            }
            _ => 1.0,
        };
        let z = match (p.noise_multiplier, p.target_epsilon, rounds) {
            (Some(z), _, _) => z,
            (None, Some(eps), Some(rounds)) => {
                accountant::noise_multiplier_for(eps, sampling_rate, rounds, p.delta, &accountant::DEFAULT_ORDERS)?
            }
            _ => anyhow::bail!(
                "privacy needs noise_multiplier (--noise-multiplier), or target_epsilon (--target-epsilon) with max_rounds"
            ),
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

    /// Train and test splits of the task's dataset.
    pub fn load_data(&self) -> Result<Split> {
        let csv = CsvOptions {
            label_column: self.label_column.clone().map_or(LabelColumn::Auto, LabelColumn::Name),
            ..CsvOptions::default()
        };
        datasets::load(&self.dataset, &csv, self.test_fraction, self.seed)
    }

    /// The model for data of this shape.
    pub fn model_spec(&self, sample_shape: &[usize], classes: usize) -> Result<ModelSpec> {
        let arg = if self.model.ends_with(".json") {
            std::fs::read_to_string(&self.model).with_context(|| format!("reading model spec {}", self.model))?
        } else {
            self.model.clone()
        };
        Ok(model::resolve(&arg, sample_shape, classes)?)
    }

    /// Version 0: drawn from the seed's `Init` stream (serve and simulate alike).
    pub fn initial_params(&self, spec: &ModelSpec) -> Result<Params> {
        Ok(spec.init_params(&mut rng::stream(self.seed, Stream::Init, &[]))?)
    }

    /// Loads the data and the model and builds what the HTTP layer serves. Only the held-out
    /// split stays on the server: training data lives on the clients.
    pub fn setup(&self) -> Result<TaskSetup> {
        let Split { train, test } = self.load_data()?;
        // MNIST is public: demo clients take their partition of its training split from the
        // server. A CSV task's data is the operator's own and is not served.
        let demo_data = (self.dataset == "mnist").then(datasets::mnist_path);
        let dataset = DatasetInfo {
            name: self.dataset.clone(),
            sample_shape: test.sample_shape.clone(),
            classes: test.classes,
            demo_data_url: demo_data.as_ref().map(|_| "/data/mnist.wfds".to_string()),
        };
        let spec = self.model_spec(&test.sample_shape, test.classes)?;
        let (update, central_dp, privacy) = self.update_pipeline()?;
        let mut strategy = self.strategy.clone();
        strategy.central_dp = central_dp;
        let initial = self.initial_params(&spec)?;
        Ok(TaskSetup {
            name: self.name.clone(),
            spec,
            plan: self.plan.clone(),
            policy: self.policy(train.len() as u64)?,
            strategy,
            test,
            initial,
            upload_limit_bytes: self.upload_limit_bytes,
            dataset,
            demo_data,
            update,
            privacy,
            server: self.server.clone(),
            secure_aggregation: self.secure_aggregation.clone(),
        })
    }
}

/// The clients' update spec, central DP's settings for the strategy, and the privacy budget
/// (`None` without DP).
pub type ResolvedPrivacy = (UpdateSpec, Option<CentralDpConfig>, Option<PrivacyBudget>);

/// The `clap::Command` of a task's flags, for help text and tests.
pub fn command() -> clap::Command {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        task: TaskConfig,
    }
    Flags::command()
}

#[cfg(test)]
mod tests {
    use super::*;
    use webfl_shared::strategy::StrategyKind;

    #[test]
    fn an_empty_file_is_the_default_task() {
        assert_eq!(TaskConfig::from_toml("").unwrap(), TaskConfig::default());
        let d = TaskConfig::default();
        assert_eq!((d.plan.epochs, d.plan.batch_size, d.plan.lr), (1, 10, 0.1));
        assert_eq!((d.rounds.target_reports, d.rounds.min_reports, d.rounds.deadline_secs), (4, 2, 60.0));
        assert_eq!(d.strategy, StrategyConfig::default());
        assert_eq!((d.simulation.clients, d.simulation.rounds), (100, 50));
    }

    #[test]
    fn every_default_round_trips_through_a_file() {
        let text = toml::to_string(&TaskConfig::default()).unwrap();
        assert_eq!(TaskConfig::from_toml(&text).unwrap(), TaskConfig::default());
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
            [strategy]
            kind = "fedadam"
            server_lr = 0.01
            [rounds]
            target_reports = 10
            min_reports = 5
            deadline_secs = 30
            [simulation]
            clients = 7
            "#,
        )
        .unwrap();
        assert_eq!(cfg.model, "cnn");
        assert_eq!((cfg.plan.epochs, cfg.plan.batch_size, cfg.plan.lr), (2, 20, 0.1));
        assert_eq!(cfg.strategy.kind, StrategyKind::FedAdam);
        assert_eq!(cfg.simulation.clients, 7);
        let policy = cfg.policy(60_000).unwrap();
        assert_eq!(policy.max_examples, 60_000);
        assert_eq!((policy.target_reports, policy.min_reports, policy.deadline_ms), (10, 5, 30_000));
        assert_eq!(policy.over_selection, 1.3);
    }

    #[test]
    fn bad_task_files_name_the_problem() {
        let err = |text: &str| format!("{:#}", TaskConfig::from_toml(text).unwrap_err());
        assert!(err("nmae = \"x\"").contains("nmae"));
        assert!(err("[rounds]\nmin_reports = 9").contains("minimum reports"));
        assert!(err("[plan]\nepochs = 0").contains("epochs"));
        assert!(err("[strategy]\nkind = \"nope\"").contains("nope"));
        assert!(err("[rounds]\ndeadline_secs = -1").contains("deadline_secs"));
        assert!(err("[simulation]\nclinets = 3").contains("clinets"));
    }

    #[test]
    fn flags_given_on_the_command_line_override_the_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("task.toml");
        std::fs::write(&file, "[plan]\nlr = 0.05\nbatch_size = 32\n[rounds]\ntarget_reports = 8\n").unwrap();
        let matches = command().try_get_matches_from(["x", "--lr", "0.2", "--clients", "12", "--dp", "off"]).unwrap();
        let cfg = TaskConfig::from_matches(&matches, Some(&file)).unwrap();
        assert_eq!((cfg.plan.lr, cfg.plan.batch_size), (0.2, 32), "flag over file, file over default");
        assert_eq!((cfg.rounds.target_reports, cfg.simulation.clients), (8, 12));
    }

    #[test]
    fn settings_are_found_by_field_name_or_flag() {
        assert_eq!(locate("batch"), Some((Some("plan"), "batch_size".into())));
        assert_eq!(locate("lr"), Some((Some("plan"), "lr".into())));
        assert_eq!(locate("strategy"), Some((Some("strategy"), "kind".into())));
        assert_eq!(locate("target-reports"), Some((Some("rounds"), "target_reports".into())));
        assert_eq!(locate("dp"), Some((Some("privacy"), "mode".into())));
        assert_eq!(locate("compress"), Some((None, "compression".into())));
        assert_eq!(locate("rounds"), Some((Some("simulation"), "rounds".into())));
        assert_eq!(locate("nope"), None);
        let cfg = TaskConfig::default().with_override("server_lr", "0.5").unwrap();
        assert_eq!(cfg.strategy.server_lr, Some(0.5));
    }

    #[test]
    fn secure_aggregation_is_a_table_or_its_flags_and_stays_out_of_plain_tasks() {
        let on = TaskConfig::from_toml("[secure_aggregation]\nthreshold = 4\n").unwrap();
        assert_eq!(on.secure_aggregation, Some(SecAggPolicy { threshold: Some(4), ..SecAggPolicy::default() }));
        assert_eq!(
            TaskConfig::from_toml("[secure_aggregation]").unwrap().secure_aggregation,
            Some(SecAggPolicy::default())
        );
        // Off, it is not part of a task's stored identity: existing tasks resume unchanged.
        assert!(!TaskConfig::default().identity_json().unwrap().contains("secure_aggregation"));
        assert!(on.identity_json().unwrap().contains("secure_aggregation"));
        let matches = command().try_get_matches_from(["x", "--secagg-neighbours", "4"]).unwrap();
        let cfg = TaskConfig::from_matches(&matches, None).unwrap();
        assert_eq!(cfg.secure_aggregation.map(|s| (s.neighbours, s.threshold)), Some((Some(4), None)));
        let plain = TaskConfig::from_matches(&command().try_get_matches_from(["x"]).unwrap(), None).unwrap();
        assert_eq!(plain.secure_aggregation, None);
        assert_eq!(locate("secagg-threshold"), Some((Some("secure_aggregation"), "threshold".into())));
        let err = format!("{:#}", TaskConfig::from_toml("[secure_aggregation]\nthrehsold = 3").unwrap_err());
        assert!(err.contains("threhsold"), "{err}");
    }

    #[test]
    fn secure_aggregation_refuses_what_it_cannot_sum_and_says_why() {
        let err = |text: &str| format!("{:#}", TaskConfig::from_toml(text).unwrap_err());
        let with = |text: &str| format!("{text}\n[secure_aggregation]\n");
        assert!(err(&with("compression = \"topk:0.1\"")).contains("random-k with an index set shared"));
        assert!(err(&with("compression = \"q8\"")).contains("uncompressed"));
        for kind in ["median", "trimmed-mean", "krum", "bulyan"] {
            let why = err(&with(&format!("[strategy]\nkind = \"{kind}\"")));
            assert!(why.contains("needs the individual updates"), "{kind}: {why}");
        }
        assert!(err(&with("[strategy]\nnorm_bound = 1.0")).contains("norm bounding"));
        let central = "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0";
        assert!(err(&with(central)).contains("central DP clips each update"));
        let adaptive = "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 0.1\nadaptive_clip = true";
        assert!(err(&with(adaptive)).contains("adaptive clipping"));
        // Local DP is the clients' own: it is fine.
        let local = "[privacy]\nmode = \"local\"\nclip = 1.0\nnoise_multiplier = 1.0";
        assert!(TaskConfig::from_toml(&with(local)).is_ok());
        let odd = "[rounds]\ntarget_reports = 10\n[secure_aggregation]\nneighbours = 3";
        assert!(err(odd).contains("neighbours must be even"), "{}", err(odd));
        let minority = "[rounds]\ntarget_reports = 10\n[secure_aggregation]\nneighbours = 6\nthreshold = 3";
        assert!(err(minority).contains("majority"), "{}", err(minority));
        assert!(err("[secure_aggregation]\nthreshold = 9").contains("at least 9 clients"));
        assert!(err("[secure_aggregation]\nkeys_secs = 30").contains("no time to train"));
    }

    #[test]
    fn every_flag_has_help() {
        for arg in command().get_arguments() {
            if arg.get_id() != "help" {
                assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            }
        }
    }
}
