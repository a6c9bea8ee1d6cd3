//! What the server refuses to anonymous and hostile callers, in process: registration only
//! through a well-formed JSON check-in and within the per-address rate, per-client rate limits
//! with `Retry-After`, operator endpoints behind a token (or loopback), paginated client lists,
//! version retention, the CORS policy, security headers, and no redirect to another host.

use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use webfl_server::api::{app, app_with_pages};
use webfl_server::config::ServerConfig;
use webfl_server::service::{Service, TaskSetup};
use webfl_shared::coordinator::RoundPolicy;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::protocol::DatasetInfo;
use webfl_shared::strategy::{StrategyConfig, StrategyKind};
use webfl_shared::train::TrainPlan;

fn setup(server: ServerConfig) -> TaskSetup {
    let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
    let initial = spec.init_params(&mut webfl_shared::rng::derive(0, &[1])).unwrap();
    let test = webfl_shared::data::toy_two_class(8);
    TaskSetup {
        name: "guards".into(),
        spec,
        plan: TrainPlan::default(),
        policy: RoundPolicy {
            target_reports: 1,
            over_selection: 1.0,
            min_reports: 1,
            deadline_ms: 60_000,
            retry_after_ms: 100,
            max_examples: 1000,
        },
        strategy: StrategyConfig::new(StrategyKind::FedAvg),
        test,
        initial,
        upload_limit_bytes: None,
        dataset: DatasetInfo { name: "toy".into(), sample_shape: vec![4], classes: 2, demo_data_url: None },
        demo_data: None,
        update: Default::default(),
        privacy: None,
        server,
        secure_aggregation: None,
    }
}

fn serve(server: ServerConfig) -> (Service, Router) {
    let service = Service::new(setup(server)).unwrap();
    (service.clone(), app(service))
}

