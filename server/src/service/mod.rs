//! The service behind `webfl serve`: it owns the task's coordinator, its store, its clients and
//! the evaluation of new versions, and knows no HTTP types. The API layer (`crate::api`) turns
//! requests into calls here and [`ServiceError`]s into JSON refusals.
//!
//! Concurrency: two `std::sync::Mutex`es, never held across an `.await` and never one inside the
//! other: the state lock (coordinator, clients, metrics; held for microseconds) and the store
//! lock (database I/O, taken on blocking threads). Requests never wait on the disk: the current
//! model is served from memory, client bookkeeping is queued and written in one transaction per
//! tick, and a round's commit sequence (evaluate → store → announce) runs in a task of its own
//! ([`commit`]), never inside a request future, so a client that hangs up cannot stop it.
//! Check-ins long-poll: a client that would be told to wait is held until the coordinator's
//! state changes.

mod clients;
mod commit;
mod error;
mod limits;
mod metrics;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use webfl_shared::codec::Compression;
use webfl_shared::coordinator::{CheckIn, Coordinator, Resumed, RoundPolicy, SecAggPolicy, SyncCoordinator, Upload};
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::pipeline::{self, UpdateSpec};
use webfl_shared::privacy::PrivacyBudget;
use webfl_shared::protocol::{
    AssignmentTerms, CheckInResponse, ClientsPage, DatasetInfo, MAX_CHECK_IN_WAIT_MS, PROTOCOL_VERSION, RoundRecord,
    SecAggAnswer, SecAggRequest, Status, TaskInfo, UPDATE_CONTENT_TYPE, UploadResponse,
};
use webfl_shared::secagg::ToServer;
use webfl_shared::strategy::StrategyConfig;
use webfl_shared::train::TrainPlan;
use webfl_shared::update::{Update, UpdateError};

use crate::config::ServerConfig;
use crate::store::{ClientCursor, ClientEvent, MemoryStore, Retention, TaskStore, unix_ms};
use clients::Registry;
pub use error::{Refusal, ServiceError};
use limits::{Kind, Limits};
use metrics::{Gauges, Metrics};

/// How often the ticker applies deadlines and writes queued client bookkeeping.
const TICK_EVERY: Duration = Duration::from_millis(250);
/// How often forgotten clients and idle rate-limit state are swept.
const SWEEP_EVERY_MS: u64 = 60_000;
/// The most clients one `GET /api/clients` page holds.
pub const MAX_CLIENTS_PAGE: usize = 1000;

/// Everything a task needs to be served.
pub struct TaskSetup {
    pub name: String,
    pub spec: ModelSpec,
    pub plan: TrainPlan,
    pub policy: RoundPolicy,
    pub strategy: StrategyConfig,
    /// Held-out data each new version is evaluated on.
    pub test: Dataset,
    /// Version 0.
    pub initial: Params,
    /// Largest accepted update body; `None` sizes it from the model (payload + header slack).
    pub upload_limit_bytes: Option<usize>,
    /// The data as clients see it (`GET /api/v1/task`).
    pub dataset: DatasetInfo,
    /// The public file served at `dataset.demo_data_url`, if any.
    pub demo_data: Option<PathBuf>,
    /// What clients do to updates before upload (clip, local noise, compression).
    pub update: UpdateSpec,
    /// Differential privacy accounting, when the task is private.
    pub privacy: Option<PrivacyBudget>,
    /// Rate limits, operator access, client expiry and version retention (`[server]`).
    pub server: ServerConfig,
    /// SecAgg+ for every round (`[secure_aggregation]`): the server sees only each round's sum.
    pub secure_aggregation: Option<SecAggPolicy>,
}

/// A secure-aggregation request body: a JSON object.
fn parse_secagg(body: &[u8]) -> Result<SecAggRequest, ServiceError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ServiceError::bad_request("bad_json", "a secure-aggregation request is a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ServiceError::bad_request("bad_json", format!("secure-aggregation request: {e}")))
}

