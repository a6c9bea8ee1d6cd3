//! The contribution loop a Web Worker runs: a thin driver of the shared participant session
//! ([`webfl_shared::participant::Session`]), which decides everything a client decides — when to
//! check in, what to download, which random streams a round uses, the update pipeline, back-off.
//! This driver only does what needs the browser: `fetch`, timers, `crypto.getRandomValues`, the
//! training engine (WebGPU or the CPU), and events for the page.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use webfl_shared::backend::{Backend, Engine, Preference};
use webfl_shared::data::Dataset;
use webfl_shared::params::Params;
use webfl_shared::participant::{
    Action, Attack, Failure, Identity, Notice, Phase, Randomness, Reply, Session, SessionError, TrainJob, UploadRequest,
};
use webfl_shared::protocol::{
    self as proto, CheckInRequest, CheckInResponse, SecAggAnswer, SecAggRequest, TaskInfo, UploadResponse,
};
use webfl_shared::train::{TrainError, TrainStats};

use crate::ClientError;
use crate::data::{self, DemoPartition};
use crate::events::{Event, RoundEvent};
use crate::net;

/// Progress events are throttled to this interval so the page is not flooded.
const PROGRESS_EVERY_MS: f64 = 100.0;
/// Granularity at which a waiting client notices `stop()`.
const STOP_POLL_MS: u64 = 200;

#[wasm_bindgen]
pub struct Contributor {
    inner: Rc<Inner>,
}

struct Inner {
    server: String,
    on_event: Function,
    identity: RefCell<Option<Identity>>,
    task: RefCell<Option<TaskInfo>>,
    data: RefCell<Option<Rc<Dataset>>>,
    /// The top-k error-feedback residual after the last round (the worker persists it), and one
    /// restored from an earlier session for the session to take up.
    residual: RefCell<Option<Vec<u8>>>,
    stopped: Cell<bool>,
    running: Cell<bool>,
    preference: Cell<Preference>,
    attack: Cell<Option<Attack>>,
}

