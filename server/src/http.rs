//! The HTTP face of `webfl serve`: protocol v1 for browser clients, plus status and metrics.
//!
//! All round logic lives in [`crate::rounds::Coordinator`]; this module authenticates clients,
//! parses and bounds what they send, and turns every refusal into a JSON error
//! `{"error": "<code>", "message": "<human text>"}` with a fitting status code.
//!
//! Endpoints:
//! - `GET  /api/v1/task` — the task: model, plan, data shape, upload limit.
//! - `POST /api/v1/checkin` — assignment (round, model version, plan, model) or retry-after.
//! - `GET  /api/v1/models/{version}` — a committed model as safetensors bytes.
//! - `POST /api/v1/rounds/{round}/update` — a client's update Δ as safetensors (bounded size).
//! - `GET  /api/status` — a JSON summary for people and dashboards.
//! - `GET  /api/rounds`, `GET /api/clients` — round history and client health.
//! - `GET  /metrics` — Prometheus text.
//! - `GET  /api/openapi.json` — the OpenAPI document of all of the above ([`crate::openapi`]).
//!
//! The state lock is a `std::sync::Mutex` that is never held across an `.await`; closing a round
//! evaluates the new model on a blocking thread with the lock released (the coordinator hands out
//! no assignments meanwhile), then stores the version and only then commits it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;
use tower_http::services::{ServeDir, ServeFile};
use webfl_shared::codec::Compression;
use webfl_shared::coordinator::{
    CheckIn, Coordinator, PendingCommit, Resumed, RoundError, RoundPolicy, Settled, SyncCoordinator, Upload,
};
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::pipeline::{self, UpdateSpec};
use webfl_shared::privacy::PrivacyBudget;
use webfl_shared::protocol::{
    self as proto, AssignmentTerms, CheckInRequest, DatasetInfo, RoundOutcome, RoundRecord, Status, TaskInfo,
    UploadResponse,
};
use webfl_shared::strategy::StrategyConfig;
use webfl_shared::train::TrainPlan;

use crate::simulate;
use crate::store::{MemoryStore, TaskStore, unix_ms};

pub use webfl_shared::protocol::PROTOCOL_VERSION;
/// A client counts as connected for this long after its last request.
const CONNECTED_WINDOW_MS: u64 = 60_000;
/// How stale a client's stored last-seen time may get while it keeps polling.
const PERSIST_SEEN_EVERY_MS: u64 = 30_000;
/// Check-in bodies are tiny; anything larger is refused.
const CHECKIN_LIMIT_BYTES: usize = 64 * 1024;
/// Room for the safetensors header on top of the raw f32 payload when sizing the upload limit.
const UPLOAD_HEADER_SLACK_BYTES: usize = 64 * 1024;
/// How often the deadline ticker runs.
const TICK_EVERY: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

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
}

/// Milliseconds on a monotonic clock; swappable so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The immutable parts of the task.
struct Task {
    name: String,
    spec: ModelSpec,
    plan: TrainPlan,
    test: Dataset,
    upload_limit_bytes: usize,
    dataset: DatasetInfo,
    demo_data: Option<PathBuf>,
    update: UpdateSpec,
    /// What every assignment carries.
    terms: AssignmentTerms,
}

struct Client {
    /// SHA-256 of the token, hex: the token itself is never stored, here or on disk.
    token_hash: String,
    last_seen_ms: u64,
    /// The round the client was last assigned and when, for round-trip times.
    assigned: Option<(u64, u64)>,
    /// When `last_seen` was last written to the store (None: not yet by this process).
    persisted_at_ms: Option<u64>,
}

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Metrics {
    updates_accepted: u64,
    updates_rejected: BTreeMap<&'static str, u64>,
    rounds_abandoned: u64,
    /// Encoded update bytes accepted in the open round (moved into its record when it settles).
    bytes_up_this_round: u64,
    bytes_up_total: u64,
    /// Model bytes served (downloads) in the open round and in total.
    bytes_down_this_round: u64,
    bytes_down_total: u64,
}

struct Inner {
    coordinator: Box<dyn Coordinator>,
    clients: HashMap<String, Client>,
    store: Box<dyn TaskStore>,
    history: Vec<RoundRecord>,
    metrics: Metrics,
}

