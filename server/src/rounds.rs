//! Synchronous round orchestration as a pure state machine: who is selected, when a round
//! closes, and what happens at its deadline. No I/O and no clock of its own — every call takes
//! `now` in milliseconds — so every path is unit-testable and the HTTP layer stays thin.
//!
//! A round opens on the first check-in after the previous one settled. Up to
//! `ceil(target · over_selection)` clients are selected (over-selection absorbs stragglers and
//! closed tabs); everyone else is told when to come back. Updates stream into the strategy as they
//! arrive. The round closes when `target` updates are in, or at its deadline with at least
//! `min_reports` (otherwise it is abandoned, its partial aggregate discarded, and a fresh round
//! opens on the next check-in).
//!
//! Closing does not announce anything: it yields a [`PendingCommit`] with the new parameters.
//! The caller evaluates and writes that version durably, and only then calls
//! [`Coordinator::commit`], which makes it the version handed to clients. Until then check-ins
//! are told to retry, so no client ever trains on a version that could still be lost.

use std::collections::HashMap;

use webfl_shared::params::Params;
use webfl_shared::strategy::{OptimizerState, RoundSummary, Strategy, StrategyError};

/// Opaque client identity (the HTTP layer authenticates it).
pub type ClientId = String;

/// How rounds are run.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPolicy {
    /// Updates that close a round early.
    pub target_reports: usize,
    /// Selected clients per round = ceil(target_reports · over_selection).
    pub over_selection: f64,
    /// Fewest updates a round may be aggregated from when its deadline passes.
    pub min_reports: usize,
    pub deadline_ms: u64,
    /// What to tell clients that cannot be selected now, when there is nothing better to say.
    pub retry_after_ms: u64,
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
        Ok(())
    }
}

/// Why a check-in or an upload was refused. Refusals never change the round's state.
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
    #[error("invalid update: {0}")]
    BadUpdate(#[from] StrategyError),
}

/// What a client is told at check-in.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckIn {
    /// Train `model_version` and upload before `deadline_at_ms`.
    Assigned { round: u64, model_version: u64, deadline_at_ms: u64 },
    /// Come back later.
    RetryAfter { ms: u64 },
}

/// A closed round's new model, waiting to be evaluated and stored before it is announced.
#[derive(Debug)]
pub struct PendingCommit {
    pub round: u64,
    /// When the round opened, on the coordinator's clock.
    pub opened_at_ms: u64,
    pub version: u64,
    pub params: Params,
    pub summary: RoundSummary,
    pub reports: usize,
    pub selected: usize,
    pub closed_by_deadline: bool,
}

/// What [`Coordinator::tick`] or [`Coordinator::submit`] settled.
#[derive(Debug)]
pub enum Settled {
    /// The round closed; evaluate, store durably, then [`Coordinator::commit`].
    Closed(Box<PendingCommit>),
    /// The deadline passed with too few updates; the partial aggregate was discarded.
    Abandoned { round: u64, reports: usize, selected: usize, opened_at_ms: u64 },
}

#[derive(Debug)]
struct OpenRound {
    id: u64,
    opened_at_ms: u64,
    /// Selected clients and whether each has reported.
    selected: HashMap<ClientId, bool>,
    reports: usize,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Open(OpenRound),
    /// A version is being stored; nothing is handed out until it is committed. The server
    /// optimizer has already stepped, so its state before the step is kept to undo it.
    Committing {
        version: u64,
        optimizer_before: OptimizerState,
    },
}

/// The round state of one task.
pub struct Coordinator {
    policy: RoundPolicy,
    strategy: Strategy,
    global: Params,
    version: u64,
    next_round: u64,
    phase: Phase,
}

