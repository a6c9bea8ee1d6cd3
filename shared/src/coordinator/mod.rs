//! The coordinator: the server's role in federated training, as a pure state machine.
//!
//! It takes protocol messages (a check-in, an upload) and the time, and returns decisions
//! (an assignment, a wait, a settled round). No clock, no I/O, no threads: `webfl serve` drives
//! it from HTTP handlers and a deadline ticker, `webfl simulate` from a virtual clock, and both
//! get the same selection, deadlines, over-selection, abandonment and commit sequence.
//!
//! The commit sequence is explicit. Closing a round does not announce anything: it yields a
//! [`PendingCommit`] with the new parameters and moves the coordinator to *committing*, where
//! check-ins are told to wait. The driver evaluates and stores that version durably and only
//! then calls [`Coordinator::commit`], which makes it the version handed to clients; if storing
//! fails, [`Coordinator::abort_commit`] restores the model and the server optimizer's state.
//!
//! Secure aggregation ([`SecAggPolicy`]) changes how a round collects updates, not how it is
//! committed: the selected clients become a SecAgg+ cohort, their updates arrive masked through
//! [`Coordinator::secagg`], and the strategy is handed only the cohort's reconstructed sum.
//!
//! Boundary: a coordinator never imports the participant (`crate::participant`); the two meet
//! only through [`crate::protocol`] messages.

mod rounds;

pub use rounds::SyncCoordinator;

use serde::{Deserialize, Serialize};

use crate::params::Params;
use crate::pipeline::{self, UpdateSpec};
use crate::privacy::PrivacyBudget;
use crate::protocol::{AssignmentTerms, CheckInResponse, SecAggAnswer, SecAggRecord, SecAggTerms, WaitReason};
use crate::secagg::{self, SecAggConfig, ServerError, Stage, ToServer};
use crate::strategy::{OptimizerState, RoundSummary, Strategy, StrategyError, StrategyKind};
use crate::update::Update;

/// Opaque client identity (the driver authenticates it).
pub type ClientId = String;

/// How synchronous rounds are run.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPolicy {
    /// Updates that close a round early.
    pub target_reports: usize,
    /// Selected clients per round = ceil(target_reports · over_selection).
    pub over_selection: f64,
    /// Fewest updates a round may be aggregated from when its deadline passes.
    pub min_reports: usize,
    pub deadline_ms: u64,
    /// How long a client that cannot be selected now waits before checking in again (a
    /// long-polling driver wakes it earlier, when the coordinator's state changes).
    pub retry_after_ms: u64,
    /// The largest FedAvg weight (local example count) an update may claim: a client claiming
    /// more is refused, so no single participant can outweigh the rest of the round.
    pub max_examples: u64,
}

impl RoundPolicy {
    pub fn selection_size(&self) -> usize {
        ((self.target_reports as f64 * self.over_selection).ceil() as usize).max(self.target_reports)
    }

    pub fn validate(&self) -> Result<(), RoundError> {
        let bad = |why: &str| Err(RoundError::BadPolicy(why.to_string()));
        if self.target_reports == 0 {
            return bad("target reports per round must be at least 1");
        }
        if self.min_reports == 0 || self.min_reports > self.target_reports {
            return bad("minimum reports must be between 1 and the target");
        }
        if !(self.over_selection.is_finite() && self.over_selection >= 1.0) {
            return bad("over-selection must be a number >= 1");
        }
        if self.deadline_ms == 0 {
            return bad("the round deadline must be positive");
        }
        if self.max_examples == 0 {
            return bad("the maximum examples per update must be at least 1");
        }
        Ok(())
    }
}