/// Shared server state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    task: Arc<Task>,
    inner: Arc<Mutex<Inner>>,
    clock: Clock,
    /// Bumped whenever a round settles or a version is committed: what long-polling check-ins
    /// wait for.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Commit sequences still running.
    commits_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl AppState {
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
        let upload_limit_bytes =
            setup.upload_limit_bytes.unwrap_or(setup.initial.len() * 4 + UPLOAD_HEADER_SLACK_BYTES);
        let mut strategy = setup.strategy.build().context("invalid strategy")?;
        setup.update.validate().context("invalid update pipeline")?;
        // Central DP noise from a CSPRNG seeded by the OS, never from a task seed.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
        strategy.set_noise_source(Box::new(<rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed)));
        // Continue from the last committed version if the store has one; otherwise start at 0.
        let (global, version, history) = match store.resume().context("reading the stored task")? {
            Some(resume) => {
                let params = Params::from_safetensors(setup.initial.layout().clone(), &resume.bytes)
                    .context("the stored model does not match the task's model")?;
                if let Some(state) = resume.optimizer {
                    strategy.restore_optimizer_state(state).context("restoring the server optimizer")?;
                }
                tracing::info!(version = resume.version, rounds = resume.history.len(), "resuming stored task");
                (params, resume.version, resume.history)
            }
            None => {
                let bytes = setup.initial.to_safetensors().context("serialising the initial model")?;
                store.put_initial(Arc::new(bytes)).context("storing model version 0")?;
                (setup.initial, 0, Vec::new())
            }
        };
        let next_round = history.iter().map(|r| r.round).max().map_or(1, |r| r + 1);
        let rounds_completed = history.iter().filter(|r| r.version.is_some()).count() as u64;
        let at = Resumed { version, next_round, rounds_completed };
        let coordinator = SyncCoordinator::new(setup.policy, strategy, global, at, setup.privacy.clone())?;
        let terms = AssignmentTerms {
            plan: setup.plan.clone(),
            model: setup.spec.clone(),
            upload_limit_bytes,
            update: setup.update.clone(),
        };
        let task = Task {
            name: setup.name,
            spec: setup.spec,
            plan: setup.plan,
            test: setup.test,
            upload_limit_bytes,
            dataset: setup.dataset,
            demo_data: setup.demo_data,
            update: setup.update,
            terms,
        };
        // Known clients keep their tokens across restarts; none counts as connected until it calls.
        let clients = store
            .client_tokens()
            .context("reading known clients")?
            .into_iter()
            .map(|(id, token_hash)| (id, Client { token_hash, last_seen_ms: 0, assigned: None, persisted_at_ms: None }))
            .collect();
        let inner = Inner { coordinator: Box::new(coordinator), clients, store, history, metrics: Metrics::default() };
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            task: Arc::new(task),
            inner: Arc::new(Mutex::new(inner)),
            clock,
            changed: Arc::new(changed),
            commits_in_flight: Arc::default(),
        })
    }

    pub fn upload_limit_bytes(&self) -> usize {
        self.task.upload_limit_bytes
    }

    /// Settled rounds, oldest first.
    pub fn history(&self) -> Vec<RoundRecord> {
        self.lock().history.clone()
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Converts a time on the coordinator's monotonic clock into wall-clock Unix milliseconds.
    fn wall_ms_of(&self, monotonic_ms: u64) -> u64 {
        unix_ms().saturating_sub(self.now().saturating_sub(monotonic_ms))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the coordinator half-updated (its methods
        // check before they mutate), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies round deadlines now; what [`spawn_ticker`] calls every tick. Returns the
    /// commit sequence it started, if the deadline closed a round.
    pub fn tick(&self) -> Option<tokio::task::JoinHandle<bool>> {
        let now = self.now();
        let settled = self.lock().coordinator.tick(now);
        match settled {
            Ok(Some(s)) => Some(self.spawn_settle(s)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "closing a round at its deadline failed");
                None
            }
        }
    }

    /// Runs a settled round's commit sequence (evaluate, store, announce) in a task of its own:
    /// no request future carries it, so a client that hangs up cannot stop it.
    fn spawn_settle(&self, settled: Settled) -> tokio::task::JoinHandle<bool> {
        use std::sync::atomic::Ordering;
        let state = self.clone();
        state.commits_in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let committed = settle(&state, settled).await;
            state.commits_in_flight.fetch_sub(1, Ordering::SeqCst);
            state.changed.send_modify(|n| *n += 1);
            committed
        })
    }

    /// Resolves once no commit sequence is running (every closed round is stored and announced,
    /// or discarded).
    pub async fn settled(&self) {
        let mut changes = self.changed.subscribe();
        while self.commits_in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Applies round deadlines every ~250 ms until the runtime shuts down.
pub fn spawn_ticker(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            state.tick();
        }
    })
}