impl Coordinator {
    /// Starts from a committed `global` at `version`; `next_round` continues the numbering after
    /// a restart.
    pub fn new(
        policy: RoundPolicy,
        strategy: Strategy,
        global: Params,
        version: u64,
        next_round: u64,
    ) -> Result<Self, RoundError> {
        policy.validate()?;
        Ok(Self { policy, strategy, global, version, next_round, phase: Phase::Idle })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn global(&self) -> &Params {
        &self.global
    }

    /// The server optimizer's state (moments, step count), persisted with every version.
    pub fn optimizer_state(&self) -> OptimizerState {
        self.strategy.optimizer_state()
    }

    pub fn policy(&self) -> &RoundPolicy {
        &self.policy
    }

    /// The open round's number, if any.
    pub fn open_round(&self) -> Option<u64> {
        match &self.phase {
            Phase::Open(r) => Some(r.id),
            _ => None,
        }
    }

    /// Selects the client for the open round (opening one if idle), or says when to retry.
    /// Checking in again while selected returns the same assignment, so a reloaded tab resumes.
    pub fn check_in(&mut self, client: &str, now_ms: u64) -> CheckIn {
        let retry = CheckIn::RetryAfter { ms: self.policy.retry_after_ms };
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Open(OpenRound {
                id: self.next_round,
                opened_at_ms: now_ms,
                selected: HashMap::new(),
                reports: 0,
            });
            self.next_round += 1;
        }
        let Phase::Open(round) = &mut self.phase else { return retry };
        let deadline_at_ms = round.opened_at_ms + self.policy.deadline_ms;
        if now_ms >= deadline_at_ms {
            return retry;
        }
        let assigned = CheckIn::Assigned { round: round.id, model_version: self.version, deadline_at_ms };
        match round.selected.get(client) {
            Some(false) => assigned,
            // Reported already: come back when this round is over.
            Some(true) => CheckIn::RetryAfter { ms: deadline_at_ms - now_ms },
            None if round.selected.len() < self.policy.selection_size() => {
                round.selected.insert(client.to_string(), false);
                assigned
            }
            None => CheckIn::RetryAfter { ms: (deadline_at_ms - now_ms).min(self.policy.retry_after_ms.max(1)) },
        }
    }

    /// Accepts one client's update (`Δ = local − global`) for `round`, trained on
    /// `model_version` from `examples` samples. Every check runs before the update touches the
    /// aggregate; a refusal leaves the round exactly as it was.
    pub fn submit(
        &mut self,
        client: &str,
        round: u64,
        model_version: u64,
        update: &Params,
        examples: u64,
        now_ms: u64,
    ) -> Result<Option<Settled>, RoundError> {
        let Phase::Open(open) = &mut self.phase else { return Err(RoundError::NoOpenRound) };
        if open.id != round {
            return Err(RoundError::WrongRound { open: open.id, got: round });
        }
        match open.selected.get(client) {
            None => return Err(RoundError::NotSelected(round)),
            Some(true) => return Err(RoundError::AlreadyReported(round)),
            Some(false) => {}
        }
        if model_version != self.version {
            return Err(RoundError::WrongModelVersion { expected: self.version, got: model_version });
        }
        if now_ms >= open.opened_at_ms + self.policy.deadline_ms {
            return Err(RoundError::DeadlinePassed(round));
        }
        if examples == 0 {
            return Err(RoundError::NoExamples);
        }
        update.check_same_layout(&self.global).map_err(|e| StrategyError::LayoutMismatch(e.to_string()))?;
        self.strategy.add(update, examples as f64)?;
        open.selected.insert(client.to_string(), true);
        open.reports += 1;
        if open.reports >= self.policy.target_reports {
            return self.close(false).map(Some);
        }
        Ok(None)
    }

    /// Applies the deadline: closes the open round if it has enough updates, else abandons it.
    pub fn tick(&mut self, now_ms: u64) -> Result<Option<Settled>, RoundError> {
        let Phase::Open(open) = &self.phase else { return Ok(None) };
        if now_ms < open.opened_at_ms + self.policy.deadline_ms {
            return Ok(None);
        }
        if open.reports >= self.policy.min_reports {
            return self.close(true).map(Some);
        }
        let settled = Settled::Abandoned {
            round: open.id,
            reports: open.reports,
            selected: open.selected.len(),
            opened_at_ms: open.opened_at_ms,
        };
        self.strategy.discard_round();
        self.phase = Phase::Idle;
        Ok(Some(settled))
    }

