use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

const DELTA: f64 = 1e-5;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// A config with the given ring, scale, noise and rotation; clip 1 unless changed.
fn config(bits: u32, dim: usize, scale: f64, mu: f64, rotation_seed: Option<u64>) -> SkellamConfig {
    SkellamConfig { scale, noise_variance: mu, ..SkellamConfig::new(bits, dim, 1.0, rotation_seed) }
}

/// A random vector of L2 norm `norm`.
fn random_update(dim: usize, norm: f64, rng: &mut impl Rng) -> Vec<f32> {
    let v: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x * norm / n) as f32).collect()
}

/// The modular sum the way SecAgg+ forms it: wrapping u32 addition, reduced to 2^m at the end.
fn ring_sum(words: &[Vec<u32>], bits: u32) -> Vec<u32> {
    let mut sum = vec![0u32; words[0].len()];
    for w in words {
        sum.iter_mut().zip(w).for_each(|(s, &v)| *s = s.wrapping_add(v));
    }
    let mask = u32::MAX >> (32 - bits);
    sum.iter_mut().for_each(|s| *s &= mask);
    sum
}

#[test]
fn rdp_matches_the_theorem_by_hand() {
    // ε(α) = α·Δ₂²/(2V) + min(((2α − 1)·Δ₂² + 6·Δ₁)/(4V²), 3·Δ₁/(2V)):
    // α=2,  V=10,  Δ₁=4, Δ₂=2:  2·4/20 = 0.4;     min((3·4 + 24)/400 = 0.09, 12/20 = 0.6)      → 0.49
    // α=3,  V=1,   Δ₁=1, Δ₂=1:  3·1/2 = 1.5;      min((5·1 + 6)/4 = 2.75, 3/2 = 1.5)           → 3.0
    // α=10, V=100, Δ₁=9, Δ₂=3:  10·9/200 = 0.45;  min((19·9 + 54)/40000 = 0.005625, 27/200)    → 0.455625
    // α=64, V=0.5, Δ₁=2, Δ₂²=2: 64·2/1 = 128;     min((127·2 + 12)/1 = 266, 6/1 = 6)            → 134
    let cases = [
        (2.0, 10.0, 4.0, 2.0, 0.49),
        (3.0, 1.0, 1.0, 1.0, 3.0),
        (10.0, 100.0, 9.0, 3.0, 0.455625),
        (64.0, 0.5, 2.0, 2f64.sqrt(), 134.0),
    ];
    for (alpha, variance, l1, l2, want) in cases {
        let got = rdp_release(Sensitivity { l1, l2 }, variance, alpha).unwrap();
        assert!(close(got, want, 1e-12), "α={alpha} V={variance} Δ₁={l1} Δ₂={l2}: {got}, by hand {want}");
    }
    // Rounds compose by addition at each order.
    let s = Sensitivity { l1: 4.0, l2: 2.0 };
    assert!(close(rdp(s, 10.0, 7, &[2.0]).unwrap()[0], 7.0 * 0.49, 1e-12));
    assert_eq!(rdp(s, 0.0, 0, &[2.0]).unwrap(), vec![0.0]);
    assert_eq!(rdp_release(s, 0.0, 2.0).unwrap(), f64::INFINITY);
}

#[test]
fn rounding_bound_matches_the_formula_by_hand() {
    // β = e^(−1/2), so √(2·ln(1/β)) = 1.
    // norm 10, d = 16: min((10 + 4)² = 196, 100 + 16/4 + 1·(10 + 4/2) = 116) → Δ₂ = √116,
    // Δ₁ = min(116, √16·√116 = 43.08…) = 4√116.
    let s = Sensitivity::of_rounded(10.0, 16, DEFAULT_BETA);
    assert!(close(s.l2, 116f64.sqrt(), 1e-14) && close(s.l1, 4.0 * 116f64.sqrt(), 1e-14), "{s:?}");
    // β = 0 (unconditional): Δ₂ = 10 + 4 = 14, Δ₁ = min(196, 4·14 = 56) = 56.
    let s = Sensitivity::of_rounded(10.0, 16, 0.0);
    assert!(close(s.l2, 14.0, 1e-15) && close(s.l1, 56.0, 1e-15), "{s:?}");
    // norm 0.5, d = 4: min((0.5 + 2)² = 6.25, 0.25 + 1 + 1·(0.5 + 1) = 2.75) → Δ₂ = √2.75,
    // Δ₁ = min(2.75, 2·√2.75 = 3.32) = 2.75.
    let s = Sensitivity::of_rounded(0.5, 4, DEFAULT_BETA);
    assert!(close(s.l2, 2.75f64.sqrt(), 1e-14) && close(s.l1, 2.75, 1e-14), "{s:?}");
    // The config's sensitivity is that of γ·c in the ring's (padded) dimension.
    let c = SkellamConfig { clip: 2.0, ..config(32, 1000, 5.0, 0.0, Some(1)) };
    assert_eq!(c.ring_dim(), 1024);
    assert_eq!(c.sensitivity(), Sensitivity::of_rounded(10.0, 1024, DEFAULT_BETA));
}

