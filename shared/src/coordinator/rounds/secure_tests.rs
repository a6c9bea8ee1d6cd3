//! Secure-aggregation rounds: members are driven by hand with the real SecAgg+ client machines.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::codec::Compression;
use crate::coordinator::SecAggPolicy;
use crate::params::{Layout, TensorSpec};
use crate::pipeline::UpdateSpec;
use crate::protocol::{SecAggDone, SecAggRecord};
use crate::secagg::{SecAggClient, ServerError, Stage, ToClient};
use crate::strategy::{CentralDpConfig, StrategyConfig, StrategyKind};
use crate::update::Update;

fn layout() -> Arc<Layout> {
    Arc::new(Layout::new(vec![TensorSpec::new("w", vec![2])]).unwrap())
}

fn p(v: [f32; 2]) -> Params {
    Params::from_vec(layout(), v.to_vec()).unwrap()
}

/// Four selected per round, at least two reports, a 1 s deadline.
fn policy() -> RoundPolicy {
    RoundPolicy {
        target_reports: 4,
        over_selection: 1.0,
        min_reports: 2,
        deadline_ms: 1000,
        retry_after_ms: 250,
        max_examples: 100,
    }
}

/// The cohort is fixed 100 ms after the round opens; each key stage and unmasking get 100 ms.
fn secure_policy() -> SecAggPolicy {
    SecAggPolicy { cohort_secs: 0.1, keys_secs: 0.1, unmask_secs: 0.1, ..SecAggPolicy::default() }
}

fn secure(round: RoundPolicy) -> SyncCoordinator {
    let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
    let c = SyncCoordinator::new(round, strategy, p([0.0, 0.0]), Resumed::default(), None).unwrap();
    c.with_secure_aggregation(secure_policy(), &UpdateSpec::default()).unwrap()
}

fn wait() -> SecAggAnswer {
    SecAggAnswer::Wait { retry_after_ms: 250 }
}

/// A cohort member: its update, its example count, and the stage whose message it never sends.
struct Member {
    name: &'static str,
    delta: [f32; 2],
    examples: u64,
    gone_at: Option<Stage>,
    client: Option<SecAggClient>,
    done: Option<SecAggDone>,
    /// Whether it was ever asked to unmask.
    asked_to_unmask: bool,
}

fn member(name: &'static str, delta: [f32; 2], examples: u64) -> Member {
    Member { name, delta, examples, gone_at: None, client: None, done: None, asked_to_unmask: false }
}

fn gone(mut m: Member, at: Stage) -> Member {
    m.gone_at = Some(at);
    m
}

/// Runs round `round` to its end: every member polls and answers, a member gone at a stage
/// stops there, and when nobody can move the clock jumps to the next deadline.
fn run(c: &mut SyncCoordinator, round: u64, members: &mut [Member], now: &mut u64) -> Settled {
    let mut rng = ChaCha20Rng::seed_from_u64(round);
    let weight = |m: &Member| m.examples as f32 / 100.0;
    for _ in 0..1000 {
        let mut moved = false;
        for m in members.iter_mut().filter(|m| m.done.is_none()) {
            let (answer, settled) = c.secagg(m.name, round, None, *now).unwrap();
            if let Some(settled) = settled {
                return settled;
            }
            let stage = match &answer {
                SecAggAnswer::Setup { .. } => Stage::AdvertiseKeys,
                SecAggAnswer::Message(message) => message.stage(),
                SecAggAnswer::Wait { .. } => continue,
                SecAggAnswer::Done { reason } => {
                    m.done = Some(*reason);
                    continue;
                }
            };
            m.asked_to_unmask |= stage == Stage::Unmask;
            if m.gone_at == Some(stage) {
                m.done = Some(SecAggDone::Dropped);
                continue;
            }
            let reply = match answer {
                SecAggAnswer::Setup { config, index } => {
                    let (client, keys) = SecAggClient::new(config, index, &mut rng).unwrap();
                    m.client = Some(client);
                    ToServer::AdvertiseKeys(keys)
                }
                SecAggAnswer::Message(ToClient::ShareKeys(keys)) => {
                    ToServer::ShareKeys(m.client.as_mut().unwrap().share_keys(&keys, &mut rng).unwrap())
                }
                SecAggAnswer::Message(ToClient::MaskedInput(shares)) => {
                    let w = weight(m);
                    let input = [m.delta[0] * w, m.delta[1] * w, w];
                    ToServer::MaskedInput(m.client.as_mut().unwrap().mask_input(&shares, &input, &mut rng).unwrap())
                }
                SecAggAnswer::Message(ToClient::Unmask(request)) => {
                    ToServer::Unmask(m.client.as_mut().unwrap().unmask(&request).unwrap())
                }
                other => panic!("{other:?}"),
            };
            moved = true;
            let (answer, settled) = c.secagg(m.name, round, Some(reply), *now).unwrap();
            if let Some(settled) = settled {
                return settled;
            }
            if let SecAggAnswer::Done { reason } = answer {
                m.done = Some(reason);
            }
        }
        if !moved {
            *now = c.next_deadline_ms().expect("an open round has a deadline");
            if let Some(settled) = c.tick(*now).unwrap() {
                return settled;
            }
        }
    }
    panic!("the round never settled")
}