#[wasm_bindgen]
impl Contributor {
    /// A contributor to the server at `server` (an absolute URL such as `http://127.0.0.1:8080`),
    /// reporting through `on_event`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        server: String,
        #[wasm_bindgen(unchecked_param_type = "(event: ClientEvent) => void")] on_event: Function,
    ) -> Contributor {
        let inner = Inner {
            server: server.trim_end_matches('/').to_string(),
            on_event,
            identity: RefCell::new(None),
            task: RefCell::new(None),
            data: RefCell::new(None),
            residual: RefCell::new(None),
            stopped: Cell::new(false),
            running: Cell::new(false),
            preference: Cell::new(Preference::Auto),
            attack: Cell::new(None),
        };
        Contributor { inner: Rc::new(inner) }
    }

    /// Continues as a client the server already knows (from an earlier `identity` event).
    pub fn resume(&self, client_id: String, token: String) {
        *self.inner.identity.borrow_mut() = Some(Identity { client_id, token });
    }

    /// Which training engine to use: `"auto"` (default: WebGPU if present and faster than the
    /// CPU in a short probe), `"cpu"` or `"webgpu"` (still falls back to the CPU if WebGPU is
    /// missing or fails). Takes effect when the next model is set up.
    #[wasm_bindgen(js_name = setBackend)]
    pub fn set_backend(&self, which: &str) -> Result<(), JsError> {
        self.inner.preference.set(which.parse().map_err(|e| JsError::new(&format!("{e}")))?);
        Ok(())
    }

    /// Makes this a Byzantine client, for robustness tests: it trains honestly, then uploads
    /// what `attack` makes of each update (`sign-flip[:SCALE]`: −SCALE·Δ, `scale:FACTOR`: FACTOR·Δ).
    /// Takes effect from the next `run`.
    #[wasm_bindgen(js_name = setAttack)]
    pub fn set_attack(&self, attack: &str) -> Result<(), JsError> {
        self.inner.attack.set(Some(attack.parse().map_err(|e: String| JsError::new(&e))?));
        Ok(())
    }

    /// Fetches the task description (`GET /api/v1/task`).
    #[wasm_bindgen(js_name = loadTask, unchecked_return_type = "Promise<any>")]
    pub fn load_task(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let task = inner.load_task().await?;
            Ok(crate::events::to_js(&task))
        })
    }

    /// Takes partition `client` of `of` of the task's public demo data under `scheme` (`iid`,
    /// `shards:2`, `dirichlet:0.5`, …) with partition seed `seed`. Resolves to the example count.
    #[wasm_bindgen(js_name = useDemoPartition, unchecked_return_type = "Promise<number>")]
    pub fn use_demo_partition(&self, scheme: String, client: u32, of: u32, seed: u32) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let task = inner.load_task().await?;
            let url =
                task.dataset.demo_data_url.clone().ok_or_else(|| {
                    ClientError::Data("this task has no public demo data: load your own CSV file".into())
                })?;
            let reply = net::send("GET", &inner.url(&url), &[], None).await?;
            if !reply.ok() {
                return Err(ClientError::Network(format!("downloading the demo data: {}", reply.error_text())).into());
            }
            let which = DemoPartition { scheme, client: client as usize, of: of as usize, seed: seed.into() };
            let data = data::demo_partition(&reply.body, &which)?;
            data::check_fits(&data, &task.dataset)?;
            let source = format!("{} partition {}/{} ({})", task.dataset.name, which.client, which.of, which.scheme);
            Ok(JsValue::from(inner.set_data(data, source)))
        })
    }

    /// Uses the user's own CSV text (label column `label` or the first one). Returns the number
    /// of examples. Call `loadTask` first so the data can be checked against the model.
    #[wasm_bindgen(js_name = useCsv)]
    pub fn use_csv(&self, text: &str, name: &str) -> Result<usize, JsError> {
        let task = self.inner.task.borrow().clone().ok_or_else(|| JsError::new("call loadTask() before useCsv()"))?;
        let data = data::csv_dataset(text, &task.dataset)?;
        Ok(self.inner.set_data(data, format!("your file {name}")))
    }

    /// Contributes until `stop()`; resolves when stopped, rejects on a fatal error.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn run(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            if inner.running.replace(true) {
                return Err(JsError::new("already running").into());
            }
            inner.stopped.set(false);
            let result = inner.run().await;
            inner.running.set(false);
            inner.emit(&Event::State { state: Phase::Stopped, round: None, detail: String::new() });
            match result {
                Ok(()) => Ok(JsValue::UNDEFINED),
                Err(e) => {
                    inner.emit(&Event::Error { message: e.to_string(), fatal: true });
                    Err(JsError::from(e).into())
                }
            }
        })
    }

    /// The error-feedback residual to persist (after a `round` event), if compression keeps one.
    #[wasm_bindgen(js_name = errorFeedback)]
    pub fn error_feedback(&self) -> Option<Vec<u8>> {
        self.inner.residual.borrow().clone()
    }

    /// Restores a residual saved by `errorFeedback()` in an earlier session.
    #[wasm_bindgen(js_name = restoreErrorFeedback)]
    pub fn restore_error_feedback(&self, bytes: Vec<u8>) {
        *self.inner.residual.borrow_mut() = Some(bytes);
    }

    /// Asks the loop to stop at its next pause (a local round in progress finishes first; a page
    /// that must stop at once terminates the worker).
    pub fn stop(&self) {
        self.inner.stopped.set(true);
    }
}

impl Contributor {
    /// Uses an already-built dataset as the local data (for tests and embedders in Rust).
    pub fn use_dataset(&self, data: Dataset, source: &str) -> usize {
        self.inner.set_data(data, source.to_string())
    }
}

