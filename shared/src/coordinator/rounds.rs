//! Synchronous rounds (FedAvg-style): who is selected, when a round closes, and what happens at
//! its deadline.
//!
//! A round opens on the first check-in after the previous one settled. Up to
//! `ceil(target · over_selection)` clients are selected (over-selection absorbs stragglers and
//! closed tabs); everyone else is told to wait. Updates stream into the strategy as they
//! arrive. The round closes when `target` updates are in, or at its deadline with at least
//! `min_reports` (otherwise it is abandoned, its partial aggregate discarded, and a fresh round
//! opens on the next check-in).
//!
//! Pacing: a client that has reported, or was not needed, is told to wait only the task's short
//! `retry_after` (and a long-polling driver holds it until the coordinator's state changes), never
//! until the old round's deadline: the next round opens the moment a client checks in after the
//! previous one settled.
//!
//! A secure-aggregation round ([`SyncCoordinator::with_secure_aggregation`], `secure.rs`) selects
//! the same way, then fixes its selection as a SecAgg+ cohort whose members' updates arrive
//! masked; it closes when the sum of the first `target` of them (or of all that made the
//! deadline) is unmasked.

mod secure;
#[cfg(test)]
mod secure_tests;

use std::collections::HashMap;

use crate::params::Params;
use crate::privacy::PrivacyBudget;
use crate::protocol::{SecAggAnswer, WaitReason};
use crate::secagg::ToServer;
use crate::strategy::{OptimizerState, Strategy, StrategyError, layout_difference};

use super::{
    AbandonReason, CheckIn, ClientId, Coordinator, PendingCommit, Resumed, RoundError, RoundPolicy, Settled, Upload,
};
use secure::{SecureRound, SecureSetup};

#[derive(Debug)]
struct OpenRound {
    id: u64,
    opened_at_ms: u64,
    /// Selected clients and whether each is done with the round (reported, or in a secure
    /// round: its part is over).
    selected: HashMap<ClientId, bool>,
    reports: usize,
    /// The cohort and its SecAgg+ server, in a secure-aggregation round.
    secure: Option<SecureRound>,
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

/// Synchronous rounds of one task.
pub struct SyncCoordinator {
    policy: RoundPolicy,
    strategy: Strategy,
    global: Params,
    version: u64,
    next_round: u64,
    rounds_completed: u64,
    privacy: Option<PrivacyBudget>,
    phase: Phase,
    /// max |w| of `global`, kept with it: the headroom an update's values must fit in.
    global_max_abs: f32,
    /// Secure aggregation of every round, when the task asks for it.
    secure: Option<SecureSetup>,
    /// See [`Coordinator::revision`].
    revision: u64,
}

impl SyncCoordinator {
    /// Starts from a committed `global` at `at.version`; `at.next_round` continues the numbering
    /// after a restart. With a privacy budget, rounds stop once the next would overspend it.
    pub fn new(
        policy: RoundPolicy,
        strategy: Strategy,
        global: Params,
        at: Resumed,
        privacy: Option<PrivacyBudget>,
    ) -> Result<Self, RoundError> {
        policy.validate()?;
        Ok(Self {
            global_max_abs: global.max_abs(),
            policy,
            strategy,
            global,
            version: at.version,
            next_round: at.next_round.max(1),
            rounds_completed: at.rounds_completed,
            privacy,
            phase: Phase::Idle,
            secure: None,
            revision: 0,
        })
    }

    pub fn policy(&self) -> &RoundPolicy {
        &self.policy
    }