#[test]
fn fine_grids_with_large_noise_approach_the_gaussian() {
    // With total variance V = z²·(γc)², the Gaussian mechanism's RDP is α/(2z²) (the accountant at
    // q = 1). The Skellam bound exceeds it by the rounding's inflation of Δ₂ and by the discrete
    // term, both of which vanish as γ grows.
    let (z, dim) = (1.3, 1024);
    let mut excess = Vec::new();
    for scale in [10.0, 1e2, 1e4, 1e6] {
        let s = Sensitivity::of_rounded(scale, dim, DEFAULT_BETA);
        let variance = (z * scale) * (z * scale);
        let mut worst = 0.0f64;
        for alpha in [2.0, 5.0, 17.0, 64.0, 256.0] {
            let skellam = rdp_release(s, variance, alpha).unwrap();
            let gaussian = accountant::rdp_step(z, 1.0, alpha).unwrap();
            assert!(skellam >= gaussian, "γ={scale} α={alpha}: {skellam} < {gaussian}");
            worst = worst.max(skellam / gaussian - 1.0);
        }
        excess.push(worst);
    }
    assert!(excess.windows(2).all(|w| w[1] < w[0]), "{excess:?}");
    assert!(excess[0] > 1.0, "a coarse grid costs much more: {excess:?}");
    assert!(excess[3] < 2e-6, "a fine grid costs what the Gaussian does: {excess:?}");
}

#[test]
fn twenty_clients_noise_decodes_to_the_target_variance() {
    // n = 20 clients encode zero updates (which round to exactly 0), so the decoded sum is pure
    // noise with variance n·μ/γ² per coordinate. For N = 20,000 coordinates the sample variance
    // s² satisfies (N − 1)s²/σ² ~ χ²(N − 1) (Skellam's excess kurtosis 1/(nμ) is negligible
    // here), so s²/σ² ≈ 1 ± √(2/N) = 1 ± 0.01: a tolerance of 0.05 is five standard errors, and
    // noise 10% off in standard deviation (21% in variance), or even 10% off in variance, fails.
    // μ = 3 samples Poisson(1.5) by Knuth's method, the others by Ahrens–Dieter, up to the cap.
    let (clients, dim) = (20usize, 20_000usize);
    for (mu, scale, rotation) in [(3.0, 1.0, None), (1e4, 7.0, Some(11)), (MAX_NOISE_VARIANCE, 300.0, Some(12))] {
        let cfg = config(32, dim, scale, mu, rotation);
        let mut rng = ChaCha20Rng::seed_from_u64(mu as u64);
        let zero = vec![0.0f32; dim];
        let words: Vec<Vec<u32>> = (0..clients).map(|_| cfg.encode(&zero, &mut rng).unwrap()).collect();
        let decoded = cfg.decode_sum(&ring_sum(&words, 32)).unwrap();
        let target = clients as f64 * mu / (scale * scale);
        let n = decoded.len() as f64;
        let mean = decoded.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = decoded.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!((var / target - 1.0).abs() < 0.05, "μ={mu}: variance {var}, target {target}");
        assert!(mean.abs() < 5.0 * (target / n).sqrt(), "μ={mu}: mean {mean}");
    }
}