/// Secure aggregation of a task's rounds (SecAgg+, [`crate::secagg`]): the `[secure_aggregation]`
/// table of a task file. Unset values are derived from the cohort when it is fixed.
///
/// A round opens on the first check-in and selects up to `selection_size()` clients, as any
/// round; the cohort is fixed when the selection is full or `cohort_secs` after the round
/// opened, with whoever was selected (a round with fewer than [`min_cohort`](Self::min_cohort)
/// is abandoned). Advertising and sharing keys each have `keys_secs`; clients train during the
/// masked-input stage, which ends once `target_reports` masked inputs are in (over-selection at
/// work, as in a plain round) or at the round's deadline; unmasking has `unmask_secs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args), command(next_help_heading = "Secure aggregation [secure_aggregation]"))]
pub struct SecAggPolicy {
    /// k, each member's neighbours in the SecAgg+ graph: even, or the cohort size − 1 (then
    /// everyone neighbours everyone) [default: 2⌈log2 n⌉ for a cohort of n, at most n − 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "secagg-neighbours"))]
    pub neighbours: Option<u32>,
    /// t, the Shamir threshold among a member's k + 1 share holders: a majority, at most k + 1;
    /// also the fewest clients a sum is ever made of [default: the smallest majority].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "secagg-threshold"))]
    pub threshold: Option<u32>,
    /// m: masked vectors live in the integers mod 2^m (1..=32).
    #[cfg_attr(feature = "cli", arg(long = "secagg-modulus-bits", default_value_t = SecAggPolicy::DEFAULT_MODULUS_BITS))]
    pub modulus_bits: u32,
    /// r: each value of a masked input is clipped to [−r, r] before quantization [default: the
    /// update clip S (plus room for local noise) when the task clips, else 8].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "secagg-clipping-range"))]
    pub clipping_range: Option<f32>,
    /// L: quantized values lie in [0, L] [default: the largest with n · L < 2^m for a cohort of n].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "secagg-levels"))]
    pub quantization_levels: Option<u32>,
    /// Seconds after a round opens that its cohort is fixed with whoever was selected, when the
    /// selection has not filled before.
    #[cfg_attr(feature = "cli", arg(long = "secagg-cohort-secs", default_value_t = SecAggPolicy::DEFAULT_COHORT_SECS))]
    pub cohort_secs: f64,
    /// Seconds each of the advertise-keys and share-keys stages waits for the cohort.
    #[cfg_attr(feature = "cli", arg(long = "secagg-keys-secs", default_value_t = SecAggPolicy::DEFAULT_KEYS_SECS))]
    pub keys_secs: f64,
    /// Seconds the unmask stage waits for the survivors' shares.
    #[cfg_attr(feature = "cli", arg(long = "secagg-unmask-secs", default_value_t = SecAggPolicy::DEFAULT_UNMASK_SECS))]
    pub unmask_secs: f64,
}

impl Default for SecAggPolicy {
    fn default() -> Self {
        Self {
            neighbours: None,
            threshold: None,
            modulus_bits: Self::DEFAULT_MODULUS_BITS,
            clipping_range: None,
            quantization_levels: None,
            cohort_secs: Self::DEFAULT_COHORT_SECS,
            keys_secs: Self::DEFAULT_KEYS_SECS,
            unmask_secs: Self::DEFAULT_UNMASK_SECS,
        }
    }
}

impl SecAggPolicy {
    pub const DEFAULT_MODULUS_BITS: u32 = 32;
    pub const DEFAULT_COHORT_SECS: f64 = 10.0;
    pub const DEFAULT_KEYS_SECS: f64 = 15.0;
    pub const DEFAULT_UNMASK_SECS: f64 = 15.0;
    /// Flower's clipping range, for tasks that do not clip.
    pub const UNCLIPPED_RANGE: f32 = 8.0;

    /// The fewest selected clients a cohort is fixed with: the round's minimum reports, and at
    /// least the threshold (a stage with fewer than t clients is never unmasked).
    pub fn min_cohort(&self, round: &RoundPolicy) -> usize {
        round.min_reports.max(self.threshold.unwrap_or(2) as usize).max(2)
    }

    /// The clipping range r for tasks whose clients run `update`: the clip bound S (each value
    /// of `w·Δ` is within it, `w` ≤ 1), widened by four standard deviations of local noise.
    pub fn clipping_range_for(&self, update: &UpdateSpec) -> f32 {
        self.clipping_range.unwrap_or(match update.clip {
            Some(s) => (s + 4.0 * update.noise_std) as f32,
            None => Self::UNCLIPPED_RANGE,
        })
    }