    fn close(&mut self, closed_by_deadline: bool) -> Result<Settled, RoundError> {
        let Phase::Open(open) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Err(RoundError::NoOpenRound);
        };
        self.revision += 1;
        let secagg = open.secure.as_ref().map(SecureRound::record);
        let mut params = self.global.clone();
        // Empty for FedAvg; for adaptive optimizers two model-sized buffers, once per round.
        let optimizer_before = self.strategy.optimizer_state();
        let summary = match self.strategy.finish_round(&mut params) {
            Ok(s) => s,
            Err(e) => {
                // The updates were each valid when accepted (the one that closed the round
                // too), but together they cannot be aggregated (e.g. their sum overflows): the
                // round is abandoned and recorded, the model and the optimizer stay as they were.
                self.strategy.discard_round();
                self.strategy.restore_optimizer_state(optimizer_before)?;
                return Ok(Settled::Abandoned {
                    round: open.id,
                    reports: open.reports,
                    selected: open.selected.len(),
                    opened_at_ms: open.opened_at_ms,
                    why: AbandonReason::AggregationFailed(e.to_string()),
                    secagg,
                });
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
            secagg,
        })))
    }

    /// Settles the open round without a version: its partial aggregate is discarded.
    fn abandon(&mut self, why: AbandonReason) -> Result<Settled, RoundError> {
        let Phase::Open(open) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Err(RoundError::NoOpenRound);
        };
        self.strategy.discard_round();
        self.revision += 1;
        Ok(Settled::Abandoned {
            round: open.id,
            reports: open.reports,
            selected: open.selected.len(),
            opened_at_ms: open.opened_at_ms,
            secagg: open.secure.as_ref().map(SecureRound::record),
            why,
        })
    }

    fn deadline_of(&self, open: &OpenRound) -> u64 {
        open.opened_at_ms + self.policy.deadline_ms
    }
}

impl Coordinator for SyncCoordinator {
    fn check_in(&mut self, client: &str, now_ms: u64) -> CheckIn {
        let retry_after = self.policy.retry_after_ms.max(1);
        if matches!(self.phase, Phase::Idle) {
            // A private task stops opening rounds once the next one would overspend its ε.
            if let Some(budget) = &self.privacy {
                if !budget.allows(self.rounds_completed) {
                    let reason = format!("the task's privacy budget is spent after {} rounds", self.rounds_completed);
                    return CheckIn::Done { reason };
                }
            }
            self.phase = Phase::Open(OpenRound {
                id: self.next_round,
                opened_at_ms: now_ms,
                selected: HashMap::new(),
                reports: 0,
                secure: self.secure.as_ref().map(|_| SecureRound::default()),
            });
            self.next_round += 1;
            self.revision += 1;
        }
        let open = match &self.phase {
            Phase::Open(open) => open,
            Phase::Committing { .. } => return CheckIn::Wait { ms: retry_after, reason: WaitReason::Committing },
            Phase::Idle => return CheckIn::Wait { ms: retry_after, reason: WaitReason::Closing },
        };
        let deadline_at_ms = self.deadline_of(open);
        if now_ms >= deadline_at_ms {
            return CheckIn::Wait { ms: retry_after, reason: WaitReason::Closing };
        }
        let assigned = CheckIn::Assigned { round: open.id, model_version: self.version, deadline_at_ms };
        let selecting = open.secure.as_ref().is_none_or(SecureRound::selecting);
        match open.selected.get(client) {
            Some(false) => assigned,
            // Reported already: the next round will take it, and it opens as soon as this one
            // settles, so the wait is short (a long poll ends it the moment that happens).
            Some(true) => {
                let dropped = open.secure.as_ref().is_some_and(|s| s.dropped(client));
                let reason = if dropped { WaitReason::RoundFull } else { WaitReason::Reported };
                CheckIn::Wait { ms: retry_after, reason }
            }
            None if selecting && open.selected.len() < self.policy.selection_size() => {
                let mut full = false;
                if let Phase::Open(open) = &mut self.phase {
                    open.selected.insert(client.to_string(), false);
                    if let Some(secure) = &mut open.secure {
                        secure.select(client);
                        full = open.selected.len() >= self.policy.selection_size();
                    }
                }
                // A cohort that cannot be formed stays open; its selection window abandons it.
                if full {
                    let _ = self.fix_cohort(now_ms);
                }
                assigned
            }
            None => CheckIn::Wait { ms: (deadline_at_ms - now_ms).min(retry_after), reason: WaitReason::RoundFull },
        }
    }

