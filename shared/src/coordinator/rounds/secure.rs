//! Secure aggregation inside a synchronous round: the selection becomes a SecAgg+ cohort, the
//! coordinator relays each member's messages to one [`SecAggServer`], and the round closes with
//! the cohort's unmasked sum.
//!
//! Each member's masked input is `[w·Δ, w]` (`w` its FedAvg weight, see
//! [`crate::protocol::SecAggTerms`]), so the sum's first `d` values over its last are the FedAvg
//! mean of the survivors' updates. That mean is the only thing the strategy is handed
//! ([`Strategy::add_mean`](crate::strategy::Strategy::add_mean)), and it is made only from a
//! [`SecAggSum`], which only the SecAgg+ server's unmasking creates: no individual update
//! reaches the coordinator in such a round, masked or not.

use std::collections::HashMap;
use std::sync::Arc;

use crate::params::{Layout, Params};
use crate::pipeline::UpdateSpec;
use crate::protocol::{SecAggAnswer, SecAggDone, SecAggRecord};
use crate::secagg::{SecAggServer, SecAggSum, Stage, StageTimeouts, ToServer};
use crate::update::Update;

use super::super::{AbandonReason, ClientId, RoundError, SecAggPolicy, Settled};
use super::{OpenRound, Phase, SyncCoordinator};

/// A task's secure aggregation, resolved once.
pub(super) struct SecureSetup {
    policy: SecAggPolicy,
    clipping_range: f32,
    cohort_ms: u64,
    keys_ms: u64,
    unmask_ms: u64,
}

/// The secure part of an open round.
#[derive(Default)]
pub(super) struct SecureRound {
    /// Selected clients in selection order: cohort member `i` is `order[i]`.
    order: Vec<ClientId>,
    cohort: Option<Box<Cohort>>,
}

struct Cohort {
    server: SecAggServer,
    members: HashMap<ClientId, u32>,
    /// The server's stage when the coordinator last looked.
    stage: Stage,
    /// Per member: the last stage whose message the server took from it.
    answered: Vec<Option<Stage>>,
    /// Per member: why its part is over, once it is.
    done: Vec<Option<SecAggDone>>,
    /// Whether a stage ended at its deadline (someone missed it).
    by_deadline: bool,
}

impl std::fmt::Debug for SecureRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureRound")
            .field("selected", &self.order.len())
            .field("stage", &self.cohort.as_ref().map(|c| c.server.stage()))
            .finish()
    }
}

impl SecureRound {
    /// Still taking clients: the cohort is not fixed.
    pub(super) fn selecting(&self) -> bool {
        self.cohort.is_none()
    }

    pub(super) fn select(&mut self, client: &str) {
        self.order.push(client.to_string());
    }

    /// Whether `client` left the cohort without its update in the sum.
    pub(super) fn dropped(&self, client: &str) -> bool {
        let Some(cohort) = &self.cohort else { return false };
        let member = cohort.members.get(client).map(|&m| m as usize);
        member.is_some_and(|m| cohort.done[m] == Some(SecAggDone::Dropped))
    }

    /// Who took part in each stage; zeros before the cohort is fixed.
    pub(super) fn record(&self) -> SecAggRecord {
        let Some(cohort) = &self.cohort else { return SecAggRecord::default() };
        let counts = cohort.server.counts();
        SecAggRecord {
            cohort: cohort.server.config().clients,
            advertised: counts.advertised,
            shared: counts.shared,
            masked: counts.masked,
            unmasked: counts.unmasked,
        }
    }
}

impl Cohort {
    /// Applies the stages' deadlines.
    fn tick(&mut self, now_ms: u64) {
        let before = self.server.stage();
        self.by_deadline |= self.server.tick(now_ms) != before;
    }

    /// Ends `member`'s part in the round (its check-ins then wait for the next round).
    fn finish(&mut self, open_selected: &mut HashMap<ClientId, bool>, client: &str, member: u32, why: SecAggDone) {
        self.done[member as usize] = Some(why);
        open_selected.insert(client.to_string(), true);
    }

