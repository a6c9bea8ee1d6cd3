//! The discrete-event driver: N participant [`Session`]s and one [`SyncCoordinator`] on a
//! virtual clock, exchanging the protocol messages `webfl serve` and the browser exchange.
//!
//! Events are `(virtual time, sequence)` in a priority queue; the sequence breaks ties in the
//! order events were scheduled, so a run is a pure function of its inputs. What takes time is
//! the behaviour model's: network latency and bandwidth, and local training at each client's
//! speed. The coordinator's work (selection, aggregation, evaluation, commit) takes none.
//!
//! Driver invariants, mirroring the server: a check-in (or a secure round's request) the
//! coordinator answers with *wait* is held (long poll) until the coordinator's state changes
//! (its `revision`; in a plain run, a settled round) or the client's wait runs out;
//! deadlines are applied at `next_deadline_ms`; a closed round is evaluated and its version made
//! downloadable before it is committed; refusals carry the server's HTTP status and error code.
//! Training is real (the CPU engine): every training pending when one is needed runs in
//! parallel, and since each job carries its own random stream the result does not depend on
//! how they are batched.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use webfl_shared::backend::{Backend, CpuBackend, Engine, Preference};
use webfl_shared::gpu::block_on;

use crate::config::SimBackend;
use crate::service::{Refusal, ServiceError, decode_update};
use webfl_shared::coordinator::{Coordinator, Resumed, RoundPolicy, SecAggPolicy, Settled, SyncCoordinator, Upload};
use webfl_shared::data::Dataset;
use webfl_shared::params::Params;
use webfl_shared::participant::{Action, Failure, Randomness, Reply, Session, TrainJob, UploadRequest};
use webfl_shared::privacy::PrivacyBudget;
use webfl_shared::protocol::{
    AssignmentTerms, MAX_CHECK_IN_WAIT_MS, SecAggAnswer, SecAggDone, SecAggRequest, UploadResponse,
};
use webfl_shared::rng::{self, Stream};
use webfl_shared::secagg::{Stage, ToServer};
use webfl_shared::strategy::StrategyConfig;
use webfl_shared::train::{EvalStats, TrainError, TrainStats};

use super::behaviour::{Behaviour, Micros, Profile};
use super::evaluate;
use super::report::{HistoryRow, RunSummary};
use webfl_shared::protocol::RoundOutcome;

/// Everything one simulated run needs, already resolved from a task configuration.
pub struct World {
    /// What every assignment carries: model, plan, update pipeline, upload limit.
    pub terms: AssignmentTerms,
    pub policy: RoundPolicy,
    /// Secure aggregation of every round (the terms then carry its part).
    pub secure: Option<SecAggPolicy>,
    /// The strategy (with central DP resolved); its noise is drawn from the seed's `Noise` stream.
    pub strategy: StrategyConfig,
    pub initial: Params,
    pub privacy: Option<PrivacyBudget>,
    /// ε is counted per client (the most-used client's participations) rather than per round.
    pub local_dp: bool,
    /// Each client's local data; clients without data never take part.
    pub clients: Vec<Dataset>,
    pub test: Dataset,
    pub behaviour: Behaviour,
    pub seed: u64,
    /// Settled rounds to run.
    pub rounds: usize,
    /// The engine the clients train on.
    pub backend: SimBackend,
}

/// A finished run.
pub struct Run {
    pub history: Vec<HistoryRow>,
    pub summary: RunSummary,
    /// The last committed model.
    pub global: Params,
    /// Per client: accepted updates, and uploads refused because their round had moved on.
    pub participations: Vec<u64>,
    pub stale: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Hand client `.0` its pending reply.
    Deliver(usize),
    /// Client `.0`'s check-in reaches (or, held, is re-examined by) the coordinator; `.1` is
    /// the check-in's generation, so that a wake-up of an answered check-in is ignored.
    CheckIn(usize, u64),
    /// Client `.0`'s upload reaches the coordinator.
    Upload(usize),
    /// Client `.0`'s secure-aggregation request reaches (or, held, is re-examined by) the
    /// coordinator; `.1` is its generation, as for check-ins.
    SecAgg(usize, u64),
    /// A deadline may have passed.
    Tick,
}

struct Client {
    id: String,
    session: Session,
    profile: Profile,
    /// The answer to the client's last action, ready at its `Deliver` event.
    reply: Option<Reply>,
    upload: Option<UploadRequest>,
    /// A secure-aggregation request in flight or held: its round, body and JSON bytes.
    secagg: Option<(u64, SecAggRequest, usize)>,
    /// The last local training's stats (what the upload in flight was trained with).
    trained: Option<TrainStats>,
    /// A check-in (or secure-aggregation request) at the coordinator: its generation and until
    /// when it may be held.
    generation: u64,
    held_until: Micros,
    held: bool,
    finished: bool,
}

