//! What the client tells the page. Serialised to plain JS objects tagged by `type`; the
//! TypeScript declarations below are emitted into the generated `.d.ts` and must match the serde
//! shapes (a test in `tests/worker.rs` checks every variant against them).

use serde::Serialize;
use wasm_bindgen::prelude::*;
use webfl_shared::backend::BackendChoice;
pub use webfl_shared::participant::{Phase, RoundReport};

#[wasm_bindgen(typescript_custom_section)]
const TS_EVENTS: &str = r#"
/** What the client is doing. */
export type ClientPhase =
  "connecting" | "waiting" | "downloading" | "training" | "uploading" | "secure_aggregation" | "stopped";
export interface StateEvent { type: "state"; state: ClientPhase; round: number | null; detail: string }
/** The identity the server issued; persist it to resume after a reload. */
export interface IdentityEvent { type: "identity"; client_id: string; token: string }
/** The local data is ready: how many examples, per class. */
export interface DataEvent { type: "data"; source: string; examples: number; class_counts: number[] }
/** Local training progress, at most every 100 ms. */
export interface ProgressEvent {
  type: "progress"; round: number; epoch: number; epochs: number; step: number; total_steps: number; loss: number;
}
/** A finished local round: what was trained, sent, and how long each phase took. */
export interface RoundEvent {
  type: "round"; round: number; model_version: number; backend: string; examples: number;
  local_loss: number; local_accuracy: number; bytes_down: number; bytes_up: number;
  update_norm: number; clipped: boolean; noise_std: number; compression: string;
  download_ms: number; train_ms: number; upload_ms: number; round_closed: boolean;
}
/** The training engine and why it was chosen (again after a fallback to the CPU). */
export interface BackendEvent {
  type: "backend"; backend: "cpu" | "webgpu"; reason: string; adapter: string | null;
  cpu_samples_per_s: number | null; gpu_samples_per_s: number | null;
}
/** A problem; `fatal` ones stop the client, others are retried. */
export interface ErrorEvent { type: "error"; message: string; fatal: boolean }
export type ClientEvent =
  StateEvent | IdentityEvent | DataEvent | ProgressEvent | RoundEvent | BackendEvent | ErrorEvent;
"#;

/// A finished local round as the page sees it: the session's report and the engine that trained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundEvent {
    #[serde(flatten)]
    pub report: RoundReport,
    pub backend: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    State { state: Phase, round: Option<u64>, detail: String },
    Identity { client_id: String, token: String },
    Data { source: String, examples: usize, class_counts: Vec<usize> },
    Progress { round: u64, epoch: usize, epochs: usize, step: usize, total_steps: usize, loss: f64 },
    Round(RoundEvent),
    Backend(BackendChoice),
    Error { message: String, fatal: bool },
}

impl Event {
    /// The event as a plain JS object.
    pub fn to_js(&self) -> JsValue {
        to_js(self)
    }
}

/// Any serialisable value as a plain JS object, through JSON (only numbers, strings and
/// booleans travel here; non-finite numbers become null). `null` if it cannot be serialised.
pub(crate) fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    serde_json::to_string(value).ok().and_then(|text| js_sys::JSON::parse(&text).ok()).unwrap_or(JsValue::NULL)
}
