use super::*;
use crate::codec::Compression;
use crate::model::ModelSpec;
use crate::pipeline::UpdateSpec;
use crate::protocol::WaitReason;

fn spec() -> ModelSpec {
    ModelSpec::builtin("2nn", &[4], 2).unwrap()
}

fn terms(update: UpdateSpec) -> AssignmentTerms {
    AssignmentTerms {
        plan: TrainPlan { epochs: 1, batch_size: 4, lr: 0.1, ..TrainPlan::default() },
        model: spec(),
        upload_limit_bytes: 1 << 20,
        update,
        secure_aggregation: None,
    }
}

fn assigned(round: u64, version: u64, update: UpdateSpec) -> Reply {
    Reply::CheckIn(Ok(CheckInResponse::Assigned {
        client_id: "c1".into(),
        token: "t1".into(),
        round,
        model_version: version,
        deadline_ms_from_now: 60_000,
        terms: terms(update),
    }))
}

fn global() -> Params {
    spec().init_params(&mut rng::stream(0, Stream::Init, &[])).unwrap()
}

/// A "trained" model: the global one moved by a fixed, uneven amount.
fn local_from(global: &Params, round: u64) -> Params {
    let mut local = global.clone();
    for (i, w) in local.as_mut_slice().iter_mut().enumerate() {
        *w += ((i as f32 * 0.37 + round as f32).sin()) * 0.05;
    }
    local
}

fn stats() -> TrainStats {
    TrainStats { examples: 40, steps: 10, loss: 0.5, accuracy: 0.75 }
}

fn seeded() -> Session {
    Session::new(40, vec!["cpu".into()], Randomness::Seeded { seed: 7, client: 3 })
}

/// Drives one whole round; returns the upload and the notices of the last step.
fn one_round(s: &mut Session, round: u64, version: u64, update: UpdateSpec, download: bool) -> UploadRequest {
    let step = s.handle(assigned(round, version, update), 10.0).unwrap();
    let step = if download {
        let Action::Download { model_version } = step.action else { panic!("expected a download") };
        assert_eq!(model_version, version);
        s.handle(Reply::Model(Ok(global().to_safetensors().unwrap())), 20.0).unwrap()
    } else {
        step
    };
    let Action::Train(job) = step.action else { panic!("expected training") };
    assert_eq!((job.round, job.plan.batch_size), (round, 4));
    let step = s.handle(Reply::Trained(Ok((local_from(&job.global, round), stats()))), 50.0).unwrap();
    let Action::Upload(upload) = step.action else { panic!("expected an upload") };
    upload
}

#[test]
fn a_round_goes_check_in_download_train_upload_and_checks_in_again() {
    let mut s = seeded();
    let step = s.handle(Reply::Start, 0.0).unwrap();
    let Action::CheckIn { request, token } = step.action else { panic!("expected a check-in") };
    assert_eq!((request.client_id, token, request.wait_ms), (None, None, Some(MAX_CHECK_IN_WAIT_MS)));
    assert_eq!(request.capabilities.examples, Some(40));

    let upload = one_round(&mut s, 5, 2, UpdateSpec::default(), true);
    assert_eq!((upload.round, upload.model_version, upload.examples), (5, 2, 40));
    assert_eq!((upload.client_id.as_str(), upload.token.as_str()), ("c1", "t1"));
    assert_eq!(upload.content_type, UPDATE_CONTENT_TYPE);
    // The body is exactly Δ = local − global in the pipeline's encoding.
    let delta =
        pipeline::decode(&bytes::Bytes::from(upload.body.clone()), global().layout().clone(), &UpdateSpec::default())
            .unwrap()
            .to_dense();
    assert_eq!(delta.as_slice(), local_from(&global(), 5).delta_from(&global()).unwrap().as_slice());

    let step = s.handle(Reply::Uploaded(Ok(UploadResponse { accepted: true, round_closed: true })), 80.0).unwrap();
    let report = step.notices.iter().find_map(|n| if let Notice::Round(r) = n { Some(r.clone()) } else { None });
    let report = report.expect("a round report");
    assert_eq!(
        (report.round, report.bytes_up, report.bytes_down),
        (5, upload.body.len(), global().to_safetensors().unwrap().len())
    );
    assert_eq!((report.download_ms, report.train_ms, report.upload_ms), (10.0, 30.0, 30.0));
    assert!(report.round_closed);
    let Action::CheckIn { request, token } = step.action else { panic!("check in again at once") };
    assert_eq!((request.client_id.as_deref(), token.as_deref()), (Some("c1"), Some("t1")));
}

