//! One client's session with one task: the protocol loop as a state machine.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use super::Attack;
use crate::codec::ErrorFeedback;
use crate::params::Params;
use crate::pipeline;
use crate::protocol::{
    AssignmentTerms, Capabilities, CheckInRequest, CheckInResponse, ErrorBody, MAX_CHECK_IN_WAIT_MS, SecAggAnswer,
    SecAggRequest, UPDATE_CONTENT_TYPE, UploadResponse,
};
use crate::rng::{self, Rng, Stream};
use crate::train::{TrainError, TrainPlan, TrainStats};

mod secure;

use secure::{Exchange, SecureTraining};

/// Back-off after a failed exchange: doubles from the first to the last value.
const BACKOFF_MS: (u64, u64) = (1_000, 30_000);
/// Wait after a refusal that a new check-in resolves (an unknown client, a bad request).
const AFTER_REFUSAL_MS: u64 = 1_000;
/// Network failures of one upload that are retried before the round is given up.
const UPLOAD_TRIES: u32 = 3;

/// The identity a server issued to this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub token: String,
}

/// Where a session's random draws come from.
pub enum Randomness {
    /// Reproducible streams for simulation and tests: training, noise and compression of round
    /// `r` draw from `rng::stream(seed, role, [r, client])`.
    Seeded { seed: u64, client: u64 },
    /// Production: a CSPRNG seeded once from platform entropy (`crypto.getRandomValues`, the OS);
    /// privacy noise must never come from a guessable seed.
    Secure(Box<ChaCha20Rng>),
}

impl Randomness {
    pub fn from_entropy(seed: [u8; 32]) -> Self {
        Randomness::Secure(Box::new(ChaCha20Rng::from_seed(seed)))
    }

    /// The generators of a round: training (shuffling, dropout), and the rest in [`Streams`].
    fn for_round(&mut self, round: u64) -> (Rng, Streams) {
        match self {
            Randomness::Seeded { seed, client } => {
                let crypto = |role| ChaCha20Rng::from_rng(&mut rng::stream(*seed, role, &[round, *client]));
                let streams = Streams {
                    noise: crypto(Stream::Noise),
                    codec: rng::stream(*seed, Stream::Codec, &[round, *client]),
                    secagg: crypto(Stream::SecureAggregation),
                };
                (rng::stream(*seed, Stream::Training, &[round, *client]), streams)
            }
            Randomness::Secure(csprng) => {
                let training = Rng::from_rng(&mut **csprng);
                let noise = ChaCha20Rng::from_rng(&mut **csprng);
                let codec = Rng::from_rng(&mut **csprng);
                (training, Streams { noise, codec, secagg: ChaCha20Rng::from_rng(&mut **csprng) })
            }
        }
    }
}

/// A round's generators besides training's: privacy noise, the codec's, and secure
/// aggregation's (keys, seeds, shares, stochastic rounding); the first and last are CSPRNGs.
struct Streams {
    noise: ChaCha20Rng,
    codec: Rng,
    secagg: ChaCha20Rng,
}

/// What the session asks its driver to do next.
pub enum Action {
    /// `POST /api/v1/checkin` with this body (and `Authorization: Bearer <token>` when given).
    CheckIn { request: CheckInRequest, token: Option<String> },
    /// `GET /api/v1/models/{model_version}`: reply with the safetensors bytes.
    Download { model_version: u64 },
    /// Train locally on the client's data and reply with the local model.
    Train(Box<TrainJob>),
    /// `POST /api/v1/rounds/{round}/update`.
    Upload(UploadRequest),
    /// `POST /api/v1/rounds/{round}/secagg` with this body and `Authorization: Bearer <token>`:
    /// one step of a secure-aggregation round; reply [`Reply::SecAgg`].
    SecAgg { round: u64, token: String, request: SecAggRequest },
    /// Sleep, then reply [`Reply::Waited`].
    Wait { ms: u64 },
    /// The task takes no more rounds: stop.
    Finish { reason: String },
}

