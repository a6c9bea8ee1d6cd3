//! Secure aggregation over the HTTP API, in process: participant sessions — the state machine
//! the browser worker drives — check in, download, run the SecAgg+ exchange through
//! `POST /api/v1/rounds/{round}/secagg` and train, all through the router. The committed model
//! moves by the weighted mean of the survivors' updates (up to quantization), a member that
//! vanishes after uploading its masked input does not stop the round, and what the endpoint
//! refuses it refuses with JSON and no change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use webfl_server::api::app;
use webfl_server::service::{Service, TaskSetup};
use webfl_shared::coordinator::{RoundPolicy, SecAggPolicy};
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::participant::{Action, Failure, Randomness, Reply, Session};
use webfl_shared::protocol::{CheckInResponse, DatasetInfo, SecAggAnswer, header as h};
use webfl_shared::strategy::{StrategyConfig, StrategyKind};
use webfl_shared::train::{TrainPlan, TrainStats};

const MEMBERS: usize = 5;

fn setup() -> TaskSetup {
    let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
    let initial = spec.init_params(&mut webfl_shared::rng::derive(0, &[1])).unwrap();
    let test = Dataset {
        sample_shape: vec![4],
        classes: 2,
        class_names: vec!["a".into(), "b".into()],
        features: vec![1.0, 0.5, 0.0, -1.0, -1.0, -0.5, 0.0, 1.0],
        labels: vec![1, 0],
    };
    TaskSetup {
        name: "secure".into(),
        spec,
        plan: TrainPlan::default(),
        policy: RoundPolicy {
            target_reports: MEMBERS,
            over_selection: 1.0,
            min_reports: 3,
            deadline_ms: 120_000,
            retry_after_ms: 50,
            max_examples: 100,
        },
        strategy: StrategyConfig::new(StrategyKind::FedAvg),
        test,
        initial,
        upload_limit_bytes: None,
        dataset: DatasetInfo { name: "toy".into(), sample_shape: vec![4], classes: 2, demo_data_url: None },
        demo_data: None,
        update: Default::default(),
        privacy: None,
        server: Default::default(),
        secure_aggregation: Some(SecAggPolicy { clipping_range: Some(1.0), ..SecAggPolicy::default() }),
    }
}

/// One participant and what it does with its turn.
struct Member {
    session: Session,
    reply: Option<Reply>,
    /// Added to every weight: this member's local update Δ.
    delta: f32,
    examples: usize,
    /// Stops answering once it has sent its masked input (a closed tab).
    vanishes_after_masking: bool,
    masked: bool,
    secagg_answers: Vec<String>,
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn answer<T: serde::de::DeserializeOwned>((status, body): (StatusCode, Bytes)) -> Result<T, Failure> {
    match status {
        StatusCode::OK => Ok(serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))),
        _ => Err(Failure::http(status.as_u16(), &body)),
    }
}