#[test]
fn noise_at_the_largest_variance_is_odd_as_often_as_even() {
    // Poisson samples beyond f64's integers would all be even and the sum's parity would leak
    // the signal's; at the cap half the noise values are odd (±5 standard errors of 0.0035).
    let dim = 20_000;
    let cfg = config(32, dim, 1.0, MAX_NOISE_VARIANCE, None);
    let words = cfg.encode(&vec![0.0; dim], &mut ChaCha20Rng::seed_from_u64(13)).unwrap();
    let odd = words.iter().filter(|&&w| w % 2 == 1).count() as f64 / dim as f64;
    assert!((odd - 0.5).abs() < 0.018, "{odd}");
}

#[test]
fn without_noise_the_decoded_sum_is_the_true_sum_within_rounding() {
    let (clients, dim, scale) = (5, 1000, 1000.0);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let updates: Vec<Vec<f32>> = (0..clients).map(|_| random_update(dim, 0.9, &mut rng)).collect();
    let truth: Vec<f64> = (0..dim).map(|i| updates.iter().map(|u| f64::from(u[i])).sum()).collect();
    for rotation in [None, Some(99)] {
        let cfg = config(32, dim, scale, 0.0, rotation);
        let words: Vec<Vec<u32>> = updates.iter().map(|u| cfg.encode(u, &mut rng).unwrap()).collect();
        let decoded = cfg.decode_sum(&ring_sum(&words, 32)).unwrap();
        let errors: Vec<f64> = decoded.iter().zip(&truth).map(|(&d, &t)| f64::from(d) - t).collect();
        // Each client's rounding moves each (rotated) coordinate by less than 1/γ; f32 output adds
        // at most about 1e−7 of values below 5.
        let f32_room = 1e-6;
        match rotation {
            None => {
                let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
                assert!(worst < clients as f64 / scale + f32_room, "{worst}");
            }
            Some(_) => {
                // Rotated, the bound holds for the error vector's norm: n·√D'/γ.
                let norm = errors.iter().map(|e| e * e).sum::<f64>().sqrt();
                let bound = clients as f64 * (cfg.ring_dim() as f64).sqrt() / scale;
                assert!(norm < bound + f32_room * (dim as f64).sqrt(), "{norm} vs {bound}");
            }
        }
        // The rounding is not a no-op that happens to pass: the sum really changed by it a little.
        assert!(errors.iter().any(|e| e.abs() > 1e-5));
    }
}

#[test]
fn the_rotation_is_orthonormal_and_invertible() {
    let dim = 1000;
    let rotation = Rotation::new(7, dim).unwrap();
    assert_eq!(rotation.padded_dim(), 1024);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let x: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    let y: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    let (rx, ry) = (rotation.forward(&x).unwrap(), rotation.forward(&y).unwrap());
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    // Inner products (so norms and angles) are kept.
    assert!(close(dot(&rx, &rx), dot(&x, &x), 1e-12));
    assert!(close(dot(&rx, &ry), dot(&x, &y), 1e-10));
    let back = rotation.inverse(&rx).unwrap();
    assert!(back.iter().zip(&x).all(|(b, x)| (b - x).abs() < 1e-12));
    // It flattens: a unit spike becomes ±1/√1024 everywhere, with both signs present.
    let mut spike = vec![0.0; dim];
    spike[3] = 1.0;
    let flat = rotation.forward(&spike).unwrap();
    assert!(flat.iter().all(|v| (v.abs() - 1.0 / 32.0).abs() < 1e-15));
    assert!(flat.iter().any(|&v| v > 0.0) && flat.iter().any(|&v| v < 0.0));
    // The seed matters, and the same seed gives the same rotation.
    assert_ne!(Rotation::new(8, dim).unwrap().forward(&x).unwrap(), rx);
    assert_eq!(Rotation::new(7, dim).unwrap().forward(&x).unwrap(), rx);
    assert!(matches!(rotation.forward(&x[1..]), Err(DistributedError::UpdateLength { got: 999, want: 1000 })));
}