/// A round's local training, fully determined by its fields.
pub struct TrainJob {
    pub round: u64,
    pub model: crate::model::ModelSpec,
    pub global: Arc<Params>,
    pub plan: TrainPlan,
    /// Shuffling and dropout draw from this.
    pub rng: Rng,
}

/// An update upload, ready for the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadRequest {
    pub round: u64,
    pub client_id: String,
    pub token: String,
    pub model_version: u64,
    pub examples: u64,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Why an exchange with the server failed, as the driver saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The HTTP status; `None` when no answer came (network down, server gone).
    pub status: Option<u16>,
    /// The `error` code of the server's JSON body, when it had one.
    pub code: Option<String>,
    pub message: String,
    /// How long the server asked the client to stay away (`Retry-After`, on 429 and 503).
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    pub fn network(message: impl Into<String>) -> Self {
        Self { status: None, code: None, message: message.into(), retry_after_ms: None }
    }

    /// A non-2xx answer; `body` is read as the protocol's `ErrorBody` when it is one.
    pub fn http(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => Self {
                status: Some(status),
                code: Some(e.error.clone()),
                message: format!("{status} {}: {}", e.error, e.message),
                retry_after_ms: None,
            },
            Err(_) => {
                Self { status: Some(status), code: None, message: format!("HTTP {status}"), retry_after_ms: None }
            }
        }
    }

    /// With the answer's `Retry-After` header (whole seconds), when it had a readable one.
    pub fn with_retry_after(mut self, header: Option<&str>) -> Self {
        self.retry_after_ms = header.and_then(|h| h.trim().parse::<u64>().ok()).map(|s| s.saturating_mul(1000));
        self
    }

    /// No answer, a server error, or too many requests: worth retrying later.
    fn is_transient(&self) -> bool {
        self.status.is_none_or(|s| s >= 500 || s == 429)
    }

    /// The server is shedding load or rate-limiting this client: come back later, not at once.
    fn is_overload(&self) -> bool {
        self.retry_after_ms.is_some() || matches!(self.status, Some(429 | 503))
    }
}

/// What came back from an [`Action`].
pub enum Reply {
    /// Begin (or begin again after a driver restart).
    Start,
    CheckIn(Result<CheckInResponse, Failure>),
    Model(Result<Vec<u8>, Failure>),
    Trained(Result<(Params, TrainStats), TrainError>),
    Uploaded(Result<UploadResponse, Failure>),
    SecAgg(Result<SecAggAnswer, Failure>),
    Waited,
}

/// What the client is doing, for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Connecting,
    Waiting,
    Downloading,
    Training,
    Uploading,
    /// Exchanging keys, shares and the masked update with the server in a secure round.
    SecureAggregation,
    Stopped,
}

/// A finished local round: what was trained and sent, and how long each part took.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundReport {
    pub round: u64,
    pub model_version: u64,
    pub examples: usize,
    pub local_loss: f64,
    pub local_accuracy: f64,
    pub bytes_down: usize,
    pub bytes_up: usize,
    /// ‖Δ‖ before clipping, whether clipping scaled it, the local DP noise std, the codec.
    pub update_norm: f64,
    pub clipped: bool,
    pub noise_std: f64,
    pub compression: String,
    pub download_ms: f64,
    pub train_ms: f64,
    pub upload_ms: f64,
    /// This update was the one that closed the round.
    pub round_closed: bool,
}

/// What the user should be told.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A new identity: persist it to resume after a reload.
    Identity(Identity),
    Phase {
        phase: Phase,
        round: Option<u64>,
        detail: String,
    },
    Round(RoundReport),
    /// Something went wrong and is being retried.
    Problem(String),
}

/// Problems no retry can fix: the client stops.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    /// The server's answers do not follow the protocol this client speaks.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The local data does not fit the task's model.
    #[error("data: {0}")]
    Data(String),
    /// The task cannot be trained here (an invalid plan or model).
    #[error("task: {0}")]
    Task(String),
    /// The driver replied to something the session did not ask for.
    #[error("unexpected reply while {0}")]
    OutOfOrder(&'static str),
}