    /// The SecAgg+ configuration of round `round` with a cohort of `clients` and inputs of `dim`
    /// values. The neighbour graph's seed is the round number: the graph is the server's to
    /// choose in SecAgg+, and this keeps it reproducible without a random stream.
    pub fn config(&self, round: u64, clients: u32, dim: usize, clipping_range: f32) -> SecAggConfig {
        let mut config = SecAggConfig::recommended(round, clients, dim, round);
        if let Some(k) = self.neighbours {
            // A cohort too small for k neighbours is complete: everyone neighbours everyone.
            config = config.with_neighbours(k.min(clients.saturating_sub(1)));
        }
        if let Some(t) = self.threshold {
            config.threshold = t;
        }
        config.modulus_bits = self.modulus_bits;
        config.clipping_range = clipping_range;
        config.quantization_levels = self.quantization_levels.unwrap_or_else(|| {
            let top = (1u64 << self.modulus_bits.min(32)) - 1;
            u32::try_from(top / u64::from(clients.max(1))).unwrap_or(u32::MAX)
        });
        config
    }

    /// What each assignment tells clients: weigh the update by its examples up to the round's
    /// `max_examples`, or (an unweighted mean) every update alike.
    pub fn terms(&self, round: &RoundPolicy, strategy: StrategyKind) -> SecAggTerms {
        let weighted = strategy != StrategyKind::Mean;
        SecAggTerms { max_examples: if weighted { round.max_examples } else { 1 } }
    }

    /// Whether a task can run its rounds this way: its updates uncompressed, its strategy a
    /// plain mean (it sees only the sum), every cohort it may fix a valid SecAgg+ configuration,
    /// and time left to train after the key stages.
    pub fn validate(&self, round: &RoundPolicy, update: &UpdateSpec, strategy: &Strategy) -> Result<(), RoundError> {
        let bad = |why: String| Err(RoundError::BadSecAgg(why));
        if let Err(e) = pipeline::summable(update) {
            return bad(e.to_string());
        }
        if let Err(e) = strategy.takes_combined_mean() {
            return bad(e.to_string());
        }
        for (what, secs) in
            [("cohort_secs", self.cohort_secs), ("keys_secs", self.keys_secs), ("unmask_secs", self.unmask_secs)]
        {
            if !(secs.is_finite() && secs > 0.0) {
                return bad(format!("{what} must be a positive number of seconds, got {secs}"));
            }
        }
        let before_training = (self.cohort_secs + 2.0 * self.keys_secs) * 1000.0;
        if before_training >= round.deadline_ms as f64 {
            return bad(format!(
                "cohort_secs + 2 · keys_secs ({:.0} s) leave no time to train before the round's deadline ({:.0} s)",
                before_training / 1000.0,
                round.deadline_ms as f64 / 1000.0
            ));
        }
        let (smallest, largest) = (self.min_cohort(round), round.selection_size());
        if smallest > largest {
            return bad(format!(
                "a cohort needs at least {smallest} clients (the minimum reports and the threshold), \
                 and a round selects only {largest}"
            ));
        }
        let range = self.clipping_range_for(update);
        for n in smallest..=largest {
            let clients = u32::try_from(n).map_err(|_| RoundError::BadSecAgg(format!("a cohort of {n} clients")))?;
            if let Err(e) = self.config(1, clients, 1, range).validate() {
                return bad(format!("for a cohort of {n} clients: {e}"));
            }
        }
        Ok(())
    }
}