/// A request as `webfl serve` hands it to the router: with the peer's address.
fn from(peer: &str, mut req: Request<Body>) -> Request<Body> {
    let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn checkin(content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut req = Request::post("/api/v1/checkin");
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    req.body(Body::from(body.to_string())).unwrap()
}

fn checkin_as(id: &str, token: &str) -> Request<Body> {
    Request::post("/api/v1/checkin")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(format!(r#"{{"client_id": "{id}"}}"#)))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

async fn json(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = call(app, req).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

async fn known_clients(service: &Service) -> usize {
    service.clients(None, Some(1000)).await.unwrap().clients.len()
}

#[tokio::test]
async fn only_a_json_check_in_registers_and_an_address_registers_at_its_rate() {
    let (service, app) = serve(ServerConfig { registrations_per_minute: 3, ..ServerConfig::default() });
    // What a cross-origin form or `fetch` without CORS consent can send registers nobody.
    for (what, ct, body, code) in [
        ("empty", None, "", "bad_content_type"),
        ("text/plain", Some("text/plain"), "{}", "bad_content_type"),
        ("form", Some("application/x-www-form-urlencoded"), "a=b", "bad_content_type"),
        ("empty JSON", Some("application/json"), "", "bad_json"),
        ("array", Some("application/json"), "[]", "bad_json"),
        ("fraction", Some("application/json"), r#"{"capabilities": {"examples": 1.5}}"#, "bad_json"),
    ] {
        let (status, j) = json(&app, from("203.0.113.7", checkin(ct, body))).await;
        assert_eq!((status, j["error"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{what}: {j}");
    }
    assert_eq!(known_clients(&service).await, 0);
    // A whole number written as a float is an integer to JSON Schema, so it is one here too.
    let body = r#"{"capabilities": {"examples": 386.0}}"#;
    let (status, j) = json(&app, from("203.0.113.7", checkin(Some("application/json; charset=utf-8"), body))).await;
    assert_eq!(status, StatusCode::OK, "{j}");
    for _ in 0..2 {
        assert_eq!(json(&app, from("203.0.113.7", checkin(Some("application/json"), "{}"))).await.0, StatusCode::OK);
    }
    let (status, headers, body) = call(&app, from("203.0.113.7", checkin(Some("application/json"), "{}"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&body));
    let retry: u64 = headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "3 per minute: the next fits within 20 s, got {retry}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"], "rate_limited");
    assert_eq!(known_clients(&service).await, 3, "the refused registration left no client");
    // Another address has its own quota; the registered clients keep checking in.
    let (status, j) = json(&app, from("198.51.100.1", checkin(Some("application/json"), "{}"))).await;
    assert_eq!(status, StatusCode::OK, "{j}");
    let (id, token) = (j["client_id"].as_str().unwrap().to_string(), j["token"].as_str().unwrap().to_string());
    assert_eq!(json(&app, from("198.51.100.1", checkin_as(&id, &token))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_client_over_its_check_in_rate_is_told_when_to_return() {
    let (_, app) = serve(ServerConfig { checkins_per_minute: 2, ..ServerConfig::default() });
    let (_, j) = json(&app, checkin(Some("application/json"), "{}")).await;
    let (id, token) = (j["client_id"].as_str().unwrap().to_string(), j["token"].as_str().unwrap().to_string());
    for _ in 0..2 {
        assert_eq!(json(&app, checkin_as(&id, &token)).await.0, StatusCode::OK);
    }
    let (status, headers, _) = call(&app, checkin_as(&id, &token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    // A wrong token is refused as such, not counted against the client.
    assert_eq!(json(&app, checkin_as(&id, "00")).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn operator_endpoints_need_the_token_or_this_machine() {
    let (_, open) = serve(ServerConfig::default());
    for path in ["/api/clients", "/metrics"] {
        assert_eq!(call(&open, get(path)).await.0, StatusCode::OK, "{path} in process");
        assert_eq!(call(&open, from("127.0.0.1", get(path))).await.0, StatusCode::OK, "{path} from loopback");
        let (status, j) = json(&open, from("203.0.113.7", get(path))).await;
        assert_eq!((status, j["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{path}: {j}");
    }
    let (_, locked) = serve(ServerConfig { operator_token: Some("s3cret".into()), ..ServerConfig::default() });
    for path in ["/api/clients", "/metrics"] {
        let (status, headers, _) = call(&locked, from("127.0.0.1", get(path))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: the token is needed even from loopback");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        let with = |token: &str| {
            Request::get(path).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap()
        };
        assert_eq!(call(&locked, from("203.0.113.7", with("nope"))).await.0, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(call(&locked, from("203.0.113.7", with("s3cret"))).await.0, StatusCode::OK, "{path}");
    }
    // The rest stays public.
    for path in ["/api/status", "/api/rounds", "/api/v1/task", "/api/openapi.json"] {
        assert_eq!(call(&locked, from("203.0.113.7", get(path))).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn clients_come_a_page_at_a_time() {
    let (_, app) = serve(ServerConfig::default());
    for _ in 0..5 {
        json(&app, checkin(Some("application/json"), "{}")).await;
    }
    let mut seen = Vec::new();
    let mut uri = "/api/clients?limit=2".to_string();
    for _ in 0..5 {
        let (status, page) = json(&app, get(&uri)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let clients = page["clients"].as_array().unwrap();
        assert!(clients.len() <= 2);
        seen.extend(clients.iter().map(|c| c["client_id"].as_str().unwrap().to_string()));
        match page["next_after"].as_str() {
            Some(after) => uri = format!("/api/clients?limit=2&after={after}"),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5), "every client once: {seen:?}");
    for bad in ["/api/clients?limit=x", "/api/clients?after=nope"] {
        let (status, j) = json(&app, get(bad)).await;
        assert_eq!((status, j["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{bad}: {j}");
    }
}

#[tokio::test]
async fn old_versions_are_pruned_and_the_store_size_is_reported() {
    let (service, app) =
        serve(ServerConfig { keep_last_versions: 2, keep_every_versions: 3, ..ServerConfig::default() });
    let (_, j) = json(&app, checkin(Some("application/json"), "{}")).await;
    let (id, token) = (j["client_id"].as_str().unwrap().to_string(), j["token"].as_str().unwrap().to_string());
    let (_, _, v0) = call(&app, get("/api/v1/models/0")).await;
    let global = Params::from_safetensors_any(&v0).unwrap();
    let delta = Params::zeros(global.layout().clone()).to_safetensors().unwrap();
    for round in 1..=5u64 {
        let (status, j) = json(&app, checkin_as(&id, &token)).await;
        assert_eq!((status, j["round"].as_u64()), (StatusCode::OK, Some(round)), "{j}");
        let req = Request::post(format!("/api/v1/rounds/{round}/update"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-webfl-client", &id)
            .header("x-webfl-model-version", (round - 1).to_string())
            .header("x-webfl-examples", "10")
            .body(Body::from(delta.clone()))
            .unwrap();
        assert_eq!(json(&app, req).await.0, StatusCode::ACCEPTED);
        service.settled().await;
    }
    // Kept: 0 (always), 3 (every 3rd), 4 and 5 (the last 2).
    for (version, kept) in [(0, true), (1, false), (2, false), (3, true), (4, true), (5, true)] {
        let (status, _, body) = call(&app, get(&format!("/api/v1/models/{version}"))).await;
        let want = if kept { StatusCode::OK } else { StatusCode::NOT_FOUND };
        assert_eq!(status, want, "version {version}: {}", String::from_utf8_lossy(&body));
    }
    let (_, status) = json(&app, get("/api/status")).await;
    let size = status["store_bytes"].as_u64().unwrap();
    assert!(size >= 4 * v0.len() as u64 && size < 5 * v0.len() as u64, "4 versions kept: {size} bytes");
}

#[tokio::test]
async fn pages_carry_security_headers_cors_is_an_allow_list_and_nothing_redirects_off_site() {
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "<!doctype html><title>webfl</title>").unwrap();
    std::fs::write(www.path().join("dashboard.html"), "<!doctype html>").unwrap();
    std::fs::create_dir(www.path().join("pkg")).unwrap();
    std::fs::write(www.path().join("pkg/webfl.js"), "export {}").unwrap();
    let server = ServerConfig { cors_origins: vec!["https://embed.example".into()], ..ServerConfig::default() };
    let service = Service::new(setup(server)).unwrap();
    let app = app_with_pages(service, www.path());

    let (status, headers, _) = call(&app, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(call(&app, get("/pkg/webfl.js")).await.0, StatusCode::OK);
    // `//pkg` once redirected to `//pkg/`, which a browser reads as http://pkg/.
    for path in ["//pkg", "/pkg", "//evil.example", "/pkg/"] {
        let (status, headers, _) = call(&app, get(path)).await;
        assert!(!headers.contains_key(header::LOCATION), "{path} redirects: {status} {headers:?}");
        assert!(!status.is_redirection(), "{path}: {status}");
    }

    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/checkin")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,authorization")
            .body(Body::empty())
            .unwrap()
    };
    let (_, allowed, _) = call(&app, preflight("https://embed.example")).await;
    assert_eq!(allowed[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://embed.example");
    let (_, denied, _) = call(&app, preflight("https://evil.example")).await;
    assert!(!denied.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "{denied:?}");
}

#[tokio::test]
async fn upload_bodies_in_memory_are_bounded_and_wait_for_room() {
    let (service, _) = serve(ServerConfig { upload_buffer_mib: 1, ..ServerConfig::default() });
    let after = |ms| tokio::time::Instant::now() + Duration::from_millis(ms);
    let mut first = service.upload_room();
    first.hold(300 * 1024, after(100)).await.unwrap();
    first.hold(600 * 1024, after(100)).await.unwrap();
    assert_eq!(first.held_kib(), 600, "room grows with the bytes received");
    let mut second = service.upload_room();
    let Err(refused) = second.hold(600 * 1024, after(100)).await else { panic!("1 MiB holds one 600 KiB body") };
    assert_eq!((refused.refusal().http_status(), refused.code()), (503, "overloaded"));
    assert!(refused.retry_after_ms().is_some());
    // A waiting upload gets its room as soon as the one before it has been processed.
    let waiting = tokio::spawn(async move { second.hold(600 * 1024, after(5_000)).await.map(|()| second.held_kib()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "no room yet");
    drop(first);
    assert_eq!(waiting.await.unwrap().unwrap(), 600);
}

#[tokio::test]
async fn uploads_arriving_together_cannot_each_hold_part_of_the_buffer_and_wait_forever() {
    // Two 900 KiB uploads into a 1 MiB buffer, both sending their first 500 KiB before either
    // sends the rest. Were room taken as bytes arrive, each would hold 500 KiB and wait for
    // 400 KiB more that never comes free, until both time out with 503. Taking the declared
    // length up front lets the first read on while the second waits holding nothing.
    let mut task = setup(ServerConfig { upload_buffer_mib: 1, body_timeout_secs: 5.0, ..ServerConfig::default() });
    task.upload_limit_bytes = Some(1000 * 1024);
    let service = Service::new(task).unwrap();
    let app = app(service);
    let chunk = Bytes::from(vec![0u8; 100 * 1024]);
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (_, j) = json(&app, checkin(Some("application/json"), "{}")).await;
        let (id, token) = (j["client_id"].as_str().unwrap().to_string(), j["token"].as_str().unwrap().to_string());
        let (sender, body) = http_body_util::channel::Channel::<Bytes>::new(16);
        let req = Request::post("/api/v1/rounds/1/update")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_LENGTH, (900 * 1024).to_string())
            .header("x-webfl-client", &id)
            .header("x-webfl-model-version", "0")
            .header("x-webfl-examples", "10")
            .body(Body::new(body))
            .unwrap();
        answers.push(tokio::spawn(call_owned(app.clone(), req)));
        senders.push(sender);
    }
    for sender in &mut senders {
        for _ in 0..5 {
            sender.send_data(chunk.clone()).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for mut sender in senders {
        // The second upload's reader may still be waiting for room: send from a task.
        let chunk = chunk.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                if sender.send_data(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
    }
    for answer in answers {
        let (status, body) = tokio::time::timeout(Duration::from_secs(4), answer)
            .await
            .expect("both uploads are read well within the body timeout")
            .unwrap();
        // Zeros are not a valid update for this task: refused on their merits, not for room.
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
        assert!(status.is_client_error(), "{status}: {}", String::from_utf8_lossy(&body));
    }
}

async fn call_owned(app: Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let (status, _, body) = call(&app, req).await;
    (status, body)
}