fn check_in_all(c: &mut SyncCoordinator, members: &[Member], now: u64) {
    for m in members {
        assert!(matches!(c.check_in(m.name, now), CheckIn::Assigned { .. }), "{} not assigned", m.name);
    }
}

/// The example-weighted mean of the members' updates whose masked input made it in.
fn fedavg(members: &[&Member]) -> [f64; 2] {
    let total: f64 = members.iter().map(|m| m.examples as f64).sum();
    let mean = |i: usize| members.iter().map(|m| m.examples as f64 * f64::from(m.delta[i])).sum::<f64>() / total;
    [mean(0), mean(1)]
}

fn closed(settled: Settled) -> Box<PendingCommit> {
    match settled {
        Settled::Closed(pending) => pending,
        other => panic!("expected a closed round, got {other:?}"),
    }
}

fn assert_near(got: &[f32], want: [f64; 2]) {
    for (g, w) in got.iter().zip(want) {
        // Quantization steps are 16 / ⌊(2^32 − 1) / 4⌋ ≈ 1.5e-8 per value, over weights ~0.5.
        assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

fn four() -> Vec<Member> {
    vec![
        member("a", [1.0, -2.0], 10),
        member("b", [0.5, 0.25], 30),
        member("c", [-1.5, 1.0], 20),
        member("d", [2.0, 0.0], 40),
    ]
}

#[test]
fn the_cohort_is_fixed_when_the_selection_fills_in_selection_order() {
    let mut c = secure(policy());
    let members = four();
    check_in_all(&mut c, &members[..3], 0);
    assert_eq!(c.secagg("a", 1, None, 1).unwrap().0, wait(), "the cohort is not fixed with 3 of 4");
    assert_eq!(c.next_deadline_ms(), Some(100));
    let before = c.revision();
    check_in_all(&mut c, &members[3..], 5);
    assert!(c.revision() > before, "fixing the cohort wakes waiting clients");
    assert_eq!(c.next_deadline_ms(), Some(105), "the advertise stage's deadline");
    for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let (SecAggAnswer::Setup { config, index }, None) = c.secagg(name, 1, None, 6).unwrap() else {
            panic!("expected a setup")
        };
        assert_eq!((index, config.clients, config.round, config.dim), (i as u32, 4, 1, 3));
        assert_eq!((config.neighbours, config.threshold, config.graph_seed), (3, 3, 1));
        assert_eq!((config.clipping_range, config.quantization_levels), (8.0, u32::MAX / 4));
    }
    // The selection is closed: a fifth client waits for the next round.
    assert_eq!(c.check_in("e", 7), CheckIn::Wait { ms: 250, reason: WaitReason::RoundFull });
    assert_eq!(c.secagg("e", 1, None, 7).unwrap_err(), RoundError::NotSelected(1));
}

#[test]
fn the_cohort_is_fixed_at_cohort_secs_with_whoever_was_selected() {
    let mut c = secure(policy());
    let mut members = four();
    members.truncate(3);
    check_in_all(&mut c, &members, 0);
    assert!(c.tick(99).unwrap().is_none());
    assert_eq!(c.secagg("a", 1, None, 99).unwrap().0, wait());
    assert!(c.tick(100).unwrap().is_none());
    let (SecAggAnswer::Setup { config, .. }, _) = c.secagg("b", 1, None, 101).unwrap() else { panic!("no setup") };
    assert_eq!((config.clients, config.neighbours, config.threshold), (3, 2, 2));
    // A client arriving after the cohort was fixed is not taken, though there is room.
    assert_eq!(c.check_in("d", 102), CheckIn::Wait { ms: 250, reason: WaitReason::RoundFull });
    let mut now = 102;
    let pending = closed(run(&mut c, 1, &mut members, &mut now));
    assert_eq!((pending.reports, pending.selected, pending.closed_by_deadline), (3, 3, false));
    let all: Vec<&Member> = members.iter().collect();
    assert_near(pending.params.as_slice(), fedavg(&all));
}

#[test]
fn a_selection_too_small_for_a_cohort_is_abandoned_and_the_next_round_opens() {
    let mut c = secure(RoundPolicy { min_reports: 3, ..policy() });
    c.check_in("a", 0);
    c.check_in("b", 0);
    let settled = c.tick(100).unwrap();
    let Some(Settled::Abandoned { round: 1, selected: 2, why, secagg: Some(record), .. }) = settled else {
        panic!("expected an abandoned round, got {settled:?}")
    };
    assert_eq!(why, AbandonReason::CohortTooSmall { selected: 2, need: 3 });
    assert_eq!(record, SecAggRecord::default());
    assert!(matches!(c.check_in("a", 101), CheckIn::Assigned { round: 2, .. }));
}

#[test]
fn a_plain_upload_is_refused_in_a_secure_round_and_secagg_in_a_plain_one() {
    let mut c = secure(policy());
    c.check_in("a", 0);
    let update = Update::dense(p([1.0, 1.0])).unwrap();
    let upload = Upload { round: 1, model_version: 0, update: &update, examples: 1 };
    assert_eq!(c.submit("a", upload, 1).unwrap_err(), RoundError::SecureRound(1));
    assert_eq!(c.strategy.count(), 0);

    let strategy = StrategyConfig::new(StrategyKind::FedAvg).build().unwrap();
    let mut plain = SyncCoordinator::new(policy(), strategy, p([0.0, 0.0]), Resumed::default(), None).unwrap();
    plain.check_in("a", 0);
    assert_eq!(plain.secagg("a", 1, None, 1).unwrap_err(), RoundError::NotSecureRound(1));
}

#[test]
fn refusals_change_nothing() {
    let mut c = secure(policy());
    let mut members = four();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    check_in_all(&mut c, &members[..3], 0);
    // Before the cohort is fixed, no message is expected.
    let config = crate::secagg::SecAggConfig::recommended(1, 4, 3, 1);
    let (_, keys) = SecAggClient::new(config, 0, &mut rng).unwrap();
    let early = ToServer::AdvertiseKeys(keys.clone());
    assert_eq!(c.secagg("a", 1, Some(early), 1).unwrap_err(), RoundError::CohortNotFixed(1));
    check_in_all(&mut c, &members[3..], 2);
    let (revision, deadline) = (c.revision(), c.next_deadline_ms());
    // Not selected, another round, a message of a later stage, keys for another round.
    assert_eq!(c.secagg("z", 1, None, 3).unwrap_err(), RoundError::NotSelected(1));
    assert_eq!(c.secagg("a", 2, None, 3).unwrap_err(), RoundError::WrongRound { open: 1, got: 2 });
    let later = ToServer::ShareKeys(crate::secagg::ShareKeys { round: 1, shares: vec![] });
    assert_eq!(
        c.secagg("a", 1, Some(later), 3).unwrap_err(),
        RoundError::SecAggRefused(ServerError::OutOfStage { got: Stage::ShareKeys, stage: Stage::AdvertiseKeys })
    );
    let other_round = ToServer::AdvertiseKeys(crate::secagg::AdvertiseKeys { round: 7, ..keys });
    assert_eq!(
        c.secagg("a", 1, Some(other_round), 3).unwrap_err(),
        RoundError::SecAggRefused(ServerError::WrongRound { got: 7, round: 1 })
    );
    assert_eq!((c.revision(), c.next_deadline_ms()), (revision, deadline));
    // None of it counted: the round runs as if it had not happened.
    let mut now = 3;
    let pending = closed(run(&mut c, 1, &mut members, &mut now));
    assert_eq!(pending.secagg, Some(SecAggRecord { cohort: 4, advertised: 4, shared: 4, masked: 4, unmasked: 4 }));
    let all: Vec<&Member> = members.iter().collect();
    assert_near(pending.params.as_slice(), fedavg(&all));
}

/// The closed round's model moves by the FedAvg mean of the four updates (weights 10, 30, 20,
/// 40), to within quantization error, and the strategy saw one update: the sum.
#[test]
fn the_mean_is_the_fedavg_mean_of_the_cohort_and_the_strategy_sees_only_the_sum() {
    let mut c = secure(policy());
    let mut members = four();
    check_in_all(&mut c, &members, 0);
    let mut now = 1;
    let settled = {
        // Step by step, checking the strategy holds nothing until the sum is unmasked.
        let mut settled = None;
        for _ in 0..10 {
            let (answered, s) = step_all(&mut c, &mut members, &mut now);
            if let Some(s) = s {
                settled = Some(s);
                break;
            }
            assert!(answered > 0);
            assert_eq!(c.strategy.count(), 0, "an update reached the strategy before the sum");
        }
        settled.expect("the round settles")
    };
    let pending = closed(settled);
    let all: Vec<&Member> = members.iter().collect();
    assert_eq!(fedavg(&all), [0.75, 0.075]);
    assert_near(pending.params.as_slice(), fedavg(&all));
    assert_eq!((pending.reports, pending.summary.updates, pending.closed_by_deadline), (4, 4, false));
    assert!(members.iter().all(|m| m.done == Some(SecAggDone::Contributed)));
    // Everyone is done: check-ins wait for the next round, which opens once this one is committed.
    assert_eq!(c.check_in("a", now), CheckIn::Wait { ms: 250, reason: WaitReason::Committing });
    c.commit(*pending).unwrap();
    assert!(matches!(c.check_in("a", now), CheckIn::Assigned { round: 2, model_version: 1, .. }));
}

/// One pass of every member: poll, answer what is asked. Returns how many answered.
fn step_all(c: &mut SyncCoordinator, members: &mut [Member], now: &mut u64) -> (usize, Option<Settled>) {
    let mut rng = ChaCha20Rng::seed_from_u64(*now);
    let mut answered = 0;
    for m in members.iter_mut().filter(|m| m.done.is_none()) {
        *now += 1;
        let (answer, settled) = c.secagg(m.name, 1, None, *now).unwrap();
        if settled.is_some() {
            return (answered, settled);
        }
        let w = m.examples as f32 / 100.0;
        let reply = match answer {
            SecAggAnswer::Setup { config, index } => {
                let (client, keys) = SecAggClient::new(config, index, &mut rng).unwrap();
                m.client = Some(client);
                ToServer::AdvertiseKeys(keys)
            }
            SecAggAnswer::Message(ToClient::ShareKeys(k)) => {
                ToServer::ShareKeys(m.client.as_mut().unwrap().share_keys(&k, &mut rng).unwrap())
            }
            SecAggAnswer::Message(ToClient::MaskedInput(s)) => {
                let input = [m.delta[0] * w, m.delta[1] * w, w];
                ToServer::MaskedInput(m.client.as_mut().unwrap().mask_input(&s, &input, &mut rng).unwrap())
            }
            SecAggAnswer::Message(ToClient::Unmask(r)) => {
                ToServer::Unmask(m.client.as_mut().unwrap().unmask(&r).unwrap())
            }
            SecAggAnswer::Done { reason } => {
                m.done = Some(reason);
                continue;
            }
            SecAggAnswer::Wait { .. } => continue,
        };
        answered += 1;
        let (answer, settled) = c.secagg(m.name, 1, Some(reply), *now).unwrap();
        if let SecAggAnswer::Done { reason } = answer {
            m.done = Some(reason);
        }
        if settled.is_some() {
            return (answered, settled);
        }
    }
    (answered, None)
}

/// One member vanishes at each stage in turn; the round still closes with the FedAvg mean of
/// the members whose masked input is in the sum — including one that vanished after uploading
/// it, whose pairwise masks the server then rebuilds.
#[test]
fn dropouts_at_each_stage_leave_the_mean_of_the_survivors() {
    for stage in [Stage::AdvertiseKeys, Stage::ShareKeys, Stage::MaskedInput, Stage::Unmask] {
        let mut c = secure(policy());
        let mut members = four();
        let last = members.pop().unwrap();
        members.push(gone(last, stage));
        check_in_all(&mut c, &members, 0);
        let mut now = 1;
        let pending = closed(run(&mut c, 1, &mut members, &mut now));
        let in_sum: Vec<&Member> = members.iter().filter(|m| m.gone_at.is_none() || stage == Stage::Unmask).collect();
        assert_near(pending.params.as_slice(), fedavg(&in_sum));
        assert_eq!(pending.reports, in_sum.len(), "{stage:?}");
        assert!(pending.closed_by_deadline, "{stage:?}: a stage waited for its deadline");
        let record = pending.secagg.unwrap();
        let expected = match stage {
            Stage::AdvertiseKeys => SecAggRecord { cohort: 4, advertised: 3, shared: 3, masked: 3, unmasked: 3 },
            Stage::ShareKeys => SecAggRecord { cohort: 4, advertised: 4, shared: 3, masked: 3, unmasked: 3 },
            Stage::MaskedInput => SecAggRecord { cohort: 4, advertised: 4, shared: 4, masked: 3, unmasked: 3 },
            _ => SecAggRecord { cohort: 4, advertised: 4, shared: 4, masked: 4, unmasked: 3 },
        };
        assert_eq!(record, expected, "{stage:?}");
    }
}

/// Over-selection works as in a plain round: with the target's masked inputs in, the stage ends
/// without waiting for the last member, whose late input is turned away and whose masks the
/// server removes from the sum.
#[test]
fn the_masked_input_stage_ends_at_the_target() {
    let mut c = secure(RoundPolicy { target_reports: 3, over_selection: 1.3, ..policy() });
    let mut members = four();
    check_in_all(&mut c, &members, 0);
    let mut now = 1;
    // Everyone answers everything; the last to send its masked input finds the stage over.
    let pending = closed(run(&mut c, 1, &mut members, &mut now));
    assert_eq!(now, 1, "nobody waited for a deadline");
    assert_eq!((pending.reports, pending.selected, pending.closed_by_deadline), (3, 4, false));
    assert_eq!(pending.secagg.map(|s| (s.shared, s.masked, s.unmasked)), Some((4, 3, 3)));
    let dropped: Vec<&Member> = members.iter().filter(|m| m.done == Some(SecAggDone::Dropped)).collect();
    assert_eq!(dropped.len(), 1);
    let in_sum: Vec<&Member> = members.iter().filter(|m| m.done != Some(SecAggDone::Dropped)).collect();
    assert_near(pending.params.as_slice(), fedavg(&in_sum));
}

/// A member that missed a stage is told it dropped, also when its message comes late, and its
/// check-ins wait for the next round (not "your update is in").
#[test]
fn a_member_that_missed_a_stage_is_told_it_dropped() {
    let mut c = secure(policy());
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let members = four();
    check_in_all(&mut c, &members, 0);
    let mut late = None;
    for (i, m) in members.iter().enumerate() {
        let (SecAggAnswer::Setup { config, index }, _) = c.secagg(m.name, 1, None, 1).unwrap() else { panic!() };
        let (_, keys) = SecAggClient::new(config, index, &mut rng).unwrap();
        if i == 3 {
            late = Some(keys);
            continue;
        }
        assert_eq!(c.secagg(m.name, 1, Some(ToServer::AdvertiseKeys(keys)), 2).unwrap().0, wait());
    }
    assert!(c.tick(101).unwrap().is_none(), "three of four advertised: the round goes on");
    assert!(matches!(c.secagg("a", 1, None, 102).unwrap().0, SecAggAnswer::Message(ToClient::ShareKeys(_))));
    let late = Some(ToServer::AdvertiseKeys(late.unwrap()));
    let dropped = SecAggAnswer::Done { reason: SecAggDone::Dropped };
    assert_eq!(c.secagg("d", 1, late, 102).map(|(a, s)| (a, s.is_none())), Ok((dropped.clone(), true)));
    assert_eq!(c.secagg("d", 1, None, 103).map(|(a, s)| (a, s.is_none())), Ok((dropped, true)));
    assert_eq!(c.check_in("d", 104), CheckIn::Wait { ms: 250, reason: WaitReason::RoundFull });
}

#[test]
fn too_few_masked_inputs_for_the_minimum_abandon_before_anyone_unmasks() {
    let mut c = secure(RoundPolicy { min_reports: 4, ..policy() });
    let mut members = four();
    let last = members.pop().unwrap();
    members.push(gone(last, Stage::MaskedInput));
    check_in_all(&mut c, &members, 0);
    let mut now = 1;
    let settled = run(&mut c, 1, &mut members, &mut now);
    let Settled::Abandoned { why: AbandonReason::TooFewReports, secagg: Some(record), .. } = settled else {
        panic!("expected too few reports, got {settled:?}")
    };
    assert_eq!((record.masked, record.unmasked), (3, 0));
    assert!(members.iter().all(|m| !m.asked_to_unmask), "nobody may be asked to reveal anything");
    assert_eq!(c.global().as_slice(), &[0.0, 0.0]);
}

#[test]
fn an_abandoned_secure_round_names_its_stage() {
    let mut c = secure(policy());
    let mut members = four();
    for m in &mut members[2..] {
        m.gone_at = Some(Stage::ShareKeys);
    }
    check_in_all(&mut c, &members, 0);
    let mut now = 1;
    let settled = run(&mut c, 1, &mut members, &mut now);
    let Settled::Abandoned { why, .. } = settled else { panic!("expected an abandoned round, got {settled:?}") };
    let AbandonReason::SecAgg { stage: Stage::ShareKeys, .. } = &why else { panic!("{why:?}") };
    assert!(why.to_string().contains("ShareKeys"), "{why}");
    // The rest learn that the round moved on (409 over HTTP) and check in for the next one.
    assert_eq!(c.secagg("a", 1, None, now).unwrap_err(), RoundError::NoOpenRound);
    assert!(matches!(c.check_in("a", now), CheckIn::Assigned { round: 2, .. }));
}

#[test]
fn the_masked_input_stage_ends_by_the_round_deadline() {
    let mut c = secure(policy());
    let mut members = four();
    for m in &mut members {
        m.gone_at = Some(Stage::MaskedInput);
    }
    check_in_all(&mut c, &members, 0);
    let mut now = 1;
    let settled = run(&mut c, 1, &mut members, &mut now);
    let Settled::Abandoned { why: AbandonReason::SecAgg { stage: Stage::MaskedInput, .. }, .. } = settled else {
        panic!("{settled:?}")
    };
    assert_eq!(now, 1000, "the stage waits until the round's deadline, not its own timeout");
}

#[test]
fn tasks_secure_aggregation_cannot_serve_are_refused_with_the_reason() {
    let strategy = |config: StrategyConfig| config.build().unwrap();
    let fedavg = || StrategyConfig::new(StrategyKind::FedAvg);
    let plain = UpdateSpec::default();
    let refused = |round: &RoundPolicy, secure: &SecAggPolicy, update: &UpdateSpec, s: &Strategy| match secure
        .validate(round, update, s)
    {
        Err(RoundError::BadSecAgg(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (round, ok) = (policy(), secure_policy());
    assert_eq!(ok.validate(&round, &plain, &strategy(fedavg())), Ok(()));
    let topk = UpdateSpec { compression: Compression::TopK { fraction: 0.1 }, ..plain.clone() };
    assert!(refused(&round, &ok, &topk, &strategy(fedavg())).contains("random-k"));
    for kind in [StrategyKind::Median, StrategyKind::TrimmedMean, StrategyKind::Krum, StrategyKind::Bulyan] {
        let why = refused(&round, &ok, &plain, &strategy(StrategyConfig::new(kind)));
        assert!(why.contains("individual updates"), "{kind}: {why}");
    }
    let bounded = StrategyConfig { norm_bound: Some(1.0), ..fedavg() };
    assert!(refused(&round, &ok, &plain, &strategy(bounded)).contains("norm bounding"));
    let dp = CentralDpConfig { clip: 1.0, noise_multiplier: 1.0, expected_clients: 4, adaptive: None };
    let central = StrategyConfig { central_dp: Some(dp.clone()), ..fedavg() };
    assert!(refused(&round, &ok, &plain, &strategy(central)).contains("central DP"));
    let adaptive = CentralDpConfig { adaptive: Some(Default::default()), noise_multiplier: 0.1, ..dp };
    let adaptive = StrategyConfig { central_dp: Some(adaptive), ..fedavg() };
    assert!(refused(&round, &ok, &plain, &strategy(adaptive)).contains("adaptive clipping"));
    // Neighbours and thresholds that some cohort of 2..=4 could not use.
    let ten = RoundPolicy { target_reports: 10, ..policy() };
    let odd = SecAggPolicy { neighbours: Some(3), ..secure_policy() };
    assert!(refused(&ten, &odd, &plain, &strategy(fedavg())).contains("neighbours must be even"), "odd k");
    let minority = SecAggPolicy { neighbours: Some(4), threshold: Some(2), ..secure_policy() };
    assert!(refused(&ten, &minority, &plain, &strategy(fedavg())).contains("majority"));
    let too_high = SecAggPolicy { threshold: Some(5), ..secure_policy() };
    assert!(refused(&round, &too_high, &plain, &strategy(fedavg())).contains("at least 5 clients"));
    let no_time = SecAggPolicy { keys_secs: 0.5, ..secure_policy() };
    assert!(refused(&round, &no_time, &plain, &strategy(fedavg())).contains("no time to train"));
    // And the coordinator itself will not run them.
    let s = strategy(StrategyConfig::new(StrategyKind::Median));
    let c = SyncCoordinator::new(policy(), s, p([0.0, 0.0]), Resumed::default(), None).unwrap();
    assert!(matches!(c.with_secure_aggregation(secure_policy(), &plain), Err(RoundError::BadSecAgg(_))));
}

#[test]
fn clipping_range_and_levels_follow_the_task_and_the_cohort() {
    let s = SecAggPolicy::default();
    assert_eq!(s.clipping_range_for(&UpdateSpec::default()), 8.0);
    let clipped = UpdateSpec { clip: Some(2.0), noise_std: 0.25, ..UpdateSpec::default() };
    assert_eq!(s.clipping_range_for(&clipped), 3.0);
    let config = s.config(5, 100, 10, 3.0);
    assert_eq!((config.neighbours, config.threshold, config.quantization_levels), (14, 8, 42_949_672));
    assert!(u64::from(config.quantization_levels) * 100 < 1 << 32);
    assert_eq!(config.validate(), Ok(()));
    let terms = s.terms(&policy(), StrategyKind::Mean);
    assert_eq!((terms.max_examples, terms.weight(40)), (1, 1.0));
    assert_eq!(s.terms(&policy(), StrategyKind::FedAdam).weight(40), 0.4);
}