impl Inner {
    fn emit(&self, event: &Event) {
        // A throwing listener must not kill the loop.
        let _ = self.on_event.call1(&JsValue::NULL, &event.to_js());
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.server)
        }
    }

    async fn load_task(&self) -> Result<TaskInfo, ClientError> {
        if let Some(task) = self.task.borrow().clone() {
            return Ok(task);
        }
        let reply = net::send("GET", &self.url("/api/v1/task"), &[], None).await?;
        if !reply.ok() {
            return Err(ClientError::Network(format!("reading the task: {}", reply.error_text())));
        }
        let task: TaskInfo = serde_json::from_slice(&reply.body)
            .map_err(|e| ClientError::Protocol(format!("the task description is not protocol v1: {e}")))?;
        if task.protocol_version != proto::PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "the server speaks protocol v{}, this client v{}",
                task.protocol_version,
                proto::PROTOCOL_VERSION
            )));
        }
        *self.task.borrow_mut() = Some(task.clone());
        Ok(task)
    }

    fn set_data(&self, data: Dataset, source: String) -> usize {
        let examples = data.len();
        self.emit(&Event::Data { source, examples, class_counts: data.class_histogram() });
        *self.data.borrow_mut() = Some(Rc::new(data));
        examples
    }

    async fn run(&self) -> Result<(), ClientError> {
        let data = self.data.borrow().clone().ok_or_else(|| ClientError::Data("no local data loaded".into()))?;
        let mut seed = [0u8; 32];
        net::fill_random(&mut seed)?;
        let mut session =
            Session::new(data.len(), vec!["cpu".into()], Randomness::from_entropy(seed)).with_attack(self.attack.get());
        if let Some(identity) = self.identity.borrow().clone() {
            session.resume(identity);
        }
        if let Some(bytes) = self.residual.borrow_mut().take() {
            session.restore_residual(bytes);
        }
        let mut engine: Option<Engine> = None;
        let mut reply = Reply::Start;
        while !self.stopped.get() {
            let step = session.handle(reply, net::now_ms()).map_err(fatal)?;
            for notice in step.notices {
                self.tell(notice, &session, engine.as_ref());
            }
            reply = match step.action {
                Action::CheckIn { request, token } => Reply::CheckIn(self.check_in(&request, token.as_deref()).await?),
                Action::Download { model_version } => Reply::Model(self.download(model_version).await),
                Action::Train(job) => Reply::Trained(self.train(*job, &data, &mut engine).await),
                Action::Upload(request) => Reply::Uploaded(self.upload(&request).await?),
                Action::SecAgg { round, token, request } => Reply::SecAgg(self.secagg(round, &token, &request).await?),
                Action::Wait { ms } => {
                    self.pause(ms).await;
                    Reply::Waited
                }
                Action::Finish { .. } => return Ok(()),
            };
        }
        Ok(())
    }

    /// Turns what the session says into events for the page.
    fn tell(&self, notice: Notice, session: &Session, engine: Option<&Engine>) {
        let event = match notice {
            Notice::Identity(identity) => {
                *self.identity.borrow_mut() = Some(identity.clone());
                Event::Identity { client_id: identity.client_id, token: identity.token }
            }
            Notice::Phase { phase, round, detail } => Event::State { state: phase, round, detail },
            Notice::Round(report) => {
                // Persisted by the worker when it hears of the round.
                *self.residual.borrow_mut() = session.residual_bytes();
                let backend = engine.map_or("cpu", |e| e.choice().backend).to_string();
                Event::Round(RoundEvent { report, backend })
            }
            Notice::Problem(message) => Event::Error { message, fatal: false },
        };
        self.emit(&event);
    }

    /// Sleeps `ms`, waking early when stopped.
    async fn pause(&self, ms: u64) {
        let mut left = ms;
        while left > 0 && !self.stopped.get() {
            let slice = left.min(STOP_POLL_MS);
            net::sleep(slice).await;
            left -= slice;
        }
    }

    /// `POST /api/v1/checkin`. A 2xx answer that is not protocol v1 is fatal.
    async fn check_in(
        &self,
        request: &CheckInRequest,
        token: Option<&str>,
    ) -> Result<Result<CheckInResponse, Failure>, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        Ok(match exchange("POST", &self.url("/api/v1/checkin"), &headers, Some(&body)).await {
            Ok(bytes) => Ok(parse(&bytes, "check-in")?),
            Err(failure) => Err(failure),
        })
    }

    /// `GET /api/v1/models/{version}`.
    async fn download(&self, model_version: u64) -> Result<Vec<u8>, Failure> {
        exchange("GET", &self.url(&format!("/api/v1/models/{model_version}")), &[], None).await
    }

    /// `POST /api/v1/rounds/{round}/update`.
    async fn upload(&self, request: &UploadRequest) -> Result<Result<UploadResponse, Failure>, ClientError> {
        let auth = format!("Bearer {}", request.token);
        let (examples, version) = (request.examples.to_string(), request.model_version.to_string());
        let headers = [
            ("content-type", request.content_type),
            ("authorization", auth.as_str()),
            (proto::header::CLIENT, request.client_id.as_str()),
            (proto::header::MODEL_VERSION, version.as_str()),
            (proto::header::EXAMPLES, examples.as_str()),
        ];
        let url = self.url(&format!("/api/v1/rounds/{}/update", request.round));
        Ok(match exchange("POST", &url, &headers, Some(&request.body)).await {
            Ok(bytes) => Ok(parse(&bytes, "upload")?),
            Err(failure) => Err(failure),
        })
    }

    /// `POST /api/v1/rounds/{round}/secagg`: one step of a secure-aggregation round.
    async fn secagg(
        &self,
        round: u64,
        token: &str,
        request: &SecAggRequest,
    ) -> Result<Result<SecAggAnswer, Failure>, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let auth = format!("Bearer {token}");
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
            (proto::header::CLIENT, request.client_id.as_str()),
        ];
        let url = self.url(&format!("/api/v1/rounds/{round}/secagg"));
        Ok(match exchange("POST", &url, &headers, Some(&body)).await {
            Ok(bytes) => Ok(parse(&bytes, "secure-aggregation")?),
            Err(failure) => Err(failure),
        })
    }

    /// Trains the session's job in this worker (the page stays responsive) on the engine chosen
    /// for its model: WebGPU when present and faster, else the CPU, with the engine's fallback.
    async fn train(
        &self,
        mut job: TrainJob,
        data: &Dataset,
        engine: &mut Option<Engine>,
    ) -> Result<(Params, TrainStats), TrainError> {
        if engine.as_ref().is_none_or(|e| *e.spec() != job.model) {
            self.emit(&Event::State {
                state: Phase::Training,
                round: Some(job.round),
                detail: "choosing a training engine".into(),
            });
            let now = || net::now_ms();
            *engine = Some(Engine::select(&job.model, self.preference.get(), data, &job.plan, &now).await?);
        }
        let Some(engine) = engine.as_mut() else { return Err(TrainError::Device("no training engine".into())) };
        self.report_backend(engine);
        let (round, epochs) = (job.round, job.plan.epochs);
        let mut last_emit = f64::NEG_INFINITY;
        let trained = engine
            .train(&job.global, data, &job.plan, &mut job.rng, &mut |p| {
                let now = net::now_ms();
                if now - last_emit >= PROGRESS_EVERY_MS || p.step == p.total_steps {
                    last_emit = now;
                    self.emit(&Event::Progress {
                        round,
                        epoch: p.epoch,
                        epochs,
                        step: p.step,
                        total_steps: p.total_steps,
                        loss: p.loss,
                    });
                }
            })
            .await;
        // A fallback to the CPU mid-round is reported as it happened.
        self.report_backend(engine);
        trained
    }

    fn report_backend(&self, engine: &mut Engine) {
        if let Some(choice) = engine.take_choice_change() {
            self.emit(&Event::Backend(choice));
        }
    }
}

