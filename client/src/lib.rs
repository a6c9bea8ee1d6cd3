//! webfl-client: the browser side of webfl, compiled to WebAssembly.
//!
//! A page starts a dedicated Web Worker (`www/src/worker.ts`), which loads this module and runs a
//! [`Contributor`]: check in, download the global model, train on data that never leaves the
//! browser, upload the update. Training is `webfl-shared`'s engine — the same code `webfl
//! simulate` runs — behind the `Backend` trait, so a WebGPU engine slots in beside the CPU one.
//!
//! Modules: [`contributor`] the protocol loop (browser-only), [`local`] one round of local
//! training, [`data`] choosing local data, [`events`] what the page is told, [`net`] the browser
//! APIs used (`fetch`, timers, crypto), bound through the global scope so worker and page share
//! them. `local` and `data` are free of browser APIs and tested natively as well.

pub mod contributor;
pub mod data;
pub mod events;
pub mod local;
pub mod net;

pub use contributor::Contributor;

use wasm_bindgen::prelude::*;

/// Everything that can go wrong in the client; `is_fatal` decides whether the loop retries.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or failed (5xx): retried with back-off.
    #[error("network: {0}")]
    Network(String),
    /// The server refused a request (4xx): logged, then the loop checks in again.
    #[error("{0}")]
    Rejected(String),
    /// The server's answer is not protocol v1.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The task's model cannot be built here.
    #[error("task: {0}")]
    Task(String),
    /// The local data is missing or does not fit the model.
    #[error("data: {0}")]
    Data(String),
    /// Local training failed (e.g. diverged).
    #[error("training: {0}")]
    Training(String),
    /// A browser API is missing or failed.
    #[error("browser: {0}")]
    Platform(String),
}

impl ClientError {
    /// Errors no retry can fix: wrong data, an unbuildable model, a missing browser API.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ClientError::Protocol(_) | ClientError::Task(_) | ClientError::Data(_) | ClientError::Platform(_)
        )
    }
}

impl From<ClientError> for JsValue {
    fn from(e: ClientError) -> JsValue {
        JsError::from(e).into()
    }
}

/// The crate version, so a page can check which client it loaded.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
