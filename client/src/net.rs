//! The few browser APIs the client needs, bound through the global scope so the same code runs
//! in a Web Worker and on a page: `fetch`, `setTimeout`, `crypto.getRandomValues`, `Date.now`.

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestInit, Response};

use crate::ClientError;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &Request) -> Promise;
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &js_sys::Function, ms: i32) -> JsValue;
}

/// Milliseconds since the epoch (wall clock; durations of whole phases only).
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Resolves after `ms` milliseconds.
pub async fn sleep(ms: u64) {
    let ms = ms.min(i32::MAX as u64) as i32;
    let promise = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// A seed from the platform's cryptographic generator (`crypto.getRandomValues`).
pub fn random_seed() -> Result<u64, ClientError> {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Fills `bytes` from `crypto.getRandomValues` (the browser's CSPRNG).
pub fn fill_random(bytes: &mut [u8]) -> Result<(), ClientError> {
    let crypto: web_sys::Crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())
        .map_err(|_| ClientError::Platform("no crypto object".into()))?
        .dyn_into()
        .map_err(|_| ClientError::Platform("`crypto` is not a Crypto object".into()))?;
    crypto.get_random_values_with_u8_array(bytes).map_err(|e| ClientError::Platform(describe(&e)))?;
    Ok(())
}

/// A finished HTTP exchange.
pub struct Reply {
    pub status: u16,
    /// The `Retry-After` header, when the answer had one.
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's `{"error", "message"}` body as one line, or the raw status.
    pub fn error_text(&self) -> String {
        match serde_json::from_slice::<webfl_shared::protocol::ErrorBody>(&self.body) {
            Ok(e) => format!("{} ({}): {}", self.status, e.error, e.message),
            Err(_) => format!("HTTP {}", self.status),
        }
    }

    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<webfl_shared::protocol::ErrorBody>(&self.body).ok().map(|e| e.error)
    }
}

/// Sends a request and reads the whole body. A network failure is `ClientError::Network`; an
/// HTTP error status is a `Reply` for the caller to judge.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply, ClientError> {
    let init = RequestInit::new();
    init.set_method(method);
    let hdrs = web_sys::Headers::new().map_err(|e| ClientError::Platform(describe(&e)))?;
    for (name, value) in headers {
        hdrs.set(name, value).map_err(|e| ClientError::Platform(describe(&e)))?;
    }
    init.set_headers(&hdrs);
    if let Some(body) = body {
        init.set_body(&Uint8Array::from(body));
    }
    let request = Request::new_with_str_and_init(url, &init).map_err(|e| ClientError::Network(describe(&e)))?;
    let response: Response = JsFuture::from(global_fetch(&request))
        .await
        .map_err(|e| ClientError::Network(describe(&e)))?
        .dyn_into()
        .map_err(|_| ClientError::Platform("fetch did not return a Response".into()))?;
    let buffer = JsFuture::from(response.array_buffer().map_err(|e| ClientError::Network(describe(&e)))?)
        .await
        .map_err(|e| ClientError::Network(describe(&e)))?;
    let retry_after = response.headers().get("retry-after").ok().flatten();
    Ok(Reply { status: response.status(), retry_after, body: Uint8Array::new(&buffer).to_vec() })
}

/// A JS exception as text.
pub fn describe(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}