/// The session's answer to a reply: one action and what to tell the user.
pub struct Step {
    pub action: Action,
    pub notices: Vec<Notice>,
}

/// An assignment being worked on.
struct Assignment {
    round: u64,
    model_version: u64,
    terms: AssignmentTerms,
    bytes_down: usize,
    download_ms: f64,
}

enum State {
    Idle,
    CheckingIn {
        sent_at_ms: f64,
        wait_ms: u64,
    },
    Downloading {
        job: Assignment,
        started_ms: f64,
    },
    Training(Box<Training>),
    Uploading {
        job: Assignment,
        sent: Box<Sent>,
    },
    /// In a secure round's exchange (not training).
    Exchanging(Box<Exchange>),
    Waiting,
    Finished,
}

/// A round being trained, with the generators its update pipeline will draw from.
struct Training {
    job: Assignment,
    global: Arc<Params>,
    streams: Streams,
    started_ms: f64,
    /// In a secure round: what masking the update needs.
    secure: Option<Box<SecureTraining>>,
}

/// An upload in flight and what to restore if it is refused.
struct Sent {
    request: UploadRequest,
    report: RoundReport,
    started_ms: f64,
    tries: u32,
    /// The error-feedback residual before this round: a refused update never reached the
    /// model, so the residual goes back to what it was.
    residual_before: Option<ErrorFeedback>,
}

/// One client's participation in one task. See the [module](super) documentation.
pub struct Session {
    identity: Option<Identity>,
    capabilities: Capabilities,
    randomness: Randomness,
    /// How long check-ins ask the server to hold them (long poll).
    wait_ms: u64,
    state: State,
    /// The last downloaded global model: a retried round trains the same version.
    model: Option<(u64, Arc<Params>)>,
    /// The top-k error-feedback residual, kept across rounds (and, through the driver, reloads).
    residual: Option<ErrorFeedback>,
    saved_residual: Option<Vec<u8>>,
    backoff_ms: u64,
    /// A Byzantine session lies about every update it uploads (robustness tests only).
    attack: Option<Attack>,
}

impl Session {
    /// A session for a client holding `examples` local examples that can train on `backends`.
    pub fn new(examples: usize, backends: Vec<String>, randomness: Randomness) -> Self {
        Self {
            identity: None,
            capabilities: Capabilities { backends, examples: Some(examples as u64) },
            randomness,
            wait_ms: MAX_CHECK_IN_WAIT_MS,
            state: State::Idle,
            model: None,
            residual: None,
            saved_residual: None,
            backoff_ms: BACKOFF_MS.0,
            attack: None,
        }
    }

    /// Makes this a Byzantine participant: it uploads what `attack` makes of each honest update.
    pub fn with_attack(mut self, attack: Option<Attack>) -> Self {
        self.attack = attack;
        self
    }

    /// How long check-ins ask the server to hold them; 0 asks for an immediate answer.
    pub fn with_wait_ms(mut self, wait_ms: u64) -> Self {
        self.wait_ms = wait_ms.min(MAX_CHECK_IN_WAIT_MS);
        self
    }