    /// What `member` should do next in the current stage.
    fn answer(
        &mut self,
        selected: &mut HashMap<ClientId, bool>,
        client: &str,
        member: u32,
        retry_after_ms: u64,
    ) -> SecAggAnswer {
        if let Some(reason) = self.done[member as usize] {
            return SecAggAnswer::Done { reason };
        }
        let stage = self.server.stage();
        if self.answered[member as usize] == Some(stage) {
            return SecAggAnswer::Wait { retry_after_ms };
        }
        if stage == Stage::AdvertiseKeys {
            return SecAggAnswer::Setup { config: self.server.config().clone(), index: member };
        }
        match self.server.message_for(member) {
            Some(message) => SecAggAnswer::Message(message),
            // Not part of this stage: an earlier one ended without its message.
            None => {
                self.finish(selected, client, member, SecAggDone::Dropped);
                SecAggAnswer::Done { reason: SecAggDone::Dropped }
            }
        }
    }
}

/// Stages in the order a round goes through them.
fn rank(stage: Stage) -> u8 {
    match stage {
        Stage::AdvertiseKeys => 0,
        Stage::ShareKeys => 1,
        Stage::MaskedInput => 2,
        Stage::Unmask => 3,
        Stage::Finished | Stage::Abandoned => 4,
    }
}

/// Seconds of a validated policy as milliseconds.
fn ms(secs: f64) -> u64 {
    (secs * 1000.0).round() as u64
}

/// The FedAvg mean of a cohort's masked inputs `[w·Δ, w]` — `Σ w·Δ / Σ w` — and `Σ w`. Takes a
/// [`SecAggSum`]: only the SecAgg+ server's unmasking makes one, and it holds a sum of at least
/// `threshold` (≥ 2) inputs, never one client's.
fn mean_of(sum: &SecAggSum, layout: &Arc<Layout>, threshold: u32) -> Result<(Update, f64), String> {
    if sum.survivors().len() < (threshold as usize).max(2) {
        return Err(format!("a sum of {} inputs is below the threshold {threshold}", sum.survivors().len()));
    }
    let values = sum.values();
    let d = layout.len();
    let (weighted, total) = match values.split_at_checked(d) {
        Some((weighted, &[total])) => (weighted, f64::from(total)),
        _ => return Err(format!("the sum has {} values; the model has {d}, plus the weight", values.len())),
    };
    if !(total.is_finite() && total > 0.0) {
        return Err(format!("the cohort's weights sum to {total}"));
    }
    let mean = weighted.iter().map(|&x| (f64::from(x) / total) as f32).collect();
    let params = Params::from_vec(layout.clone(), mean).map_err(|e| e.to_string())?;
    let update = Update::dense(params).map_err(|e| e.to_string())?;
    Ok((update, total))
}

impl SyncCoordinator {
    /// Runs every round by secure aggregation under `policy`, for clients that prepare their
    /// updates by `update` (the clipping range follows its clip bound). Refused, with the reason,
    /// unless [`SecAggPolicy::validate`] accepts the task.
    pub fn with_secure_aggregation(mut self, policy: SecAggPolicy, update: &UpdateSpec) -> Result<Self, RoundError> {
        policy.validate(&self.policy, update, &self.strategy)?;
        self.secure = Some(SecureSetup {
            clipping_range: policy.clipping_range_for(update),
            cohort_ms: ms(policy.cohort_secs),
            keys_ms: ms(policy.keys_secs),
            unmask_ms: ms(policy.unmask_secs),
            policy,
        });
        Ok(self)
    }

    /// When the open secure round's next stage ends: the cohort's fixing, then its server's.
    pub(super) fn secure_deadline_ms(&self, open: &OpenRound) -> Option<u64> {
        let (secure, setup) = (open.secure.as_ref()?, self.secure.as_ref()?);
        match &secure.cohort {
            None => Some(open.opened_at_ms + setup.cohort_ms),
            Some(cohort) => cohort.server.deadline_ms(),
        }
    }