    fn submit(&mut self, client: &str, upload: Upload<'_>, now_ms: u64) -> Result<Option<Settled>, RoundError> {
        let Phase::Open(open) = &self.phase else { return Err(RoundError::NoOpenRound) };
        let round = upload.round;
        if open.id != round {
            return Err(RoundError::WrongRound { open: open.id, got: round });
        }
        if open.secure.is_some() {
            return Err(RoundError::SecureRound(round));
        }
        match open.selected.get(client) {
            None => return Err(RoundError::NotSelected(round)),
            Some(true) => return Err(RoundError::AlreadyReported(round)),
            Some(false) => {}
        }
        if upload.model_version != self.version {
            return Err(RoundError::WrongModelVersion { expected: self.version, got: upload.model_version });
        }
        if now_ms >= self.deadline_of(open) {
            return Err(RoundError::DeadlinePassed(round));
        }
        if upload.examples == 0 {
            return Err(RoundError::NoExamples);
        }
        if upload.examples > self.policy.max_examples {
            return Err(RoundError::TooManyExamples { claimed: upload.examples, max: self.policy.max_examples });
        }
        if let Some(why) = layout_difference(self.global.layout(), upload.update.layout()) {
            return Err(StrategyError::LayoutMismatch(why).into());
        }
        // Every client's own model w_global + Δ must be representable; then so is any weighted
        // mean of them, and an update that could not be committed is refused here rather than
        // voiding the round at close. While the model is far from the f32 limit (the usual
        // case), every finite update fits and the pass over its values is skipped.
        let headroom = f32::MAX - self.global_max_abs;
        if headroom < f32::MAX {
            let largest = upload.update.max_abs();
            if largest > headroom {
                return Err(RoundError::OutOfRange { largest });
            }
        }
        self.strategy.add(upload.update, upload.examples as f64)?;
        let Phase::Open(open) = &mut self.phase else { return Err(RoundError::NoOpenRound) };
        open.selected.insert(client.to_string(), true);
        open.reports += 1;
        if open.reports >= self.policy.target_reports {
            return self.close(false).map(Some);
        }
        Ok(None)
    }

    fn secagg(
        &mut self,
        client: &str,
        round: u64,
        message: Option<ToServer>,
        now_ms: u64,
    ) -> Result<(SecAggAnswer, Option<Settled>), RoundError> {
        self.secure_step(client, round, message, now_ms)
    }

    fn tick(&mut self, now_ms: u64) -> Result<Option<Settled>, RoundError> {
        let Phase::Open(open) = &self.phase else { return Ok(None) };
        if open.secure.is_some() {
            return self.tick_secure(now_ms);
        }
        if now_ms < self.deadline_of(open) {
            return Ok(None);
        }
        if open.reports >= self.policy.min_reports {
            return self.close(true).map(Some);
        }
        self.abandon(AbandonReason::TooFewReports).map(Some)
    }

    fn commit(&mut self, pending: PendingCommit) -> Result<(), RoundError> {
        match self.phase {
            Phase::Committing { version, .. } if version == pending.version => {
                self.global_max_abs = pending.params.max_abs();
                self.global = pending.params;
                self.version = pending.version;
                self.rounds_completed += 1;
                self.phase = Phase::Idle;
                self.revision += 1;
                Ok(())
            }
            _ => Err(RoundError::NothingToCommit),
        }
    }

