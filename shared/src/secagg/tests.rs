//! Whole-protocol tests: clients and server in process, messages carried by hand or by
//! [`simulate_round`].

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

/// Inputs that sit exactly on the quantization grid of r = 8, L = 2^22 (steps of 2^−18), so
/// stochastic rounding leaves them alone and the expected sum is exact.
fn grid_inputs(clients: u32, dim: usize, rng: &mut impl Rng) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let quantized: Vec<Vec<u32>> =
        (0..clients).map(|_| (0..dim).map(|_| rng.random_range(0..=1u32 << 22)).collect()).collect();
    let inputs = quantized.iter().map(|q| q.iter().map(|&q| q as f32 / 262_144.0 - 8.0).collect()).collect();
    (inputs, quantized)
}

fn expected_sum(quantized: &[Vec<u32>], survivors: &[u32], dim: usize) -> Vec<u32> {
    let mut sum = vec![0u32; dim];
    for &c in survivors {
        sum.iter_mut().zip(&quantized[c as usize]).for_each(|(s, &q)| *s = s.wrapping_add(q));
    }
    sum
}

/// Every client answers every stage before `stage`, nobody drops; the server is then in `stage`.
fn run_until(config: &SecAggConfig, stage: Stage, rng: &mut ChaCha20Rng) -> (SecAggServer, Vec<SecAggClient>) {
    let mut server = SecAggServer::new(config.clone(), StageTimeouts::default(), 0).unwrap();
    let mut clients = Vec::new();
    for id in 0..config.clients {
        let (client, keys) = SecAggClient::new(config.clone(), id, rng).unwrap();
        server.handle(id, ToServer::AdvertiseKeys(keys), 0).unwrap();
        clients.push(client);
    }
    while server.stage() != stage {
        for client in &mut clients {
            let reply = match server.message_for(client.id()) {
                Some(ToClient::ShareKeys(keys)) => ToServer::ShareKeys(client.share_keys(&keys, rng).unwrap()),
                Some(ToClient::MaskedInput(shares)) => {
                    ToServer::MaskedInput(client.mask_input(&shares, &vec![0.5; config.dim], rng).unwrap())
                }
                other => panic!("{other:?} before {stage:?}"),
            };
            server.handle(client.id(), reply, 0).unwrap();
        }
    }
    (server, clients)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn masks_cancel_for_every_dropout_pattern_up_to_the_threshold(
        clients in 5u32..=8,
        dim in 1usize..6,
        drops in proptest::collection::vec(
            prop_oneof![6 => Just(None), 1 => Just(Some(Stage::AdvertiseKeys)), 1 => Just(Some(Stage::ShareKeys)),
                        1 => Just(Some(Stage::MaskedInput)), 1 => Just(Some(Stage::Unmask))], 8),
        seed: u64,
    ) {
        let config = SecAggConfig::recommended(1, clients, dim, seed);
        let drop_at = &drops[..clients as usize];
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (inputs, quantized) = grid_inputs(clients, dim, &mut rng);
        let tolerated = (config.neighbours + 1 - config.threshold) as usize;
        let dropped = drop_at.iter().filter(|d| d.is_some()).count();
        match simulate_round(&config, &inputs, drop_at, &mut rng) {
            Ok(sum) => {
                prop_assert_eq!(sum.quantized(), &expected_sum(&quantized, sum.survivors(), dim)[..]);
                if dropped <= tolerated {
                    let uploaded: Vec<u32> = (0..clients)
                        .filter(|&c| matches!(drop_at[c as usize], None | Some(Stage::Unmask)))
                        .collect();
                    prop_assert_eq!(sum.survivors(), &uploaded[..]);
                }
            }
            Err(SimulationError::Abandoned(_)) => prop_assert!(dropped > tolerated, "{dropped} drops abandoned"),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

#[test]
fn a_hundred_clients_with_ten_percent_dropouts_sum_correctly() {
    let (clients, dim) = (100, 1000);
    let config = SecAggConfig::recommended(7, clients, dim, 99);
    assert_eq!((config.neighbours, config.threshold), (14, 8));
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let (inputs, quantized) = grid_inputs(clients, dim, &mut rng);
    let stages = [Stage::AdvertiseKeys, Stage::ShareKeys, Stage::MaskedInput, Stage::Unmask];
    let mut drop_at = vec![None; clients as usize];
    for (i, stage) in (3..100).step_by(10).zip(stages.iter().cycle()) {
        drop_at[i] = Some(*stage);
    }
    let sum = simulate_round(&config, &inputs, &drop_at, &mut rng).unwrap();
    let uploaded: Vec<u32> =
        (0..clients).filter(|&c| matches!(drop_at[c as usize], None | Some(Stage::Unmask))).collect();
    assert_eq!(sum.survivors(), uploaded);
    assert_eq!(sum.quantized(), expected_sum(&quantized, &uploaded, dim));
    for (i, &value) in sum.values().iter().enumerate() {
        let exact: f64 = uploaded.iter().map(|&c| f64::from(inputs[c as usize][i])).sum();
        assert!((f64::from(value) - exact).abs() < 1e-3, "{value} vs {exact}");
    }
}

#[test]
fn a_curious_server_asking_for_both_shares_of_one_neighbour_is_refused() {
    let config = SecAggConfig::recommended(2, 5, 4, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (_, mut clients) = run_until(&config, Stage::Unmask, &mut rng);
    let ask = |survivors: &[u32], dropped: &[u32]| UnmaskRequest {
        round: 2,
        survivors: survivors.to_vec(),
        dropped: dropped.to_vec(),
    };
    let client = &mut clients[0];
    assert_eq!(client.unmask(&ask(&[0, 1, 2], &[1])), Err(ClientError::NamedBothWays(1)));
    assert_eq!(client.unmask(&ask(&[1, 2, 3], &[0])), Err(ClientError::NamedSelfDropped));
    assert_eq!(client.unmask(&ask(&[0, 2], &[1])), Err(ClientError::TooFewSurvivors { have: 2, need: 3 }));
    // The refusals revealed nothing, so 1 may still be named dropped …
    let first = client.unmask(&ask(&[0, 2, 3], &[1])).unwrap();
    assert_eq!(client.unmask(&ask(&[0, 2, 3], &[1])).unwrap(), first, "a repeated request gets the same answer");
    // … but never a survivor afterwards, alone or among others.
    let refusal = ClientError::OtherShareRevealed { neighbour: 1, revealed: ShareKind::MaskKey };
    assert_eq!(client.unmask(&ask(&[0, 1, 2, 3], &[])), Err(refusal));
    let refusal = ClientError::OtherShareRevealed { neighbour: 3, revealed: ShareKind::SelfMask };
    assert_eq!(client.unmask(&ask(&[0, 2, 4], &[3])), Err(refusal));
}

#[test]
fn too_few_survivors_abandon_the_round_cleanly() {
    // Globally: three of five drop before uploading (t = 3).
    let config = SecAggConfig::recommended(3, 5, 2, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (inputs, _) = grid_inputs(5, 2, &mut rng);
    let drop_at = [None, Some(Stage::MaskedInput), None, Some(Stage::MaskedInput), Some(Stage::MaskedInput)];
    let abandoned = simulate_round(&config, &inputs, &drop_at, &mut rng);
    let want = Abandoned::TooFewClients { stage: Stage::MaskedInput, have: 2, need: 3 };
    assert!(matches!(abandoned, Err(SimulationError::Abandoned(ref r)) if *r == want), "{abandoned:?}");

    // In one neighbourhood: n = 9, k = 4, t = 3. Dropping three of client 0's neighbours leaves
    // two holders of its self-mask seed — though six of nine clients uploaded.
    let config = SecAggConfig { neighbours: 4, threshold: 3, ..SecAggConfig::recommended(3, 9, 2, 5) };
    let (inputs, _) = grid_inputs(9, 2, &mut rng);
    let mut drop_at = [None; 9];
    for &v in &Graph::new(&config).neighbours(0)[..3] {
        drop_at[v as usize] = Some(Stage::MaskedInput);
    }
    let abandoned = simulate_round(&config, &inputs, &drop_at, &mut rng);
    assert!(
        matches!(abandoned, Err(SimulationError::Abandoned(Abandoned::TooFewShares { have, need: 3, .. })) if have < 3),
        "{abandoned:?}"
    );
}

#[test]
fn deadlines_move_the_stages() {
    let config = SecAggConfig::recommended(4, 5, 2, 9);
    let timeouts = StageTimeouts {
        advertise_keys_ms: 1000,
        share_keys_ms: 1000,
        masked_input_ms: 1000,
        unmask_ms: 1000,
        ..Default::default()
    };
    let mut server = SecAggServer::new(config.clone(), timeouts, 0).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut clients: Vec<_> = (0..5).map(|id| SecAggClient::new(config.clone(), id, &mut rng).unwrap()).collect();
    let late = clients.pop().unwrap().1;
    for (id, (_, keys)) in clients.iter().enumerate() {
        assert_eq!(server.handle(id as u32, ToServer::AdvertiseKeys(keys.clone()), 10), Ok(Stage::AdvertiseKeys));
    }
    assert_eq!(server.tick(999), Stage::AdvertiseKeys);
    assert_eq!(server.deadline_ms(), Some(1000));
    // A message after the deadline finds the stage closed.
    let refused = server.handle(4, ToServer::AdvertiseKeys(late), 1000);
    assert_eq!(refused, Err(ServerError::OutOfStage { got: Stage::AdvertiseKeys, stage: Stage::ShareKeys }));
    assert_eq!((server.deadline_ms(), server.message_for(4)), (Some(2000), None));
    assert!(server.message_for(0).is_some());
    // Nobody shares keys: the next deadline abandons the round, and nobody is asked anything.
    assert_eq!(server.tick(2000), Stage::Abandoned);
    let want = Abandoned::TooFewClients { stage: Stage::ShareKeys, have: 0, need: 3 };
    assert_eq!(server.outcome(), Some(Err(&want)));
    assert!((0..5).all(|c| server.message_for(c).is_none()));
    assert_eq!(server.deadline_ms(), None);
}

#[test]
fn tampered_or_relabelled_shares_are_detected() {
    let config = SecAggConfig::recommended(5, 5, 3, 2);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (server, mut clients) = run_until(&config, Stage::MaskedInput, &mut rng);
    let Some(ToClient::MaskedInput(genuine)) = server.message_for(0) else { panic!("no message") };
    let mut tampered = genuine.clone();
    tampered.shares[1].sealed[20] ^= 0x40;
    let from = tampered.shares[1].from;
    assert_eq!(clients[0].mask_input(&tampered, &[0.0; 3], &mut rng), Err(ClientError::Unauthentic(from)));
    // Shares passed off as another sender's do not open either: the sender is bound in.
    let mut relabelled = genuine.clone();
    relabelled.shares.swap(0, 1);
    (relabelled.shares[0].from, relabelled.shares[1].from) = (genuine.shares[0].from, genuine.shares[1].from);
    assert!(matches!(clients[0].mask_input(&relabelled, &[0.0; 3], &mut rng), Err(ClientError::Unauthentic(_))));
    // Refusals changed nothing: the genuine message is still taken.
    assert_eq!(clients[0].awaiting(), Stage::MaskedInput);
    assert!(clients[0].mask_input(&genuine, &[0.0; 3], &mut rng).is_ok());
}

#[test]
fn the_server_refuses_what_does_not_fit_the_round() {
    let config = SecAggConfig { modulus_bits: 16, quantization_levels: 1000, ..SecAggConfig::recommended(6, 5, 3, 2) };
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut server = SecAggServer::new(config.clone(), StageTimeouts::default(), 0).unwrap();
    let (_, keys) = SecAggClient::new(config.clone(), 0, &mut rng).unwrap();
    let refuse =
        |server: &mut SecAggServer, client, message| server.handle(client, ToServer::AdvertiseKeys(message), 0);
    let stale = AdvertiseKeys { round: 5, ..keys.clone() };
    assert_eq!(refuse(&mut server, 0, stale), Err(ServerError::WrongRound { got: 5, round: 6 }));
    let short = AdvertiseKeys { mask_key: vec![9; 31], ..keys.clone() };
    assert_eq!(refuse(&mut server, 0, short), Err(ServerError::BadKey(0)));
    assert_eq!(refuse(&mut server, 5, keys.clone()), Err(ServerError::NotExpected(5)));
    assert_eq!(refuse(&mut server, 0, keys.clone()), Ok(Stage::AdvertiseKeys));
    assert_eq!(refuse(&mut server, 0, keys), Err(ServerError::AlreadyReceived(0)));

    // Out of the ring 2^16, or the wrong length, is refused at upload.
    let (mut server, _) = run_until(&config, Stage::MaskedInput, &mut rng);
    let too_big = MaskedInput { round: 6, masked: vec![1, 1 << 16, 0] };
    let refused = server.handle(2, ToServer::MaskedInput(too_big), 0);
    assert_eq!(refused, Err(ServerError::OutOfRing { index: 1, value: 1 << 16 }));
    let short = MaskedInput { round: 6, masked: vec![1, 2] };
    assert_eq!(server.handle(2, ToServer::MaskedInput(short), 0), Err(ServerError::InputLength { got: 2, want: 3 }));

    let (mut server, mut clients) = run_until(&config, Stage::Unmask, &mut rng);
    let late = MaskedInput { round: 6, masked: vec![0; 3] };
    let refused = server.handle(0, ToServer::MaskedInput(late), 1);
    assert_eq!(refused, Err(ServerError::OutOfStage { got: Stage::MaskedInput, stage: Stage::Unmask }));
    let Some(ToClient::Unmask(request)) = server.message_for(0) else { panic!("no request") };
    let mut response = clients[0].unmask(&request).unwrap();
    response.self_mask_shares.pop();
    assert_eq!(server.handle(0, ToServer::Unmask(response), 1), Err(ServerError::UnrequestedShares(0)));
    // A share made for another holder cannot be handed in as one's own.
    let Some(ToClient::Unmask(other)) = server.message_for(1) else { panic!("no request") };
    let mut response = clients[0].unmask(&request).unwrap();
    response.self_mask_shares[1].share = clients[1].unmask(&other).unwrap().self_mask_shares[1].share.clone();
    assert!(matches!(server.handle(0, ToServer::Unmask(response), 1), Err(ServerError::BadShare { client: 0, .. })));
    // The refusals changed nothing: the honest answers still finish the round.
    for client in &mut clients {
        let Some(ToClient::Unmask(request)) = server.message_for(client.id()) else { panic!("no request") };
        server.handle(client.id(), ToServer::Unmask(client.unmask(&request).unwrap()), 1).unwrap();
    }
    let sum = server.into_outcome().unwrap().unwrap();
    // Five inputs of 0.5 at r = 8, L = 1000: each quantizes to 531 or 532 (531.25).
    assert!(sum.quantized().iter().all(|&q| (5 * 531..=5 * 532).contains(&q)), "{:?}", sum.quantized());
    assert!(sum.values().iter().all(|v| (v - 2.5).abs() < 0.1), "{:?}", sum.values());
}

#[test]
fn configurations_and_graphs_follow_the_rules() {
    for n in (2..=40).chain([100, 300, 1000]) {
        let config = SecAggConfig::recommended(1, n, 10, u64::from(n));
        config.validate().unwrap();
        let graph = Graph::new(&config);
        for u in 0..n {
            let neighbours = graph.neighbours(u);
            assert_eq!(neighbours.len() as u32, config.neighbours, "n = {n}");
            assert!(neighbours.iter().all(|&v| v != u && graph.neighbours(v).contains(&u)), "symmetric");
        }
    }
    let base = SecAggConfig::recommended(1, 10, 10, 0);
    assert_eq!((base.neighbours, base.threshold), (8, 5));
    let invalid = |c: SecAggConfig| matches!(c.validate(), Err(ConfigError::Invalid(_)));
    assert!(invalid(SecAggConfig { neighbours: 7, ..base.clone() }), "odd k below n − 1");
    assert!(invalid(SecAggConfig { threshold: 4, ..base.clone() }), "not a majority of 9");
    assert!(invalid(SecAggConfig { threshold: 10, ..base.clone() }));
    assert!(invalid(SecAggConfig { clipping_range: f32::NAN, ..base.clone() }));
    let cramped = SecAggConfig { modulus_bits: 24, ..base.clone() };
    assert_eq!(cramped.validate(), Err(ConfigError::NoHeadroom { clients: 10, levels: 1 << 22, modulus_bits: 24 }));
}