    /// Fixes the open round's cohort with everyone selected so far, in selection order.
    pub(super) fn fix_cohort(&mut self, now_ms: u64) -> Result<(), AbandonReason> {
        let (Some(setup), Phase::Open(open)) = (&self.secure, &mut self.phase) else { return Ok(()) };
        let Some(secure) = open.secure.as_mut().filter(|s| s.cohort.is_none()) else { return Ok(()) };
        let (selected, need) = (secure.order.len(), setup.policy.min_cohort(&self.policy));
        if selected < need {
            return Err(AbandonReason::CohortTooSmall { selected, need });
        }
        let clients = u32::try_from(selected).map_err(|_| AbandonReason::CohortTooSmall { selected, need })?;
        let config = setup.policy.config(open.id, clients, self.global.len() + 1, setup.clipping_range);
        let round_deadline = open.opened_at_ms + self.policy.deadline_ms;
        let timeouts = StageTimeouts {
            advertise_keys_ms: setup.keys_ms,
            share_keys_ms: setup.keys_ms,
            // Members train in this stage; it ends by the round's deadline.
            masked_input_ms: self.policy.deadline_ms,
            masked_input_by_ms: Some(round_deadline),
            unmask_ms: setup.unmask_ms,
        };
        let server = SecAggServer::new(config, timeouts, now_ms)
            .map_err(|e| AbandonReason::AggregationFailed(format!("a cohort of {selected}: {e}")))?;
        let members = secure.order.iter().enumerate().map(|(i, c)| (c.clone(), i as u32)).collect();
        secure.cohort = Some(Box::new(Cohort {
            stage: server.stage(),
            server,
            members,
            answered: vec![None; selected],
            done: vec![None; selected],
            by_deadline: false,
        }));
        self.revision += 1;
        Ok(())
    }

    /// Deadlines of an open secure round: the selection window, then the SecAgg+ stages.
    pub(super) fn tick_secure(&mut self, now_ms: u64) -> Result<Option<Settled>, RoundError> {
        let due = match &self.phase {
            Phase::Open(open) => self.secure_deadline_ms(open).is_some_and(|at| now_ms >= at),
            _ => false,
        };
        if !due {
            return Ok(None);
        }
        let Phase::Open(open) = &mut self.phase else { return Ok(None) };
        let Some(secure) = open.secure.as_mut() else { return Ok(None) };
        match secure.cohort.as_mut() {
            None => match self.fix_cohort(now_ms) {
                Ok(()) => Ok(None),
                Err(why) => self.abandon(why).map(Some),
            },
            Some(cohort) => {
                cohort.tick(now_ms);
                self.secure_progress()
            }
        }
    }