#[test]
fn the_identity_is_announced_once_and_a_cached_model_is_not_downloaded_again() {
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    let step = s.handle(assigned(1, 0, UpdateSpec::default()), 1.0).unwrap();
    assert!(step.notices.contains(&Notice::Identity(Identity { client_id: "c1".into(), token: "t1".into() })));
    let Action::Download { .. } = step.action else { panic!("expected a download") };
    s.handle(Reply::Model(Ok(global().to_safetensors().unwrap())), 2.0).unwrap();
    // The round is retried (e.g. after a lost upload): same version, no second download.
    s.state = State::CheckingIn { sent_at_ms: 3.0, wait_ms: 0 };
    let step = s.handle(assigned(1, 0, UpdateSpec::default()), 4.0).unwrap();
    assert!(!step.notices.iter().any(|n| matches!(n, Notice::Identity(_))));
    assert!(matches!(step.action, Action::Train(_)));
}

#[test]
fn waits_follow_the_server_and_a_long_poll_that_ran_its_course_asks_again() {
    let mut s = seeded().with_wait_ms(1_000);
    s.handle(Reply::Start, 0.0).unwrap();
    let retry = |ms| {
        Reply::CheckIn(Ok(CheckInResponse::Retry {
            client_id: "c1".into(),
            token: "t1".into(),
            retry_after_ms: ms,
            reason: WaitReason::RoundFull,
        }))
    };
    // Answered at once: wait what the server says.
    let step = s.handle(retry(2_000), 5.0).unwrap();
    assert!(matches!(step.action, Action::Wait { ms: 2_000 }));
    assert!(
        step.notices.iter().any(|n| matches!(n, Notice::Phase { detail, .. } if detail == "not needed this round"))
    );
    // Held for the whole long poll: ask again immediately.
    s.handle(Reply::Waited, 2_005.0).unwrap();
    let step = s.handle(retry(2_000), 3_005.0).unwrap();
    assert!(matches!(step.action, Action::CheckIn { .. }));
}