#[test]
fn sums_past_the_ring_edge_wrap_by_the_modulus() {
    // m = 8: centred sums live in [−128, 128). Integer inputs at γ = 1 round to themselves.
    let cfg = SkellamConfig { clip: 100.0, ..config(8, 2, 1.0, 0.0, None) };
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut sum_of = |updates: &[[f32; 2]]| {
        let words: Vec<Vec<u32>> = updates.iter().map(|u| cfg.encode(u, &mut rng).unwrap()).collect();
        cfg.decode_sum(&ring_sum(&words, 8)).unwrap()
    };
    // The edges themselves come back exactly…
    assert_eq!(sum_of(&[[60.0, -60.0], [60.0, -60.0], [7.0, -8.0]]), [127.0, -128.0]);
    // …one step further, each wraps around by 2^8: 128 reads as −128 and −129 as 127.
    assert_eq!(sum_of(&[[60.0, -60.0], [60.0, -60.0], [8.0, -9.0]]), [-128.0, 127.0]);
    assert_eq!(sum_of(&[[50.0, -60.0], [50.0, -60.0], [50.0, -60.0]]), [150.0 - 256.0, -180.0 + 256.0]);
    // A lone client's words are residues mod 2^8 too: −60 is 196.
    assert_eq!(cfg.encode(&[50.0, -60.0], &mut rng).unwrap(), [50, 196]);
}

#[test]
fn the_scale_leaves_the_asked_headroom() {
    let cfg = config(32, 199_210, 1.0, 1e12, Some(3)).with_scale_for(100, 3.0).unwrap();
    assert!(close(cfg.headroom(100), 3.0, 1e-9), "{}", cfg.headroom(100));
    // More noise, or more clients, leave less room for the signal.
    assert!(config(32, 199_210, 1.0, 1e14, Some(3)).with_scale_for(100, 3.0).unwrap().scale < cfg.scale);
    assert!(config(32, 199_210, 1.0, 1e12, Some(3)).with_scale_for(200, 3.0).unwrap().scale < cfg.scale);
    // Noise alone past the edge leaves none.
    let err = config(16, 100, 1.0, 1e9, None).with_scale_for(10, 3.0).unwrap_err();
    assert_eq!(err, DistributedError::NoRoom { modulus_bits: 16, clients: 10, headroom: 3.0 });
}

#[test]
fn the_noise_solver_meets_the_target_from_below() {
    let target = Target { epsilon: 8.0, delta: DELTA, rounds: 100, clients: 100 };
    let cfg = config(32, 199_210, 1e4, 0.0, Some(4)).with_noise_for(&target).unwrap();
    let (eps, order) = cfg.epsilon(100, 100, DELTA).unwrap();
    assert!((8.0 * (1.0 - 1e-4)..=8.0).contains(&eps), "ε = {eps} at order {order}");
    // And it is the least such μ: 1% less noise overspends.
    let less = SkellamConfig { noise_variance: cfg.noise_variance * 0.99, ..cfg.clone() };
    assert!(less.epsilon(100, 100, DELTA).unwrap().0 > 8.0);
    // A tighter budget, more rounds or fewer clients need more noise per client.
    let more = |t: Target| config(32, 199_210, 1e4, 0.0, Some(4)).with_noise_for(&t).unwrap().noise_variance;
    assert!(more(Target { epsilon: 2.0, ..target }) > cfg.noise_variance);
    assert!(more(Target { rounds: 200, ..target }) > cfg.noise_variance);
    assert!(more(Target { clients: 50, ..target }) > cfg.noise_variance);
    // No rounds need no noise; a target below what any noise reaches is refused.
    assert_eq!(more(Target { rounds: 0, ..target }), 0.0);
    let err = config(32, 100, 1.0, 0.0, None).with_noise_for(&Target { epsilon: 0.01, ..target }).unwrap_err();
    assert!(matches!(err, DistributedError::Privacy(PrivacyError::Unattainable { .. })), "{err}");
    // The free function agrees for hand-picked sensitivities.
    let s = Sensitivity { l1: 40.0, l2: 10.0 };
    let v = variance_for(3.0, s, 10, DELTA, &SKELLAM_ORDERS).unwrap();
    let got = epsilon(s, v, 10, DELTA, &SKELLAM_ORDERS).unwrap().0;
    assert!((3.0 * (1.0 - 1e-4)..=3.0).contains(&got), "{got}");
}