/// Milliseconds on a monotonic clock; swappable so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The immutable parts of the task.
struct Task {
    name: String,
    spec: ModelSpec,
    test: Dataset,
    dataset: DatasetInfo,
    demo_data: Option<PathBuf>,
    /// What every assignment carries (plan, model, update spec, upload limit).
    terms: AssignmentTerms,
    limits: Limits,
    /// Bearer token of the operator endpoints; without one they answer loopback only.
    operator_token: Option<String>,
    retention: Retention,
    forget_clients_after_ms: u64,
    body_timeout: Duration,
    server: ServerConfig,
}

struct State {
    coordinator: Box<dyn Coordinator>,
    clients: Registry,
    /// The current version's safetensors bytes: downloads of it never touch the store.
    current_model: Arc<Vec<u8>>,
    /// Client bookkeeping waiting for the next batched write.
    client_events: Vec<ClientEvent>,
    history: Vec<RoundRecord>,
    metrics: Metrics,
    store_bytes: u64,
}

/// A check-in as the API received it.
pub struct CheckInCall {
    /// The client's id, absent on a first check-in.
    pub client_id: Option<String>,
    /// The bearer token, when the request carried one.
    pub token: Option<String>,
    /// How long the client will wait for an assignment (capped at 20 s).
    pub wait_ms: u64,
    /// The caller's address (absent for in-process calls), for per-address limits.
    pub peer: Option<IpAddr>,
}

/// An update upload as the API received it. The body is read before the client is known, so
/// a body that could not be read arrives as an error and counts as the client's failure.
pub struct UploadCall {
    pub round: u64,
    pub client_id: String,
    pub token: Option<String>,
    pub model_version: u64,
    pub examples: u64,
    pub content_type: String,
    pub body: Result<bytes::Bytes, ServiceError>,
    pub peer: Option<IpAddr>,
    /// The body's share of the upload buffer, held until the upload is processed.
    pub room: UploadRoom,
}

/// A secure-aggregation step as the API received it: the client already authenticated, its
/// JSON [`SecAggRequest`] body read (within the upload buffer) but not parsed.
pub struct SecAggCall {
    pub round: u64,
    pub client_id: String,
    pub body: bytes::Bytes,
    /// The body's share of the upload buffer, held until the step is processed.
    pub room: UploadRoom,
}

/// One upload body's share of the upload buffer (`[server] upload_buffer_mib`), taken before
/// its bytes are read (as they arrive, for a body without a declared length) and given back when
/// the upload has been processed. When the buffer is full the
/// API stops reading the body: the bytes wait in the kernel's socket buffers and TCP slows the
/// sender, so the server's memory stays bounded however many clients upload at once, and a slow
/// sender holds only what it has sent.
pub struct UploadRoom {
    buffer: Arc<tokio::sync::Semaphore>,
    /// KiB held (one permit each).
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl UploadRoom {
    /// Holds room for `bytes` in all, waiting until `deadline` for other uploads to release
    /// theirs; past it, `503` with `Retry-After`.
    pub async fn hold(&mut self, bytes: usize, deadline: tokio::time::Instant) -> Result<(), ServiceError> {
        let needed = bytes.div_ceil(1024).saturating_sub(self.held_kib());
        if needed == 0 {
            return Ok(());
        }
        let overloaded = || ServiceError::Overloaded {
            retry_after_ms: 2_000,
            message: "the server is holding as many uploads as it may; send this one again shortly".into(),
        };
        let kib = u32::try_from(needed).map_err(|_| overloaded())?;
        let more = tokio::time::timeout_at(deadline, self.buffer.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| ServiceError::Internal("the server is stopping".into()))?;
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }

    /// KiB held.
    pub fn held_kib(&self) -> usize {
        self.held.as_ref().map_or(0, tokio::sync::OwnedSemaphorePermit::num_permits)
    }
}

/// The running service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    task: Arc<Task>,
    state: Arc<Mutex<State>>,
    store: Arc<Mutex<Box<dyn TaskStore>>>,
    clock: Clock,
    /// Bumped whenever a round settles or a version is committed: what long-polling check-ins
    /// wait for.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Commit sequences still running.
    commits_in_flight: Arc<AtomicUsize>,
    /// Set when the server is shutting down: check-ins are answered at once.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// Uploads being decoded and aggregated at once (one per core).
    upload_slots: Arc<tokio::sync::Semaphore>,
    /// KiB of upload bodies the server holds at once (`[server] upload_buffer_mib`).
    upload_buffer: Arc<tokio::sync::Semaphore>,
}