#[test]
fn an_unknown_client_starts_over_and_transient_failures_back_off() {
    let mut s = seeded();
    s.resume(Identity { client_id: "old".into(), token: "x".into() });
    s.handle(Reply::Start, 0.0).unwrap();
    let step = s.handle(Reply::CheckIn(Err(Failure::http(401, br#"{"error":"unauthorized","message":"who?"}"#))), 1.0);
    assert!(matches!(step.unwrap().action, Action::Wait { .. }));
    assert_eq!(s.identity(), None);
    let step = s.handle(Reply::Waited, 2.0).unwrap();
    let Action::CheckIn { request, .. } = step.action else { panic!() };
    assert_eq!(request.client_id, None);
    let waits: Vec<u64> = (0..3)
        .map(|_| {
            let Action::Wait { ms } = s.handle(Reply::CheckIn(Err(Failure::network("offline"))), 3.0).unwrap().action
            else {
                panic!("expected a back-off")
            };
            s.handle(Reply::Waited, 4.0).unwrap();
            ms
        })
        .collect();
    assert_eq!(waits, vec![1_000, 2_000, 4_000]);
}

#[test]
fn a_lost_upload_is_sent_again_and_a_refused_one_restores_the_residual() {
    let topk = UpdateSpec { compression: Compression::TopK { fraction: 0.1 }, ..UpdateSpec::default() };
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    let upload = one_round(&mut s, 1, 0, topk.clone(), true);
    let step = s.handle(Reply::Uploaded(Err(Failure::network("reset"))), 60.0).unwrap();
    let Action::Upload(again) = step.action else { panic!("the same upload again") };
    assert_eq!(again, upload);
    // Refused: the round closed without it (over-selection). Not an error, and the residual
    // goes back to zero, as if this round's update had never been made.
    let closed = Failure::http(409, br#"{"error":"wrong_round","message":"round 2 is open"}"#);
    let step = s.handle(Reply::Uploaded(Err(closed)), 70.0).unwrap();
    assert!(matches!(step.action, Action::CheckIn { .. }));
    assert!(!step.notices.iter().any(|n| matches!(n, Notice::Problem(_))));
    let residual = ErrorFeedback::from_bytes(&s.residual_bytes().unwrap(), global().len()).unwrap();
    assert_eq!(residual, ErrorFeedback::new(global().len()));
    // Accepted: the residual keeps what top-k did not send.
    one_round(&mut s, 2, 0, topk, false);
    s.handle(Reply::Uploaded(Ok(UploadResponse { accepted: true, round_closed: false })), 90.0).unwrap();
    let residual = ErrorFeedback::from_bytes(&s.residual_bytes().unwrap(), global().len()).unwrap();
    assert_ne!(residual, ErrorFeedback::new(global().len()));
}

#[test]
fn a_rate_limited_client_stays_away_as_long_as_it_is_told() {
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    // A check-in refused with 429 waits the Retry-After, not the 1 s first back-off.
    let limited =
        |secs| Failure::http(429, br#"{"error":"rate_limited","message":"slow down"}"#).with_retry_after(Some(secs));
    let step = s.handle(Reply::CheckIn(Err(limited("7"))), 1.0).unwrap();
    assert!(matches!(step.action, Action::Wait { ms: 7_000 }));
    s.handle(Reply::Waited, 2.0).unwrap();
    // An upload refused for load is not re-sent at once: the client backs off and its residual
    // is as if the update had never been made.
    let topk = UpdateSpec { compression: Compression::TopK { fraction: 0.1 }, ..UpdateSpec::default() };
    one_round(&mut s, 1, 0, topk, true);
    let shed = Failure::http(503, b"").with_retry_after(Some("3"));
    let step = s.handle(Reply::Uploaded(Err(shed)), 60.0).unwrap();
    let Action::Wait { ms } = step.action else { panic!("a back-off, not a re-send") };
    assert!(ms >= 3_000, "{ms}");
    let residual = ErrorFeedback::from_bytes(&s.residual_bytes().unwrap(), global().len()).unwrap();
    assert_eq!(residual, ErrorFeedback::new(global().len()));
}

#[test]
fn data_that_does_not_fit_stops_the_client_and_divergence_does_not() {
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    s.handle(assigned(1, 0, UpdateSpec::default()), 1.0).unwrap();
    s.handle(Reply::Model(Ok(global().to_safetensors().unwrap())), 2.0).unwrap();
    let step = s.handle(Reply::Trained(Err(TrainError::Diverged { step: 3 })), 3.0).unwrap();
    assert!(matches!(step.action, Action::Wait { .. }));
    s.handle(Reply::Waited, 4.0).unwrap();
    s.handle(assigned(1, 0, UpdateSpec::default()), 5.0).unwrap();
    let err = s.handle(Reply::Trained(Err(TrainError::InputMismatch { model: 4, data: 5 })), 6.0).err().unwrap();
    assert!(matches!(err, SessionError::Data(_)), "{err}");
}

#[test]
fn a_model_that_does_not_fit_the_task_is_a_protocol_error() {
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    s.handle(assigned(1, 0, UpdateSpec::default()), 1.0).unwrap();
    let other = ModelSpec::builtin("2nn", &[5], 2).unwrap().init_params(&mut rng::derive(0, &[])).unwrap();
    let err = s.handle(Reply::Model(Ok(other.to_safetensors().unwrap())), 2.0).err().unwrap();
    assert!(matches!(err, SessionError::Protocol(_)), "{err}");
}

#[test]
fn a_done_task_finishes_the_session() {
    let mut s = seeded();
    s.handle(Reply::Start, 0.0).unwrap();
    let done = CheckInResponse::Done { client_id: "c".into(), token: "t".into(), reason: "budget spent".into() };
    let step = s.handle(Reply::CheckIn(Ok(done)), 1.0).unwrap();
    assert!(matches!(step.action, Action::Finish { reason } if reason == "budget spent"));
}

/// The golden bytes: the same on every platform (checked natively here and in the wasm test
/// worker by `client/tests/worker.rs`), so the browser and `webfl simulate` upload exactly the
/// same update for the same seed, model and local result.
#[test]
fn golden_uploads_have_the_pinned_digest() {
    assert_eq!(super::super::golden_upload_digest(), super::super::GOLDEN_UPLOAD_DIGEST);
}