/// Accepted updates of a round so far.
#[derive(Default)]
struct Reports {
    examples: usize,
    loss: f64,
    accuracy: f64,
    bytes_up: usize,
}

struct Driver<'a> {
    world: &'a World,
    coordinator: SyncCoordinator,
    clients: Vec<Client>,
    queue: BinaryHeap<Reverse<(Micros, u64, Event)>>,
    seq: u64,
    now: Micros,
    /// Safetensors bytes of the recent committed versions, what `Download` serves.
    models: BTreeMap<u64, Vec<u8>>,
    pending_training: Vec<(usize, TrainJob)>,
    /// With `--backend gpu`: the one GPU engine every client trains on, in turn.
    gpu: Option<Engine>,
    tick_at: Option<Micros>,
    reports: HashMap<u64, Reports>,
    participations: Vec<u64>,
    history: Vec<HistoryRow>,
    last_eval: EvalStats,
    wall: Instant,
    wakes: u64,
    stale_uploads: u64,
    stale: Vec<u64>,
    dropouts: u64,
    stopped: Option<String>,
    /// The coordinator's revision held requests were last looked at under.
    revision: u64,
}

/// A local training's outcome, as the session takes it.
type Trained = Result<(Params, TrainStats), TrainError>;

/// Versions kept downloadable: a client assigned an older one is refused (404) and checks in anew.
const VERSIONS_KEPT: u64 = 3;
/// Upper bound on events per run, against a behaviour that never settles a round.
const MAX_EVENTS: u64 = 100_000_000;
/// Client ids are `client-<index>`; every client shares this token (the driver knows who sent what).
const TOKEN: &str = "sim";

/// Runs `world` until `world.rounds` rounds have settled or nothing more can happen; calls
/// `on_round` with each settled round's record.
pub fn drive(world: &World, on_round: &mut dyn FnMut(&HistoryRow)) -> Result<Run> {
    let mut strategy = world.strategy.build()?;
    // Seeded noise: simulations are reproducible; production seeds from platform entropy.
    strategy.set_noise_source(Box::new(ChaCha20Rng::from_rng(&mut rng::stream(world.seed, Stream::Noise, &[]))));
    let mut coordinator = SyncCoordinator::new(
        world.policy.clone(),
        strategy,
        world.initial.clone(),
        Resumed::default(),
        world.privacy.clone(),
    )?;
    if let Some(secure) = &world.secure {
        coordinator = coordinator.with_secure_aggregation(secure.clone(), &world.terms.update)?;
    }
    let clients = world
        .clients
        .iter()
        .enumerate()
        .map(|(i, data)| Client {
            id: format!("client-{i}"),
            session: Session::new(
                data.len(),
                vec!["cpu".into()],
                Randomness::Seeded { seed: world.seed, client: i as u64 },
            )
            .with_wait_ms(MAX_CHECK_IN_WAIT_MS)
            .with_attack(world.behaviour.attack_of(i)),
            profile: world.behaviour.profile(i),
            reply: None,
            upload: None,
            secagg: None,
            trained: None,
            generation: 0,
            held_until: 0,
            held: false,
            finished: data.is_empty(),
        })
        .collect();
    let last_eval = evaluate(&world.terms.model, &world.initial, &world.test)?;
    let mut driver = Driver {
        world,
        coordinator,
        clients,
        queue: BinaryHeap::new(),
        seq: 0,
        now: 0,
        models: BTreeMap::from([(0, world.initial.to_safetensors()?)]),
        pending_training: Vec::new(),
        gpu: None,
        tick_at: None,
        reports: HashMap::new(),
        participations: vec![0; world.clients.len()],
        history: Vec::new(),
        last_eval,
        wall: Instant::now(),
        wakes: 0,
        stale_uploads: 0,
        stale: vec![0; world.clients.len()],
        dropouts: 0,
        stopped: None,
        revision: 0,
    };
    driver.start();
    driver.run(on_round)?;
    let summary = RunSummary::of(
        &driver.history,
        driver.stale_uploads,
        driver.dropouts,
        driver.now as f64 / 1e6,
        driver.stopped.take().unwrap_or_default(),
    );
    Ok(Run {
        global: driver.coordinator.global().clone(),
        history: driver.history,
        summary,
        participations: driver.participations,
        stale: driver.stale,
    })
}

