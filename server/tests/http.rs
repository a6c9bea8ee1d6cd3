//! Protocol v1 over HTTP, driven through the router in-process (plus one real socket).
//! The task is tiny and synthetic (4 features, 2 classes): these tests check the protocol and
//! its refusals, not learning, so no accuracy is claimed from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::{Layout, Params, TensorSpec};
use webfl_shared::protocol::{ClientRecord, DatasetInfo, RoundOutcome, RoundRecord};
use webfl_shared::strategy::{StrategyConfig, StrategyKind};
use webfl_shared::train::TrainPlan;

use webfl_server::api::app;
use webfl_server::service::{Service as AppState, TaskSetup};
use webfl_server::store::{ClientCursor, ClientEvent, MemoryStore, Resume, Retention, StoreError, TaskStore};
use webfl_shared::coordinator::RoundPolicy;
use webfl_shared::strategy::OptimizerState;

fn dataset() -> Dataset {
    let n = 40;
    let mut features = Vec::with_capacity(n * 4);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        let sign = if label == 1 { 1.0 } else { -1.0 };
        features.extend([sign, sign * 0.5, (i as f32) / n as f32, -sign]);
        labels.push(label);
    }
    Dataset { sample_shape: vec![4], classes: 2, class_names: vec!["a".into(), "b".into()], features, labels }
}

fn setup(policy: RoundPolicy) -> TaskSetup {
    let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
    let initial = spec.init_params(&mut webfl_shared::rng::derive(0, &[1])).unwrap();
    TaskSetup {
        name: "synthetic".into(),
        spec,
        plan: TrainPlan { epochs: 1, batch_size: 10, lr: 0.1, ..TrainPlan::default() },
        policy,
        strategy: StrategyConfig::new(StrategyKind::FedAvg),
        test: dataset(),
        initial,
        upload_limit_bytes: None,
        dataset: DatasetInfo { name: "synthetic".into(), sample_shape: vec![4], classes: 2, demo_data_url: None },
        demo_data: None,
        update: Default::default(),
        privacy: None,
        server: Default::default(),
        secure_aggregation: None,
    }
}

fn policy() -> RoundPolicy {
    RoundPolicy {
        target_reports: 2,
        over_selection: 1.0,
        min_reports: 2,
        deadline_ms: 60_000,
        retry_after_ms: 100,
        max_examples: 1000,
    }
}