/// One HTTP exchange as the session sees it: the body of a 2xx answer, or why there was none.
async fn exchange(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
    match net::send(method, url, headers, body).await {
        Ok(reply) if reply.ok() => Ok(reply.body),
        Ok(reply) => Err(Failure::http(reply.status, &reply.body).with_retry_after(reply.retry_after.as_deref())),
        Err(e) => Err(Failure::network(e.to_string())),
    }
}

/// A 2xx JSON body as protocol v1; anything else is a fatal protocol error.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Protocol(format!("the {what} answer is not protocol v1: {e}")))
}

/// A problem no retry can fix.
fn fatal(e: SessionError) -> ClientError {
    match e {
        SessionError::Data(m) => ClientError::Data(m),
        SessionError::Task(m) => ClientError::Task(m),
        SessionError::Protocol(m) => ClientError::Protocol(m),
        SessionError::OutOfOrder(m) => ClientError::Protocol(format!("internal: unexpected reply while {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_is_not_protocol_v1_is_fatal() {
        let err = parse::<CheckInResponse>(b"{\"status\": \"maybe\"}", "check-in").unwrap_err();
        assert!(err.is_fatal(), "{err}");
        let ok: UploadResponse = parse(br#"{"accepted": true, "round_closed": false}"#, "upload").unwrap();
        assert!(ok.accepted);
    }
}