    fn close(&mut self, closed_by_deadline: bool) -> Result<Settled, RoundError> {
        let Phase::Open(open) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Err(RoundError::NoOpenRound);
        };
        let mut params = self.global.clone();
        // Empty for FedAvg; for adaptive optimizers two model-sized buffers, once per round.
        let optimizer_before = self.strategy.optimizer_state();
        let summary = match self.strategy.finish_round(&mut params) {
            Ok(s) => s,
            Err(e) => {
                self.strategy.discard_round();
                return Err(e.into());
            }
        };
        let version = self.version + 1;
        self.phase = Phase::Committing { version, optimizer_before };
        Ok(Settled::Closed(Box::new(PendingCommit {
            round: open.id,
            opened_at_ms: open.opened_at_ms,
            version,
            params,
            summary,
            reports: open.reports,
            selected: open.selected.len(),
            closed_by_deadline,
        })))
    }

    /// Announces a stored version: from now on clients train on it.
    pub fn commit(&mut self, pending: PendingCommit) -> Result<(), RoundError> {
        match self.phase {
            Phase::Committing { version, .. } if version == pending.version => {
                self.global = pending.params;
                self.version = pending.version;
                self.phase = Phase::Idle;
                Ok(())
            }
            _ => Err(RoundError::NoOpenRound),
        }
    }

    /// Gives up on a pending version that could not be stored: the global model and the server
    /// optimizer's state stay as they were before the round closed.
    pub fn abort_commit(&mut self) -> Result<(), RoundError> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Committing { optimizer_before, .. } => {
                self.strategy.restore_optimizer_state(optimizer_before)?;
                Ok(())
            }
            other => {
                self.phase = other;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use webfl_shared::params::{Layout, TensorSpec};
    use webfl_shared::strategy::{StrategyConfig, StrategyKind};

    use super::*;

    fn layout() -> Arc<Layout> {
        Arc::new(Layout::new(vec![TensorSpec::new("w", vec![2])]).unwrap())
    }

    fn p(v: [f32; 2]) -> Params {
        Params::from_vec(layout(), v.to_vec()).unwrap()
    }

    fn policy() -> RoundPolicy {
        RoundPolicy { target_reports: 2, over_selection: 1.5, min_reports: 1, deadline_ms: 1000, retry_after_ms: 250 }
    }

    fn coordinator() -> Coordinator {
        let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        Coordinator::new(policy(), strategy, p([0.0, 0.0]), 0, 1).unwrap()
    }

    fn assigned(c: CheckIn) -> (u64, u64) {
        match c {
            CheckIn::Assigned { round, model_version, .. } => (round, model_version),
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    #[test]
    fn selects_with_over_selection_and_turns_the_rest_away() {
        let mut c = coordinator();
        assert_eq!(policy().selection_size(), 3);
        for name in ["a", "b", "c"] {
            assert_eq!(assigned(c.check_in(name, 0)), (1, 0));
        }
        assert!(matches!(c.check_in("d", 10), CheckIn::RetryAfter { ms: 250 }));
        // Checking in again while selected gives the same assignment (a reloaded tab resumes).
        assert_eq!(assigned(c.check_in("a", 20)), (1, 0));
    }

    #[test]
    fn round_closes_at_target_and_version_is_announced_only_after_commit() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        assert!(c.submit("a", 1, 0, &p([1.0, 2.0]), 1, 5).unwrap().is_none());
        let Some(Settled::Closed(pending)) = c.submit("b", 1, 0, &p([3.0, 0.0]), 3, 6).unwrap() else {
            panic!("round should close at its target")
        };
        // Weighted FedAvg: (1·[1,2] + 3·[3,0]) / 4 = [2.5, 0.5].
        assert_eq!(pending.params.as_slice(), &[2.5, 0.5]);
        assert_eq!((pending.round, pending.version, pending.reports), (1, 1, 2));
        // Not announced yet: nobody gets the new version, the old one is still current.
        assert!(matches!(c.check_in("x", 7), CheckIn::RetryAfter { .. }));
        assert_eq!(c.version(), 0);
        c.commit(*pending).unwrap();
        assert_eq!(c.version(), 1);
        assert_eq!(assigned(c.check_in("x", 8)), (2, 1));
    }

    #[test]
    fn refusals_name_the_problem_and_change_nothing() {
        let mut c = coordinator();
        assert_eq!(c.submit("a", 1, 0, &p([1.0, 1.0]), 1, 0).unwrap_err(), RoundError::NoOpenRound);
        c.check_in("a", 0);
        c.check_in("b", 0);
        assert_eq!(c.submit("z", 1, 0, &p([1.0, 1.0]), 1, 1).unwrap_err(), RoundError::NotSelected(1));
        assert_eq!(c.submit("a", 2, 0, &p([1.0, 1.0]), 1, 1).unwrap_err(), RoundError::WrongRound { open: 1, got: 2 });
        assert_eq!(
            c.submit("a", 1, 5, &p([1.0, 1.0]), 1, 1).unwrap_err(),
            RoundError::WrongModelVersion { expected: 0, got: 5 }
        );
        assert_eq!(c.submit("a", 1, 0, &p([1.0, 1.0]), 0, 1).unwrap_err(), RoundError::NoExamples);
        assert!(matches!(c.submit("a", 1, 0, &p([f32::NAN, 1.0]), 1, 1), Err(RoundError::BadUpdate(_))));
        let other = Params::zeros(Arc::new(Layout::new(vec![TensorSpec::new("w", vec![3])]).unwrap()));
        assert!(matches!(c.submit("a", 1, 0, &other, 1, 1), Err(RoundError::BadUpdate(_))));
        assert_eq!(c.submit("a", 1, 0, &p([1.0, 1.0]), 1, 1001).unwrap_err(), RoundError::DeadlinePassed(1));
        // None of that counted: a valid update is still accepted, once.
        assert!(c.submit("a", 1, 0, &p([1.0, 1.0]), 1, 2).unwrap().is_none());
        assert_eq!(c.submit("a", 1, 0, &p([1.0, 1.0]), 1, 3).unwrap_err(), RoundError::AlreadyReported(1));
        let Some(Settled::Closed(pending)) = c.submit("b", 1, 0, &p([3.0, 3.0]), 1, 4).unwrap() else {
            panic!("round should close")
        };
        assert_eq!(pending.params.as_slice(), &[2.0, 2.0]);
    }

    #[test]
    fn deadline_closes_with_enough_reports_and_abandons_without() {
        // One of three selected clients reports (min 1): the deadline closes the round.
        let mut c = coordinator();
        for name in ["a", "b", "c"] {
            c.check_in(name, 0);
        }
        c.submit("a", 1, 0, &p([2.0, 2.0]), 1, 10).unwrap();
        assert!(c.tick(999).unwrap().is_none());
        let Some(Settled::Closed(pending)) = c.tick(1000).unwrap() else { panic!("deadline should close") };
        assert!(pending.closed_by_deadline);
        assert_eq!(pending.params.as_slice(), &[2.0, 2.0]);
        c.commit(*pending).unwrap();

        // Nobody reports in round 2: it is abandoned, the model is unchanged, round 3 opens.
        c.check_in("a", 2000);
        let Some(Settled::Abandoned { round: 2, reports: 0, selected: 1, .. }) = c.tick(3000).unwrap() else {
            panic!("round without reports should be abandoned")
        };
        assert_eq!(c.version(), 1);
        assert_eq!(assigned(c.check_in("b", 3001)), (3, 1));
        assert_eq!(c.global().as_slice(), &[2.0, 2.0]);
    }

    #[test]
    fn an_abandoned_round_leaves_no_partial_aggregate_behind() {
        let policy = RoundPolicy { min_reports: 2, ..policy() };
        let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let mut c = Coordinator::new(policy, strategy, p([0.0, 0.0]), 0, 1).unwrap();
        c.check_in("a", 0);
        c.submit("a", 1, 0, &p([100.0, 100.0]), 1, 1).unwrap();
        assert!(matches!(c.tick(1000).unwrap(), Some(Settled::Abandoned { reports: 1, .. })));
        c.check_in("a", 1001);
        c.check_in("b", 1001);
        c.submit("a", 2, 0, &p([1.0, 1.0]), 1, 1002).unwrap();
        let Some(Settled::Closed(pending)) = c.submit("b", 2, 0, &p([3.0, 3.0]), 1, 1003).unwrap() else {
            panic!("round 2 should close")
        };
        assert_eq!(pending.params.as_slice(), &[2.0, 2.0], "round 1's update must not leak into round 2");
    }

    #[test]
    fn a_failed_store_keeps_the_old_version() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        c.submit("a", 1, 0, &p([1.0, 1.0]), 1, 1).unwrap();
        c.submit("b", 1, 0, &p([1.0, 1.0]), 1, 2).unwrap();
        c.abort_commit().unwrap();
        assert_eq!(c.version(), 0);
        assert_eq!(c.global().as_slice(), &[0.0, 0.0]);
        assert_eq!(assigned(c.check_in("a", 3)), (2, 0));
    }

    #[test]
    fn a_failed_store_also_undoes_the_server_optimizer_step() {
        // FedAdam keeps moments: after an aborted commit, redoing the round must give exactly
        // what a server that never closed the round would give.
        let adam = || {
            let strategy = StrategyConfig::new(StrategyKind::FedAdam).build().unwrap();
            Coordinator::new(policy(), strategy, p([0.0, 0.0]), 0, 1).unwrap()
        };
        let run_round = |c: &mut Coordinator, round: u64, at: u64| {
            c.check_in("a", at);
            c.check_in("b", at);
            c.submit("a", round, 0, &p([1.0, -1.0]), 1, at + 1).unwrap();
            match c.submit("b", round, 0, &p([0.5, -0.5]), 1, at + 2).unwrap() {
                Some(Settled::Closed(pending)) => *pending,
                other => panic!("round should close, got {other:?}"),
            }
        };
        let mut fresh = adam();
        let want = run_round(&mut fresh, 1, 0).params;
        let mut retried = adam();
        run_round(&mut retried, 1, 0);
        retried.abort_commit().unwrap();
        let got = run_round(&mut retried, 2, 10).params;
        assert_eq!(got.as_slice(), want.as_slice());
    }

    #[test]
    fn invalid_policies_are_rejected() {
        for bad in [
            RoundPolicy { target_reports: 0, ..policy() },
            RoundPolicy { min_reports: 3, ..policy() },
            RoundPolicy { over_selection: 0.5, ..policy() },
            RoundPolicy { deadline_ms: 0, ..policy() },
        ] {
            assert!(matches!(bad.validate(), Err(RoundError::BadPolicy(_))), "{bad:?}");
        }
    }
}