impl Driver<'_> {
    fn at(&mut self, time: Micros, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq, event)));
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    /// Clients reach the coordinator in a seeded random order within the first millisecond.
    fn start(&mut self) {
        let mut order: Vec<usize> = (0..self.clients.len()).filter(|&i| !self.clients[i].finished).collect();
        order.shuffle(&mut rng::stream(self.world.seed, Stream::Selection, &[]));
        for (k, i) in order.into_iter().enumerate() {
            self.clients[i].reply = Some(Reply::Start);
            self.at(k as Micros, Event::Deliver(i));
        }
    }

    fn run(&mut self, on_round: &mut dyn FnMut(&HistoryRow)) -> Result<()> {
        let mut events = 0u64;
        while self.history.len() < self.world.rounds {
            let Some(Reverse((time, _, event))) = self.queue.pop() else {
                let reason =
                    if self.clients.iter().all(|c| c.finished) { "every client has stopped" } else { "no event left" };
                self.stopped.get_or_insert_with(|| reason.to_string());
                return Ok(());
            };
            events += 1;
            anyhow::ensure!(events <= MAX_EVENTS, "the simulation made no progress in {MAX_EVENTS} events");
            self.now = time;
            match event {
                Event::Deliver(i) => self.deliver(i)?,
                Event::CheckIn(i, generation) => self.check_in(i, generation),
                Event::Upload(i) => self.upload(i, on_round)?,
                Event::SecAgg(i, generation) => self.secagg(i, generation, on_round)?,
                Event::Tick => {
                    if self.tick_at.is_some_and(|t| t <= time) {
                        self.tick_at = None;
                    }
                    if let Some(settled) = self.coordinator.tick(self.now_ms())? {
                        self.settle(settled, on_round)?;
                    }
                }
            }
            // A secure round moves in many steps (cohort fixed, each stage), each of which may
            // have something for held clients; a plain round has only its settling (below).
            if self.world.secure.is_some() && self.coordinator.revision() != self.revision {
                self.revision = self.coordinator.revision();
                self.wake();
            }
            self.schedule_tick();
        }
        self.stopped.get_or_insert_with(|| format!("{} rounds settled", self.world.rounds));
        Ok(())
    }

    fn schedule_tick(&mut self) {
        if let Some(deadline) = self.coordinator.next_deadline_ms() {
            let at = (deadline * 1000).max(self.now);
            if self.tick_at != Some(at) {
                self.tick_at = Some(at);
                self.at(at, Event::Tick);
            }
        }
    }

    /// The client acts on its reply.
    fn deliver(&mut self, i: usize) -> Result<()> {
        if self.clients[i].reply.is_none() && self.pending_training.iter().any(|(c, _)| *c == i) {
            self.train_pending()?;
        }
        let client = &mut self.clients[i];
        let Some(reply) = client.reply.take() else { return Ok(()) };
        let step = match client.session.handle(reply, self.now as f64 / 1000.0) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(client = %client.id, error = %e, "simulated client stopped");
                client.finished = true;
                return Ok(());
            }
        };
        self.act(i, step.action);
        Ok(())
    }

    fn act(&mut self, i: usize, action: Action) {
        let b = &self.world.behaviour;
        let now = self.now;
        match action {
            Action::CheckIn { request, .. } => {
                let wait = request.wait_ms.unwrap_or(0).min(MAX_CHECK_IN_WAIT_MS);
                let arrive = now + b.one_way();
                let client = &mut self.clients[i];
                client.generation += 1;
                client.secagg = None;
                client.held_until = arrive + wait * 1000;
                let generation = client.generation;
                self.at(arrive, Event::CheckIn(i, generation));
            }
            Action::Download { model_version } => {
                let (reply, done) = match self.models.get(&model_version) {
                    Some(bytes) => (Ok(bytes.clone()), now + 2 * b.one_way() + b.transfer(bytes.len())),
                    None => (
                        Err(refusal(ServiceError::NotFound(format!("no model version {model_version}")))),
                        now + 2 * b.one_way(),
                    ),
                };
                self.clients[i].reply = Some(Reply::Model(reply));
                self.at(done, Event::Deliver(i));
            }
            Action::Train(job) => {
                let deadline_ms = self.world.policy.deadline_ms;
                let dropout = b.dropout(i, job.round, deadline_ms);
                let secure = self.world.secure.is_some();
                if let Some(gone) = dropout.filter(|d| !secure || d.stage == Stage::MaskedInput) {
                    // Gone mid-round (a closed tab, a sleeping laptop): no update; it returns later
                    // (a secure round's client starts afresh: it held its round's secrets).
                    self.dropouts += 1;
                    let reply = if secure {
                        Reply::Start
                    } else {
                        Reply::Trained(Err(TrainError::Device("the client went away mid-round".into())))
                    };
                    self.clients[i].reply = Some(reply);
                    self.at(now + gone.back_after, Event::Deliver(i));
                } else {
                    let examples = self.world.clients[i].len();
                    let done = now + b.train_time(&self.clients[i].profile, examples, job.plan.epochs).max(1);
                    self.pending_training.push((i, *job));
                    self.at(done, Event::Deliver(i));
                }
            }
            Action::Upload(request) => {
                let arrive = now + b.one_way() + b.transfer(request.body.len());
                self.clients[i].upload = Some(request);
                self.at(arrive, Event::Upload(i));
            }
            Action::SecAgg { round, request, .. } => {
                let stage = request.message.as_ref().map(ToServer::stage);
                let dropout = b.dropout(i, round, self.world.policy.deadline_ms);
                if let Some(gone) = dropout.filter(|d| Some(d.stage) == stage) {
                    // Gone before this stage's message: the round goes on without it.
                    self.dropouts += 1;
                    self.clients[i].reply = Some(Reply::Start);
                    self.at(now + gone.back_after, Event::Deliver(i));
                    return;
                }
                let wait = request.wait_ms.unwrap_or(0).min(MAX_CHECK_IN_WAIT_MS);
                let bytes = json_len(&request);
                let arrive = now + b.one_way() + b.transfer(bytes);
                let client = &mut self.clients[i];
                client.generation += 1;
                client.held_until = arrive + wait * 1000;
                client.secagg = Some((round, request, bytes));
                let generation = client.generation;
                self.at(arrive, Event::SecAgg(i, generation));
            }
            Action::Wait { ms } => {
                self.clients[i].reply = Some(Reply::Waited);
                self.at(now + ms.max(1) * 1000, Event::Deliver(i));
            }
            Action::Finish { reason } => {
                self.clients[i].finished = true;
                self.stopped.get_or_insert(reason);
            }
        }
    }

    /// Runs every pending local training: on all cores, or one after another on the GPU.
    fn train_pending(&mut self) -> Result<()> {
        let jobs = std::mem::take(&mut self.pending_training);
        let data = &self.world.clients;
        let results: Vec<(usize, Trained)> = match self.world.backend {
            SimBackend::Cpu => jobs
                .into_par_iter()
                .map(|(i, mut job)| {
                    let trained = CpuBackend::new(&job.model)
                        .map_err(TrainError::from)
                        .and_then(|mut be| be.train(&job.global, &data[i], &job.plan, &mut job.rng, &mut |_| {}));
                    (i, trained)
                })
                .collect(),
            SimBackend::Gpu => {
                let mut results = Vec::with_capacity(jobs.len());
                for (i, mut job) in jobs {
                    let engine = gpu_engine(&mut self.gpu, &job, &data[i])?;
                    let trained = block_on(engine.train(&job.global, &data[i], &job.plan, &mut job.rng, &mut |_| {}));
                    results.push((i, trained));
                }
                results
            }
        };
        for (i, trained) in results {
            let client = &mut self.clients[i];
            client.trained = trained.as_ref().ok().map(|(_, stats)| stats.clone());
            client.reply = Some(Reply::Trained(trained));
        }
        Ok(())
    }

    /// A check-in at the coordinator: answered now, or held until the state changes.
    fn check_in(&mut self, i: usize, generation: u64) {
        let now_ms = self.now_ms();
        let client = &self.clients[i];
        if client.generation != generation || client.finished {
            return;
        }
        let answer = self.coordinator.check_in(&client.id, now_ms);
        if answer.is_wait() && self.now < client.held_until {
            if !client.held {
                let until = client.held_until;
                self.clients[i].held = true;
                self.at(until, Event::CheckIn(i, generation));
            }
            return;
        }
        let client = &mut self.clients[i];
        client.held = false;
        client.generation += 1;
        let response = answer.respond(client.id.clone(), TOKEN.into(), &self.world.terms, now_ms);
        client.reply = Some(Reply::CheckIn(Ok(response)));
        let back = self.now + self.world.behaviour.one_way();
        self.at(back, Event::Deliver(i));
    }

    /// The coordinator's state changed: every held check-in is looked at again, in a seeded
    /// random order (whoever a server's wake-up reaches first).
    fn wake(&mut self) {
        self.wakes += 1;
        let mut held: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].held).collect();
        held.shuffle(&mut rng::stream(self.world.seed, Stream::Selection, &[self.wakes]));
        for i in held {
            let client = &self.clients[i];
            let event = match client.secagg {
                Some(_) => Event::SecAgg(i, client.generation),
                None => Event::CheckIn(i, client.generation),
            };
            self.at(self.now, event);
        }
    }

    /// A secure-aggregation request at the coordinator: answered now, or held (as a poll) until
    /// the coordinator's state changes.
    fn secagg(&mut self, i: usize, generation: u64, on_round: &mut dyn FnMut(&HistoryRow)) -> Result<()> {
        let now_ms = self.now_ms();
        let client = &mut self.clients[i];
        if client.generation != generation || client.finished {
            return Ok(());
        }
        let Some((round, request, bytes)) = client.secagg.as_mut() else { return Ok(()) };
        let (round, message) = (*round, request.message.take());
        let masked = matches!(message, Some(ToServer::MaskedInput(_))).then_some(*bytes);
        let id = client.id.clone();
        let answer = match self.coordinator.secagg(&id, round, message, now_ms) {
            Ok((answer, settled)) => {
                // A masked input that came too late is answered "dropped": it is not in the sum.
                let late = matches!(answer, SecAggAnswer::Done { reason: SecAggDone::Dropped | SecAggDone::Abandoned });
                if let Some(bytes) = masked.filter(|_| !late) {
                    let stats = self.clients[i].trained.clone().unwrap_or_default();
                    let r = self.reports.entry(round).or_default();
                    r.examples += stats.examples;
                    r.loss += stats.loss * stats.examples as f64;
                    r.accuracy += stats.accuracy * stats.examples as f64;
                    r.bytes_up += bytes;
                    self.participations[i] += 1;
                }
                if let Some(settled) = settled {
                    self.settle(settled, on_round)?;
                }
                let client = &mut self.clients[i];
                if answer.is_wait() && self.now < client.held_until {
                    // Held as a poll: what it carried has been taken.
                    if !client.held {
                        client.held = true;
                        let until = client.held_until;
                        self.at(until, Event::SecAgg(i, generation));
                    }
                    return Ok(());
                }
                Ok(answer)
            }
            Err(e) => Err(refusal(ServiceError::from(e))),
        };
        let client = &mut self.clients[i];
        client.held = false;
        client.secagg = None;
        client.generation += 1;
        let bytes = answer.as_ref().map_or(0, json_len);
        client.reply = Some(Reply::SecAgg(answer));
        let back = self.now + self.world.behaviour.one_way() + self.world.behaviour.transfer(bytes);
        self.at(back, Event::Deliver(i));
        Ok(())
    }

    fn upload(&mut self, i: usize, on_round: &mut dyn FnMut(&HistoryRow)) -> Result<()> {
        let Some(request) = self.clients[i].upload.take() else { return Ok(()) };
        let answer = self.accept(i, &request, on_round)?;
        self.clients[i].reply = Some(Reply::Uploaded(answer));
        let back = self.now + self.world.behaviour.one_way();
        self.at(back, Event::Deliver(i));
        Ok(())
    }

    /// What the server's upload handler does: size limit, decode, submit.
    fn accept(
        &mut self,
        i: usize,
        request: &UploadRequest,
        on_round: &mut dyn FnMut(&HistoryRow),
    ) -> Result<Result<UploadResponse, Failure>> {
        let terms = &self.world.terms;
        if request.body.len() > terms.upload_limit_bytes {
            return Ok(Err(refusal(ServiceError::TooLarge(terms.upload_limit_bytes))));
        }
        let layout = self.coordinator.global().layout().clone();
        let body = bytes::Bytes::copy_from_slice(&request.body);
        let update = match decode_update(&terms.update, request.content_type, &body, layout) {
            Ok(update) => update,
            Err(e) => return Ok(Err(refusal(e))),
        };
        let upload = Upload {
            round: request.round,
            model_version: request.model_version,
            update: &update,
            examples: request.examples,
        };
        match self.coordinator.submit(&self.clients[i].id, upload, self.now_ms()) {
            Ok(settled) => {
                let stats = self.clients[i].trained.clone().unwrap_or_default();
                let r = self.reports.entry(request.round).or_default();
                let n = request.examples as usize;
                r.examples += n;
                r.loss += stats.loss * n as f64;
                r.accuracy += stats.accuracy * n as f64;
                r.bytes_up += request.body.len();
                self.participations[i] += 1;
                let round_closed = settled.is_some();
                if let Some(settled) = settled {
                    self.settle(settled, on_round)?;
                }
                Ok(Ok(UploadResponse { accepted: true, round_closed }))
            }
            Err(e) => {
                let e = ServiceError::from(e);
                if e.refusal() == Refusal::Conflict {
                    self.stale_uploads += 1;
                    self.stale[i] += 1;
                }
                Ok(Err(refusal(e)))
            }
        }
    }

    /// Evaluates and commits a closed round (or records an abandoned one), then wakes the held
    /// check-ins.
    fn settle(&mut self, settled: Settled, on_round: &mut dyn FnMut(&HistoryRow)) -> Result<()> {
        let now_ms = self.now_ms();
        let (round, outcome, selected, clients, opened_at_ms, update_norm, clipped, secagg) = match settled {
            Settled::Closed(pending) => {
                let eval = evaluate(&self.world.terms.model, &pending.params, &self.world.test)?;
                self.models.insert(pending.version, pending.params.to_safetensors()?);
                let outcome =
                    if pending.closed_by_deadline { RoundOutcome::ClosedByDeadline } else { RoundOutcome::Closed };
                let facts = (
                    pending.round,
                    outcome,
                    pending.selected,
                    pending.reports,
                    pending.opened_at_ms,
                    pending.summary.delta_norm,
                    pending.summary.clipped,
                    pending.secagg,
                );
                self.coordinator.commit(*pending).context("committing a simulated round")?;
                let version = self.coordinator.version();
                self.models.retain(|&v, _| v + VERSIONS_KEPT > version);
                self.last_eval = eval;
                facts
            }
            Settled::Abandoned { round, reports, selected, opened_at_ms, secagg, .. } => {
                (round, RoundOutcome::Abandoned, selected, reports, opened_at_ms, 0.0, 0, secagg)
            }
        };
        let reports = self.reports.remove(&round).unwrap_or_default();
        let mean = |sum: f64| if reports.examples > 0 { sum / reports.examples as f64 } else { 0.0 };
        let epsilon = self.world.privacy.as_ref().and_then(|budget| {
            let steps = if self.world.local_dp {
                self.participations.iter().copied().max().unwrap_or(0)
            } else {
                self.coordinator.rounds_completed()
            };
            budget.epsilon(steps)
        });
        let record = HistoryRow {
            round,
            outcome,
            selected,
            clients,
            examples: reports.examples,
            train_loss: mean(reports.loss),
            train_accuracy: mean(reports.accuracy),
            test_loss: self.last_eval.loss,
            test_accuracy: self.last_eval.accuracy,
            update_norm,
            clipped,
            bytes_up: reports.bytes_up,
            epsilon,
            seconds: self.wall.elapsed().as_secs_f64(),
            sim_time_s: self.now as f64 / 1e6,
            round_s: now_ms.saturating_sub(opened_at_ms) as f64 / 1000.0,
            secagg,
        };
        self.wall = Instant::now();
        on_round(&record);
        self.history.push(record);
        self.wake();
        Ok(())
    }
}