    /// [`Coordinator::secagg`](super::super::Coordinator::secagg) for a [`SyncCoordinator`].
    pub(super) fn secure_step(
        &mut self,
        client: &str,
        round: u64,
        message: Option<ToServer>,
        now_ms: u64,
    ) -> Result<(SecAggAnswer, Option<Settled>), RoundError> {
        let (retry_after_ms, target) = (self.policy.retry_after_ms.max(1), self.policy.target_reports);
        let Phase::Open(open) = &mut self.phase else { return Err(RoundError::NoOpenRound) };
        if open.id != round {
            return Err(RoundError::WrongRound { open: open.id, got: round });
        }
        let Some(secure) = open.secure.as_mut() else { return Err(RoundError::NotSecureRound(round)) };
        let Some(cohort) = secure.cohort.as_mut() else {
            if !open.selected.contains_key(client) {
                return Err(RoundError::NotSelected(round));
            }
            if message.is_some() {
                return Err(RoundError::CohortNotFixed(round));
            }
            return Ok((SecAggAnswer::Wait { retry_after_ms }, None));
        };
        let Some(&member) = cohort.members.get(client) else { return Err(RoundError::NotSelected(round)) };
        if let Some(reason) = cohort.done[member as usize] {
            return Ok((SecAggAnswer::Done { reason }, None));
        }
        // Time first, so that the message is judged in the stage it arrives in and a refusal
        // changes nothing the time did not.
        cohort.tick(now_ms);
        let mut in_sum = cohort.answered[member as usize].is_some_and(|s| rank(s) >= rank(Stage::MaskedInput));
        let mut settled = self.secure_progress()?;
        if settled.is_none() {
            if let (Some(message), Some((selected, cohort))) = (message, self.cohort_mut()) {
                let stage = message.stage();
                if rank(stage) < rank(cohort.server.stage()) {
                    // Late: its stage ended without it, and the round goes on without it.
                    cohort.finish(selected, client, member, SecAggDone::Dropped);
                } else {
                    cohort.server.handle(member, message, now_ms)?;
                    cohort.answered[member as usize] = Some(stage);
                    in_sum |= rank(stage) >= rank(Stage::MaskedInput);
                    if stage == Stage::Unmask {
                        cohort.finish(selected, client, member, SecAggDone::Contributed);
                    }
                    // Over-selection at work, as in a plain round: with the target's masked
                    // inputs in, the round does not wait for the rest (they count as dropped).
                    let masked = cohort.server.counts().masked as usize;
                    if cohort.server.stage() == Stage::MaskedInput && masked >= target {
                        cohort.server.end_stage(now_ms);
                    }
                }
                settled = self.secure_progress()?;
            }
        }
        let answer = match (&settled, self.cohort_mut()) {
            (None, Some((selected, cohort))) => cohort.answer(selected, client, member, retry_after_ms),
            (Some(Settled::Closed(_)), _) if in_sum => SecAggAnswer::Done { reason: SecAggDone::Contributed },
            (Some(Settled::Closed(_)), _) => SecAggAnswer::Done { reason: SecAggDone::Dropped },
            _ => SecAggAnswer::Done { reason: SecAggDone::Abandoned },
        };
        Ok((answer, settled))
    }

    /// The open round's selection and cohort, once the cohort is fixed.
    fn cohort_mut(&mut self) -> Option<(&mut HashMap<ClientId, bool>, &mut Cohort)> {
        match &mut self.phase {
            Phase::Open(OpenRound { selected, secure: Some(SecureRound { cohort: Some(cohort), .. }), .. }) => {
                Some((selected, cohort))
            }
            _ => None,
        }
    }

    /// Looks at the cohort's server after it moved: a stage change wakes waiting clients; an
    /// outcome settles the round; too few masked inputs for the round's minimum abandon it
    /// before anyone is asked to unmask.
    fn secure_progress(&mut self) -> Result<Option<Settled>, RoundError> {
        let min_reports = self.policy.min_reports;
        let Phase::Open(OpenRound { secure: Some(SecureRound { cohort: Some(cohort), .. }), .. }) = &mut self.phase
        else {
            return Ok(None);
        };
        let (before, now) = (cohort.stage, cohort.server.stage());
        cohort.stage = now;
        if now != before {
            self.revision += 1;
        }
        match cohort.server.outcome() {
            None if now == Stage::Unmask && (cohort.server.counts().masked as usize) < min_reports => {
                self.abandon(AbandonReason::TooFewReports).map(Some)
            }
            None => Ok(None),
            Some(Err(why)) => {
                let why = AbandonReason::SecAgg { stage: before, why: why.clone() };
                self.abandon(why).map(Some)
            }
            Some(Ok(sum)) => {
                let threshold = cohort.server.config().threshold;
                let survivors = sum.survivors().len();
                let by_deadline = cohort.by_deadline;
                let added = mean_of(sum, self.global.layout(), threshold).and_then(|(mean, total)| {
                    self.strategy.add_mean(&mean, survivors, total).map_err(|e| e.to_string())
                });
                if let Err(why) = added {
                    return self.abandon(AbandonReason::AggregationFailed(why)).map(Some);
                }
                if let Phase::Open(open) = &mut self.phase {
                    open.reports = survivors;
                }
                self.close(by_deadline).map(Some)
            }
        }
    }
}
