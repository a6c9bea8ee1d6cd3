//! The client's side of a secure round, in order, against the real SecAgg+ server machine (the
//! cohort's two other members are bare SecAgg+ clients).

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::super::*;
use crate::model::ModelSpec;
use crate::pipeline::UpdateSpec;
use crate::protocol::{SecAggDone, SecAggTerms};
use crate::secagg::{SecAggClient, SecAggConfig, SecAggServer, StageTimeouts, ToClient, ToServer};

fn spec() -> ModelSpec {
    ModelSpec::builtin("2nn", &[4], 2).unwrap()
}

fn global() -> Params {
    spec().init_params(&mut rng::stream(0, Stream::Init, &[])).unwrap()
}

fn assigned(round: u64) -> Reply {
    Reply::CheckIn(Ok(CheckInResponse::Assigned {
        client_id: "c1".into(),
        token: "t1".into(),
        round,
        model_version: 0,
        deadline_ms_from_now: 60_000,
        terms: AssignmentTerms {
            plan: TrainPlan { epochs: 1, batch_size: 4, lr: 0.1, ..TrainPlan::default() },
            model: spec(),
            upload_limit_bytes: 1 << 20,
            update: UpdateSpec { clip: Some(0.5), ..UpdateSpec::default() },
            secure_aggregation: Some(SecAggTerms { max_examples: 100 }),
        },
    }))
}

/// The session (not holding its polls) up to its first secure-aggregation poll of round 3.
fn joined() -> (Session, Step) {
    let mut s = Session::new(40, vec!["cpu".into()], Randomness::Seeded { seed: 7, client: 0 }).with_wait_ms(0);
    s.handle(Reply::Start, 0.0).unwrap();
    let step = s.handle(assigned(3), 1.0).unwrap();
    assert!(matches!(step.action, Action::Download { model_version: 0 }));
    let step = s.handle(Reply::Model(Ok(global().to_safetensors().unwrap())), 2.0).unwrap();
    (s, step)
}

fn request(action: Action) -> SecAggRequest {
    match action {
        Action::SecAgg { round: 3, token, request } => {
            assert_eq!((token.as_str(), request.client_id.as_str()), ("t1", "c1"));
            request
        }
        _ => panic!("expected a secure-aggregation request"),
    }
}

fn answer(a: SecAggAnswer) -> Reply {
    Reply::SecAgg(Ok(a))
}