/// The bytes of a JSON body (what a secure-aggregation exchange sends).
fn json_len<T: serde::Serialize>(body: &T) -> usize {
    serde_json::to_vec(body).map_or(0, |b| b.len())
}

/// A refusal exactly as `webfl serve` answers it: the service's status and `ErrorBody`.
fn refusal(e: ServiceError) -> Failure {
    let retry_after_ms = e.retry_after_ms();
    Failure {
        retry_after_ms,
        ..Failure::http(e.refusal().http_status(), &serde_json::to_vec(&e.body()).unwrap_or_default())
    }
}

/// The GPU engine for `job`'s model, made on first use. Without a usable GPU the engine runs on
/// the CPU and says why (once).
fn gpu_engine<'e>(slot: &'e mut Option<Engine>, job: &TrainJob, data: &Dataset) -> Result<&'e mut Engine> {
    if slot.as_ref().is_none_or(|e| *e.spec() != job.model) {
        let start = Instant::now();
        let now_ms = move || start.elapsed().as_secs_f64() * 1e3;
        let mut engine = block_on(Engine::select(&job.model, Preference::WebGpu, data, &job.plan, &now_ms))?;
        if let Some(choice) = engine.take_choice_change() {
            tracing::info!(backend = choice.backend, adapter = ?choice.adapter, reason = %choice.reason, "simulate trains on");
        }
        *slot = Some(engine);
    }
    slot.as_mut().ok_or_else(|| anyhow::anyhow!("no training engine"))
}