/// Takes one action of `member`'s session through the router; false once it has nothing to do.
async fn turn(app: &Router, member: &mut Member, now_ms: f64) -> bool {
    let Some(reply) = member.reply.take() else { return false };
    let step = member.session.handle(reply, now_ms).expect("the session takes the server's answers");
    member.reply = Some(match step.action {
        Action::CheckIn { request, token } => {
            let mut req = Request::post("/api/v1/checkin").header(header::CONTENT_TYPE, "application/json");
            if let Some(token) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req.body(Body::from(serde_json::to_vec(&request).unwrap())).unwrap();
            Reply::CheckIn(answer::<CheckInResponse>(send(app, req).await))
        }
        Action::Download { model_version } => {
            let req = Request::get(format!("/api/v1/models/{model_version}")).body(Body::empty()).unwrap();
            let (status, body) = send(app, req).await;
            assert_eq!(status, StatusCode::OK);
            Reply::Model(Ok(body.to_vec()))
        }
        Action::Train(job) => {
            let mut local = (*job.global).clone();
            local.as_mut_slice().iter_mut().for_each(|w| *w += member.delta);
            let stats = TrainStats { examples: member.examples, steps: 1, loss: 0.5, accuracy: 0.5 };
            Reply::Trained(Ok((local, stats)))
        }
        Action::SecAgg { round, token, request } => {
            if member.masked && member.vanishes_after_masking {
                return false;
            }
            member.masked |= matches!(request.message, Some(webfl_shared::secagg::ToServer::MaskedInput(_)));
            let req = Request::post(format!("/api/v1/rounds/{round}/secagg"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(h::CLIENT, &request.client_id)
                .body(Body::from(serde_json::to_vec(&request).unwrap()))
                .unwrap();
            let answered = answer::<SecAggAnswer>(send(app, req).await);
            let what = match &answered {
                Ok(a) => serde_json::to_value(a).unwrap()["status"].as_str().unwrap().to_string(),
                Err(f) => format!("{f:?}"),
            };
            member.secagg_answers.push(what);
            Reply::SecAgg(answered)
        }
        Action::Upload(_) => panic!("a member of a secure round uploaded its update"),
        Action::Wait { .. } => Reply::Waited,
        Action::Finish { .. } => return false,
    });
    true
}

fn members(deltas: &[(f32, usize, bool)]) -> Vec<Member> {
    (0..deltas.len())
        .map(|i| {
            let (delta, examples, vanishes_after_masking) = deltas[i];
            Member {
                // No long polls: the test's clock moves only between turns.
                session: Session::new(examples, vec!["cpu".into()], Randomness::Seeded { seed: 9, client: i as u64 })
                    .with_wait_ms(0),
                reply: Some(Reply::Start),
                delta,
                examples,
                vanishes_after_masking,
                masked: false,
                secagg_answers: Vec::new(),
            }
        })
        .collect()
}

/// Runs the members in turns, the clock moving `step_ms` a turn, until version 1 is committed;
/// returns it.
async fn until_committed(app: &Router, service: &Service, members: &mut [Member], clock: &AtomicU64) -> Params {
    for _ in 0..2_000 {
        let now = clock.fetch_add(50, Ordering::SeqCst) as f64;
        for member in members.iter_mut() {
            turn(app, member, now).await;
        }
        service.tick();
        service.settled().await;
        if service.status().model_version == 1 {
            let (status, bytes) = send(app, Request::get("/api/v1/models/1").body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            return Params::from_safetensors_any(&bytes).unwrap();
        }
    }
    panic!("no version after 2,000 turns; answers: {:?}", members.iter().map(|m| &m.secagg_answers).collect::<Vec<_>>())
}

fn service_with_clock() -> (Service, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(1_000));
    let read = clock.clone();
    let service = Service::with_store_and_clock(
        setup(),
        Box::new(webfl_server::store::MemoryStore::default()),
        Arc::new(move || read.load(Ordering::SeqCst)),
    )
    .unwrap();
    (service, clock)
}

#[tokio::test]
async fn a_secure_round_commits_the_weighted_mean_of_its_members_updates() {
    let (service, clock) = service_with_clock();
    let app = app(service.clone());
    let (_, v0) = send(&app, Request::get("/api/v1/models/0").body(Body::empty()).unwrap()).await;
    let global = Params::from_safetensors_any(&v0).unwrap();
    // Weighted by examples (at most 100): (0.1·20 + 0.2·40 − 0.1·40 + 0.3·100 + 0.0·100) / 300.
    let mut members =
        members(&[(0.1, 20, false), (0.2, 40, false), (-0.1, 40, false), (0.3, 100, false), (0.0, 100, false)]);
    let v1 = until_committed(&app, &service, &mut members, &clock).await;
    let want = (0.1 * 20.0 + 0.2 * 40.0 - 0.1 * 40.0 + 0.3 * 100.0) / 300.0;
    let moved: Vec<f32> = v1.as_slice().iter().zip(global.as_slice()).map(|(a, b)| a - b).collect();
    // Quantization: L = ⌊2^32 / 5⌋ levels over [−1, 1]; the error is far below 1e-5.
    assert!(moved.iter().all(|m| (m - want).abs() < 1e-5), "moved by {:?}, want {want}", &moved[..4]);
    for m in &members {
        assert!(m.secagg_answers.contains(&"setup".to_string()), "{:?}", m.secagg_answers);
        assert_eq!(m.secagg_answers.last().map(String::as_str), Some("done"), "{:?}", m.secagg_answers);
    }
    let status = service.status();
    assert_eq!((status.model_version, status.rounds_completed), (1, 1));
}

#[tokio::test]
async fn a_member_that_vanishes_after_masking_does_not_stop_the_round() {
    let (service, clock) = service_with_clock();
    let app = app(service.clone());
    let (_, v0) = send(&app, Request::get("/api/v1/models/0").body(Body::empty()).unwrap()).await;
    let global = Params::from_safetensors_any(&v0).unwrap();
    let mut members =
        members(&[(0.1, 50, false), (0.2, 50, true), (0.3, 50, false), (0.1, 50, true), (0.5, 50, false)]);
    let v1 = until_committed(&app, &service, &mut members, &clock).await;
    // The vanished members' masked inputs are in the sum: their shares came from the others.
    let want = (0.1 + 0.2 + 0.3 + 0.1 + 0.5) / 5.0;
    let moved = v1.as_slice()[0] - global.as_slice()[0];
    assert!((moved - want).abs() < 1e-5, "moved by {moved}, want {want}");
}

#[tokio::test]
async fn what_the_secure_endpoint_refuses_it_refuses_with_json() {
    let (service, _) = service_with_clock();
    let app = app(service.clone());
    let registered: Value = {
        let req = Request::post("/api/v1/checkin")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        serde_json::from_slice(&send(&app, req).await.1).unwrap()
    };
    assert_eq!(registered["status"], "assigned", "{registered}");
    assert!(registered["secure_aggregation"]["max_examples"].is_u64(), "{registered}");
    let (id, token) = (registered["client_id"].as_str().unwrap(), registered["token"].as_str().unwrap());
    let round = registered["round"].as_u64().unwrap();
    let step = |client: &str, token: &str, content_type: &str, body: String| {
        Request::post(format!("/api/v1/rounds/{round}/secagg"))
            .header(header::CONTENT_TYPE, content_type)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(h::CLIENT, client)
            .body(Body::from(body))
            .unwrap()
    };
    let poll = format!(r#"{{"client_id": "{id}"}}"#);
    for (what, req, want, code) in [
        ("wrong token", step(id, "00", "application/json", poll.clone()), 403, "forbidden"),
        ("stranger", step("nobody", token, "application/json", poll.clone()), 401, "unauthorized"),
        ("text", step(id, token, "text/plain", poll.clone()), 400, "bad_content_type"),
        ("array", step(id, token, "application/json", "[]".into()), 400, "bad_json"),
        ("other id", step(id, token, "application/json", r#"{"client_id": "x"}"#.into()), 400, "bad_request"),
        (
            "keys before setup",
            step(
                id,
                token,
                "application/json",
                format!(
                    r#"{{"client_id": "{id}", "message": {{"stage": "advertise_keys", "round": {round}, "sealing_key": "", "mask_key": ""}}}}"#
                ),
            ),
            409,
            "cohort_not_fixed",
        ),
    ] {
        let (status, body) = send(&app, req).await;
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((status.as_u16(), json["error"].as_str()), (want, Some(code)), "{what}: {json}");
    }
    // Polling before the cohort is fixed is a wait; the round is as it was.
    let (status, body) = send(&app, step(id, token, "application/json", poll)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["status"], "wait");
    assert_eq!(service.status().open_round, Some(round));
}