/// Finishes a settled round: for a closed one, evaluate and serialise the new model (off the
/// async threads, lock released), store it, and only then commit. Returns true if a new version
/// was committed.
async fn settle(state: &AppState, settled: Settled) -> bool {
    match settled {
        Settled::Abandoned { round, reports, selected, opened_at_ms } => {
            tracing::info!(round, reports, selected, "round abandoned: too few updates by its deadline");
            let mut record = RoundRecord {
                round,
                outcome: RoundOutcome::Abandoned,
                version: None,
                selected: selected as u64,
                reports: reports as u64,
                opened_at_ms: state.wall_ms_of(opened_at_ms),
                closed_at_ms: unix_ms(),
                test_loss: None,
                test_accuracy: None,
                bytes_up: 0,
                bytes_down: 0,
                clipped: 0,
                update_norm: None,
            };
            let mut inner = state.lock();
            inner.metrics.rounds_abandoned += 1;
            record.bytes_up = std::mem::take(&mut inner.metrics.bytes_up_this_round);
            record.bytes_down = std::mem::take(&mut inner.metrics.bytes_down_this_round);
            if let Err(e) = inner.store.record_abandoned(&record) {
                tracing::warn!(round, error = %e, "recording an abandoned round failed");
            }
            inner.history.push(record);
            false
        }
        Settled::Closed(pending) => {
            let task = state.task.clone();
            let eval_started = Instant::now();
            let work = tokio::task::spawn_blocking(move || {
                let eval = simulate::evaluate(&task.spec, &pending.params, &task.test);
                let bytes = pending.params.to_safetensors();
                (pending, eval, bytes)
            })
            .await;
            let (pending, eval, bytes) = match work {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "evaluating a new version panicked; round discarded");
                    if let Err(e) = state.lock().coordinator.abort_commit() {
                        tracing::error!(error = %e, "undoing the server optimizer step failed");
                    }
                    return false;
                }
            };
            let (test_loss, test_accuracy) = match &eval {
                Ok(s) => (Some(s.loss), Some(s.accuracy)),
                Err(e) => {
                    tracing::warn!(error = %e, "evaluating the new version failed");
                    (None, None)
                }
            };
            let PendingCommit {
                round, version, reports, selected, closed_by_deadline, opened_at_ms, ref summary, ..
            } = *pending;
            let (clipped, update_norm) = (summary.clipped as u64, Some(summary.delta_norm));
            let mut record = RoundRecord {
                round,
                outcome: if closed_by_deadline { RoundOutcome::ClosedByDeadline } else { RoundOutcome::Closed },
                version: Some(version),
                selected: selected as u64,
                reports: reports as u64,
                opened_at_ms: state.wall_ms_of(opened_at_ms),
                closed_at_ms: unix_ms(),
                test_loss,
                test_accuracy,
                bytes_up: 0,
                bytes_down: 0,
                clipped,
                update_norm,
            };
            let eval_ms = eval_started.elapsed().as_millis() as u64;
            let store_started = Instant::now();
            let mut inner = state.lock();
            record.bytes_up = std::mem::take(&mut inner.metrics.bytes_up_this_round);
            record.bytes_down = std::mem::take(&mut inner.metrics.bytes_down_this_round);
            inner.metrics.bytes_up_total += record.bytes_up;
            // The optimizer state after this round's step is part of the commit; the coordinator's
            // strategy has already taken that step when it produced the pending version.
            let optimizer = inner.coordinator.optimizer_state();
            let stored = bytes
                .map_err(anyhow::Error::from)
                .and_then(|b| inner.store.commit(version, Arc::new(b), &record, &optimizer))
                .and_then(|()| inner.coordinator.commit(*pending).map_err(anyhow::Error::from));
            let committed = match stored {
                Ok(()) => {
                    let store_ms = store_started.elapsed().as_millis() as u64;
                    tracing::info!(
                        round,
                        version,
                        reports,
                        selected,
                        ?test_accuracy,
                        eval_ms,
                        store_ms,
                        "new model version"
                    );
                    true
                }
                Err(e) => {
                    tracing::error!(round, version, error = %e, "storing the new version failed; round discarded");
                    if let Err(e) = inner.coordinator.abort_commit() {
                        tracing::error!(error = %e, "undoing the server optimizer step failed");
                    }
                    record.version = None;
                    record.update_norm = None;
                    record.outcome = RoundOutcome::StoreFailed;
                    false
                }
            };
            inner.history.push(record);
            committed
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Every refusal the API can give; rendered as `{"error": code, "message": text}`.
#[derive(Debug)]
pub enum AppError {
    /// 400: a malformed request (bad JSON, header or path).
    BadRequest { code: &'static str, message: String },
    /// 401: no credentials, or credentials for an unknown client.
    Unauthorized(String),
    /// 403: a token that does not belong to the client.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 413: the body exceeds the limit (bytes).
    TooLarge(usize),
    /// 422: the update's bytes do not hold this model's tensors.
    BadUpdate(String),
    /// The coordinator refused.
    Round(RoundError),
    /// 500.
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::BadUpdate(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Round(e) => match e {
                RoundError::NotSelected(_) => StatusCode::FORBIDDEN,
                RoundError::AlreadyReported(_)
                | RoundError::WrongRound { .. }
                | RoundError::WrongModelVersion { .. }
                | RoundError::NoOpenRound
                | RoundError::DeadlinePassed(_) => StatusCode::CONFLICT,
                RoundError::BadUpdate(_) | RoundError::NoExamples => StatusCode::UNPROCESSABLE_ENTITY,
                RoundError::BadPolicy(_) | RoundError::NothingToCommit => StatusCode::INTERNAL_SERVER_ERROR,
            },
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error` field (also the `reason` label of rejected-update metrics).
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest { code, .. } => code,
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::TooLarge(_) => "payload_too_large",
            AppError::BadUpdate(_) => "bad_update",
            AppError::Round(e) => match e {
                RoundError::BadPolicy(_) | RoundError::NothingToCommit => "internal",
                RoundError::NoOpenRound => "no_open_round",
                RoundError::WrongRound { .. } => "wrong_round",
                RoundError::WrongModelVersion { .. } => "wrong_model_version",
                RoundError::NotSelected(_) => "not_selected",
                RoundError::AlreadyReported(_) => "already_reported",
                RoundError::DeadlinePassed(_) => "deadline_passed",
                RoundError::NoExamples => "no_examples",
                RoundError::BadUpdate(_) => "bad_update",
            },
            AppError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            AppError::BadRequest { message, .. } => message.clone(),
            AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::BadUpdate(m)
            | AppError::Internal(m) => m.clone(),
            AppError::TooLarge(limit) => format!("the request body exceeds the limit of {limit} bytes"),
            AppError::Round(e) => e.to_string(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        AppError::BadRequest { code, message: message.into() }
    }
}

impl From<RoundError> for AppError {
    fn from(e: RoundError) -> Self {
        AppError::Round(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code(), "message": self.message() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Maps a body-buffering failure: over the limit → 413, anything else → 400.
fn body_error(e: BytesRejection, limit: usize) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(limit)
    } else {
        AppError::bad_request("bad_body", e.body_text())
    }
}

// ---------------------------------------------------------------------------------------------
// Router and handlers
// ---------------------------------------------------------------------------------------------

/// The whole HTTP API (no pages); unknown paths get a JSON 404.
pub fn app(state: AppState) -> Router {
    api(state).fallback(not_found)
}

/// The API plus the built pages in `www` (`www/dist` after `scripts/build-web`): `/` is the
/// contribute page, `/dashboard` the dashboard, other files are served as they are.
pub fn app_with_pages(state: AppState, www: &FsPath) -> Router {
    api(state)
        .route_service("/", ServeFile::new(www.join("index.html")))
        .route_service("/dashboard", ServeFile::new(www.join("dashboard.html")))
        // Unknown API paths stay JSON errors rather than falling through to the files.
        .route("/api/{*rest}", any(not_found))
        .fallback_service(ServeDir::new(www))
}

async fn not_found() -> AppError {
    AppError::NotFound("no such endpoint".into())
}

fn api(state: AppState) -> Router {
    let upload_limit = state.task.upload_limit_bytes;
    let mut router = Router::new()
        .route("/api/v1/task", get(task_info))
        .route("/api/v1/checkin", post(checkin).layer(DefaultBodyLimit::max(CHECKIN_LIMIT_BYTES)))
        .route("/api/v1/models/{version}", get(model))
        .route("/api/v1/rounds/{round}/update", post(upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/status", get(status))
        .route("/api/rounds", get(rounds))
        .route("/api/clients", get(clients))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics));
    if let (Some(url), Some(file)) = (&state.task.dataset.demo_data_url, &state.task.demo_data) {
        router = router.route_service(url, ServeFile::new(file));
    }
    router.with_state(state)
}

/// The task: what a client needs before it checks in.
///
/// The model, training plan, data shape (and where to fetch public demo data) and the upload
/// limit, so a client can pick and shape its data before it asks to join a round.
#[utoipa::path(
    get,
    path = "/api/v1/task",
    tag = "protocol",
    responses((status = 200, description = "The task.", body = TaskInfo))
)]
pub(crate) async fn task_info(State(state): State<AppState>) -> Response {
    let task = &state.task;
    axum::Json(TaskInfo {
        protocol_version: PROTOCOL_VERSION,
        name: task.name.clone(),
        model: task.spec.clone(),
        plan: task.plan.clone(),
        dataset: task.dataset.clone(),
        upload_limit_bytes: task.upload_limit_bytes,
    })
    .into_response()
}

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operator",
    responses((status = 200, description = "The OpenAPI 3.1 document of every endpoint.", body = Object))
)]
pub(crate) async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

fn new_id(bytes: usize) -> Result<String, AppError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AppError::Internal(format!("no system randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks that the request carries `client`'s token: missing credentials or an unknown client →
/// 401, a token that is not this client's → 403.
fn authenticate(inner: &Inner, headers: &HeaderMap, client: &str) -> Result<(), AppError> {
    let Some(token) = bearer(headers) else {
        return Err(AppError::Unauthorized("missing `Authorization: Bearer <token>`".into()));
    };
    let Some(known) = inner.clients.get(client) else {
        return Err(AppError::Unauthorized(format!(
            "unknown client {client:?}: check in without a client_id to get a new identity"
        )));
    };
    if !same_token(&token_hash(token), &known.token_hash) {
        return Err(AppError::Forbidden("the token does not belong to this client".into()));
    }
    Ok(())
}

/// Check in: get an assignment for the open round, or when to come back.
///
/// A first check-in sends no `client_id` (an empty body is fine) and receives a fresh
/// `client_id` and `token`; later ones send `client_id` with `Authorization: Bearer <token>`.
/// Checking in again while selected returns the same assignment.
#[utoipa::path(
    post,
    path = "/api/v1/checkin",
    tag = "protocol",
    request_body(
        content = CheckInRequest,
        content_type = "application/json",
        description = "Empty or `{}` for a first check-in; later ones send `client_id`. At most 64 KiB."
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "`assigned` (train and upload before the deadline) or `retry` (come back after \
                                      `retry_after_ms`); both carry the client's `client_id` and `token`.",
         body = proto::CheckInResponse),
        (status = 400, description = "`bad_json`: the body is not a check-in request; `bad_body`: the body could \
                                      not be read.", body = proto::ErrorBody),
        (status = 401, description = "`unauthorized`: a `client_id` without a bearer token, or an unknown \
                                      `client_id` (check in anew without one).", body = proto::ErrorBody,
         headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the token is not this client's.", body = proto::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds 64 KiB.", body = proto::ErrorBody),
        (status = 500, description = "`internal`: the server could not record the client.", body = proto::ErrorBody),
    )
)]
pub(crate) async fn checkin(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|e| body_error(e, CHECKIN_LIMIT_BYTES))?;
    let req: CheckInRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CheckInRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::bad_request("bad_json", format!("check-in body: {e}")))?
    };
    let (client_id, token) = state.register(&headers, req.client_id)?;
    let wait_ms = req.wait_ms.unwrap_or(0).min(proto::MAX_CHECK_IN_WAIT_MS);
    // Long poll: a client that would be told to wait is held until the coordinator's state
    // changes (a round settles, a version is committed) or its wait runs out. Holding it carries
    // no work, so a client that hangs up loses nothing.
    let mut changes = state.changed.subscribe();
    let held_until = state.now() + wait_ms;
    loop {
        let now = state.now();
        let check_in = state.assign(&client_id, now);
        if !check_in.is_wait() || now >= held_until {
            let resp = check_in.respond(client_id, token, &state.task.terms, now);
            return Ok(axum::Json(resp).into_response());
        }
        let left = Duration::from_millis(held_until - now);
        // The deadline ticker settles a round whose time is up; wake for it too.
        let _ = tokio::time::timeout(left, changes.changed()).await;
    }
}

impl AppState {
    /// Authenticates a known client or registers a new one; returns its id and token.
    fn register(&self, headers: &HeaderMap, client_id: Option<String>) -> Result<(String, String), AppError> {
        let now = self.now();
        let mut inner = self.lock();
        let (client_id, token) = match client_id {
            Some(id) => {
                authenticate(&inner, headers, &id)?;
                (id, bearer(headers).unwrap_or_default().to_string())
            }
            None => {
                let (id, token) = (new_id(8)?, new_id(16)?);
                let client =
                    Client { token_hash: token_hash(&token), last_seen_ms: now, assigned: None, persisted_at_ms: None };
                inner.clients.insert(id.clone(), client);
                (id, token)
            }
        };
        // A new client is written at once (its token must survive a restart); after that, polling
        // clients refresh their stored last-seen at most every PERSIST_SEEN_EVERY_MS, not with an
        // fsync per check-in under the state lock.
        let persist = inner
            .clients
            .get(&client_id)
            .filter(|c| c.persisted_at_ms.is_none_or(|at| now.saturating_sub(at) >= PERSIST_SEEN_EVERY_MS))
            .map(|c| c.token_hash.clone());
        if let Some(hash) = persist {
            inner
                .store
                .touch_client(&client_id, &hash, unix_ms())
                .map_err(|e| AppError::Internal(format!("recording the client: {e}")))?;
            if let Some(c) = inner.clients.get_mut(&client_id) {
                c.persisted_at_ms = Some(now);
            }
        }
        Ok((client_id, token))
    }

    /// One check-in at the coordinator, with the client's assignment time kept for round trips.
    fn assign(&self, client_id: &str, now: u64) -> CheckIn {
        let mut inner = self.lock();
        let check_in = inner.coordinator.check_in(client_id, now);
        if let Some(c) = inner.clients.get_mut(client_id) {
            c.last_seen_ms = now;
            if let CheckIn::Assigned { round, .. } = check_in {
                // A repeated check-in for the same round keeps the first assignment time.
                if c.assigned.is_none_or(|(r, _)| r != round) {
                    c.assigned = Some((round, now));
                }
            }
        }
        check_in
    }
}

fn parse_u64(what: &str, text: &str) -> Result<u64, AppError> {
    text.trim()
        .parse()
        .map_err(|_| AppError::bad_request("bad_request", format!("{what} must be an unsigned integer, got {text:?}")))
}

/// Download a committed model version as safetensors.
///
/// F32 tensors with PyTorch `state_dict` names. A committed version never changes.
#[utoipa::path(
    get,
    path = "/api/v1/models/{version}",
    tag = "protocol",
    params(("version" = u64, Path, description = "A committed model version (an assignment's `model_version`).")),
    responses(
        (status = 200, description = "The model as safetensors.", body = crate::openapi::Safetensors,
         content_type = "application/octet-stream",
         headers(("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"))),
        (status = 400, description = "`bad_request`: the version is not an unsigned integer.", body = proto::ErrorBody),
        (status = 404, description = "`not_found`: no such version (yet).", body = proto::ErrorBody),
        (status = 500, description = "`internal`: the server could not read its store.", body = proto::ErrorBody),
    )
)]
pub(crate) async fn model(State(state): State<AppState>, Path(version): Path<String>) -> Result<Response, AppError> {
    let version = parse_u64("the model version", &version)?;
    let mut inner = state.lock();
    let bytes = inner.store.get(version).map_err(|e| AppError::Internal(format!("reading the model: {e}")))?;
    let Some(bytes) = bytes else {
        return Err(AppError::NotFound(format!("no model version {version}")));
    };
    inner.metrics.bytes_down_this_round += bytes.len() as u64;
    inner.metrics.bytes_down_total += bytes.len() as u64;
    drop(inner);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        // A committed version never changes.
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
    ];
    Ok((headers, Bytes::from((*bytes).clone())).into_response())
}

fn required_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, AppError> {
    let value =
        headers.get(name).ok_or_else(|| AppError::bad_request("missing_header", format!("missing header {name}")))?;
    value.to_str().map_err(|_| AppError::bad_request("bad_header", format!("header {name} is not text")))
}

/// Upload an update Δ = w_local − w_global for a round.
///
/// Before the round's deadline, from a client selected for it, once per round. Every refusal
/// leaves the round, the model and the counters unchanged.
#[utoipa::path(
    post,
    path = "/api/v1/rounds/{round}/update",
    tag = "protocol",
    params(
        ("round" = u64, Path, description = "The assigned round."),
        ("X-Webfl-Client" = String, Header, description = "The uploading client's `client_id`."),
        ("X-Webfl-Model-Version" = u64, Header, description = "The model version the update was trained from."),
        ("X-Webfl-Examples" = u64, Header, minimum = 1,
         description = "Local examples trained on: the update's FedAvg weight."),
    ),
    request_body(
        content = crate::openapi::Safetensors,
        content_type = "application/octet-stream",
        description = "Δ as safetensors: exactly the model's tensor names and shapes, F32, finite values; at most \
                       the task's `upload_limit_bytes`."
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted into the round; `round_closed` when it closed the round and a new \
                                      version was committed.", body = UploadResponse),
        (status = 400, description = "`missing_header`: an `X-Webfl-*` header is missing; `bad_header`: one is not \
                                      text; `bad_request`: the round, `X-Webfl-Model-Version` or `X-Webfl-Examples` \
                                      is not an unsigned integer; `bad_body`: the body could not be read.",
         body = proto::ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown client (check in anew).",
         body = proto::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the token is not this client's; `not_selected`: the client is not \
                                      selected for this round.", body = proto::ErrorBody),
        (status = 409, description = "`wrong_round`: another round is open; `wrong_model_version`: not trained from \
                                      the current version; `already_reported`: this client's update for the round \
                                      is in; `no_open_round`: no round is taking updates; `deadline_passed`: the \
                                      round's deadline has passed.", body = proto::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds `upload_limit_bytes`.",
         body = proto::ErrorBody),
        (status = 422, description = "`bad_update`: not this model's tensor names, shapes or dtype, not safetensors, \
                                      or non-finite values; `no_examples`: `X-Webfl-Examples` is 0.",
         body = proto::ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    Path(round): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    match accept_upload(&state, &round, &headers, body).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            tracing::debug!(error = e.code(), message = %e.message(), "update refused");
            *state.lock().metrics.updates_rejected.entry(e.code()).or_default() += 1;
            Err(e)
        }
    }
}

/// The update in an upload body: the pipeline's encoding (`Content-Type:
/// application/x-webfl-update`, the task's codec only) or, for tasks without compression,
/// plain safetensors (`application/octet-stream`, what PyTorch tooling writes).
fn decode_update(
    spec: &UpdateSpec,
    headers: &HeaderMap,
    body: &[u8],
    layout: Arc<webfl_shared::Layout>,
) -> Result<Params, AppError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with(proto::UPDATE_CONTENT_TYPE) {
        return pipeline::decode(body, layout, spec).map_err(|e| AppError::BadUpdate(format!("the update: {e}")));
    }
    if spec.compression != Compression::None {
        return Err(AppError::BadUpdate(format!(
            "this task takes updates compressed with {} as {}",
            spec.compression,
            proto::UPDATE_CONTENT_TYPE
        )));
    }
    Params::from_safetensors(layout, body)
        .map_err(|e| AppError::BadUpdate(format!("the update does not hold this model's tensors: {e}")))
}

async fn accept_upload(
    state: &AppState,
    round: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let round = parse_u64("the round", round)?;
    let client = required_header(headers, proto::header::CLIENT)?.to_string();
    let model_version = parse_u64("X-Webfl-Model-Version", required_header(headers, proto::header::MODEL_VERSION)?)?;
    let examples = parse_u64("X-Webfl-Examples", required_header(headers, proto::header::EXAMPLES)?)?;
    authenticate(&state.lock(), headers, &client)?;
    let now = state.now();
    // From here on the client is known: its refusals count as failures in its health record.
    let submitted = (|| {
        let body = body.map_err(|e| body_error(e, state.task.upload_limit_bytes))?;
        let layout = state.lock().coordinator.global().layout().clone();
        let update = decode_update(&state.task.update, headers, &body, layout)?;
        let body_len = body.len() as u64;
        let started = Instant::now();
        let settled = {
            let mut inner = state.lock();
            let upload = Upload { round, model_version, update: &update, examples };
            let settled = inner.coordinator.submit(&client, upload, now)?;
            inner.metrics.bytes_up_this_round += body_len;
            settled
        };
        tracing::info!(round, client, aggregate_us = started.elapsed().as_micros() as u64, "update aggregated");
        Ok::<_, AppError>((settled, body_len))
    })();
    let settled = {
        let mut inner = state.lock();
        let round_trip = inner.clients.get_mut(&client).and_then(|c| {
            c.last_seen_ms = now;
            c.assigned.take().map(|(_, at)| now.saturating_sub(at))
        });
        let bytes = submitted.as_ref().map_or(0, |(_, n)| *n);
        if let Err(e) = inner.store.record_contribution(&client, submitted.is_ok(), round_trip, bytes) {
            tracing::warn!(client, error = %e, "recording client health failed");
        }
        let (settled, _) = submitted?;
        inner.metrics.updates_accepted += 1;
        settled
    };
    // The commit sequence runs in its own task; the answer does not wait for it.
    let round_closed = settled.map(|s| state.spawn_settle(s)).is_some();
    Ok((StatusCode::ACCEPTED, axum::Json(UploadResponse { accepted: true, round_closed })).into_response())
}

/// A summary for people and dashboards.
#[utoipa::path(
    get,
    path = "/api/status",
    tag = "operator",
    responses((status = 200, description = "The server's state.", body = Status))
)]
pub(crate) async fn status(State(state): State<AppState>) -> Response {
    axum::Json(state.status()).into_response()
}

impl AppState {
    pub fn status(&self) -> Status {
        let now = self.now();
        let inner = self.lock();
        let rounds_completed = inner.coordinator.rounds_completed();
        let test_accuracy = inner.history.iter().rev().find(|r| r.version.is_some()).and_then(|r| r.test_accuracy);
        let clients_connected =
            inner.clients.values().filter(|c| now.saturating_sub(c.last_seen_ms) <= CONNECTED_WINDOW_MS).count();
        Status {
            protocol_version: PROTOCOL_VERSION,
            task: self.task.name.clone(),
            model_version: inner.coordinator.version(),
            updates_accepted: inner.metrics.updates_accepted,
            rounds_completed,
            test_accuracy,
            clients_connected: clients_connected as u64,
            open_round: inner.coordinator.open_round(),
            bytes_up_total: inner.metrics.bytes_up_total,
            bytes_down_total: inner.metrics.bytes_down_total,
            compression: self.task.update.compression.to_string(),
            privacy: inner.coordinator.privacy().map(|p| p.status(rounds_completed)),
        }
    }
}

/// Every settled round, oldest first: the dashboard's accuracy curve and round timeline.
#[utoipa::path(
    get,
    path = "/api/rounds",
    tag = "operator",
    responses((status = 200, description = "Settled rounds, oldest first.", body = Vec<RoundRecord>))
)]
pub(crate) async fn rounds(State(state): State<AppState>) -> Response {
    axum::Json(state.lock().history.clone()).into_response()
}