impl Service {
    /// Serves `setup` with versions kept in memory and a real monotonic clock.
    pub fn new(setup: TaskSetup) -> anyhow::Result<Self> {
        Self::with_store(setup, Box::new(MemoryStore::default()))
    }

    /// Serves `setup` from `store`, resuming its last committed version if it has one.
    pub fn with_store(setup: TaskSetup, store: Box<dyn TaskStore>) -> anyhow::Result<Self> {
        let start = Instant::now();
        Self::with_store_and_clock(setup, store, Arc::new(move || start.elapsed().as_millis() as u64))
    }

    pub fn with_store_and_clock(setup: TaskSetup, mut store: Box<dyn TaskStore>, clock: Clock) -> anyhow::Result<Self> {
        setup.plan.validate().context("invalid training plan")?;
        let layout = setup.spec.layout().context("invalid model")?;
        setup.initial.check_same_layout(&Params::zeros(Arc::new(layout))).context("initial parameters")?;
        let upload_limit_bytes = crate::config::upload_limit_bytes(setup.upload_limit_bytes, setup.initial.len());
        let mut strategy = setup.strategy.build().context("invalid strategy")?;
        setup.update.validate().context("invalid update pipeline")?;
        // Central DP noise from a CSPRNG seeded by the OS, never from a task seed.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
        strategy.set_noise_source(Box::new(<rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed)));
        // Continue from the last committed version if the store has one; otherwise start at 0.
        let (global, version, history, current_model) = match store.resume().context("reading the stored task")? {
            Some(resume) => {
                let params = Params::from_safetensors(setup.initial.layout().clone(), &resume.bytes)
                    .context("the stored model does not match the task's model")?;
                if let Some(state) = resume.optimizer {
                    strategy.restore_optimizer_state(state).context("restoring the server optimizer")?;
                }
                tracing::info!(version = resume.version, rounds = resume.history.len(), "resuming stored task");
                (params, resume.version, resume.history, Arc::new(resume.bytes))
            }
            None => {
                let bytes = Arc::new(setup.initial.to_safetensors().context("serialising the initial model")?);
                store.put_initial(bytes.clone()).context("storing model version 0")?;
                (setup.initial, 0, Vec::new(), bytes)
            }
        };
        let next_round = history.iter().map(|r| r.round).max().map_or(1, |r| r + 1);
        let rounds_completed = history.iter().filter(|r| r.version.is_some()).count() as u64;
        let at = Resumed { version, next_round, rounds_completed };
        let secure_terms = setup.secure_aggregation.as_ref().map(|s| s.terms(&setup.policy, setup.strategy.kind));
        let mut coordinator = SyncCoordinator::new(setup.policy, strategy, global, at, setup.privacy)?;
        if let Some(secure) = setup.secure_aggregation {
            coordinator = coordinator.with_secure_aggregation(secure, &setup.update)?;
        }
        let terms = AssignmentTerms {
            plan: setup.plan,
            model: setup.spec.clone(),
            upload_limit_bytes,
            update: setup.update,
            secure_aggregation: secure_terms,
        };
        let server = &setup.server;
        let server_buffer_kib = server.upload_buffer_mib.saturating_mul(1024).min(tokio::sync::Semaphore::MAX_PERMITS);
        // An upload takes its whole declared length from the buffer before it is read.
        anyhow::ensure!(
            upload_limit_bytes.div_ceil(1024) <= server_buffer_kib,
            "server.upload_buffer_mib ({} MiB) cannot hold one upload of the task's limit ({upload_limit_bytes} bytes)",
            server.upload_buffer_mib
        );
        let task = Task {
            name: setup.name,
            spec: setup.spec,
            test: setup.test,
            dataset: setup.dataset,
            demo_data: setup.demo_data,
            terms,
            limits: Limits::new(server),
            operator_token: server.operator_token(),
            retention: Retention { last: server.keep_last_versions, every: server.keep_every_versions },
            forget_clients_after_ms: (server.forget_clients_after_hours * 3_600_000.0) as u64,
            body_timeout: Duration::from_secs_f64(server.body_timeout_secs),
            server: server.clone(),
        };
        let clients = Registry::from_stored(store.client_tokens().context("reading known clients")?);
        let store_bytes = store.size_bytes().context("measuring the store")?;
        let state = State {
            coordinator: Box::new(coordinator),
            clients,
            current_model,
            client_events: Vec::new(),
            history,
            metrics: Metrics::default(),
            store_bytes,
        };
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            task: Arc::new(task),
            state: Arc::new(Mutex::new(state)),
            store: Arc::new(Mutex::new(store)),
            clock,
            changed: Arc::new(changed),
            commits_in_flight: Arc::default(),
            shutting_down: Arc::default(),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            upload_buffer: Arc::new(tokio::sync::Semaphore::new(server_buffer_kib)),
        })
    }

    pub fn upload_limit_bytes(&self) -> usize {
        self.task.terms.upload_limit_bytes
    }

    /// The `[server]` settings the service was started with.
    /// Largest secure-aggregation request body: a masked input is the model's values plus one
    /// as base64 u32 words in JSON, the size of a dense upload's body by a third more.
    pub fn secagg_limit_bytes(&self) -> usize {
        self.task.terms.upload_limit_bytes.div_ceil(3) * 4 + 64 * 1024
    }

    pub fn server_config(&self) -> &ServerConfig {
        &self.task.server
    }

    /// Room in the upload buffer for one upload body, empty until bytes arrive.
    pub fn upload_room(&self) -> UploadRoom {
        UploadRoom { buffer: self.upload_buffer.clone(), held: None }
    }

    /// How long a request body may take to arrive in full.
    pub fn body_timeout(&self) -> Duration {
        self.task.body_timeout
    }

    /// Where the task's public demo data is served from, and the file behind it.
    pub fn demo_data(&self) -> Option<(String, PathBuf)> {
        Some((self.task.dataset.demo_data_url.clone()?, self.task.demo_data.clone()?))
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Converts a time on the coordinator's monotonic clock into wall-clock Unix milliseconds.
    fn wall_ms_of(&self, monotonic_ms: u64) -> u64 {
        unix_ms().saturating_sub(self.now().saturating_sub(monotonic_ms))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the coordinator half-updated (its methods
        // check before they mutate), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store; never taken while holding the state lock, and only on blocking threads (or
    /// in sequences that already run off the request path).
    fn store(&self) -> MutexGuard<'_, Box<dyn TaskStore>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the store on a blocking thread.
    async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn TaskStore) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || f(service.store().as_mut()))
            .await
            .map_err(|e| ServiceError::Internal(format!("store task failed: {e}")))
    }

    /// The task: what a client needs before it checks in.
    pub fn task_info(&self) -> TaskInfo {
        let task = &self.task;
        TaskInfo {
            protocol_version: PROTOCOL_VERSION,
            name: task.name.clone(),
            model: task.spec.clone(),
            plan: task.terms.plan.clone(),
            dataset: task.dataset.clone(),
            upload_limit_bytes: task.terms.upload_limit_bytes,
        }
    }

    /// Checks a client in: authenticates or registers it, then asks the coordinator for an
    /// assignment — holding the call (long poll) while the answer would be "wait".
    pub async fn check_in(&self, call: CheckInCall) -> Result<CheckInResponse, ServiceError> {
        let (client_id, token) = self.identify(call.client_id, call.token, call.peer)?;
        // Subscribe before the first look, so a change between it and the wait is not missed.
        let mut changes = self.changed.subscribe();
        let held_until = self.now() + call.wait_ms.min(MAX_CHECK_IN_WAIT_MS);
        loop {
            let now = self.now();
            let check_in = {
                let mut state = self.lock();
                // A secure round's cohort fixed by this selection: its held members go on.
                let check_in = self.step(&mut state, |c| c.check_in(&client_id, now));
                let round = match check_in {
                    CheckIn::Assigned { round, .. } => Some(round),
                    _ => None,
                };
                state.clients.seen(&client_id, now, round);
                check_in
            };
            if !check_in.is_wait() || now >= held_until || self.shutting_down.load(Ordering::SeqCst) {
                return Ok(check_in.respond(client_id, token, &self.task.terms, now));
            }
            // Holding the client carries no work: if it hangs up, nothing is lost. The deadline
            // ticker settles a round whose time is up, which wakes this too.
            let _ = tokio::time::timeout(Duration::from_millis(held_until - now), changes.changed()).await;
        }
    }

    /// Authenticates a known client or registers a new one (within the rate limits); returns
    /// its id and token.
    fn identify(
        &self,
        client_id: Option<String>,
        token: Option<String>,
        peer: Option<IpAddr>,
    ) -> Result<(String, String), ServiceError> {
        let now = self.now();
        let limits = &self.task.limits;
        let mut state = self.lock();
        let (client_id, token) = match client_id {
            Some(id) => {
                state.clients.authenticate(&id, token.as_deref())?;
                limits.admit(Kind::CheckIn, peer, Some(&id))?;
                (id, token.unwrap_or_default())
            }
            None => {
                limits.admit(Kind::Registration, peer, None)?;
                state.clients.register(now)?
            }
        };
        if let Some(token_hash) = state.clients.due_for_store(&client_id, now) {
            let seen = ClientEvent::Seen { client_id: client_id.clone(), token_hash, at_ms: unix_ms() };
            state.client_events.push(seen);
        }
        Ok((client_id, token))
    }

    /// A committed model version as safetensors bytes: the current one from memory, older
    /// kept ones from the store.
    pub async fn model(&self, version: u64) -> Result<Arc<Vec<u8>>, ServiceError> {
        let (current_version, current) = {
            let state = self.lock();
            (state.coordinator.version(), state.current_model.clone())
        };
        let bytes = if version == current_version {
            current
        } else {
            let stored = self.on_store(move |store| store.get(version)).await?;
            let stored = stored.map_err(|e| ServiceError::Internal(format!("reading the model: {e}")))?;
            stored.ok_or_else(|| match version < current_version {
                true => ServiceError::NotFound(format!(
                    "model version {version} is no longer kept (the store keeps the latest versions and every \
                     [server] keep_every_versions-th)"
                )),
                false => ServiceError::NotFound(format!("no model version {version}")),
            })?
        };
        let mut state = self.lock();
        state.metrics.bytes_down_this_round += bytes.len() as u64;
        state.metrics.bytes_down_total += bytes.len() as u64;
        Ok(bytes)
    }

    /// Accepts one client's update into the open round. Every refusal leaves the round, the
    /// model and the counters unchanged (except the refusal counters).
    ///
    /// Decoding and aggregating are CPU work: they run on blocking threads, at most one per core
    /// at a time, so uploads neither stall the async threads nor each hold a decoded model in
    /// memory while they wait.
    pub async fn upload(&self, call: UploadCall) -> Result<UploadResponse, ServiceError> {
        let service = self.clone();
        let accepted = self.on_core("processing the upload", move || service.accept(call)).await?;
        let round_closed = accepted.map_err(|e| self.refused_upload(e))?;
        Ok(UploadResponse { accepted: true, round_closed })
    }

    /// One step of a secure-aggregation round: takes the client's SecAgg+ message for the
    /// current stage (a masked input is added to the round's masked sum) and answers what the
    /// client does next — holding the call (long poll, up to `wait_ms`) while that is "wait".
    /// The server never sees an individual update: only the coordinator's unmasked sum reaches
    /// the strategy.
    pub async fn secagg(&self, call: SecAggCall) -> Result<SecAggAnswer, ServiceError> {
        let SecAggCall { round, client_id, body, room } = call;
        let mut room = Some(room);
        // A masked input is megabytes of JSON: parsed on a blocking thread, one per core.
        let request = self.on_core("reading the message", move || parse_secagg(&body)).await??;
        if request.client_id != client_id {
            return Err(ServiceError::bad_request(
                "bad_request",
                format!("the body's client_id {:?} is not the X-Webfl-Client header's", request.client_id),
            ));
        }
        let mut changes = self.changed.subscribe();
        let held_until = self.now() + request.wait_ms.unwrap_or(0).min(MAX_CHECK_IN_WAIT_MS);
        let mut message = request.message;
        let stage = message.as_ref().map(ToServer::stage);
        loop {
            let now = self.now();
            let (answer, settled) = {
                let mut state = self.lock();
                self.step(&mut state, |c| c.secagg(&client_id, round, message.take(), now))?
            };
            if let Some(stage) = stage.filter(|_| room.is_some()) {
                tracing::debug!(round, client = %client_id, ?stage, "secure-aggregation message taken");
            }
            drop(room.take());
            if let Some(settled) = settled {
                self.spawn_commit(settled);
            }
            if !answer.is_wait() || now >= held_until || self.shutting_down.load(Ordering::SeqCst) {
                return Ok(answer);
            }
            // Holding the client carries no work: its message, if any, is already in.
            let _ = tokio::time::timeout(Duration::from_millis(held_until - now), changes.changed()).await;
        }
    }

    /// Runs CPU work (decoding, aggregating, parsing a large body) on a blocking thread, at most
    /// one per core at a time (`upload_slots`), so it neither stalls the async threads nor piles
    /// up decoded data while it waits.
    async fn on_core<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _slot = self
            .upload_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Internal("the server is stopping".into()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| ServiceError::Internal(format!("{what} failed: {e}")))
    }

    /// Runs `step` on the coordinator and wakes held long polls if it moved the coordinator's
    /// revision (a round opened or settled, a secure round's cohort fixed or its stage ended).
    fn step<T>(&self, state: &mut State, step: impl FnOnce(&mut dyn Coordinator) -> T) -> T {
        let before = state.coordinator.revision();
        let out = step(state.coordinator.as_mut());
        if state.coordinator.revision() != before {
            self.changed.send_modify(|n| *n += 1);
        }
        out
    }

    /// Whether `token` is `client`'s: `401` otherwise.
    pub fn authenticate(&self, client: &str, token: Option<&str>) -> Result<(), ServiceError> {
        self.lock().clients.authenticate(client, token)
    }

    /// Counts a refused upload by its reason (also one refused before it reached the service).
    pub fn refused_upload(&self, e: ServiceError) -> ServiceError {
        tracing::debug!(error = e.code(), message = %e, "update refused");
        *self.lock().metrics.updates_rejected.entry(e.code()).or_default() += 1;
        e
    }

    /// Returns whether this update closed the round (its commit sequence is then running).
    fn accept(&self, call: UploadCall) -> Result<bool, ServiceError> {
        self.lock().clients.authenticate(&call.client_id, call.token.as_deref())?;
        self.task.limits.admit(Kind::Upload, call.peer, Some(&call.client_id))?;
        let now = self.now();
        let client = call.client_id;
        // From here on the client is known: its refusals count as failures in its health record.
        let submitted = (|| {
            let body = call.body?;
            let layout = self.lock().coordinator.global().layout().clone();
            let update = decode_update(&self.task.terms.update, &call.content_type, &body, layout)?;
            let started = Instant::now();
            let upload = Upload {
                round: call.round,
                model_version: call.model_version,
                update: &update,
                examples: call.examples,
            };
            let settled = {
                let mut state = self.lock();
                let settled = state.coordinator.submit(&client, upload, now)?;
                state.metrics.bytes_up_this_round += body.len() as u64;
                state.metrics.updates_accepted += 1;
                settled
            };
            tracing::debug!(
                round = call.round,
                client,
                aggregate_us = started.elapsed().as_micros() as u64,
                "update aggregated"
            );
            Ok::<_, ServiceError>((settled, body.len() as u64))
        })();
        let mut state = self.lock();
        let round_trip_ms = state.clients.uploaded(&client, now);
        let bytes_up = submitted.as_ref().map_or(0, |(_, n)| *n);
        let ok = submitted.is_ok();
        state.client_events.push(ClientEvent::Contributed { client_id: client, ok, round_trip_ms, bytes_up });
        drop(state);
        let (settled, _) = submitted?;
        // The commit sequence runs in its own task; the answer does not wait for it.
        Ok(settled.map(|s| self.spawn_commit(s)).is_some())
    }

    /// The server's state for people and dashboards.
    pub fn status(&self) -> Status {
        let now = self.now();
        let state = self.lock();
        let rounds_completed = state.coordinator.rounds_completed();
        Status {
            protocol_version: PROTOCOL_VERSION,
            task: self.task.name.clone(),
            model_version: state.coordinator.version(),
            updates_accepted: state.metrics.updates_accepted,
            rounds_completed,
            test_accuracy: latest_accuracy(&state.history),
            clients_connected: state.clients.connected(now) as u64,
            open_round: state.coordinator.open_round(),
            bytes_up_total: state.metrics.bytes_up_total,
            bytes_down_total: state.metrics.bytes_down_total,
            compression: self.task.terms.update.compression.to_string(),
            privacy: state.coordinator.privacy().map(|p| p.status(rounds_completed)),
            store_bytes: state.store_bytes,
        }
    }

    /// Settled rounds, oldest first.
    pub fn history(&self) -> Vec<RoundRecord> {
        self.lock().history.clone()
    }

    /// One page of the known clients' health, most recently seen first: up to `limit` (at most
    /// [`MAX_CLIENTS_PAGE`]) after the cursor `after` (the previous page's `next_after`).
    pub async fn clients(&self, after: Option<String>, limit: Option<usize>) -> Result<ClientsPage, ServiceError> {
        let after = match after.as_deref() {
            None | Some("") => None,
            Some(text) => Some(ClientCursor::parse(text).ok_or_else(|| {
                ServiceError::bad_request(
                    "bad_request",
                    format!("`after` is not a cursor from a previous page: {text:?}"),
                )
            })?),
        };
        let limit = limit.unwrap_or(100).clamp(1, MAX_CLIENTS_PAGE);
        // What is queued is written first, so the page is current.
        let service = self.clone();
        let page = tokio::task::spawn_blocking(move || {
            service.flush_clients();
            service.store().clients_page(after.as_ref(), limit)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("store task failed: {e}")))?;
        let clients = page.map_err(|e| ServiceError::Internal(format!("reading clients: {e}")))?;
        let next_after =
            (clients.len() == limit).then(|| clients.last().map(|c| ClientCursor::of(c).to_string())).flatten();
        Ok(ClientsPage { clients, next_after })
    }

    /// Admits an operator request: the operator token when the server has one, otherwise only
    /// calls from this machine.
    pub fn authorize_operator(&self, token: Option<&str>, peer: Option<IpAddr>) -> Result<(), ServiceError> {
        match &self.task.operator_token {
            Some(expected) => match token {
                Some(token) if clients::same_token(token, expected) => Ok(()),
                Some(_) => Err(ServiceError::Forbidden("that is not the operator token".into())),
                None => Err(ServiceError::Unauthorized(
                    "operator endpoints need `Authorization: Bearer <operator token>`".into(),
                )),
            },
            None if peer.is_none_or(|p| p.is_loopback()) => Ok(()),
            None => Err(ServiceError::Forbidden(
                "operator endpoints answer only this machine unless the server has an operator token ([server] \
                 operator_token or WEBFL_OPERATOR_TOKEN)"
                    .into(),
            )),
        }
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        let state = self.lock();
        let gauges = Gauges {
            model_version: state.coordinator.version(),
            rounds_completed: state.coordinator.rounds_completed(),
            test_accuracy: latest_accuracy(&state.history),
        };
        state.metrics.render(&gauges)
    }

    /// Writes the queued client bookkeeping in one transaction (on this thread: call it from a
    /// blocking context). On failure the events are kept for the next try.
    pub fn flush_clients(&self) {
        let events = std::mem::take(&mut self.lock().client_events);
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.store().record_clients(&events) {
            tracing::warn!(error = %e, events = events.len(), "recording client bookkeeping failed; will retry");
            let mut state = self.lock();
            let newer = std::mem::replace(&mut state.client_events, events);
            state.client_events.extend(newer);
        }
    }

    /// Forgets clients not seen for `[server] forget_clients_after_hours`, and idle rate-limit
    /// state.
    fn sweep(&self) {
        self.task.limits.forget_idle();
        let cutoff = unix_ms().saturating_sub(self.task.forget_clients_after_ms);
        match self.store().forget_clients(cutoff) {
            Ok(gone) if !gone.is_empty() => {
                let now = self.now();
                let forgotten =
                    self.lock().clients.forget(&gone, now.saturating_sub(self.task.forget_clients_after_ms));
                tracing::info!(clients = forgotten, "forgot clients not seen for a while");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "forgetting stale clients failed"),
        }
    }

    /// Applies round deadlines now; what [`spawn_ticker`](Self::spawn_ticker) calls. Returns the
    /// commit sequence it started, if the deadline settled a round.
    pub fn tick(&self) -> Option<tokio::task::JoinHandle<bool>> {
        let now = self.now();
        // A secure round's stage that ended at its deadline: its held clients go on.
        let settled = self.step(&mut self.lock(), |c| c.tick(now));
        match settled {
            Ok(Some(s)) => Some(self.spawn_commit(s)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "closing a round at its deadline failed");
                None
            }
        }
    }

    /// Applies round deadlines every ~250 ms until the runtime shuts down.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sweep_ms = 0;
            loop {
                every.tick().await;
                service.tick();
                let sweep = service.now().saturating_sub(last_sweep_ms) >= SWEEP_EVERY_MS;
                if sweep {
                    last_sweep_ms = service.now();
                }
                if !sweep && service.lock().client_events.is_empty() {
                    continue;
                }
                let chores = service.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    chores.flush_clients();
                    if sweep {
                        chores.sweep();
                    }
                })
                .await;
            }
        })
    }

    /// Runs a settled round's commit sequence in a task of its own: no request future carries
    /// it, so a client that hangs up cannot stop it.
    fn spawn_commit(&self, settled: webfl_shared::coordinator::Settled) -> tokio::task::JoinHandle<bool> {
        let service = self.clone();
        service.commits_in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let committed = commit::settle(&service, settled).await;
            service.commits_in_flight.fetch_sub(1, Ordering::SeqCst);
            service.changed.send_modify(|n| *n += 1);
            committed
        })
    }

    /// Answers every held check-in now and holds no more (the server is stopping).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves once no commit sequence is running (every closed round is stored and announced,
    /// or discarded).
    pub async fn settled(&self) {
        let mut changes = self.changed.subscribe();
        while self.commits_in_flight.load(Ordering::SeqCst) > 0 {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

fn latest_accuracy(history: &[RoundRecord]) -> Option<f64> {
    history.iter().rev().find(|r| r.version.is_some()).and_then(|r| r.test_accuracy)
}

/// The update in an upload body: the pipeline's encoding (`Content-Type:
/// application/x-webfl-update`, the task's codec only; sparse codecs stay sparse) or, for tasks
/// without compression, plain safetensors (`application/octet-stream`, what PyTorch tooling
/// writes). Either way its values are checked once, as they are read, and plain f32 values are
/// kept in the body rather than copied.
pub(crate) fn decode_update(
    spec: &UpdateSpec,
    content_type: &str,
    body: &bytes::Bytes,
    layout: Arc<webfl_shared::Layout>,
) -> Result<Update, ServiceError> {
    if content_type.starts_with(UPDATE_CONTENT_TYPE) {
        return pipeline::decode(body, layout, spec).map_err(|e| ServiceError::BadUpdate(format!("the update: {e}")));
    }
    if spec.compression != Compression::None {
        return Err(ServiceError::BadUpdate(format!(
            "this task takes updates compressed with {} as {UPDATE_CONTENT_TYPE}",
            spec.compression
        )));
    }
    let update = Update::from_safetensors(layout, body).map_err(|e| match e {
        UpdateError::Layout(e) => {
            ServiceError::BadUpdate(format!("the update does not hold this model's tensors: {e}"))
        }
        e => ServiceError::BadUpdate(format!("the update: {e}")),
    })?;
    pipeline::check(&update, spec).map_err(|e| ServiceError::BadUpdate(format!("the update: {e}")))?;
    Ok(update)
}