/// Why a check-in or an upload was refused. Refusals never change the coordinator's state.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoundError {
    #[error("invalid round policy: {0}")]
    BadPolicy(String),
    #[error("no round is open")]
    NoOpenRound,
    #[error("round {got} is not the open round ({open})")]
    WrongRound { open: u64, got: u64 },
    #[error("the update was trained on model version {got}, the round uses version {expected}")]
    WrongModelVersion { expected: u64, got: u64 },
    #[error("client was not selected for round {0}")]
    NotSelected(u64),
    #[error("client already reported in round {0}")]
    AlreadyReported(u64),
    #[error("round {0} passed its deadline")]
    DeadlinePassed(u64),
    #[error("example count must be positive")]
    NoExamples,
    #[error("the update claims {claimed} examples; this task weighs an update by at most {max}")]
    TooManyExamples { claimed: u64, max: u64 },
    #[error("the update would take the model's values out of the f32 range (largest |Δ| {largest:e})")]
    OutOfRange { largest: f32 },
    #[error("invalid update: {0}")]
    BadUpdate(#[from] StrategyError),
    #[error("no version is waiting to be committed")]
    NothingToCommit,
    #[error("secure aggregation: {0}")]
    BadSecAgg(String),
    #[error("round {0} sums its updates by secure aggregation: they arrive masked, not as uploads")]
    SecureRound(u64),
    #[error("round {0} does not use secure aggregation")]
    NotSecureRound(u64),
    #[error("round {0}'s cohort is not fixed yet: no secure-aggregation message is expected")]
    CohortNotFixed(u64),
    #[error("secure aggregation refused the message: {0}")]
    SecAggRefused(#[from] ServerError),
}

/// A coordinator's answer to a check-in.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckIn {
    /// Train `model_version` and upload before `deadline_at_ms`.
    Assigned { round: u64, model_version: u64, deadline_at_ms: u64 },
    /// Not now: check in again after `ms` (a long poll may end the wait earlier).
    Wait { ms: u64, reason: WaitReason },
    /// The task takes no more rounds.
    Done { reason: String },
}

impl CheckIn {
    /// The protocol answer for `client_id` (with its `token`), given the task's terms.
    pub fn respond(self, client_id: String, token: String, terms: &AssignmentTerms, now_ms: u64) -> CheckInResponse {
        match self {
            CheckIn::Assigned { round, model_version, deadline_at_ms } => CheckInResponse::Assigned {
                client_id,
                token,
                round,
                model_version,
                deadline_ms_from_now: deadline_at_ms.saturating_sub(now_ms),
                terms: terms.clone(),
            },
            CheckIn::Wait { ms, reason } => CheckInResponse::Retry { client_id, token, retry_after_ms: ms, reason },
            CheckIn::Done { reason } => CheckInResponse::Done { client_id, token, reason },
        }
    }

    /// Whether the client should be held (long poll) rather than answered now.
    pub fn is_wait(&self) -> bool {
        matches!(self, CheckIn::Wait { .. })
    }
}

/// One client's decoded update for a round.
#[derive(Clone, Copy, Debug)]
pub struct Upload<'a> {
    pub round: u64,
    /// The version it was trained from.
    pub model_version: u64,
    /// `Δ = w_local − w_global`, already decoded (and so validated) by the task's pipeline.
    pub update: &'a Update,
    /// Local examples trained on: the FedAvg weight.
    pub examples: u64,
}

/// A closed round's new model, waiting to be evaluated and stored before it is announced.
#[derive(Debug)]
pub struct PendingCommit {
    pub round: u64,
    /// When the round opened, on the coordinator's clock.
    pub opened_at_ms: u64,
    pub version: u64,
    pub params: Params,
    /// What aggregation did: updates, how many were clipped, the update's norm.
    pub summary: RoundSummary,
    pub reports: usize,
    pub selected: usize,
    pub closed_by_deadline: bool,
    /// Who took part in each stage, in a secure-aggregation round.
    pub secagg: Option<SecAggRecord>,
}

/// A round that has settled.
#[derive(Debug)]
pub enum Settled {
    /// The round closed; evaluate, store durably, then [`Coordinator::commit`].
    Closed(Box<PendingCommit>),
    /// The round produced no version; its partial aggregate was discarded and the model and the
    /// server optimizer are as they were.
    Abandoned {
        round: u64,
        reports: usize,
        selected: usize,
        opened_at_ms: u64,
        why: AbandonReason,
        /// Who took part in each stage, in a secure-aggregation round.
        secagg: Option<SecAggRecord>,
    },
}