#[test]
fn a_secure_round_goes_setup_keys_shares_train_mask_unmask_done() {
    let (mut s, step) = joined();
    assert!(step.notices.iter().any(|n| matches!(n, Notice::Phase { phase: Phase::SecureAggregation, .. })));
    assert_eq!(request(step.action).message, None, "the first request asks for the setup");
    // Not fixed yet: wait what the server says, then ask again.
    let step = s.handle(answer(SecAggAnswer::Wait { retry_after_ms: 500 }), 3.0).unwrap();
    assert!(matches!(step.action, Action::Wait { ms: 500 }));
    assert_eq!(request(s.handle(Reply::Waited, 503.0).unwrap().action).message, None);

    let dim = global().len() + 1;
    let config = SecAggConfig::recommended(3, 3, dim, 3);
    let mut server = SecAggServer::new(config.clone(), StageTimeouts::default(), 0).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut others: Vec<SecAggClient> = (1..3)
        .map(|id| {
            let (client, keys) = SecAggClient::new(config.clone(), id, &mut rng).unwrap();
            server.handle(id, ToServer::AdvertiseKeys(keys), 0).unwrap();
            client
        })
        .collect();
    let step = s.handle(answer(SecAggAnswer::Setup { config, index: 0 }), 504.0).unwrap();
    let Some(keys @ ToServer::AdvertiseKeys(_)) = request(step.action).message else { panic!("keys first") };
    server.handle(0, keys, 0).unwrap();

    let to_session = |server: &SecAggServer| answer(SecAggAnswer::Message(server.message_for(0).unwrap()));
    let step = s.handle(to_session(&server), 505.0).unwrap();
    let Some(shares @ ToServer::ShareKeys(_)) = request(step.action).message else { panic!("shares next") };
    server.handle(0, shares, 0).unwrap();
    for (id, other) in (1..).zip(&mut others) {
        let Some(ToClient::ShareKeys(keys)) = server.message_for(id) else { panic!() };
        server.handle(id, ToServer::ShareKeys(other.share_keys(&keys, &mut rng).unwrap()), 0).unwrap();
    }

    // The incoming shares start local training, of round 3's job.
    let step = s.handle(to_session(&server), 506.0).unwrap();
    let Action::Train(job) = step.action else { panic!("training comes with the shares") };
    assert_eq!(job.round, 3);
    let mut local = (*job.global).clone();
    local.as_mut_slice().iter_mut().enumerate().for_each(|(i, w)| *w += if i % 2 == 0 { 0.01 } else { -0.02 });
    let stats = TrainStats { examples: 40, steps: 10, loss: 0.5, accuracy: 0.75 };
    let step = s.handle(Reply::Trained(Ok((local.clone(), stats))), 600.0).unwrap();
    let Some(masked @ ToServer::MaskedInput(_)) = request(step.action).message else { panic!("the masked update") };
    server.handle(0, masked, 0).unwrap();
    for (id, other) in (1..).zip(&mut others) {
        let Some(ToClient::MaskedInput(shares)) = server.message_for(id) else { panic!() };
        let zero = vec![0.0; dim - 1].into_iter().chain([0.5]).collect::<Vec<f32>>();
        server.handle(id, ToServer::MaskedInput(other.mask_input(&shares, &zero, &mut rng).unwrap()), 0).unwrap();
    }
    // Taken: the round's report is told then, and the session polls for the unmask request.
    let step = s.handle(answer(SecAggAnswer::Wait { retry_after_ms: 100 }), 610.0).unwrap();
    let report = step.notices.iter().find_map(|n| if let Notice::Round(r) = n { Some(r.clone()) } else { None });
    let report = report.expect("a round report once the masked update is taken");
    assert_eq!((report.round, report.examples, report.train_ms, report.upload_ms), (3, 40, 94.0, 10.0));
    assert!(report.bytes_up > 4 * dim);
    assert!(matches!(step.action, Action::Wait { ms: 100 }));
    assert_eq!(request(s.handle(Reply::Waited, 710.0).unwrap().action).message, None);

    let step = s.handle(to_session(&server), 711.0).unwrap();
    let Some(unmask @ ToServer::Unmask(_)) = request(step.action).message else { panic!("shares to unmask") };
    server.handle(0, unmask, 0).unwrap();
    for (id, other) in (1..).zip(&mut others) {
        let Some(ToClient::Unmask(r)) = server.message_for(id) else { panic!() };
        server.handle(id, ToServer::Unmask(other.unmask(&r).unwrap()), 0).unwrap();
    }
    // The sum holds the session's clipped update weighted by 40/100, and its weight.
    let sum = server.outcome().unwrap().unwrap().clone();
    let mut delta = local.delta_from(&global()).unwrap();
    pipeline::clip_l2(delta.as_mut_slice(), 0.5);
    let values = sum.values();
    assert!((values[dim - 1] - (0.4 + 0.5 + 0.5)).abs() < 1e-5, "{}", values[dim - 1]);
    for (got, want) in values.iter().zip(delta.as_slice()) {
        assert!((got - 0.4 * want).abs() < 1e-5, "{got} vs {}", 0.4 * want);
    }

    let step = s.handle(answer(SecAggAnswer::Done { reason: SecAggDone::Contributed }), 712.0).unwrap();
    assert!(matches!(step.action, Action::CheckIn { .. }), "done: check in for the next round");
}

#[test]
fn what_the_secagg_client_cannot_take_loses_the_round_not_the_session() {
    // A setup for another model size.
    let (mut s, _) = joined();
    let wrong = SecAggConfig::recommended(3, 3, 5, 3);
    let step = s.handle(answer(SecAggAnswer::Setup { config: wrong, index: 0 }), 3.0).unwrap();
    assert!(step.notices.iter().any(|n| matches!(n, Notice::Problem(_))));
    assert!(matches!(step.action, Action::Wait { .. }));
    assert!(matches!(s.handle(Reply::Waited, 4.0).unwrap().action, Action::CheckIn { .. }));

    // A stage's message before the setup, and one the SecAgg+ client refuses.
    let (mut s, _) = joined();
    let early = crate::secagg::NeighbourKeys { round: 3, neighbours: vec![] };
    let step = s.handle(answer(SecAggAnswer::Message(ToClient::ShareKeys(early.clone()))), 3.0).unwrap();
    assert!(step.notices.iter().any(|n| matches!(n, Notice::Problem(p) if p.contains("before"))));
    let (mut s, _) = joined();
    let config = SecAggConfig::recommended(3, 5, global().len() + 1, 3);
    s.handle(answer(SecAggAnswer::Setup { config, index: 0 }), 3.0).unwrap();
    // Too few neighbours' keys to share with: the SecAgg+ client refuses.
    let step = s.handle(answer(SecAggAnswer::Message(ToClient::ShareKeys(early))), 4.0).unwrap();
    assert!(step.notices.iter().any(|n| matches!(n, Notice::Problem(p) if p.contains("neighbourhood"))));
    assert!(matches!(step.action, Action::Wait { .. }));

    // The round moved on (409): check in at once; a lost request is sent again.
    let (mut s, step) = joined();
    let sent = request(step.action);
    let step = s.handle(Reply::SecAgg(Err(Failure::network("reset"))), 3.0).unwrap();
    let Action::Wait { .. } = step.action else { panic!("a short wait, then the same request") };
    assert_eq!(request(s.handle(Reply::Waited, 1_003.0).unwrap().action), sent);
    let moved = Failure::http(409, br#"{"error":"wrong_round","message":"round 4 is open"}"#);
    assert!(matches!(s.handle(Reply::SecAgg(Err(moved)), 1_004.0).unwrap().action, Action::CheckIn { .. }));
}