#[cfg(test)]
mod tests {
    use rand::Rng as _;
    use webfl_shared::model::ModelSpec;
    use webfl_shared::pipeline::UpdateSpec;
    use webfl_shared::train::TrainPlan;

    use super::*;
    use crate::config::SimulationConfig;

    /// A tiny synthetic task: 60 clients with 20 examples each of a 4-feature, 3-class problem;
    /// training takes a client 0.1 s (a straggler 1 s); rounds want 10 updates of 13 selected
    /// clients, at least 5 by the 10 s deadline.
    fn tiny_world(seed: u64, behaviour: SimulationConfig) -> World {
        let model = ModelSpec::builtin("mlp", &[4], 3).unwrap();
        let mut r = rng::stream(seed, Stream::Partition, &[]);
        let mut dataset = |n: usize| {
            let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..3)).collect();
            let features =
                labels.iter().flat_map(|&l| (0..4).map(move |j| if j == l as usize { 1.0 } else { 0.0 })).collect();
            Dataset {
                sample_shape: vec![4],
                classes: 3,
                class_names: vec!["a".into(), "b".into(), "c".into()],
                features,
                labels,
            }
        };
        let clients = (0..60).map(|_| dataset(20)).collect();
        let test = dataset(60);
        let initial = model.init_params(&mut rng::stream(seed, Stream::Init, &[])).unwrap();
        World {
            terms: AssignmentTerms {
                plan: TrainPlan { epochs: 1, batch_size: 5, lr: 0.1, ..TrainPlan::default() },
                model,
                upload_limit_bytes: 1 << 24,
                update: UpdateSpec::default(),
                secure_aggregation: None,
            },
            policy: RoundPolicy {
                target_reports: 10,
                over_selection: 1.3,
                min_reports: 5,
                deadline_ms: 10_000,
                retry_after_ms: 1_000,
                max_examples: 10_000,
            },
            secure: None,
            strategy: StrategyConfig::default(),
            initial,
            privacy: None,
            local_dp: false,
            clients,
            test,
            behaviour: Behaviour::new(seed, &SimulationConfig { samples_per_s: 200.0, ..behaviour }),
            seed,
            rounds: 12,
            backend: SimBackend::Cpu,
        }
    }

    fn stragglers() -> SimulationConfig {
        SimulationConfig { stragglers: "0.2:10".parse().unwrap(), ..SimulationConfig::default() }
    }

    #[test]
    fn over_selected_rounds_close_at_their_target_before_stragglers_report() {
        let world = tiny_world(1, stragglers());
        let run = drive(&world, &mut |_| {}).unwrap();
        assert_eq!(run.history.len(), 12);
        assert!(run.history.iter().all(|r| r.outcome == RoundOutcome::Closed && r.clients == 10 && r.selected == 13));
        // A straggler trains its 20 examples in 1 s; most rounds do not wait for one.
        let durations: Vec<f64> = run.history.iter().map(|r| r.round_s).collect();
        assert!(run.summary.median_round_s < 1.0, "{:?} {durations:?}", run.summary);
        let is_straggler: Vec<bool> = (0..60).map(|i| world.behaviour.profile(i).straggler).collect();
        let late: Vec<usize> = (0..60).filter(|&i| run.stale[i] > 0).collect();
        assert!(!late.is_empty() && run.summary.stale_uploads > 0);
        // Late stragglers (and over-selected clients a moment too late) are refused ...
        let late_stragglers: Vec<usize> = late.iter().copied().filter(|&i| is_straggler[i]).collect();
        assert!(!late_stragglers.is_empty(), "{late:?}");
        // ... check in again and are selected again.
        assert!(late_stragglers.iter().any(|&i| run.stale[i] + run.participations[i] >= 2), "{:?}", run.stale);
        let last = run.history.last().unwrap();
        assert!(last.test_accuracy > run.history[0].test_accuracy - 0.2);
    }

    #[test]
    fn rounds_whose_clients_vanish_close_at_the_deadline_or_are_abandoned() {
        let all_gone = tiny_world(2, SimulationConfig { dropout: 1.0, ..SimulationConfig::default() });
        let run = drive(&World { rounds: 3, ..all_gone }, &mut |_| {}).unwrap();
        assert_eq!(run.history.len(), 3);
        for r in &run.history {
            assert_eq!((r.outcome, r.clients, r.round_s), (RoundOutcome::Abandoned, 0, 10.0), "{r:?}");
        }
        assert_eq!(run.summary.abandoned, 3);

        let half_gone = tiny_world(3, SimulationConfig { dropout: 0.5, ..SimulationConfig::default() });
        let run = drive(&half_gone, &mut |_| {}).unwrap();
        let by_deadline: Vec<&HistoryRow> =
            run.history.iter().filter(|r| r.outcome == RoundOutcome::ClosedByDeadline).collect();
        assert!(!by_deadline.is_empty(), "{:?}", run.summary);
        assert!(by_deadline.iter().all(|r| r.round_s == 10.0 && (5..10).contains(&r.clients)));
        for r in run.history.iter().filter(|r| r.outcome == RoundOutcome::Abandoned) {
            assert!(r.clients < 5 && r.round_s == 10.0);
        }
        assert!(run.summary.dropouts > 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_history() {
        let strip = |mut h: Vec<HistoryRow>| {
            h.iter_mut().for_each(|r| r.seconds = 0.0);
            h
        };
        let a = drive(&tiny_world(5, stragglers()), &mut |_| {}).unwrap();
        let b = drive(&tiny_world(5, stragglers()), &mut |_| {}).unwrap();
        assert_eq!(strip(a.history), strip(b.history));
        assert_eq!(a.global, b.global);
        let c = drive(&tiny_world(6, stragglers()), &mut |_| {}).unwrap();
        assert_ne!(c.global, b.global);
    }

    /// `--secagg`: each round's selection becomes a cohort whose masked updates only the sum of
    /// reaches the coordinator; clients vanishing at every stage leave rounds that still close
    /// (the server rebuilding masks), the run is as reproducible as a plain one, and it learns
    /// about as well.
    #[test]
    fn secure_rounds_sum_their_cohorts_through_dropouts_and_learn_like_plain_ones() {
        let secure = |seed, dropout| {
            let mut world = tiny_world(seed, SimulationConfig { dropout, ..SimulationConfig::default() });
            let policy = SecAggPolicy { cohort_secs: 1.0, keys_secs: 2.0, unmask_secs: 2.0, ..SecAggPolicy::default() };
            world.terms.secure_aggregation = Some(policy.terms(&world.policy, world.strategy.kind));
            World { secure: Some(policy), rounds: 6, ..world }
        };
        let run = drive(&secure(4, 0.2), &mut |_| {}).unwrap();
        assert_eq!(run.history.len(), 6);
        assert!(run.summary.dropouts > 0);
        let mut lost = 0;
        for r in &run.history {
            let s = r.secagg.unwrap_or_else(|| panic!("no stages in {r:?}"));
            assert_eq!(s.cohort, 13, "{r:?}");
            assert!(s.cohort >= s.advertised && s.advertised >= s.shared && s.shared >= s.masked, "{r:?}");
            lost += s.cohort - s.unmasked;
            if r.outcome != RoundOutcome::Abandoned {
                assert_eq!((r.clients, r.examples), (s.masked as usize, 20 * s.masked as usize), "{r:?}");
            }
        }
        assert!(lost > 0, "nobody dropped at any stage");
        let again = drive(&secure(4, 0.2), &mut |_| {}).unwrap();
        assert_eq!(again.global, run.global);

        let whole = drive(&secure(5, 0.0), &mut |_| {}).unwrap();
        let plain = drive(&World { rounds: 6, ..tiny_world(5, SimulationConfig::default()) }, &mut |_| {}).unwrap();
        assert!(
            whole.history.iter().all(|r| r.outcome == RoundOutcome::Closed && r.clients == 10),
            "{:?}",
            whole.history
        );
        let (s, p) = (whole.history.last().unwrap(), plain.history.last().unwrap());
        assert!(s.test_loss < whole.history[0].test_loss && s.test_loss < p.test_loss * 1.5, "{s:?} vs {p:?}");
    }

    /// `--backend gpu`: the same sessions and coordinator, the clients training on the wgpu engine
    /// (lavapipe in CI): the same rounds run, and the model's loss matches the CPU's within float
    /// noise.
    #[test]
    fn clients_can_train_on_the_gpu_engine() {
        let world = World { rounds: 4, backend: SimBackend::Gpu, ..tiny_world(5, SimulationConfig::default()) };
        let on_gpu = drive(&world, &mut |_| {}).unwrap();
        let on_cpu = drive(&World { backend: SimBackend::Cpu, ..world }, &mut |_| {}).unwrap();
        assert_eq!(on_gpu.history.len(), 4);
        for (g, c) in on_gpu.history.iter().zip(&on_cpu.history) {
            assert_eq!((g.round, g.clients), (c.round, c.clients));
            // Loss, not accuracy: on this tiny task a float's worth moves a few decisions.
            assert!((g.test_loss - c.test_loss).abs() < 0.02 * c.test_loss, "{g:?} vs {c:?}");
        }
    }
}
