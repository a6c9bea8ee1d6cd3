//! The WebGPU engine inside a dedicated Web Worker in headless Chromium (WebGPU enabled through
//! `client/webdriver.json`; the adapter here is SwiftShader, a CPU implementation): the backend
//! conformance suite against the CPU engine, and every path by which the client falls back to
//! the CPU (`webfl_shared::backend::Engine`). `cargo test -p webfl-client --target wasm32-unknown-unknown --test webgpu`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;
use webfl_client::net;
use webfl_shared::backend::{Backend, Engine, Preference};
use webfl_shared::gpu::GpuFault;
use webfl_shared::model::ModelSpec;
use webfl_shared::rng;
use webfl_shared::train::TrainPlan;

use webfl_shared::data::toy_two_class as toy_data;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

fn spec() -> ModelSpec {
    ModelSpec::builtin("2nn", &[4], 2).unwrap()
}

fn plan() -> TrainPlan {
    TrainPlan { epochs: 2, batch_size: 5, lr: 0.1, ..TrainPlan::default() }
}

async fn select(preference: Preference) -> Engine {
    let now = || net::now_ms();
    Engine::select(&spec(), preference, &toy_data(40), &plan(), &now).await.unwrap()
}

/// Runs JavaScript in the worker's global scope, to patch the browser's WebGPU API. Each test
/// restores what the one before it may have patched first (a failed assertion skips the restore).
fn js(code: &str) {
    js_sys::Function::new_no_args(code).call0(&JsValue::NULL).expect("the JavaScript patch runs");
}

const RESTORE: &str = r#"
    delete navigator.gpu;
    if (self.__webflRequestAdapter) { GPU.prototype.requestAdapter = self.__webflRequestAdapter; }
    if (self.__webflRequestDevice) { GPUAdapter.prototype.requestDevice = self.__webflRequestDevice; }
"#;

#[wasm_bindgen_test]
async fn with_webgpu_present_auto_selection_times_both_engines() {
    js(RESTORE);
    let mut engine = select(Preference::Auto).await;
    let choice = engine.take_choice_change().unwrap();
    let (cpu, gpu) = (choice.cpu_samples_per_s.unwrap(), choice.gpu_samples_per_s.unwrap());
    assert!(cpu > 0.0 && gpu > 0.0, "{choice:?}");
    assert_eq!(choice.backend, if gpu > cpu { "webgpu" } else { "cpu" }, "{choice:?}");
    assert!(choice.adapter.is_some(), "{choice:?}");
}

#[wasm_bindgen_test]
async fn no_navigator_gpu_means_the_cpu() {
    js(RESTORE);
    js("Object.defineProperty(navigator, 'gpu', { value: undefined, configurable: true });");
    let engine = select(Preference::WebGpu).await;
    js(RESTORE);
    let choice = engine.choice();
    assert_eq!(choice.backend, "cpu");
    assert!(choice.reason.starts_with("WebGPU unavailable"), "{choice:?}");
}

#[wasm_bindgen_test]
async fn no_adapter_means_the_cpu() {
    js(RESTORE);
    js("self.__webflRequestAdapter = GPU.prototype.requestAdapter; \
        GPU.prototype.requestAdapter = async function () { return null; };");
    let engine = select(Preference::Auto).await;
    js(RESTORE);
    let choice = engine.choice();
    assert_eq!(choice.backend, "cpu");
    assert!(choice.reason.starts_with("WebGPU unavailable") && choice.adapter.is_none(), "{choice:?}");
}

#[wasm_bindgen_test]
async fn a_failed_device_request_means_the_cpu() {
    js(RESTORE);
    js("self.__webflRequestDevice = GPUAdapter.prototype.requestDevice; \
        GPUAdapter.prototype.requestDevice = function () { \
            return Promise.reject(new DOMException('injected by the test', 'OperationError')); };");
    let engine = select(Preference::Auto).await;
    js(RESTORE);
    let choice = engine.choice();
    assert_eq!(choice.backend, "cpu");
    assert!(choice.reason.starts_with("WebGPU unavailable"), "{choice:?}");
}

/// A lost device and a validation error mid-round: the round is trained again on the CPU from
/// the same seed, so the update equals the CPU engine's, and the page is told why.
#[wasm_bindgen_test]
async fn a_gpu_failure_mid_round_falls_back_without_losing_the_round() {
    js(RESTORE);
    let global = spec().init_params(&mut rng::derive(0, &[1])).unwrap();
    let data = toy_data(40);
    let mut cpu = Engine::cpu(&spec()).unwrap();
    let reference = cpu.train(&global, &data, &plan(), &mut rng::derive(3, &[]), &mut |_| {}).await.unwrap();
    for (fault, words) in [(GpuFault::DeviceLost, "lost"), (GpuFault::ValidationError, "alidation")] {
        let mut engine = select(Preference::WebGpu).await;
        assert_eq!(engine.name(), "webgpu", "{:?}", engine.choice());
        engine.take_choice_change();
        assert!(engine.inject_gpu_fault(fault));
        let trained = engine.train(&global, &data, &plan(), &mut rng::derive(3, &[]), &mut |_| {}).await.unwrap();
        assert_eq!(trained, reference);
        let choice = engine.take_choice_change().expect("the fallback is reported");
        assert_eq!(choice.backend, "cpu");
        assert!(choice.reason.contains(words) && choice.reason.contains("again on the CPU"), "{choice:?}");
    }
}

/// The backend conformance suite (webfl_shared::gpu::conformance), against the CPU engine, on
/// the browser's WebGPU adapter.
mod conformance {
    webfl_shared::backend_conformance_suite!(webfl_shared::gpu::conformance::GpuEngine::new().await, wasm);
}
