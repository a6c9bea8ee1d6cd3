//! The client inside a real dedicated Web Worker in headless Chromium (wasm-bindgen-test):
//! `cargo test -p webfl-client --target wasm32-unknown-unknown` (scripts/test runs it).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use webfl_client::{Contributor, net};
use webfl_shared::backend::{Backend, Engine};
use webfl_shared::model::ModelSpec;
use webfl_shared::rng;
use webfl_shared::train::TrainPlan;

use webfl_shared::data::toy_two_class as toy_data;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
fn runs_in_a_dedicated_worker_not_on_a_page() {
    let global = js_sys::global();
    let has = |name: &str| js_sys::Reflect::has(&global, &name.into()).unwrap();
    assert!(has("WorkerGlobalScope") && has("postMessage"), "not a worker");
    assert!(!has("document"), "a page, not a worker");
}

/// The shared participant session, run here in the browser's wasm, uploads exactly the bytes it
/// uploads natively (`webfl simulate`'s platform): the same pinned digest as the native test.
#[wasm_bindgen_test]
fn the_participant_uploads_the_same_bytes_as_natively() {
    use webfl_shared::participant::{GOLDEN_UPLOAD_DIGEST, golden_upload_digest};
    assert_eq!(golden_upload_digest(), GOLDEN_UPLOAD_DIGEST);
}

#[wasm_bindgen_test]
async fn local_training_in_the_worker_learns_the_toy_task() {
    let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
    let global = spec.init_params(&mut rng::derive(0, &[1])).unwrap();
    let data = toy_data(60);
    let plan = TrainPlan { epochs: 5, batch_size: 10, lr: 0.1, ..TrainPlan::default() };
    let mut engine = Engine::cpu(&spec).unwrap();
    let mut stream = rng::derive(net::random_seed().unwrap(), &[]);
    let (local, _) = engine.train(&global, &data, &plan, &mut stream, &mut |_| {}).await.unwrap();
    let before = engine.evaluate(&global, &data).await.unwrap();
    let after = engine.evaluate(&local, &data).await.unwrap();
    assert!(after.loss < before.loss * 0.5, "loss {} -> {}", before.loss, after.loss);
    assert_eq!(after.accuracy, 1.0);
}

#[wasm_bindgen_test]
fn seeds_come_from_the_browsers_crypto() {
    let seeds: Vec<u64> = (0..4).map(|_| net::random_seed().unwrap()).collect();
    assert!(seeds.windows(2).all(|w| w[0] != w[1]), "{seeds:?}");
}

#[wasm_bindgen_test]
async fn sleep_waits_on_the_worker_event_loop() {
    let start = net::now_ms();
    net::sleep(60).await;
    assert!(net::now_ms() - start >= 50.0);
}

/// An unreachable server is a retried, non-fatal error; `stop()` then ends `run()` cleanly.
#[wasm_bindgen_test]
async fn an_unreachable_server_is_retried_until_stopped() {
    let events = Rc::new(RefCell::new(Vec::<serde_json::Value>::new()));
    let sink = events.clone();
    let on_event = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let text: String = js_sys::JSON::stringify(&e).unwrap().into();
        sink.borrow_mut().push(serde_json::from_str(&text).unwrap());
    });
    // Port 9 (discard) is closed: fetch fails at once.
    let contributor = Contributor::new("http://127.0.0.1:9".into(), on_event.as_ref().clone().into());
    assert_eq!(contributor.use_dataset(toy_data(20), "toy"), 20);
    let run = contributor.run();
    net::sleep(300).await;
    contributor.stop();
    JsFuture::from(run).await.expect("a stopped run resolves");
    let events = events.borrow();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "data");
    let error = events.iter().find(|e| e["type"] == "error").expect("an error event");
    assert_eq!(error["fatal"], false);
    assert!(error["message"].as_str().unwrap().contains("network:"), "{error}");
    assert_eq!(events.last().unwrap()["state"], "stopped");
}

#[wasm_bindgen_test]
async fn running_without_data_is_a_fatal_error() {
    let on_event = Closure::<dyn FnMut(JsValue)>::new(|_: JsValue| {});
    let contributor = Contributor::new("http://127.0.0.1:9".into(), on_event.as_ref().clone().into());
    let err = JsFuture::from(contributor.run()).await.expect_err("no data");
    let message: String = err.dyn_into::<js_sys::Error>().unwrap().message().into();
    assert!(message.contains("no local data"), "{message}");
}

#[wasm_bindgen_test]
fn a_secure_aggregation_round_runs_and_is_timed_in_the_worker() {
    let json = webfl_client::bench::bench_secagg(10, 1_000, 0.2).unwrap_or_else(|_| panic!("the round failed"));
    let times: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(times["survivors"], 8, "{times}");
    // Key generation can fall under the timer's resolution in a worker; the rest cannot.
    assert!(times["client_keys_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{times}");
    for stage in ["client_share_ms", "client_mask_ms", "server_unmask_ms"] {
        assert!(times[stage].as_f64().is_some_and(|ms| ms > 0.0), "{stage}: {times}");
    }
}