fn state() -> AppState {
    AppState::new(setup(policy())).unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn call_json(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, body) = call(app, req).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

struct Client {
    id: String,
    token: String,
}

/// Checks in a new client; returns it and the response.
async fn checkin(app: &Router) -> (Client, Value) {
    let req = Request::post("/api/v1/checkin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"capabilities": {"backends": ["cpu"]}}"#))
        .unwrap();
    let (status, json) = call_json(app, req).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let client =
        Client { id: json["client_id"].as_str().unwrap().into(), token: json["token"].as_str().unwrap().into() };
    assert_eq!(client.token.len(), 32, "128-bit hex token");
    (client, json)
}

async fn upload(
    app: &Router,
    c: &Client,
    round: u64,
    version: u64,
    examples: u64,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let (v, e) = (version.to_string(), examples.to_string());
    let headers = [("x-webfl-model-version", Some(v.as_str())), ("x-webfl-examples", Some(e.as_str()))];
    call_json(app, upload_as(c, &round.to_string(), Body::from(body), &headers)).await
}

async fn status(app: &Router) -> Value {
    let (code, json) = call_json(app, get("/api/status")).await;
    assert_eq!(code, StatusCode::OK);
    json
}

async fn metrics(app: &Router) -> String {
    let resp = app.clone().oneshot(get("/metrics")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; version=0.0.4");
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

async fn download(app: &Router, version: u64) -> Params {
    let (code, bytes) = call(app, get(&format!("/api/v1/models/{version}"))).await;
    assert_eq!(code, StatusCode::OK);
    Params::from_safetensors_any(&bytes).unwrap()
}

/// A fake local model: the global one shifted by `by` everywhere.
fn local_update(global: &Params, by: f32) -> Params {
    let mut local = global.clone();
    local.as_mut_slice().iter_mut().for_each(|v| *v += by);
    local.delta_from(global).unwrap()
}

#[tokio::test]
async fn a_round_runs_end_to_end() {
    let state = state();
    let app = app(state.clone());
    let (a, ja) = checkin(&app).await;
    let (b, jb) = checkin(&app).await;
    assert_ne!(a.id, b.id);
    assert_ne!(a.token, b.token);
    for j in [&ja, &jb] {
        assert_eq!(j["status"], "assigned");
        assert_eq!((j["round"].as_u64(), j["model_version"].as_u64()), (Some(1), Some(0)));
        assert!(j["deadline_ms_from_now"].as_u64().unwrap() <= 60_000);
        assert_eq!(j["plan"]["batch_size"], 10);
        assert_eq!(j["model"]["input_shape"], serde_json::json!([4]));
        assert!(j["upload_limit_bytes"].as_u64().unwrap() > 0);
    }
    let st = status(&app).await;
    assert_eq!((st["model_version"].as_u64(), st["open_round"].as_u64()), (Some(0), Some(1)));
    assert_eq!(st["clients_connected"], 2);
    assert!(st["test_accuracy"].is_null());

    let global = download(&app, 0).await;
    let (code, j) = upload(&app, &a, 1, 0, 10, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    assert_eq!((code, &j), (StatusCode::ACCEPTED, &serde_json::json!({"accepted": true, "round_closed": false})));
    let (code, j) = upload(&app, &b, 1, 0, 30, local_update(&global, 3.0).to_safetensors().unwrap()).await;
    assert_eq!((code, &j), (StatusCode::ACCEPTED, &serde_json::json!({"accepted": true, "round_closed": true})));
    // The commit sequence runs on its own, after the answer.
    state.settled().await;

    let st = status(&app).await;
    assert_eq!(st["task"], "synthetic");
    assert_eq!((st["model_version"].as_u64(), st["rounds_completed"].as_u64()), (Some(1), Some(1)));
    assert!(st["open_round"].is_null());
    let acc = st["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));

    // FedAvg weighted by examples: (10·1 + 30·3) / 40 = 2.5 added to every parameter.
    let v1 = download(&app, 1).await;
    let l2 = local_update(&global, 2.5);
    let expected: Vec<f32> = global.as_slice().iter().zip(l2.as_slice()).map(|(g, d)| g + d).collect();
    for (got, want) in v1.as_slice().iter().zip(&expected) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    let m = metrics(&app).await;
    for line in ["webfl_model_version 1", "webfl_rounds_completed_total 1", "webfl_updates_accepted_total 2"] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }

    // The next check-in opens round 2 on version 1; a known client resumes with its token.
    let req = Request::post("/api/v1/checkin")
        .header(header::CONTENT_TYPE, "application/json")
        .header("authorization", format!("Bearer {}", a.token))
        .body(Body::from(format!(r#"{{"client_id": "{}"}}"#, a.id)))
        .unwrap();
    let (code, j) = call_json(&app, req).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (j["client_id"].as_str(), j["round"].as_u64(), j["model_version"].as_u64()),
        (Some(a.id.as_str()), Some(2), Some(1))
    );
}

/// The parts of `/api/status` that no refusal may change.
async fn counters(app: &Router) -> Value {
    let st = status(app).await;
    serde_json::json!({
        "model_version": st["model_version"],
        "rounds_completed": st["rounds_completed"],
        "updates_accepted": st["updates_accepted"],
        "open_round": st["open_round"],
    })
}

/// Sends a request that must be refused and asserts the refusal: status code, `error` code, a
/// message, and `/api/status` unchanged.
async fn refused(app: &Router, name: &str, req: Request<Body>, want: StatusCode, error: &str) {
    let before = counters(app).await;
    let (code, json) = call_json(app, req).await;
    assert_eq!((code, json["error"].as_str()), (want, Some(error)), "{name}: {json}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {json}");
    assert_eq!(counters(app).await, before, "{name} changed the server's state");
}

/// An upload by `c` to `round` (as the path has it) from version 0 with 5 examples, with
/// `changes` applied to those headers: `Some(value)` replaces one, `None` leaves it out.
fn upload_as(c: &Client, round: &str, body: Body, changes: &[(&str, Option<&str>)]) -> Request<Body> {
    let auth = format!("Bearer {}", c.token);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-webfl-client", c.id.as_str()),
        ("x-webfl-model-version", "0"),
        ("x-webfl-examples", "5"),
    ];
    for &(name, value) in changes {
        headers.retain(|&(n, _)| n != name);
        headers.extend(value.map(|v| (name, v)));
    }
    let mut req = Request::post(format!("/api/v1/rounds/{round}/update"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.header(header::CONTENT_TYPE, "application/octet-stream").body(body).unwrap()
}

fn checkin_req(auth: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post("/api/v1/checkin").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(body.into()).unwrap()
}

/// A body whose stream fails after a few bytes, as when a client's connection drops mid-upload.
fn broken_body() -> Body {
    let cut = http_body_util::Limited::new(http_body_util::Full::new(Bytes::from_static(b"abcdefgh")), 4);
    Body::new(cut.map_err(|_| std::io::Error::other("connection reset")))
}

/// Safetensors of `global`'s layout changed by `change`, zero-valued.
fn with_layout(global: &Params, change: impl FnOnce(&mut Vec<TensorSpec>)) -> Body {
    let mut specs = global.layout().tensors().to_vec();
    change(&mut specs);
    Body::from(Params::zeros(Arc::new(Layout::new(specs).unwrap())).to_safetensors().unwrap())
}

/// Every way an upload or a check-in can be refused: each answers its status and JSON error code
/// and leaves the model version, completed rounds, accepted updates and open round as they were;
/// the same clients' valid requests succeed afterwards.
#[tokio::test]
async fn every_refusal_is_json_and_changes_nothing() {
    let state = state();
    let limit = state.upload_limit_bytes();
    let app = app(state.clone());
    let (a, _) = checkin(&app).await;
    let (b, _) = checkin(&app).await;
    // Selection is full (2 of 2): a third client gets an identity but no assignment.
    let (c, jc) = checkin(&app).await;
    assert_eq!(jc["status"], "retry");
    assert!(jc["retry_after_ms"].as_u64().unwrap() > 0);

    let global = download(&app, 0).await;
    let good = || Body::from(local_update(&global, 0.5).to_safetensors().unwrap());
    let poisoned = |value: f32| {
        let mut update = local_update(&global, 0.5);
        update.as_mut_slice()[3] = value;
        Body::from(update.to_safetensors().unwrap())
    };
    let a1 = |body: Body, changes: &[(&str, Option<&str>)]| upload_as(&a, "1", body, changes);
    let renamed = with_layout(&global, |t| t[0].name = "0.weights".into());
    let extra = with_layout(&global, |t| t.push(TensorSpec::new("9.weight", vec![2])));
    let missing = with_layout(&global, |t| drop(t.pop()));
    let wrong_shape = with_layout(&global, |t| t[0].shape[0] += 1);
    let b_auth = format!("Bearer {}", b.token);
    let (a_checkin, nobody_checkin) = (format!(r#"{{"client_id": "{}"}}"#, a.id), r#"{"client_id": "nobody"}"#);
    let mut not_text = a1(good(), &[]);
    not_text.headers_mut().insert("x-webfl-client", header::HeaderValue::from_bytes(b"caf\xe9").unwrap());

    let cases: Vec<(&str, u16, &str, Request<Body>)> = vec![
        // The update's bytes.
        ("not safetensors", 422, "bad_update", a1(Body::from("definitely not safetensors"), &[])),
        ("renamed tensor", 422, "bad_update", a1(renamed, &[])),
        ("extra tensor", 422, "bad_update", a1(extra, &[])),
        ("missing tensor", 422, "bad_update", a1(missing, &[])),
        ("wrong shape", 422, "bad_update", a1(wrong_shape, &[])),
        ("NaN value", 422, "bad_update", a1(poisoned(f32::NAN), &[])),
        ("+inf value", 422, "bad_update", a1(poisoned(f32::INFINITY), &[])),
        ("-inf value", 422, "bad_update", a1(poisoned(f32::NEG_INFINITY), &[])),
        ("body over the limit", 413, "payload_too_large", a1(Body::from(vec![0u8; limit + 1]), &[])),
        ("body cut off", 400, "bad_body", a1(broken_body(), &[])),
        // The round.
        ("zero examples", 422, "no_examples", a1(good(), &[("x-webfl-examples", Some("0"))])),
        ("wrong round", 409, "wrong_round", upload_as(&a, "2", good(), &[])),
        ("wrong model version", 409, "wrong_model_version", a1(good(), &[("x-webfl-model-version", Some("7"))])),
        ("not selected", 403, "not_selected", upload_as(&c, "1", good(), &[])),
        // Identity.
        ("no token", 401, "unauthorized", a1(good(), &[("authorization", None)])),
        ("not a bearer token", 401, "unauthorized", a1(good(), &[("authorization", Some("Basic YTpi"))])),
        ("another client's token", 403, "forbidden", a1(good(), &[("authorization", Some(&b_auth))])),
        ("unknown client", 401, "unauthorized", a1(good(), &[("x-webfl-client", Some("nobody"))])),
        // Headers and path.
        ("no X-Webfl-Client", 400, "missing_header", a1(good(), &[("x-webfl-client", None)])),
        ("no X-Webfl-Model-Version", 400, "missing_header", a1(good(), &[("x-webfl-model-version", None)])),
        ("no X-Webfl-Examples", 400, "missing_header", a1(good(), &[("x-webfl-examples", None)])),
        ("X-Webfl-Client not text", 400, "bad_header", not_text),
        ("X-Webfl-Model-Version garbled", 400, "bad_request", a1(good(), &[("x-webfl-model-version", Some("latest"))])),
        ("X-Webfl-Examples negative", 400, "bad_request", a1(good(), &[("x-webfl-examples", Some("-5"))])),
        ("X-Webfl-Examples fractional", 400, "bad_request", a1(good(), &[("x-webfl-examples", Some("5.5"))])),
        ("round not a number", 400, "bad_request", upload_as(&a, "one", good(), &[])),
        // Check-ins.
        ("check-in: not JSON", 400, "bad_json", checkin_req(None, "{not json")),
        ("check-in: client_id not a string", 400, "bad_json", checkin_req(None, r#"{"client_id": 5}"#)),
        ("check-in: body over 64 KiB", 413, "payload_too_large", checkin_req(None, " ".repeat(64 * 1024 + 1))),
        ("check-in: body cut off", 400, "bad_body", checkin_req(None, broken_body())),
        ("check-in: client_id without a token", 401, "unauthorized", checkin_req(None, a_checkin.clone())),
        ("check-in: another client's token", 403, "forbidden", checkin_req(Some(&b.token), a_checkin.clone())),
        ("check-in: unknown client", 401, "unauthorized", checkin_req(Some(&a.token), nobody_checkin)),
        // Unknown things.
        ("unknown model version", 404, "not_found", get("/api/v1/models/1")),
        ("model version not a number", 400, "bad_request", get("/api/v1/models/x")),
        ("unknown endpoint", 404, "not_found", get("/api/v2/nothing")),
    ];
    // Every refused upload is counted by reason.
    let mut rejected = std::collections::BTreeMap::from([("already_reported", 1)]);
    for (_, _, error, req) in &cases {
        if req.uri().path().starts_with("/api/v1/rounds/") {
            *rejected.entry(*error).or_default() += 1;
        }
    }
    for (name, status, error, req) in cases {
        refused(&app, name, req, StatusCode::from_u16(status).unwrap(), error).await;
    }

    // After all that, a's good update still counts, once.
    let (code, j) = call_json(&app, a1(good(), &[])).await;
    assert_eq!((code, j["round_closed"].as_bool()), (StatusCode::ACCEPTED, Some(false)), "{j}");
    refused(&app, "duplicate upload", a1(good(), &[]), StatusCode::CONFLICT, "already_reported").await;
    assert_eq!(status(&app).await["updates_accepted"], 1);

    let m = metrics(&app).await;
    for line in ["webfl_updates_accepted_total 1", "webfl_model_version 0", "webfl_test_accuracy NaN"] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    let reasons: Vec<&str> = m.lines().filter(|l| l.starts_with("webfl_updates_rejected_total{")).collect();
    let want: Vec<String> =
        rejected.iter().map(|(r, n)| format!(r#"webfl_updates_rejected_total{{reason="{r}"}} {n}"#)).collect();
    assert_eq!(reasons, want);

    // Client health: a has one accepted update and its refused ones counted as failures.
    let (code, clients) = call_json(&app, get("/api/clients")).await;
    assert_eq!(code, StatusCode::OK);
    let a_health = clients["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == a.id.as_str()).unwrap();
    assert_eq!(a_health["rounds_completed"], 1, "{a_health}");
    assert!(a_health["failures"].as_u64().unwrap() >= 3, "{a_health}");
    assert!(a_health["last_round_trip_ms"].is_u64(), "{a_health}");

    // The refused check-ins left a's identity alone, and b's update closes the round.
    let (code, j) = call_json(&app, checkin_req(Some(&a.token), a_checkin)).await;
    assert_eq!((code, j["client_id"].as_str()), (StatusCode::OK, Some(a.id.as_str())), "{j}");
    let (code, j) = call_json(&app, upload_as(&b, "1", good(), &[])).await;
    assert_eq!((code, j["round_closed"].as_bool()), (StatusCode::ACCEPTED, Some(true)), "{j}");
    state.settled().await;
    let st = status(&app).await;
    assert_eq!((st["model_version"].as_u64(), st["updates_accepted"].as_u64()), (Some(1), Some(2)), "{st}");
}

/// The refusals that depend on the round's phase: no round open, and a passed deadline.
#[tokio::test]
async fn uploads_outside_an_open_round_are_refused() {
    use StatusCode as S;
    let (now, clock) = manual_clock();
    let state = AppState::with_store_and_clock(setup(policy()), Box::new(MemoryStore::default()), clock).unwrap();
    let app = app(state.clone());
    let (a, _) = checkin(&app).await;
    let (b, _) = checkin(&app).await;
    let global = download(&app, 0).await;
    let good = |global: &Params| Body::from(local_update(global, 0.5).to_safetensors().unwrap());
    for c in [&a, &b] {
        assert_eq!(call_json(&app, upload_as(c, "1", good(&global), &[])).await.0, S::ACCEPTED);
    }
    state.settled().await;
    // Round 1 closed with version 1; round 2 opens only at the next check-in.
    assert_eq!(counters(&app).await["open_round"], Value::Null);
    refused(&app, "no open round", upload_as(&a, "1", good(&global), &[]), S::CONFLICT, "no_open_round").await;

    let (a2, b2) = (checkin_as(&app, &a).await, checkin_as(&app, &b).await);
    assert_eq!((a2["round"].as_u64(), b2["round"].as_u64()), (Some(2), Some(2)), "{a2} {b2}");
    let v1 = download(&app, 1).await;
    let latest = [("x-webfl-model-version", Some("1"))];
    assert_eq!(call_json(&app, upload_as(&a, "2", good(&v1), &latest)).await.0, S::ACCEPTED);
    now.fetch_add(60_000, Ordering::SeqCst);
    refused(&app, "deadline passed", upload_as(&b, "2", good(&v1), &latest), S::CONFLICT, "deadline_passed").await;

    // The deadline abandons round 2 (1 of 2 updates); round 3 takes b's update.
    state.tick();
    state.settled().await;
    let (_, j) = checkin(&app).await;
    assert_eq!(j["round"], 3);
    assert_eq!(checkin_as(&app, &b).await["round"], 3);
    assert_eq!(call_json(&app, upload_as(&b, "3", good(&v1), &latest)).await.0, S::ACCEPTED);
    let st = status(&app).await;
    assert_eq!((st["model_version"].as_u64(), st["updates_accepted"].as_u64()), (Some(1), Some(4)), "{st}");
}

/// A known client's check-in with its token.
async fn checkin_as(app: &Router, c: &Client) -> Value {
    let (code, json) = call_json(app, checkin_req(Some(&c.token), format!(r#"{{"client_id": "{}"}}"#, c.id))).await;
    assert_eq!(code, StatusCode::OK, "{json}");
    json
}

fn manual_clock() -> (Arc<AtomicU64>, webfl_server::service::Clock) {
    let now = Arc::new(AtomicU64::new(1_000));
    let read = now.clone();
    (now, Arc::new(move || read.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn deadlines_close_or_abandon_rounds() {
    let (now, clock) = manual_clock();
    let pol = RoundPolicy { min_reports: 1, ..policy() };
    let state = AppState::with_store_and_clock(setup(pol), Box::new(MemoryStore::default()), clock).unwrap();
    let app = app(state.clone());
    let (a, _) = checkin(&app).await;
    checkin(&app).await;
    let global = download(&app, 0).await;
    let (code, _) = upload(&app, &a, 1, 0, 5, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    state.tick();
    state.settled().await; // before the deadline: nothing happens
    assert_eq!(status(&app).await["open_round"], 1);

    now.fetch_add(60_000, Ordering::SeqCst);
    let (code, j) = upload(&app, &a, 1, 0, 5, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    assert_eq!((code, j["error"].as_str()), (StatusCode::CONFLICT, Some("already_reported")));
    state.tick();
    state.settled().await;
    let st = status(&app).await;
    assert_eq!((st["model_version"].as_u64(), st["rounds_completed"].as_u64()), (Some(1), Some(1)));

    // Round 2: nobody reports, so the deadline abandons it.
    let (_, j) = checkin(&app).await;
    assert_eq!(j["round"], 2);
    now.fetch_add(60_000, Ordering::SeqCst);
    state.tick();
    state.settled().await;
    let outcomes: Vec<_> = state.history().iter().map(|r| (r.round, r.version, r.outcome)).collect();
    assert_eq!(outcomes, vec![(1, Some(1), RoundOutcome::ClosedByDeadline), (2, None, RoundOutcome::Abandoned)]);
    assert!(metrics(&app).await.lines().any(|l| l == "webfl_rounds_abandoned_total 1"));
    assert_eq!(status(&app).await["model_version"], 1);
}

/// Stores version 0 and then refuses everything.
struct FailingStore(MemoryStore);

impl TaskStore for FailingStore {
    fn put_initial(&mut self, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        self.0.put_initial(bytes)
    }

    fn get(&self, version: u64) -> Result<Option<Arc<Vec<u8>>>, StoreError> {
        self.0.get(version)
    }

    fn commit(&mut self, _: u64, _: Arc<Vec<u8>>, _: &RoundRecord, _: &OptimizerState) -> Result<(), StoreError> {
        Err(StoreError::Json(serde_json::from_str::<u8>("disk full").unwrap_err()))
    }

    fn record_abandoned(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        self.0.record_abandoned(record)
    }

    fn resume(&self) -> Result<Option<Resume>, StoreError> {
        self.0.resume()
    }

    fn record_clients(&mut self, events: &[ClientEvent]) -> Result<(), StoreError> {
        self.0.record_clients(events)
    }

    fn clients_page(&self, after: Option<&ClientCursor>, limit: usize) -> Result<Vec<ClientRecord>, StoreError> {
        self.0.clients_page(after, limit)
    }

    fn forget_clients(&mut self, unseen_since_ms: u64) -> Result<Vec<String>, StoreError> {
        self.0.forget_clients(unseen_since_ms)
    }

    fn prune_versions(&mut self, keep: &Retention) -> Result<u64, StoreError> {
        self.0.prune_versions(keep)
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        self.0.size_bytes()
    }

    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.0.client_tokens()
    }
}

#[tokio::test]
async fn a_version_that_cannot_be_stored_is_never_announced() {
    let (_, clock) = manual_clock();
    let store = Box::new(FailingStore(MemoryStore::default()));
    let state = AppState::with_store_and_clock(setup(policy()), store, clock).unwrap();
    let app = app(state.clone());
    let (a, _) = checkin(&app).await;
    let (b, _) = checkin(&app).await;
    let global = download(&app, 0).await;
    upload(&app, &a, 1, 0, 5, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    let (code, j) = upload(&app, &b, 1, 0, 5, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    // The update closed the round; storing its version then failed, off the request path.
    assert_eq!((code, j["round_closed"].as_bool()), (StatusCode::ACCEPTED, Some(true)));
    state.settled().await;
    let st = status(&app).await;
    assert_eq!((st["model_version"].as_u64(), st["rounds_completed"].as_u64()), (Some(0), Some(0)));
    assert_eq!(state.history()[0].outcome, RoundOutcome::StoreFailed);
    // Clients carry on from version 0 in a fresh round.
    let (_, j) = checkin(&app).await;
    assert_eq!((j["round"].as_u64(), j["model_version"].as_u64()), (Some(2), Some(0)));
}

#[tokio::test]
async fn serves_on_a_real_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(state())).into_future());
    // A plain blocking socket on another thread: no HTTP client library involved.
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!((json["task"].as_str(), json["model_version"].as_u64()), (Some("synthetic"), Some(0)));
    server.abort();
}

/// A server restarted on the same SQLite folder resumes from its last committed version: the
/// version, the round numbering, the history and the stored models all survive, and a new round
/// trains on the resumed version.
#[tokio::test]
async fn a_restart_resumes_the_last_committed_version() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let db = webfl_server::store::TaskDb::open(dir.path(), "synthetic", "{}", 0).unwrap();
        AppState::with_store(setup(policy()), Box::new(db)).unwrap()
    };
    let (v1, a) = {
        let state = open();
        let app = app(state.clone());
        let (a, _) = checkin(&app).await;
        let (b, _) = checkin(&app).await;
        let (_, m0) = call(&app, get("/api/v1/models/0")).await;
        let global = Params::from_safetensors_any(&m0).unwrap();
        let mut local = global.clone();
        local.as_mut_slice().iter_mut().for_each(|v| *v += 0.25);
        let delta = local.delta_from(&global).unwrap().to_safetensors().unwrap();
        assert_eq!(upload(&app, &a, 1, 0, 10, delta.clone()).await.0, StatusCode::ACCEPTED);
        assert_eq!(upload(&app, &b, 1, 0, 10, delta).await.0, StatusCode::ACCEPTED);
        state.settled().await;
        assert_eq!(status(&app).await["model_version"], 1);
        // Client bookkeeping is written in batches, every 250 ms (the ticker) and at shutdown;
        // a crash can lose the last batch, after which those clients register anew.
        state.flush_clients();
        (call(&app, get("/api/v1/models/1")).await.1, a)
    };
    // The old state is gone (as after a crash); only the folder remains.
    let app = app(open());
    let s = status(&app).await;
    assert_eq!((s["model_version"].as_u64(), s["rounds_completed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(call(&app, get("/api/v1/models/1")).await.1, v1);
    let (_, json) = checkin(&app).await;
    assert_eq!((json["round"].as_u64(), json["model_version"].as_u64()), (Some(2), Some(1)), "{json}");
    // A client's token outlives the restart (only its hash is stored).
    let req = Request::post("/api/v1/checkin")
        .header(header::CONTENT_TYPE, "application/json")
        .header("authorization", format!("Bearer {}", a.token))
        .body(Body::from(format!(r#"{{"client_id": "{}"}}"#, a.id)))
        .unwrap();
    let (code, j) = call_json(&app, req).await;
    assert_eq!((code, j["client_id"].as_str()), (StatusCode::OK, Some(a.id.as_str())), "{j}");
    let wrong = Request::post("/api/v1/checkin")
        .header(header::CONTENT_TYPE, "application/json")
        .header("authorization", "Bearer 00000000000000000000000000000000")
        .body(Body::from(format!(r#"{{"client_id": "{}"}}"#, a.id)))
        .unwrap();
    assert_eq!(call_json(&app, wrong).await.0, StatusCode::FORBIDDEN);
    // Client health survived the restart too: both uploaders have one completed round.
    let (code, clients) = call_json(&app, get("/api/clients")).await;
    assert_eq!(code, StatusCode::OK);
    let completed: Vec<u64> =
        clients["clients"].as_array().unwrap().iter().map(|c| c["rounds_completed"].as_u64().unwrap()).collect();
    assert_eq!(completed.iter().filter(|&&n| n == 1).count(), 2, "{clients}");
    let (code, rounds) = call_json(&app, get("/api/rounds")).await;
    assert_eq!(code, StatusCode::OK);
    let rounds = rounds.as_array().unwrap();
    assert_eq!(rounds.len(), 1);
    assert_eq!((rounds[0]["round"].as_u64(), rounds[0]["version"].as_u64()), (Some(1), Some(1)));
    assert_eq!((rounds[0]["outcome"].as_str(), rounds[0]["reports"].as_u64()), (Some("closed"), Some(2)));
}

/// A private, compressed task: clients get the update spec with their assignment, uploads are
/// the pipeline's encoding of the task's codec only, ε is reported, and once the budget is
/// spent the server tells clients it is done instead of opening a round.
#[tokio::test]
async fn a_private_compressed_task_spends_its_budget_then_stops() {
    use rand::SeedableRng;
    use webfl_shared::codec::Compression;
    use webfl_shared::pipeline::{self, UpdateSpec};
    use webfl_shared::privacy::PrivacyBudget;

    let spec = UpdateSpec { clip: Some(1.0), per_layer: false, noise_std: 0.5, compression: Compression::Q8 };
    let budget = PrivacyBudget {
        mode: "local".into(),
        noise_multiplier: 2.0,
        sampling_rate: 1.0,
        delta: 1e-5,
        // One round of σ=2 at q=1 costs ε ≈ 2.17; two would exceed 3.
        target_epsilon: Some(3.0),
    };
    let mut task = setup(policy());
    task.update = spec.clone();
    task.privacy = Some(budget);
    let state = AppState::new(task).unwrap();
    let app = app(state.clone());

    let (a, assignment) = checkin(&app).await;
    assert_eq!(serde_json::from_value::<UpdateSpec>(assignment["update"].clone()).unwrap(), spec);
    let (b, _) = checkin(&app).await;
    let global = download(&app, 0).await;
    let encoded = |by: f32| {
        let mut delta = local_update(&global, by);
        let mut noise = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let prepared =
            pipeline::prepare(&mut delta, &spec, None, &mut noise, &mut webfl_shared::rng::derive(0, &[])).unwrap();
        assert!(prepared.clipped, "the update was clipped to S");
        prepared.body
    };
    let as_update = |c: &Client, body: Vec<u8>, content_type: &str| {
        let req = upload_as(c, "1", Body::from(body), &[]);
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        Request::from_parts(parts, body)
    };
    // Plain safetensors is refused by a compressed task, and so is another codec.
    let (code, json) = call_json(
        &app,
        as_update(&a, local_update(&global, 0.1).to_safetensors().unwrap(), "application/octet-stream"),
    )
    .await;
    assert_eq!((code, json["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_update")), "{json}");
    let mut dense = local_update(&global, 0.1);
    let plain = pipeline::prepare(
        &mut dense,
        &UpdateSpec::default(),
        None,
        &mut rand_chacha::ChaCha20Rng::seed_from_u64(0),
        &mut webfl_shared::rng::derive(0, &[]),
    )
    .unwrap();
    let (code, json) = call_json(&app, as_update(&a, plain.body, webfl_shared::protocol::UPDATE_CONTENT_TYPE)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert!(json["message"].as_str().unwrap().contains("q8"), "{json}");

    let (code, json) = call_json(&app, as_update(&a, encoded(0.1), webfl_shared::protocol::UPDATE_CONTENT_TYPE)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{json}");
    let (code, json) = call_json(&app, as_update(&b, encoded(-0.1), webfl_shared::protocol::UPDATE_CONTENT_TYPE)).await;
    assert_eq!((code, json["round_closed"].as_bool()), (StatusCode::ACCEPTED, Some(true)), "{json}");
    state.settled().await;

    let s = status(&app).await;
    let eps = s["privacy"]["epsilon"].as_f64().unwrap();
    assert!((eps - 2.166).abs() < 0.01, "{s}");
    assert_eq!(s["privacy"]["budget_left"], false);
    let (_, rounds) = call_json(&app, get("/api/rounds")).await;
    assert!(rounds[0]["bytes_up"].as_u64().unwrap() > 0, "{rounds}");
    // Two Q8 updates: about a quarter of two dense f32 ones.
    let dense_bytes = 8.0 * global.len() as f64;
    assert!((rounds[0]["bytes_up"].as_u64().unwrap() as f64) < 0.3 * dense_bytes, "{rounds}");
    // The one model download of the round is counted too.
    assert!(rounds[0]["bytes_down"].as_u64().unwrap() >= 4 * global.len() as u64, "{rounds}");
    assert_eq!(s["bytes_down_total"], rounds[0]["bytes_down"], "{s}");

    let again = checkin_as(&app, &a).await;
    assert_eq!(again["status"], "done", "{again}");
    assert!(again["reason"].as_str().unwrap().contains("privacy budget"), "{again}");
}

/// Pacing: a client that would be told to wait is held (long poll) and answered the moment the
/// next round can take it — not when its retry time or the old round's deadline comes round.
#[tokio::test]
async fn a_long_polling_client_is_assigned_the_moment_the_next_round_opens() {
    let state = state();
    let app = app(state.clone());
    let (a, _) = checkin(&app).await;
    let (b, _) = checkin(&app).await;
    // The round (2 of 2) is full: a third client asks to wait up to 10 s.
    let held = tokio::spawn({
        let app = app.clone();
        async move {
            let started = std::time::Instant::now();
            let (status, json) = call_json(&app, checkin_req(None, r#"{"wait_ms": 10000}"#)).await;
            (status, json, started.elapsed())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "a full round holds the waiting client");
    let global = download(&app, 0).await;
    let released = std::time::Instant::now();
    for c in [&a, &b] {
        assert_eq!(
            upload(&app, c, 1, 0, 10, local_update(&global, 0.5).to_safetensors().unwrap()).await.0,
            StatusCode::ACCEPTED
        );
    }
    let (status, json, waited) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (json["status"].as_str(), json["round"].as_u64(), json["model_version"].as_u64()),
        (Some("assigned"), Some(2), Some(1)),
        "{json}"
    );
    assert!(
        released.elapsed() < std::time::Duration::from_secs(5),
        "answered {:?} after the round closed",
        released.elapsed()
    );
    assert!(waited >= std::time::Duration::from_millis(200));

    // A server that is stopping answers held check-ins at once instead of keeping them.
    // Round 2 took the waiting client; one more fills it, so the next one is held.
    checkin(&app).await;
    let held = tokio::spawn({
        let app = app.clone();
        async move { call_json(&app, checkin_req(None, r#"{"wait_ms": 20000}"#)).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = std::time::Instant::now();
    state.shut_down();
    let (status, json) = held.await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("retry")), "{json}");
    assert!(stopping.elapsed() < std::time::Duration::from_secs(2));
}

/// Hostile updates that are each well-formed: one beyond the task's clip bound is refused with
/// nothing changed; huge ones that overflow only together leave the closing client accepted,
/// the round abandoned and recorded, the model as it was, and the next round running.
#[tokio::test]
async fn updates_beyond_the_clip_bound_or_that_overflow_together_change_no_model() {
    // A clipped dense task (clip 1): an update of norm 5 skipped its clipping.
    let mut task = setup(policy());
    task.update = webfl_shared::pipeline::UpdateSpec { clip: Some(1.0), ..Default::default() };
    let state = AppState::new(task).unwrap();
    let clipped = app(state.clone());
    let (a, _) = checkin(&clipped).await;
    let global = download(&clipped, 0).await;
    let (code, json) = upload(&clipped, &a, 1, 0, 10, local_update(&global, 1.0).to_safetensors().unwrap()).await;
    assert_eq!((code, json["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_update")), "{json}");
    assert!(json["message"].as_str().unwrap().contains("clip bound"), "{json}");
    assert_eq!(status(&clipped).await["updates_accepted"], 0);
    let (code, _) = upload(&clipped, &a, 1, 0, 10, local_update(&global, 0.001).to_safetensors().unwrap()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "an honest update still gets in");

    // No clip: two finite updates of 3e38 commit (3e38 ≤ f32::MAX). After that, updates of 3e38
    // would take the model past f32::MAX: each is refused on arrival and changes nothing, so
    // the round goes on with honest updates. Claiming u64::MAX examples is refused as well.
    let state = state_with(setup(policy()));
    let open = app(state.clone());
    let app = &open;
    let (a, _) = checkin(app).await;
    let (b, _) = checkin(app).await;
    let huge = |global: &Params| {
        let mut d = global.clone();
        d.as_mut_slice().iter_mut().for_each(|v| *v = 3.0e38);
        d.to_safetensors().unwrap()
    };
    let g0 = download(app, 0).await;
    for c in [&a, &b] {
        assert_eq!(upload(app, c, 1, 0, 10, huge(&g0)).await.0, StatusCode::ACCEPTED);
    }
    state.settled().await;
    let (code, j) = call_json(app, checkin_req(Some(&a.token), format!(r#"{{"client_id": "{}"}}"#, a.id))).await;
    assert_eq!((code, j["round"].as_u64()), (StatusCode::OK, Some(2)), "{j}");
    call_json(app, checkin_req(Some(&b.token), format!(r#"{{"client_id": "{}"}}"#, b.id))).await;
    let g1 = download(app, 1).await;
    let before = (status(app).await, call_json(app, get("/api/rounds")).await.1);
    let latest = [("x-webfl-model-version", Some("1"))];
    let (code, j) = call_json(app, upload_as(&a, "2", Body::from(huge(&g1)), &latest)).await;
    assert_eq!((code, j["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("out_of_range")), "{j}");
    let greedy = [("x-webfl-model-version", Some("1")), ("x-webfl-examples", Some("18446744073709551615"))];
    let honest = local_update(&g1, 0.0).to_safetensors().unwrap();
    let (code, j) = call_json(app, upload_as(&a, "2", Body::from(honest.clone()), &greedy)).await;
    assert_eq!((code, j["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("too_many_examples")), "{j}");
    let mut after = status(app).await;
    // The refusals are counted, and nothing else moved.
    assert_eq!(after["updates_accepted"], before.0["updates_accepted"]);
    after["store_bytes"] = before.0["store_bytes"].clone();
    assert_eq!(after, before.0);
    assert_eq!(call_json(app, get("/api/rounds")).await.1, before.1);
    for c in [&a, &b] {
        assert_eq!(
            call_json(app, upload_as(c, "2", Body::from(honest.clone()), &latest)).await.0,
            StatusCode::ACCEPTED
        );
    }
    state.settled().await;
    let st = status(app).await;
    assert_eq!((st["model_version"].as_u64(), st["rounds_completed"].as_u64()), (Some(2), Some(2)), "{st}");
    let m = metrics(app).await;
    for reason in ["out_of_range", "too_many_examples"] {
        assert!(m.lines().any(|l| l == format!(r#"webfl_updates_rejected_total{{reason="{reason}"}} 1"#)), "{m}");
    }
}

fn state_with(setup: TaskSetup) -> AppState {
    AppState::new(setup).unwrap()
}