#[test]
fn a_plan_fits_the_ring_meets_the_target_and_costs_what_the_gaussian_does() {
    // 2NN-sized: d = 199,210, padded to 2^18; 100 clients a round, 100 rounds, 32-bit ring.
    let target = Target { epsilon: 8.0, delta: DELTA, rounds: 100, clients: 100 };
    let cfg = SkellamConfig::new(32, 199_210, 1.0, Some(5)).plan(&target, DEFAULT_HEADROOM).unwrap();
    assert!(cfg.headroom(100) >= DEFAULT_HEADROOM);
    let (eps, _) = cfg.epsilon(100, 100, DELTA).unwrap();
    assert!((8.0 * (1.0 - 1e-4)..=8.0).contains(&eps), "{eps}");
    // The largest scale that fits: 1% more γ (with the μ it then needs) no longer does.
    match (SkellamConfig { scale: cfg.scale * 1.01, ..cfg.clone() }).with_noise_for(&target) {
        Ok(bigger) => assert!(bigger.headroom(100) < DEFAULT_HEADROOM),
        Err(e) => assert!(matches!(e, DistributedError::NoiseVariance(_)), "{e}"),
    }
    // At 32 bits the grid is so fine that the Skellam bound is the Gaussian's at the same z.
    let z = cfg.noise_multiplier(100);
    let gaussian = accountant::epsilon(z, 1.0, 100, DELTA, &SKELLAM_ORDERS).unwrap().0;
    assert!(eps >= gaussian && eps < gaussian * (1.0 + 1e-6), "Skellam {eps}, Gaussian {gaussian} at z = {z}");
    // With 14 bits it is not: the plan needs a coarse grid (γ ≈ 340) and pays for it in noise
    // (z ≈ 8.0 against 6.4); 12 bits cannot hold even the noise the rounding alone needs.
    let ten = Target { clients: 10, ..target };
    let coarse = SkellamConfig::new(14, 199_210, 1.0, Some(5)).plan(&ten, DEFAULT_HEADROOM).unwrap();
    assert!(coarse.epsilon(10, 100, DELTA).unwrap().0 <= 8.0 && coarse.headroom(10) >= DEFAULT_HEADROOM);
    assert!(coarse.noise_multiplier(10) > 1.2 * z, "{coarse:?}");
    let small = SkellamConfig::new(12, 199_210, 1.0, Some(5)).plan(&ten, DEFAULT_HEADROOM);
    assert!(matches!(small, Err(DistributedError::NoRoom { .. })), "{small:?}");
}

#[test]
fn conditional_rounding_enforces_the_bound() {
    // All coordinates at ½: every rounding is a fair coin, ‖x̃‖² ~ Bin(64, ½) (mean 32, sd 4),
    // while with β near 1 the bound is 16 + 64/4 + 0.045·(4 + 4) ≈ 32.4: about half the tries
    // are rejected, so with one try some seeds fail and some pass.
    let cfg = SkellamConfig { clip: 4.0, beta: 0.999, max_rounding_tries: 1, ..config(32, 64, 1.0, 0.0, None) };
    let bound = cfg.sensitivity().l2.powi(2);
    let half = vec![0.5f32; 64];
    let (mut passed, mut failed) = (0, 0);
    for seed in 0..64 {
        match cfg.encode(&half, &mut ChaCha20Rng::seed_from_u64(seed)) {
            Ok(words) => {
                passed += 1;
                // γ = 1 and no noise: the decoded words are the rounded vector.
                let rounded = cfg.decode_sum(&words).unwrap();
                assert!(rounded.iter().all(|&v| v == 0.0 || v == 1.0));
                let norm_sq: f64 = rounded.iter().map(|&v| f64::from(v).powi(2)).sum();
                assert!(norm_sq <= bound, "{norm_sq} > {bound}");
            }
            Err(e) => {
                assert_eq!(e, DistributedError::RoundingRejected { tries: 1 });
                failed += 1;
            }
        }
    }
    assert!(passed > 10 && failed > 10, "{passed} passed, {failed} failed");
    // With the default retries every seed gets through.
    let patient = SkellamConfig { max_rounding_tries: DEFAULT_ROUNDING_TRIES, ..cfg };
    assert!((0..64).all(|seed| patient.encode(&half, &mut ChaCha20Rng::seed_from_u64(seed)).is_ok()));
}