    fn abort_commit(&mut self) -> Result<(), RoundError> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Committing { optimizer_before, .. } => {
                self.revision += 1;
                self.strategy.restore_optimizer_state(optimizer_before)?;
                Ok(())
            }
            other => {
                self.phase = other;
                Ok(())
            }
        }
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn global(&self) -> &Params {
        &self.global
    }

    fn optimizer_state(&self) -> OptimizerState {
        self.strategy.optimizer_state()
    }

    fn open_round(&self) -> Option<u64> {
        match &self.phase {
            Phase::Open(r) => Some(r.id),
            _ => None,
        }
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        match &self.phase {
            Phase::Open(r) if r.secure.is_some() => self.secure_deadline_ms(r),
            Phase::Open(r) => Some(self.deadline_of(r)),
            _ => None,
        }
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn rounds_completed(&self) -> u64 {
        self.rounds_completed
    }

    fn privacy(&self) -> Option<&PrivacyBudget> {
        self.privacy.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::params::{Layout, TensorSpec};
    use crate::strategy::{StrategyConfig, StrategyKind};
    use crate::update::Update;

    use super::*;

    fn layout() -> Arc<Layout> {
        Arc::new(Layout::new(vec![TensorSpec::new("w", vec![2])]).unwrap())
    }

    fn p(v: [f32; 2]) -> Params {
        Params::from_vec(layout(), v.to_vec()).unwrap()
    }

    fn policy() -> RoundPolicy {
        RoundPolicy {
            target_reports: 2,
            over_selection: 1.5,
            min_reports: 1,
            deadline_ms: 1000,
            retry_after_ms: 250,
            max_examples: 1000,
        }
    }

    fn fresh() -> Resumed {
        Resumed { version: 0, next_round: 1, rounds_completed: 0 }
    }

    fn coordinator() -> SyncCoordinator {
        let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        SyncCoordinator::new(policy(), strategy, p([0.0, 0.0]), fresh(), None).unwrap()
    }

    /// `submit` with the upload spelled out positionally, as the tests read best.
    trait SubmitExt {
        fn up(
            &mut self,
            client: &str,
            round: u64,
            version: u64,
            update: &Params,
            examples: u64,
            now: u64,
        ) -> Result<Option<Settled>, RoundError>;
    }

    impl SubmitExt for SyncCoordinator {
        fn up(
            &mut self,
            client: &str,
            round: u64,
            version: u64,
            update: &Params,
            examples: u64,
            now: u64,
        ) -> Result<Option<Settled>, RoundError> {
            let update = &Update::dense(update.clone()).expect("test updates are finite");
            self.submit(client, Upload { round, model_version: version, update, examples }, now)
        }
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
        assert_eq!(c.check_in("d", 10), CheckIn::Wait { ms: 250, reason: WaitReason::RoundFull });
        // Checking in again while selected gives the same assignment (a reloaded tab resumes).
        assert_eq!(assigned(c.check_in("a", 20)), (1, 0));
    }

    #[test]
    fn round_closes_at_target_and_version_is_announced_only_after_commit() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        assert!(c.up("a", 1, 0, &p([1.0, 2.0]), 1, 5).unwrap().is_none());
        let Some(Settled::Closed(pending)) = c.up("b", 1, 0, &p([3.0, 0.0]), 3, 6).unwrap() else {
            panic!("round should close at its target")
        };
        // Weighted FedAvg: (1·[1,2] + 3·[3,0]) / 4 = [2.5, 0.5].
        assert_eq!(pending.params.as_slice(), &[2.5, 0.5]);
        assert_eq!((pending.round, pending.version, pending.reports), (1, 1, 2));
        // Not announced yet: nobody gets the new version, the old one is still current.
        assert_eq!(c.check_in("x", 7), CheckIn::Wait { ms: 250, reason: WaitReason::Committing });
        assert_eq!(c.version(), 0);
        c.commit(*pending).unwrap();
        assert_eq!(c.version(), 1);
        assert_eq!(assigned(c.check_in("x", 8)), (2, 1));
    }

    #[test]
    fn refusals_name_the_problem_and_change_nothing() {
        let mut c = coordinator();
        assert_eq!(c.up("a", 1, 0, &p([1.0, 1.0]), 1, 0).unwrap_err(), RoundError::NoOpenRound);
        c.check_in("a", 0);
        c.check_in("b", 0);
        assert_eq!(c.up("z", 1, 0, &p([1.0, 1.0]), 1, 1).unwrap_err(), RoundError::NotSelected(1));
        assert_eq!(c.up("a", 2, 0, &p([1.0, 1.0]), 1, 1).unwrap_err(), RoundError::WrongRound { open: 1, got: 2 });
        assert_eq!(
            c.up("a", 1, 5, &p([1.0, 1.0]), 1, 1).unwrap_err(),
            RoundError::WrongModelVersion { expected: 0, got: 5 }
        );
        assert_eq!(c.up("a", 1, 0, &p([1.0, 1.0]), 0, 1).unwrap_err(), RoundError::NoExamples);
        // Bounded influence: no claiming more examples than the task allows (u64::MAX would
        // outweigh every honest client), no values that push the model out of f32 range.
        assert_eq!(
            c.up("a", 1, 0, &p([1.0, 1.0]), u64::MAX, 1).unwrap_err(),
            RoundError::TooManyExamples { claimed: u64::MAX, max: 1000 }
        );
        let other = Params::zeros(Arc::new(Layout::new(vec![TensorSpec::new("w", vec![3])]).unwrap()));
        assert!(matches!(c.up("a", 1, 0, &other, 1, 1), Err(RoundError::BadUpdate(_))));
        assert_eq!(c.up("a", 1, 0, &p([1.0, 1.0]), 1, 1001).unwrap_err(), RoundError::DeadlinePassed(1));
        // None of that counted: a valid update is still accepted, once.
        assert!(c.up("a", 1, 0, &p([1.0, 1.0]), 1, 2).unwrap().is_none());
        assert_eq!(c.up("a", 1, 0, &p([1.0, 1.0]), 1, 3).unwrap_err(), RoundError::AlreadyReported(1));
        let Some(Settled::Closed(pending)) = c.up("b", 1, 0, &p([3.0, 3.0]), 1, 4).unwrap() else {
            panic!("round should close")
        };
        assert_eq!(pending.params.as_slice(), &[2.0, 2.0]);
    }

    #[test]
    fn updates_that_would_leave_the_f32_range_are_refused_before_they_count() {
        let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let mut c = SyncCoordinator::new(policy(), strategy, p([1e38, 0.0]), fresh(), None).unwrap();
        c.check_in("a", 0);
        c.check_in("b", 0);
        // 1e38 + 3e38 overflows f32; so would the mean of this and any honest update.
        assert_eq!(c.up("a", 1, 0, &p([0.0, 3e38]), 1, 1).unwrap_err(), RoundError::OutOfRange { largest: 3e38 });
        // (Non-finite values cannot get this far: an `Update` is finite by construction.)
        // Within the headroom is fine, and the refused attempts did not count.
        assert!(c.up("a", 1, 0, &p([2e38, 0.0]), 1, 2).unwrap().is_none());
        let Some(Settled::Closed(pending)) = c.up("b", 1, 0, &p([0.0, 1.0]), 1, 3).unwrap() else {
            panic!("round should close")
        };
        assert_eq!(pending.params.as_slice(), &[2e38, 0.5]);
    }

    #[test]
    fn deadline_closes_with_enough_reports_and_abandons_without() {
        // One of three selected clients reports (min 1): the deadline closes the round.
        let mut c = coordinator();
        for name in ["a", "b", "c"] {
            c.check_in(name, 0);
        }
        c.up("a", 1, 0, &p([2.0, 2.0]), 1, 10).unwrap();
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
        let mut c = SyncCoordinator::new(policy, strategy, p([0.0, 0.0]), fresh(), None).unwrap();
        c.check_in("a", 0);
        c.up("a", 1, 0, &p([100.0, 100.0]), 1, 1).unwrap();
        assert!(matches!(c.tick(1000).unwrap(), Some(Settled::Abandoned { reports: 1, .. })));
        c.check_in("a", 1001);
        c.check_in("b", 1001);
        c.up("a", 2, 0, &p([1.0, 1.0]), 1, 1002).unwrap();
        let Some(Settled::Closed(pending)) = c.up("b", 2, 0, &p([3.0, 3.0]), 1, 1003).unwrap() else {
            panic!("round 2 should close")
        };
        assert_eq!(pending.params.as_slice(), &[2.0, 2.0], "round 1's update must not leak into round 2");
    }

    #[test]
    fn a_failed_store_keeps_the_old_version() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        c.up("a", 1, 0, &p([1.0, 1.0]), 1, 1).unwrap();
        c.up("b", 1, 0, &p([1.0, 1.0]), 1, 2).unwrap();
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
            SyncCoordinator::new(policy(), strategy, p([0.0, 0.0]), fresh(), None).unwrap()
        };
        let run_round = |c: &mut SyncCoordinator, round: u64, at: u64| {
            c.check_in("a", at);
            c.check_in("b", at);
            c.up("a", round, 0, &p([1.0, -1.0]), 1, at + 1).unwrap();
            match c.up("b", round, 0, &p([0.5, -0.5]), 1, at + 2).unwrap() {
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

    /// The stall seen with four tabs: a client that reported used to be told to come back at the
    /// old round's deadline (up to a minute), so the next round opened with one client and waited.
    #[test]
    fn a_client_that_reported_waits_only_until_the_next_round_opens() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        c.up("a", 1, 0, &p([1.0, 1.0]), 1, 10).unwrap();
        // Round 1 is still open (b has not reported): a waits the short retry, not ~1000 ms.
        assert_eq!(c.check_in("a", 11), CheckIn::Wait { ms: 250, reason: WaitReason::Reported });
        let Some(Settled::Closed(pending)) = c.up("b", 1, 0, &p([1.0, 1.0]), 1, 20).unwrap() else {
            panic!("round 1 should close")
        };
        c.commit(*pending).unwrap();
        // The moment round 1 is committed, both are taken into round 2 at once.
        assert_eq!(assigned(c.check_in("a", 21)), (2, 1));
        assert_eq!(assigned(c.check_in("b", 21)), (2, 1));
        assert_eq!(c.next_deadline_ms(), Some(21 + 1000));
    }

    #[test]
    fn a_spent_privacy_budget_ends_the_task() {
        let budget = PrivacyBudget {
            mode: "central".into(),
            noise_multiplier: 1.0,
            sampling_rate: 1.0,
            delta: 1e-5,
            target_epsilon: Some(1e-3),
        };
        let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
        let mut c = SyncCoordinator::new(policy(), strategy, p([0.0, 0.0]), fresh(), Some(budget)).unwrap();
        assert!(matches!(c.check_in("a", 0), CheckIn::Done { .. }));
        assert_eq!(c.open_round(), None);
    }

    #[test]
    fn a_commit_of_another_version_is_refused() {
        let mut c = coordinator();
        c.check_in("a", 0);
        c.check_in("b", 0);
        c.up("a", 1, 0, &p([1.0, 1.0]), 1, 1).unwrap();
        let Some(Settled::Closed(mut pending)) = c.up("b", 1, 0, &p([1.0, 1.0]), 1, 2).unwrap() else {
            panic!("round should close")
        };
        pending.version = 7;
        assert_eq!(c.commit(*pending).unwrap_err(), RoundError::NothingToCommit);
        assert_eq!((c.version(), c.rounds_completed()), (0, 0));
    }

    /// Each update is valid on its own, but the server optimizer's step overflows (server
    /// learning rate 100 on updates of 1e37): the closing update is still accepted (it did
    /// nothing wrong), the round is abandoned and recorded, and the model and optimizer are
    /// untouched — a refusal never follows from someone else's update.
    #[test]
    fn a_round_whose_updates_cannot_be_combined_is_abandoned_not_blamed_on_the_closer() {
        let config = StrategyConfig { server_lr: Some(100.0), ..StrategyConfig::new(StrategyKind::FedAvgM) };
        let strategy = config.build().unwrap();
        let mut c = SyncCoordinator::new(policy(), strategy, p([0.0, 0.0]), fresh(), None).unwrap();
        c.check_in("a", 0);
        c.check_in("b", 0);
        c.up("a", 1, 0, &p([1.0e37, 1.0]), 1, 1).unwrap();
        let settled = c.up("b", 1, 0, &p([1.0e37, 1.0]), 1, 2).expect("the closing update is accepted");
        let Some(Settled::Abandoned { round: 1, reports: 2, why: AbandonReason::AggregationFailed(_), .. }) = settled
        else {
            panic!("expected an abandoned round, got {settled:?}")
        };
        assert_eq!((c.version(), c.global().as_slice()), (0, &[0.0, 0.0][..]));
        assert_eq!(assigned(c.check_in("a", 3)), (2, 0));
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