    /// Continues as a client the server already knows (an identity persisted earlier).
    pub fn resume(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Restores a residual saved with [`residual_bytes`](Self::residual_bytes) in an earlier
    /// session; it is used once the model size is known and fits.
    pub fn restore_residual(&mut self, bytes: Vec<u8>) {
        self.saved_residual = Some(bytes);
    }

    /// The error-feedback residual to persist after a round, when compression keeps one.
    pub fn residual_bytes(&self) -> Option<Vec<u8>> {
        self.residual.as_ref().map(ErrorFeedback::to_bytes)
    }

    /// Takes the outcome of the last action at time `now_ms` (any monotonic clock) and decides
    /// the next one. A fatal error stops the client; everything else is retried.
    pub fn handle(&mut self, reply: Reply, now_ms: f64) -> Result<Step, SessionError> {
        let mut notices = Vec::new();
        let action = match reply {
            Reply::Waited if matches!(self.state, State::Exchanging(_)) => self.resend(now_ms)?,
            Reply::Start | Reply::Waited => self.check_in(now_ms, &mut notices),
            Reply::CheckIn(answer) => self.on_check_in(answer, now_ms, &mut notices)?,
            Reply::Model(answer) => self.on_model(answer, now_ms, &mut notices)?,
            Reply::Trained(result) => self.on_trained(result, now_ms, &mut notices)?,
            Reply::Uploaded(answer) => self.on_uploaded(answer, now_ms, &mut notices)?,
            Reply::SecAgg(answer) => self.on_secagg(answer, now_ms, &mut notices)?,
        };
        Ok(Step { action, notices })
    }

    fn check_in(&mut self, now_ms: f64, notices: &mut Vec<Notice>) -> Action {
        notices.push(phase(Phase::Connecting, None, "checking in"));
        let wait_ms = self.wait_ms;
        self.state = State::CheckingIn { sent_at_ms: now_ms, wait_ms };
        let request = CheckInRequest {
            client_id: self.identity.as_ref().map(|i| i.client_id.clone()),
            capabilities: self.capabilities.clone(),
            wait_ms: (wait_ms > 0).then_some(wait_ms),
        };
        Action::CheckIn { request, token: self.identity.as_ref().map(|i| i.token.clone()) }
    }

    fn wait(&mut self, ms: u64) -> Action {
        self.state = State::Waiting;
        Action::Wait { ms }
    }

    /// Waits the back-off after a transient failure (at least what the server asked for), and
    /// doubles it for the next one.
    fn back_off(&mut self, problem: String, retry_after_ms: Option<u64>, notices: &mut Vec<Notice>) -> Action {
        let ms = self.backoff_ms.max(retry_after_ms.unwrap_or(0));
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MS.1);
        notices.push(Notice::Problem(problem));
        notices.push(phase(Phase::Waiting, None, format!("retrying in {} s", ms / 1000)));
        self.wait(ms)
    }

    fn on_check_in(
        &mut self,
        answer: Result<CheckInResponse, Failure>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let State::CheckingIn { sent_at_ms, wait_ms } = self.state else {
            return Err(SessionError::OutOfOrder("not checking in"));
        };
        let response = match answer {
            Ok(response) => response,
            Err(f) if f.status == Some(401) => {
                // The server does not know us (its store was reset): start over as a new client.
                self.identity = None;
                notices.push(Notice::Problem(format!("{}; checking in as a new client", f.message)));
                return Ok(self.wait(AFTER_REFUSAL_MS));
            }
            Err(f) => return Ok(self.back_off(format!("check-in failed: {}", f.message), f.retry_after_ms, notices)),
        };
        self.backoff_ms = BACKOFF_MS.0;
        let (client_id, token) = response.identity();
        let identity = Identity { client_id: client_id.to_string(), token: token.to_string() };
        if self.identity.as_ref() != Some(&identity) {
            notices.push(Notice::Identity(identity.clone()));
            self.identity = Some(identity);
        }
        match response {
            CheckInResponse::Done { reason, .. } => {
                self.state = State::Finished;
                notices.push(phase(Phase::Stopped, None, reason.clone()));
                Ok(Action::Finish { reason })
            }
            CheckInResponse::Retry { retry_after_ms, reason, .. } => {
                notices.push(phase(Phase::Waiting, None, reason.describe()));
                // A long poll that ran its full course already waited: ask again at once.
                let held = now_ms - sent_at_ms >= wait_ms as f64 * 0.9 && wait_ms > 0;
                Ok(if held { self.check_in(now_ms, notices) } else { self.wait(retry_after_ms) })
            }
            CheckInResponse::Assigned { round, model_version, terms, .. } => {
                terms.plan.validate().map_err(|e| SessionError::Task(e.to_string()))?;
                let job = Assignment { round, model_version, terms, bytes_down: 0, download_ms: 0.0 };
                match &self.model {
                    Some((v, global)) if *v == model_version => {
                        let global = global.clone();
                        self.start_round(job, global, now_ms, notices)
                    }
                    _ => {
                        notices.push(phase(Phase::Downloading, Some(round), format!("model version {model_version}")));
                        self.state = State::Downloading { job, started_ms: now_ms };
                        Ok(Action::Download { model_version })
                    }
                }
            }
        }
    }

