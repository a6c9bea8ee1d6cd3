//! The contribution loop a Web Worker runs: check in, download the global model, train on local
//! data, upload the update, repeat — until stopped. Protocol v1 (`docs/protocol.md`), with the
//! message types shared with the server (`webfl_shared::protocol`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Promise};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use webfl_shared::backend::{Backend, Engine, Preference};
use webfl_shared::codec::ErrorFeedback;
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::pipeline::{self, Prepared, UpdateSpec};
use webfl_shared::protocol::{self as proto, Capabilities, CheckInRequest, CheckInResponse, TaskInfo, UploadResponse};
use webfl_shared::rng;
use webfl_shared::train::{TrainError, TrainPlan, TrainStats};

use crate::ClientError;
use crate::data::{self, DemoPartition};
use crate::events::{Event, Phase, RoundReport};
use crate::net::{self, Reply};

/// Progress events are throttled to this interval so the page is not flooded.
const PROGRESS_EVERY_MS: f64 = 100.0;
/// Back-off after a failed exchange: doubles from the first to the last value.
const BACKOFF_MS: (u64, u64) = (1_000, 30_000);
/// Granularity at which a waiting client notices `stop()`.
const STOP_POLL_MS: u64 = 200;

/// A browser's contribution to one task on one server. Build it, give it data, `run()` it.
#[wasm_bindgen]
pub struct Contributor {
    inner: Rc<Inner>,
}