/// Why a round produced no version.
#[derive(Clone, Debug, PartialEq)]
pub enum AbandonReason {
    /// Fewer than the minimum number of updates by the deadline.
    TooFewReports,
    /// The accepted updates could not be combined (e.g. their sum overflows).
    AggregationFailed(String),
    /// A secure round's selection window closed with fewer clients than a cohort needs.
    CohortTooSmall { selected: usize, need: usize },
    /// Secure aggregation stopped in `stage` without a sum; the inputs stay masked.
    SecAgg { stage: Stage, why: secagg::Abandoned },
}

impl std::fmt::Display for AbandonReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbandonReason::TooFewReports => f.write_str("too few updates by its deadline"),
            AbandonReason::AggregationFailed(why) => write!(f, "its updates could not be aggregated: {why}"),
            AbandonReason::CohortTooSmall { selected, need } => {
                write!(f, "{selected} clients were selected for its secure cohort, {need} are needed")
            }
            AbandonReason::SecAgg { stage, why } => write!(f, "secure aggregation stopped in stage {stage:?}: {why}"),
        }
    }
}

/// Where a task stands when a coordinator starts: fresh (version 0, round 1) or resumed from
/// the store after a restart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resumed {
    pub version: u64,
    pub next_round: u64,
    /// Rounds that produced a version: what a privacy budget has spent.
    pub rounds_completed: u64,
}

/// The server's role. Every method takes the time from its caller; refusals change nothing.
/// Synchronous rounds ([`SyncCoordinator`]) implement it; a buffered asynchronous coordinator
/// can sit beside them behind the same driver code.
pub trait Coordinator: Send {
    /// Selects the client (opening a round if none is open), or says how long to wait.
    /// Checking in again while selected returns the same assignment, so a reloaded tab resumes.
    fn check_in(&mut self, client: &str, now_ms: u64) -> CheckIn;
    /// Accepts one client's update; every check runs before it touches the aggregate.
    fn submit(&mut self, client: &str, upload: Upload<'_>, now_ms: u64) -> Result<Option<Settled>, RoundError>;
    /// One step of a secure-aggregation round for a selected client: takes its `message` (if
    /// any) for the current stage and returns what it should do next. A client answered
    /// [`SecAggAnswer::Wait`] may be held (long poll) until [`revision`](Self::revision) moves.
    fn secagg(
        &mut self,
        client: &str,
        round: u64,
        message: Option<ToServer>,
        now_ms: u64,
    ) -> Result<(SecAggAnswer, Option<Settled>), RoundError>;
    /// Applies deadlines: closes or abandons a round whose time is up.
    fn tick(&mut self, now_ms: u64) -> Result<Option<Settled>, RoundError>;
    /// Announces a stored version: from now on clients train on it.
    fn commit(&mut self, pending: PendingCommit) -> Result<(), RoundError>;
    /// Gives up on a pending version that could not be stored: the global model and the server
    /// optimizer's state stay as they were before the round closed.
    fn abort_commit(&mut self) -> Result<(), RoundError>;
    /// The committed version clients train on.
    fn version(&self) -> u64;
    fn global(&self) -> &Params;
    /// The server optimizer's state (moments, step count), persisted with every version.
    fn optimizer_state(&self) -> OptimizerState;
    /// The round taking updates, if any.
    fn open_round(&self) -> Option<u64>;
    /// When [`tick`](Self::tick) next has something to do.
    fn next_deadline_ms(&self) -> Option<u64>;
    /// Moves whenever a waiting client's answer may have changed (a round opened, settled or
    /// committed; a secure round's cohort fixed or its stage moved on): a long-polling driver
    /// looks at its held clients again when it does.
    fn revision(&self) -> u64;
    /// Rounds that produced a committed version.
    fn rounds_completed(&self) -> u64;
    fn privacy(&self) -> Option<&PrivacyBudget>;
}