/// Health of every known client: last seen, rounds completed, failures, last round trip.
#[utoipa::path(
    get,
    path = "/api/clients",
    tag = "operator",
    responses(
        (status = 200, description = "Known clients, most recently seen first.",
         body = Vec<webfl_shared::protocol::ClientRecord>),
        (status = 500, description = "`internal`: the server could not read its store.", body = proto::ErrorBody),
    )
)]
pub(crate) async fn clients(State(state): State<AppState>) -> Result<Response, AppError> {
    let clients = state.lock().store.clients().map_err(|e| AppError::Internal(format!("reading clients: {e}")))?;
    Ok(axum::Json(clients).into_response())
}

/// Prometheus metrics.
///
/// `webfl_model_version`, `webfl_rounds_completed_total`, `webfl_rounds_abandoned_total`,
/// `webfl_updates_accepted_total`, `webfl_updates_rejected_total{reason}` (by error code) and
/// `webfl_test_accuracy`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operator",
    responses((status = 200, description = "Prometheus text exposition format.", body = String,
               content_type = "text/plain; version=0.0.4"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    use std::fmt::Write;
    let inner = state.lock();
    let completed = inner.history.iter().filter(|r| r.version.is_some()).count();
    let accuracy = inner.history.iter().rev().find(|r| r.version.is_some()).and_then(|r| r.test_accuracy);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "webfl_model_version",
        "gauge",
        "Current committed model version.",
        one(inner.coordinator.version().to_string()),
    );
    metric(
        "webfl_rounds_completed_total",
        "counter",
        "Rounds that produced a new version.",
        one(completed.to_string()),
    );
    metric(
        "webfl_rounds_abandoned_total",
        "counter",
        "Rounds abandoned at their deadline with too few updates.",
        one(inner.metrics.rounds_abandoned.to_string()),
    );
    metric(
        "webfl_updates_accepted_total",
        "counter",
        "Client updates accepted into a round.",
        one(inner.metrics.updates_accepted.to_string()),
    );
    metric(
        "webfl_updates_rejected_total",
        "counter",
        "Client updates refused, by reason.",
        inner.metrics.updates_rejected.iter().map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string())).collect(),
    );
    metric(
        "webfl_test_accuracy",
        "gauge",
        "Held-out accuracy of the current version (NaN before the first round).",
        one(accuracy.map_or_else(|| "NaN".to_string(), |a| a.to_string())),
    );
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], out).into_response()
}