    fn on_model(
        &mut self,
        answer: Result<Vec<u8>, Failure>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let State::Downloading { mut job, started_ms } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(SessionError::OutOfOrder("not downloading"));
        };
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(f) if f.is_transient() => {
                return Ok(self.back_off(format!("downloading the model: {}", f.message), f.retry_after_ms, notices));
            }
            Err(f) => {
                notices.push(Notice::Problem(format!("downloading the model: {}", f.message)));
                return Ok(self.wait(AFTER_REFUSAL_MS));
            }
        };
        let layout = job.terms.model.layout().map_err(|e| SessionError::Task(e.to_string()))?;
        let global = Params::from_safetensors(Arc::new(layout), &bytes)
            .map_err(|e| SessionError::Protocol(format!("the downloaded model does not fit the task: {e}")))?;
        job.bytes_down = bytes.len();
        job.download_ms = now_ms - started_ms;
        let global = Arc::new(global);
        self.model = Some((job.model_version, global.clone()));
        self.start_round(job, global, now_ms, notices)
    }

    /// With the model in hand: train, or in a secure round first join the cohort.
    fn start_round(
        &mut self,
        job: Assignment,
        global: Arc<Params>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let (training, streams) = self.randomness.for_round(job.round);
        if job.terms.secure_aggregation.is_some() {
            return self.join_cohort(job, global, training, streams, now_ms, notices);
        }
        let round = Training { job, global, streams, started_ms: now_ms, secure: None };
        Ok(self.train(round, training, notices))
    }

    /// Hands `training`'s job to the driver's engine, shuffling with `train_rng`.
    fn train(&mut self, training: Training, train_rng: Rng, notices: &mut Vec<Notice>) -> Action {
        let job = &training.job;
        notices.push(phase(
            Phase::Training,
            Some(job.round),
            format!("{} examples", self.capabilities.examples.unwrap_or(0)),
        ));
        let train = TrainJob {
            round: job.round,
            model: job.terms.model.clone(),
            global: training.global.clone(),
            plan: job.terms.plan.clone(),
            rng: train_rng,
        };
        self.state = State::Training(Box::new(training));
        Action::Train(Box::new(train))
    }

    fn on_trained(
        &mut self,
        result: Result<(Params, TrainStats), TrainError>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let State::Training(training) = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(SessionError::OutOfOrder("not training"));
        };
        let Training { job, global, mut streams, started_ms, secure } = *training;
        let (local, stats) = match result {
            Ok(trained) => trained,
            // Divergence or a device failure: this round is lost, the next may go better.
            Err(e @ (TrainError::Diverged { .. } | TrainError::Device(_))) => {
                return Ok(self.back_off(format!("training: {e}"), None, notices));
            }
            Err(e @ (TrainError::InputMismatch { .. } | TrainError::ClassMismatch { .. } | TrainError::Empty)) => {
                return Err(SessionError::Data(e.to_string()));
            }
            Err(e) => return Err(SessionError::Task(e.to_string())),
        };
        let mut delta =
            local.delta_from(&global).map_err(|e| SessionError::Protocol(format!("the local model: {e}")))?;
        if let Some(attack) = self.attack {
            attack.corrupt(&mut delta);
        }
        let train_ms = now_ms - started_ms;
        if let Some(secure) = secure {
            let trained = secure::Trained { job, global, streams, delta, stats, train_ms };
            return self.mask(trained, *secure, now_ms, notices);
        }
        let (noise, codec) = (&mut streams.noise, &mut streams.codec);
        let spec = &job.terms.update;
        let residual_before = self.fit_residual(spec.compression.uses_error_feedback(), delta.len());
        let prepared = match pipeline::prepare(&mut delta, spec, self.residual.as_mut(), noise, codec) {
            Ok(p) => p,
            Err(e) => {
                self.residual = residual_before;
                return Ok(self.back_off(format!("preparing the update: {e}"), None, notices));
            }
        };
        let Some(identity) = self.identity.clone() else {
            return Err(SessionError::OutOfOrder("training without an identity"));
        };
        let report = RoundReport {
            round: job.round,
            model_version: job.model_version,
            examples: stats.examples,
            local_loss: stats.loss,
            local_accuracy: stats.accuracy,
            bytes_down: job.bytes_down,
            bytes_up: prepared.body.len(),
            update_norm: prepared.norm,
            clipped: prepared.clipped,
            noise_std: spec.noise_std,
            compression: spec.compression.to_string(),
            download_ms: job.download_ms,
            train_ms,
            upload_ms: 0.0,
            round_closed: false,
        };
        let request = UploadRequest {
            round: job.round,
            client_id: identity.client_id,
            token: identity.token,
            model_version: job.model_version,
            examples: stats.examples as u64,
            content_type: UPDATE_CONTENT_TYPE,
            body: prepared.body,
        };
        notices.push(phase(Phase::Uploading, Some(job.round), format!("{} bytes", request.body.len())));
        let sent = Sent { request: request.clone(), report, started_ms: now_ms, tries: 1, residual_before };
        self.state = State::Uploading { job, sent: Box::new(sent) };
        Ok(Action::Upload(request))
    }

    /// Makes the residual fit the update (restoring a saved one when it does) and returns a
    /// copy of it as it was before this round.
    fn fit_residual(&mut self, keeps_residual: bool, len: usize) -> Option<ErrorFeedback> {
        if !keeps_residual {
            self.residual = None;
            return None;
        }
        if self.residual.as_ref().is_none_or(|r| r.len() != len) {
            let saved = self.saved_residual.take().and_then(|b| ErrorFeedback::from_bytes(&b, len).ok());
            self.residual = Some(saved.unwrap_or_else(|| ErrorFeedback::new(len)));
        }
        self.residual.clone()
    }

    fn on_uploaded(
        &mut self,
        answer: Result<UploadResponse, Failure>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let State::Uploading { job, mut sent } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(SessionError::OutOfOrder("not uploading"));
        };
        match answer {
            Ok(accepted) => {
                self.backoff_ms = BACKOFF_MS.0;
                let mut report = sent.report;
                report.upload_ms = now_ms - sent.started_ms;
                report.round_closed = accepted.round_closed;
                notices.push(Notice::Round(report));
                Ok(self.check_in(now_ms, notices))
            }
            Err(f) if f.is_transient() && !f.is_overload() && sent.tries < UPLOAD_TRIES => {
                // The round may still be open: send the same bytes again rather than retrain.
                notices.push(Notice::Problem(format!("upload failed ({}); retrying", f.message)));
                sent.tries += 1;
                sent.started_ms = now_ms;
                let request = sent.request.clone();
                self.state = State::Uploading { job, sent };
                Ok(Action::Upload(request))
            }
            Err(f) => {
                // The update never reached the model: neither may its share of the residual.
                self.residual = sent.residual_before;
                if f.status == Some(409) {
                    // Over-selection at work: the round closed (or moved on) without this update.
                    notices.push(phase(Phase::Waiting, Some(job.round), "the round closed before this update arrived"));
                    return Ok(self.check_in(now_ms, notices));
                }
                if f.is_transient() {
                    return Ok(self.back_off(format!("upload failed: {}", f.message), f.retry_after_ms, notices));
                }
                if f.status == Some(401) {
                    self.identity = None;
                }
                notices.push(Notice::Problem(format!("upload refused: {}", f.message)));
                Ok(self.wait(AFTER_REFUSAL_MS))
            }
        }
    }
}

fn phase(phase: Phase, round: Option<u64>, detail: impl Into<String>) -> Notice {
    Notice::Phase { phase, round, detail: detail.into() }
}

#[cfg(test)]
mod tests;
