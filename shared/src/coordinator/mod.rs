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
//! Boundary: a coordinator never imports the participant (`crate::participant`); the two meet
//! only through [`crate::protocol`] messages.

mod rounds;

pub use rounds::SyncCoordinator;

use crate::params::Params;
use crate::privacy::PrivacyBudget;
use crate::protocol::{AssignmentTerms, CheckInResponse, WaitReason};
use crate::strategy::{OptimizerState, RoundSummary, StrategyError};
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
}

/// A round that has settled.
#[derive(Debug)]
pub enum Settled {
    /// The round closed; evaluate, store durably, then [`Coordinator::commit`].
    Closed(Box<PendingCommit>),
    /// The round produced no version; its partial aggregate was discarded and the model and the
    /// server optimizer are as they were.
    Abandoned { round: u64, reports: usize, selected: usize, opened_at_ms: u64, why: AbandonReason },
}

/// Why a round produced no version.
#[derive(Clone, Debug, PartialEq)]
pub enum AbandonReason {
    /// Fewer than the minimum number of updates by the deadline.
    TooFewReports,
    /// The accepted updates could not be combined (e.g. their sum overflows).
    AggregationFailed(String),
}

impl std::fmt::Display for AbandonReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbandonReason::TooFewReports => f.write_str("too few updates by its deadline"),
            AbandonReason::AggregationFailed(why) => write!(f, "its updates could not be aggregated: {why}"),
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
    /// Rounds that produced a committed version.
    fn rounds_completed(&self) -> u64;
    fn privacy(&self) -> Option<&PrivacyBudget>;
}