#[test]
fn words_survive_secagg_masking() {
    // Masks added and subtracted the way SecAgg+ clients do (mod 2^32, reduced to 2^m at the end)
    // cancel in the sum and leave the decoded value unchanged.
    let bits = 24;
    let cfg = config(bits, 300, 1e3, 50.0, Some(6));
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let updates: Vec<Vec<f32>> = (0..3).map(|_| random_update(300, 1.0, &mut rng)).collect();
    let plain: Vec<Vec<u32>> = updates.iter().map(|u| cfg.encode(u, &mut rng).unwrap()).collect();
    let mut masked = plain.clone();
    let (ab, bc) = ([1u8; 32], [2u8; 32]);
    crate::secagg::crypto::apply_mask(&mut masked[0], &ab, true);
    crate::secagg::crypto::apply_mask(&mut masked[1], &ab, false);
    crate::secagg::crypto::apply_mask(&mut masked[1], &bc, true);
    crate::secagg::crypto::apply_mask(&mut masked[2], &bc, false);
    let ring = u32::MAX >> (32 - bits);
    masked.iter_mut().flatten().for_each(|w| *w &= ring);
    assert_ne!(masked, plain);
    assert_eq!(ring_sum(&masked, bits), ring_sum(&plain, bits));
    assert_eq!(cfg.decode_sum(&ring_sum(&masked, bits)).unwrap(), cfg.decode_sum(&ring_sum(&plain, bits)).unwrap());
}

#[test]
fn refusals_name_the_problem() {
    use DistributedError::*;
    let cfg = config(32, 4, 10.0, 5.0, None);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    assert_eq!(cfg.encode(&[0.0; 3], &mut rng), Err(UpdateLength { got: 3, want: 4 }));
    assert_eq!(cfg.encode(&[0.0, f32::NAN, 0.0, 0.0], &mut rng), Err(NotFinite { index: 1 }));
    assert_eq!(cfg.encode(&[0.0, f32::INFINITY, 0.0, 0.0], &mut rng), Err(NotFinite { index: 1 }));
    assert_eq!(cfg.encode(&[1.0, 1.0, 0.0, 0.0], &mut rng), Err(NotClipped { norm: 2f64.sqrt(), clip: 1.0 }));
    assert_eq!(cfg.decode_sum(&[0; 5]), Err(SumLength { got: 5, want: 4 }));
    let bad = |c: SkellamConfig| c.encode(&[0.0; 4], &mut ChaCha20Rng::seed_from_u64(0)).unwrap_err();
    assert!(matches!(bad(SkellamConfig { modulus_bits: 33, ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { modulus_bits: 1, ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { scale: 0.0, ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { scale: 2f64.powi(51), ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { clip: f64::NAN, ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { beta: 1.0, ..cfg.clone() }), Invalid(_)));
    assert!(matches!(bad(SkellamConfig { max_rounding_tries: 0, ..cfg.clone() }), Invalid(_)));
    assert_eq!(bad(SkellamConfig { noise_variance: -1.0, ..cfg.clone() }), NoiseVariance(-1.0));
    assert_eq!(bad(SkellamConfig { noise_variance: 2f64.powi(52), ..cfg.clone() }), NoiseVariance(2f64.powi(52)));
    // The accountant: integer orders only, no clients is no noise, δ as the accountant wants it.
    let s = Sensitivity { l1: 1.0, l2: 1.0 };
    assert_eq!(rdp_release(s, 1.0, 2.5), Err(Order { order: 2.5 }));
    assert_eq!(rdp_release(s, 1.0, 1.0), Err(Order { order: 1.0 }));
    assert_eq!(rdp_release(s, -1.0, 2.0), Err(Variance(-1.0)));
    assert_eq!(rdp_release(Sensitivity { l1: f64::NAN, l2: 1.0 }, 1.0, 2.0).map_err(|_| ()), Err(()));
    assert_eq!(rdp(s, 1.0, 1, &[]), Err(Privacy(PrivacyError::NoOrders)));
    assert_eq!(cfg.epsilon(0, 10, DELTA), Err(NoClients));
    assert_eq!(cfg.epsilon(10, 10, 0.0), Err(Privacy(PrivacyError::Delta(0.0))));
    assert_eq!(cfg.clone().with_scale_for(10, 0.0), Err(Headroom(0.0)));
    assert!(Rotation::new(0, usize::MAX).is_err());
}

#[test]
fn the_config_travels_as_json() {
    let cfg = config(20, 1000, 123.5, 42.0, Some(7));
    let back: SkellamConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}