struct Inner {
    server: String,
    on_event: Function,
    identity: RefCell<Option<(String, String)>>,
    task: RefCell<Option<TaskInfo>>,
    data: RefCell<Option<Rc<Dataset>>>,
    /// Error-feedback residual of top-k compression, kept across rounds (and, through the
    /// worker, across reloads); as bytes until the model size is known.
    memory: RefCell<Option<ErrorFeedback>>,
    saved_memory: RefCell<Option<Vec<u8>>>,
    stopped: Cell<bool>,
    running: Cell<bool>,
    preference: Cell<Preference>,
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
            memory: RefCell::new(None),
            saved_memory: RefCell::new(None),
            stopped: Cell::new(false),
            running: Cell::new(false),
            preference: Cell::new(Preference::Auto),
        };
        Contributor { inner: Rc::new(inner) }
    }

    /// Continues as a client the server already knows (from an earlier `identity` event).
    pub fn resume(&self, client_id: String, token: String) {
        *self.inner.identity.borrow_mut() = Some((client_id, token));
    }

    /// Which training engine to use: `"auto"` (default: WebGPU if present and faster than the
    /// CPU in a short probe), `"cpu"` or `"webgpu"` (still falls back to the CPU if WebGPU is
    /// missing or fails). Takes effect when the next model is set up.
    #[wasm_bindgen(js_name = setBackend)]
    pub fn set_backend(&self, which: &str) -> Result<(), JsError> {
        self.inner.preference.set(which.parse()?);
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
            inner.emit(&Event::state(Phase::Stopped, None, ""));
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
        self.inner.memory.borrow().as_ref().map(ErrorFeedback::to_bytes)
    }

    /// Restores a residual saved by `errorFeedback()` in an earlier session.
    #[wasm_bindgen(js_name = restoreErrorFeedback)]
    pub fn restore_error_feedback(&self, bytes: Vec<u8>) {
        *self.inner.saved_memory.borrow_mut() = Some(bytes);
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

/// How one pass of the loop ended.
enum Step {
    Retry(u64),
    Trained(RoundReport),
    /// The server takes no more rounds.
    Done(String),
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
        let mut engine: Option<Engine> = None;
        let mut model_cache: Option<(u64, Vec<u8>)> = None;
        let mut backoff = BACKOFF_MS.0;
        while !self.stopped.get() {
            match self.step(&data, &mut engine, &mut model_cache).await {
                Ok(Step::Retry(ms)) => {
                    backoff = BACKOFF_MS.0;
                    self.emit(&Event::state(
                        Phase::Waiting,
                        None,
                        format!("next check-in in {:.1} s", ms as f64 / 1e3),
                    ));
                    self.pause(ms).await;
                }
                Ok(Step::Trained(report)) => {
                    backoff = BACKOFF_MS.0;
                    self.emit(&Event::Round(report));
                }
                Ok(Step::Done(reason)) => {
                    self.emit(&Event::state(Phase::Stopped, None, reason));
                    return Ok(());
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.emit(&Event::Error { message: e.to_string(), fatal: false });
                    self.emit(&Event::state(Phase::Waiting, None, format!("retrying in {} s", backoff / 1000)));
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MS.1);
                }
            }
        }
        Ok(())
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

    fn auth_header(&self) -> Option<String> {
        self.identity.borrow().as_ref().map(|(_, token)| format!("Bearer {token}"))
    }

    async fn check_in(&self, examples: usize, backend: &str) -> Result<CheckInResponse, ClientError> {
        self.emit(&Event::state(Phase::Connecting, None, "checking in"));
        let request = CheckInRequest {
            client_id: self.identity.borrow().as_ref().map(|(id, _)| id.clone()),
            capabilities: Capabilities { backends: vec![backend.to_string()], examples: Some(examples as u64) },
            wait_ms: Some(proto::MAX_CHECK_IN_WAIT_MS),
        };
        let body = serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let auth = self.auth_header();
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let reply = net::send("POST", &self.url("/api/v1/checkin"), &headers, Some(&body)).await?;
        if reply.status == 401 {
            // The server does not know us (its store was reset): start over as a new client.
            *self.identity.borrow_mut() = None;
            return Err(ClientError::Rejected(format!("{}; checking in as a new client", reply.error_text())));
        }
        let response: CheckInResponse = parse_reply(&reply, "check-in")?;
        let (id, token) = response.identity();
        let known = self.identity.borrow().as_ref().is_some_and(|(i, t)| i == id && t == token);
        if !known {
            *self.identity.borrow_mut() = Some((id.to_string(), token.to_string()));
            self.emit(&Event::Identity { client_id: id.to_string(), token: token.to_string() });
        }
        Ok(response)
    }

    async fn step(
        &self,
        data: &Dataset,
        engine: &mut Option<Engine>,
        model_cache: &mut Option<(u64, Vec<u8>)>,
    ) -> Result<Step, ClientError> {
        let backend = engine.as_ref().map_or("cpu", |e| e.name());
        let (client_id, token, round, model_version, plan, model, spec) =
            match self.check_in(data.len(), backend).await? {
                CheckInResponse::Retry { retry_after_ms, .. } => return Ok(Step::Retry(retry_after_ms)),
                CheckInResponse::Done { reason, .. } => return Ok(Step::Done(reason)),
                CheckInResponse::Assigned { client_id, token, round, model_version, terms, .. } => {
                    (client_id, token, round, model_version, terms.plan, terms.model, terms.update)
                }
            };

        // Download, unless this version is cached (a retried round trains the same version).
        self.emit(&Event::state(Phase::Downloading, Some(round), format!("model version {model_version}")));
        let started = net::now_ms();
        let (global, bytes_down) = match model_cache.take() {
            Some((v, bytes)) if v == model_version => (bytes, 0),
            _ => {
                let url = self.url(&format!("/api/v1/models/{model_version}"));
                let reply = net::send("GET", &url, &[], None).await?;
                if !reply.ok() {
                    return Err(ClientError::Rejected(format!("downloading the model: {}", reply.error_text())));
                }
                let n = reply.body.len();
                (reply.body, n)
            }
        };
        let download_ms = net::now_ms() - started;

        // Train in this worker (the page stays responsive), on the engine chosen for this model.
        if engine.as_ref().is_none_or(|e| *e.spec() != model) {
            self.emit(&Event::state(Phase::Training, Some(round), "choosing a training engine"));
            let now = || net::now_ms();
            let chosen = Engine::select(&model, self.preference.get(), data, &plan, &now).await;
            *engine = Some(chosen.map_err(|e| match e {
                TrainError::Model(e) => ClientError::Task(e.to_string()),
                e => ClientError::Training(e.to_string()),
            })?);
        }
        let Some(engine) = engine.as_mut() else { unreachable!("the engine was just built") };
        self.report_backend(engine);
        self.emit(&Event::state(Phase::Training, Some(round), format!("{} examples", data.len())));
        let started = net::now_ms();
        let (mut delta, stats) = self.train(engine, &global, data, &plan, round).await?;
        self.report_backend(engine);
        *model_cache = Some((model_version, global));
        let prepared = self.prepare(&mut delta, &spec)?;
        let train_ms = net::now_ms() - started;

        self.emit(&Event::state(Phase::Uploading, Some(round), format!("{} bytes", prepared.body.len())));
        let started = net::now_ms();
        let auth = format!("Bearer {token}");
        let (examples, version) = (stats.examples.to_string(), model_version.to_string());
        let headers = [
            ("content-type", proto::UPDATE_CONTENT_TYPE),
            ("authorization", auth.as_str()),
            (proto::header::CLIENT, client_id.as_str()),
            (proto::header::MODEL_VERSION, version.as_str()),
            (proto::header::EXAMPLES, examples.as_str()),
        ];
        let url = self.url(&format!("/api/v1/rounds/{round}/update"));
        let reply = net::send("POST", &url, &headers, Some(&prepared.body)).await?;
        let accepted: UploadResponse = parse_reply(&reply, "upload")?;
        let upload_ms = net::now_ms() - started;
        Ok(Step::Trained(RoundReport {
            round,
            model_version,
            backend: engine.name().to_string(),
            examples: stats.examples,
            local_loss: stats.loss,
            local_accuracy: stats.accuracy,
            bytes_down,
            bytes_up: prepared.body.len(),
            update_norm: prepared.norm,
            clipped: prepared.clipped,
            noise_std: spec.noise_std,
            compression: spec.compression.to_string(),
            download_ms,
            train_ms,
            upload_ms,
            round_closed: accepted.round_closed,
        }))
    }

    /// Clips, noises, compresses and encodes the update as the task asks
    /// ([`pipeline::prepare`]); noise comes from a ChaCha20 seeded by `crypto.getRandomValues`.
    fn prepare(&self, delta: &mut Params, spec: &UpdateSpec) -> Result<Prepared, ClientError> {
        let mut memory = self.memory.borrow_mut();
        if spec.compression.uses_error_feedback() {
            let fits = memory.as_ref().is_some_and(|m| m.len() == delta.len());
            if !fits {
                let saved = self.saved_memory.borrow_mut().take();
                *memory = Some(
                    saved
                        .and_then(|b| ErrorFeedback::from_bytes(&b, delta.len()).ok())
                        .unwrap_or_else(|| ErrorFeedback::new(delta.len())),
                );
            }
        } else {
            *memory = None;
        }
        let mut seed = [0u8; 32];
        net::fill_random(&mut seed)?;
        let mut noise = ChaCha20Rng::from_seed(seed);
        let mut codec_rng = rng::derive(net::random_seed()?, &[]);
        pipeline::prepare(delta, spec, memory.as_mut(), &mut noise, &mut codec_rng)
            .map_err(|e| ClientError::Training(format!("preparing the update: {e}")))
    }

    fn report_backend(&self, engine: &mut Engine) {
        if let Some(choice) = engine.take_choice_change() {
            self.emit(&Event::Backend(choice));
        }
    }

    /// Trains from the global model in `global` (safetensors) on `data` following `plan`, with a
    /// fresh seed for shuffling and dropout; returns `Δ = w_local − w_global` and what training did.
    async fn train(
        &self,
        engine: &mut Engine,
        global: &[u8],
        data: &Dataset,
        plan: &TrainPlan,
        round: u64,
    ) -> Result<(Params, TrainStats), ClientError> {
        let global = decode_global(engine.spec(), global)?;
        let seed = net::random_seed()?;
        let mut last_emit = f64::NEG_INFINITY;
        let epochs = plan.epochs;
        let training = |e: &dyn std::fmt::Display| ClientError::Training(e.to_string());
        let (local, stats) = engine
            .train(&global, data, plan, &mut rng::derive(seed, &[]), &mut |p| {
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
            .await
            .map_err(|e| training(&e))?;
        let delta = local.delta_from(&global).map_err(|e| training(&e))?;
        Ok((delta, stats))
    }
}

/// The downloaded global model, which must fit the task's model.
fn decode_global(spec: &ModelSpec, bytes: &[u8]) -> Result<Params, ClientError> {
    let layout = spec.layout().map_err(|e| ClientError::Task(e.to_string()))?;
    Params::from_safetensors(Arc::new(layout), bytes)
        .map_err(|e| ClientError::Protocol(format!("the downloaded model does not fit the task: {e}")))
}

/// A 2xx JSON body as `T`; an error status becomes `Rejected` (the server refused; retry later).
fn parse_reply<T: serde::de::DeserializeOwned>(reply: &Reply, what: &str) -> Result<T, ClientError> {
    if !reply.ok() {
        let text = format!("{what} refused: {}", reply.error_text());
        return Err(if reply.status >= 500 { ClientError::Network(text) } else { ClientError::Rejected(text) });
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| ClientError::Protocol(format!("the {what} answer is not protocol v1: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_of_another_shape_is_refused() {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let other = ModelSpec::builtin("2nn", &[5], 2).unwrap();
        let bytes = other.init_params(&mut rng::derive(0, &[1])).unwrap().to_safetensors().unwrap();
        let err = decode_global(&spec, &bytes).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        let fits = spec.init_params(&mut rng::derive(0, &[1])).unwrap();
        assert_eq!(decode_global(&spec, &fits.to_safetensors().unwrap()).unwrap(), fits);
    }
}
