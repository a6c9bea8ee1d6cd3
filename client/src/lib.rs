//! webfl-client: the browser side of webfl, compiled to WebAssembly.
//!
//! A page starts a dedicated Web Worker (`www/src/worker.ts`), which loads this module and runs a
//! [`Contributor`]: check in, download the global model, train on data that never leaves the
//! browser, upload the update. Training is `webfl-shared`'s `backend::Engine`: WebGPU where it
//! is present and faster, else the same CPU engine `webfl simulate` runs.
//!
//! Modules: [`contributor`] the protocol loop (browser-only), [`data`] choosing local data,
//! [`events`] what the page is told, [`net`] the browser APIs used (`fetch`, timers, crypto),
//! bound through the global scope so worker and page share them, [`bench`] the engines'
//! throughput for the benchmark page. `data` is free of browser APIs and tested natively as well.

pub mod bench;
pub mod contributor;
pub mod data;
pub mod events;
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

/// Encode and decode throughput of `compression` (`none`, `q8`, `topk:0.1`, …) in this browser, on
/// a `len`-value Gaussian update (1,663,370 for the CNN), each timed for about `millis` ms. MB/s
/// are of the dense f32 input, so codecs compare directly; `bytes` is one encoded update's size.
#[wasm_bindgen(
    js_name = benchCodec,
    unchecked_return_type = "{ compression: string; bytes: number; encode_mb_s: number; decode_mb_s: number }"
)]
pub fn bench_codec(compression: &str, len: usize, millis: f64) -> Result<JsValue, JsError> {
    use rand_distr::{Distribution, StandardNormal};
    use webfl_shared::codec::{self, Compression, ErrorFeedback};
    let how: Compression = compression.parse().map_err(|e| JsError::new(&format!("{e}")))?;
    let mut rng = webfl_shared::rng::derive(0, &[]);
    let update: Vec<f32> = (0..len)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * 1e-3) as f32
        })
        .collect();
    let mut memory = how.uses_error_feedback().then(|| ErrorFeedback::new(len));
    let mb = (len * 4) as f64 / 1e6;
    let timed = |f: &mut dyn FnMut() -> Result<(), JsError>| -> Result<f64, JsError> {
        let (start, mut runs) = (net::now_ms(), 0u32);
        while runs == 0 || net::now_ms() - start < millis {
            f()?;
            runs += 1;
        }
        Ok(mb * f64::from(runs) / ((net::now_ms() - start).max(1e-3) / 1e3))
    };
    let mut encoded = Vec::new();
    let encode_mb_s = timed(&mut || {
        encoded = codec::encode(&update, &how, memory.as_mut(), &mut rng).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(())
    })?;
    let decode_mb_s = timed(&mut || {
        codec::decode(&encoded, len).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(())
    })?;
    let result = serde_json::json!({
        "compression": how.to_string(), "bytes": encoded.len(), "encode_mb_s": encode_mb_s, "decode_mb_s": decode_mb_s
    });
    Ok(events::to_js(&result))
}
