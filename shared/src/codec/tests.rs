use proptest::prelude::*;
use rand::Rng as _;

use super::format::{TAG_NONE, TAG_Q8, TAG_QSGD, TAG_RANDK, TAG_TOPK, TAG_TOPK_Q8, write_header};
use super::*;
use crate::rng::{Rng, derive};

fn rng(seed: u64) -> Rng {
    derive(seed, &[0xc0de])
}

/// Values roughly like an update: mostly small, a few larger, some exact zeros.
fn sample(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|i| match i % 11 {
            0 => 0.0,
            1 => r.random_range(-1.0..1.0),
            _ => r.random_range(-0.01..0.01),
        })
        .collect()
}

fn all_codecs() -> Vec<Compression> {
    vec![
        Compression::None,
        Compression::Q8,
        Compression::TopK { fraction: 0.3 },
        Compression::TopK { fraction: 1.0 },
        Compression::RandK { fraction: 0.3 },
        Compression::RandK { fraction: 1.0 },
        Compression::Qsgd { levels: 1 },
        Compression::Qsgd { levels: 16 },
        Compression::Qsgd { levels: MAX_LEVELS },
        Compression::TopKQ8 { fraction: 0.3 },
        Compression::TopKQ8 { fraction: 0.001 },
    ]
}

fn round_trip(x: &[f32], how: &Compression) -> Vec<f32> {
    let bytes = encode(x, how, None, &mut rng(1)).unwrap();
    let y = decode(&bytes, x.len()).unwrap();
    assert_eq!(y.len(), x.len());
    y
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "position {i}: got {g}, want {w} (got {got:?}, want {want:?})");
    }
}

// ---------------------------------------------------------------- Compression, strings, serde

#[test]
fn compression_strings_round_trip() {
    for (s, how) in [
        ("none", Compression::None),
        ("q8", Compression::Q8),
        ("topk:0.1", Compression::TopK { fraction: 0.1 }),
        ("topk:1", Compression::TopK { fraction: 1.0 }),
        ("randk:0.25", Compression::RandK { fraction: 0.25 }),
        ("qsgd:1", Compression::Qsgd { levels: 1 }),
        ("qsgd:16", Compression::Qsgd { levels: 16 }),
        ("qsgd:65536", Compression::Qsgd { levels: 65536 }),
        ("topk:0.01+q8", Compression::TopKQ8 { fraction: 0.01 }),
        ("topk:0.0000001", Compression::TopK { fraction: 1e-7 }),
    ] {
        assert_eq!(s.parse::<Compression>().unwrap(), how, "{s}");
        assert_eq!(how.to_string(), s);
        how.validate().unwrap();
    }
    // Other spellings of the same number parse to the same value.
    assert_eq!("topk:1e-2".parse::<Compression>().unwrap(), Compression::TopK { fraction: 0.01 });
    assert_eq!("topk:1.0".parse::<Compression>().unwrap().to_string(), "topk:1");
}

#[test]
fn compression_strings_are_validated() {
    for s in [
        "",
        "None",
        "q8 ",
        "q4",
        "topk",
        "topk:",
        "topk:0",
        "topk:-0.1",
        "topk:1.5",
        "topk:nan",
        "topk:inf",
        "topk:x",
        "randk:0",
        "randk:0.1+q8",
        "topk:0.1+q4",
        "topk:0.1+q8+q8",
        "qsgd:0",
        "qsgd:65537",
        "qsgd:1.5",
        "qsgd:-1",
        "qsgd:",
    ] {
        let err = s.parse::<Compression>().unwrap_err();
        assert!(matches!(&err, CodecError::InvalidCompression { spec, .. } if spec == s), "{s}: {err}");
    }
    assert!(Compression::TopK { fraction: 0.0 }.validate().is_err());
    assert!(Compression::RandK { fraction: f64::NAN }.validate().is_err());
    assert!(Compression::Qsgd { levels: 0 }.validate().is_err());
    let err = encode(&[1.0], &Compression::TopKQ8 { fraction: 2.0 }, None, &mut rng(0)).unwrap_err();
    assert_eq!(err.to_string(), "invalid compression \"topk:2+q8\": the fraction F must be a number in (0, 1]");
}

#[test]
fn compression_serialises_as_its_string() {
    let how = Compression::TopKQ8 { fraction: 0.01 };
    assert_eq!(serde_json::to_string(&how).unwrap(), "\"topk:0.01+q8\"");
    assert_eq!(serde_json::from_str::<Compression>("\"topk:0.01+q8\"").unwrap(), how);
    assert_eq!(
        serde_json::from_str::<Vec<Compression>>("[\"none\",\"qsgd:4\"]").unwrap(),
        [Compression::None, Compression::Qsgd { levels: 4 }]
    );
    let err = serde_json::from_str::<Compression>("\"topk:2\"").unwrap_err().to_string();
    assert!(err.contains("fraction"), "{err}");
    assert!(serde_json::from_str::<Compression>("3").is_err());
}

#[test]
fn error_feedback_and_kept_counts() {
    assert!(Compression::TopK { fraction: 0.1 }.uses_error_feedback());
    assert!(Compression::TopKQ8 { fraction: 0.1 }.uses_error_feedback());
    for how in
        [Compression::None, Compression::Q8, Compression::RandK { fraction: 0.1 }, Compression::Qsgd { levels: 2 }]
    {
        assert!(!how.uses_error_feedback(), "{how}");
    }
    let topk = |f| Compression::TopK { fraction: f };
    assert_eq!(topk(0.4).kept(5), Some(2));
    assert_eq!(topk(0.01).kept(10), Some(1)); // at least one
    assert_eq!(topk(0.01).kept(1_663_370), Some(16_634));
    assert_eq!(topk(0.5).kept(3), Some(2)); // round half away from zero
    assert_eq!(topk(1.0).kept(7), Some(7));
    assert_eq!(topk(0.5).kept(0), Some(0));
    assert_eq!(Compression::Q8.kept(10), None);
}

// ---------------------------------------------------------------- error feedback

/// The reference sequence from the issue (k = 2 of 5).
#[test]
fn error_feedback_reference() {
    let how = Compression::TopK { fraction: 0.4 };
    let mut memory = ErrorFeedback::new(5);
    let g0 = [0.5, -0.1, 0.2, 0.05, -0.3];
    let sent = decode(&encode(&g0, &how, Some(&mut memory), &mut rng(0)).unwrap(), 5).unwrap();
    assert_close(&sent, &[0.5, 0.0, 0.0, 0.0, -0.3], 1e-6);
    assert_close(memory.as_slice(), &[0.0, -0.1, 0.2, 0.05, 0.0], 1e-6);
    let g1 = [0.1, 0.4, -0.2, 0.05, -0.1];
    let sent = decode(&encode(&g1, &how, Some(&mut memory), &mut rng(0)).unwrap(), 5).unwrap();
    assert_close(&sent, &[0.1, 0.3, 0.0, 0.0, 0.0], 1e-6);
    assert_close(memory.as_slice(), &[0.0, 0.0, 0.0, 0.1, -0.1], 1e-6);
}

/// Error feedback loses nothing: everything sent plus the final residual is everything given.
#[test]
fn error_feedback_conserves_the_sum_of_updates() {
    for how in [Compression::TopK { fraction: 0.05 }, Compression::TopKQ8 { fraction: 0.05 }] {
        let n = 3000;
        let mut memory = ErrorFeedback::new(n);
        let mut given = vec![0.0f64; n];
        let mut received = vec![0.0f64; n];
        for round in 0..6 {
            let g = sample(n, 100 + round);
            let y = decode(&encode(&g, &how, Some(&mut memory), &mut rng(round)).unwrap(), n).unwrap();
            assert!(y.iter().filter(|v| **v != 0.0).count() <= 150);
            for i in 0..n {
                given[i] += g[i] as f64;
                received[i] += y[i] as f64;
            }
        }
        for i in 0..n {
            let lost = given[i] - received[i] - memory.as_slice()[i] as f64;
            assert!(lost.abs() < 1e-5, "{how} position {i}: {lost}");
        }
    }
}

#[test]
fn top_k_q8_feedback_is_against_the_dequantised_values() {
    let how = Compression::TopKQ8 { fraction: 0.5 };
    let g = [0.9, -0.7, 0.01, 0.33, -0.02, 0.5];
    let mut memory = ErrorFeedback::new(6);
    let y = decode(&encode(&g, &how, Some(&mut memory), &mut rng(0)).unwrap(), 6).unwrap();
    let kept: Vec<usize> = (0..6).filter(|&i| y[i] != 0.0).collect();
    assert_eq!(kept, [0, 1, 5]);
    for i in 0..6 {
        // residual + sent = a exactly where nothing was kept, up to f32 rounding elsewhere.
        assert!((memory.as_slice()[i] + y[i] - g[i]).abs() <= 1e-7, "{i}");
    }
    // The quantisation error (≤ range/510) stays in memory.
    assert!(memory.as_slice()[5] != 0.0 && memory.as_slice()[5].abs() <= 1.6 / 510.0);
}

#[test]
fn error_feedback_memory_is_checked_and_left_alone_on_error() {
    let how = Compression::TopK { fraction: 0.5 };
    let mut memory = ErrorFeedback::from_vec(vec![1.0, 2.0]);
    let err = encode(&[1.0, 2.0, 3.0], &how, Some(&mut memory), &mut rng(0)).unwrap_err();
    assert_eq!(err, CodecError::MemoryLength { memory: 2, update: 3 });
    let mut memory = ErrorFeedback::from_vec(vec![f32::MAX, 0.0]);
    let err = encode(&[f32::MAX, 1.0], &how, Some(&mut memory), &mut rng(0)).unwrap_err();
    assert!(matches!(err, CodecError::Overflow { .. }), "{err}");
    assert_eq!(memory.as_slice(), [f32::MAX, 0.0]);
    // Codecs without error feedback ignore the memory.
    for how in
        [Compression::None, Compression::Q8, Compression::RandK { fraction: 0.5 }, Compression::Qsgd { levels: 3 }]
    {
        let mut memory = ErrorFeedback::from_vec(vec![5.0]);
        let y = decode(&encode(&[1.0, 2.0], &how, Some(&mut memory), &mut rng(0)).unwrap(), 2).unwrap();
        assert_eq!(memory.as_slice(), [5.0]);
        assert_eq!(y.len(), 2);
    }
    // Top-k without memory sends the top-k of the update.
    let y = decode(&encode(&[1.0, -3.0, 2.0, 0.5], &how, None, &mut rng(0)).unwrap(), 4).unwrap();
    assert_eq!(y, [0.0, -3.0, 2.0, 0.0]);
}

#[test]
fn error_feedback_persists() {
    let memory = ErrorFeedback::from_vec(vec![0.25, -1.5, 0.0, 3e-9]);
    let bytes = memory.to_bytes();
    assert_eq!(bytes.len(), 3 + 16);
    assert_eq!(ErrorFeedback::from_bytes(&bytes, 4).unwrap(), memory);
    assert_eq!(
        ErrorFeedback::from_bytes(&bytes, 5).unwrap_err(),
        CodecError::LengthMismatch { declared: 4, expected: 5 }
    );
    let bad = ErrorFeedback::from_vec(vec![1.0, f32::NAN]).to_bytes();
    assert!(matches!(ErrorFeedback::from_bytes(&bad, 2), Err(CodecError::NonFiniteValue { position: 1, .. })));
    let q8 = encode(&[1.0, 2.0], &Compression::Q8, None, &mut rng(0)).unwrap();
    assert!(matches!(ErrorFeedback::from_bytes(&q8, 2), Err(CodecError::WrongCodec { .. })));
    for cut in 0..bytes.len() {
        assert!(ErrorFeedback::from_bytes(&bytes[..cut], 4).is_err());
    }
    let mut cleared = memory.clone();
    cleared.clear();
    assert_eq!(cleared.into_vec(), [0.0; 4]);
    assert!(ErrorFeedback::default().is_empty());
    assert_eq!(ErrorFeedback::new(3).len(), 3);
}

// ---------------------------------------------------------------- round trips

#[test]
fn none_is_exact() {
    let x = sample(1000, 1);
    assert_eq!(round_trip(&x, &Compression::None), x);
}

#[test]
fn q8_error_is_within_half_a_step_of_its_chunk() {
    // Two chunks with very different scales, the second short.
    let mut x = sample(1024, 2);
    x.extend(sample(500, 3).iter().map(|v| v * 1000.0));
    let y = round_trip(&x, &Compression::Q8);
    for (chunk_x, chunk_y) in x.chunks(quantize::Q8_CHUNK).zip(y.chunks(quantize::Q8_CHUNK)) {
        let lo = chunk_x.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = chunk_x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let bound = (hi - lo) / 510.0 * (1.0 + 1e-5);
        for (a, b) in chunk_x.iter().zip(chunk_y) {
            assert!((a - b).abs() <= bound + a.abs() * 1e-7, "{a} vs {b}, bound {bound}");
            assert!((lo..=hi).contains(b));
        }
        // The extremes are exact.
        assert!(chunk_y.contains(&lo) && chunk_y.contains(&hi));
    }
    // A constant vector is exact; extreme finite values stay finite.
    assert_eq!(round_trip(&[0.75; 10], &Compression::Q8), [0.75; 10]);
    let y = round_trip(&[f32::MIN, 0.0, f32::MAX], &Compression::Q8);
    assert_eq!(y[0], f32::MIN);
    assert_eq!(y[2], f32::MAX);
    assert!(y[1].abs() <= f32::MAX / 250.0);
}

#[test]
fn top_k_is_exact_on_the_kept_entries() {
    let x = sample(1000, 4);
    let y = round_trip(&x, &Compression::TopK { fraction: 0.1 });
    let kept: Vec<usize> = (0..x.len()).filter(|&i| y[i] != 0.0).collect();
    assert_eq!(kept.len(), 100);
    let smallest_kept = kept.iter().map(|&i| x[i].abs()).fold(f32::INFINITY, f32::min);
    for i in 0..x.len() {
        if y[i] != 0.0 {
            assert_eq!(y[i], x[i]);
        } else {
            assert!(x[i].abs() <= smallest_kept);
        }
    }
}

#[test]
fn random_k_keeps_k_scaled_values() {
    let x: Vec<f32> = (1..=100).map(|i| i as f32).collect();
    for seed in 0..5 {
        let bytes = encode(&x, &Compression::RandK { fraction: 0.1 }, None, &mut rng(seed)).unwrap();
        assert_eq!(bytes.len(), 3 + 8 + 1 + 8 + 40);
        let y = decode(&bytes, 100).unwrap();
        let kept: Vec<usize> = (0..100).filter(|&i| y[i] != 0.0).collect();
        assert_eq!(kept.len(), 10);
        for &i in &kept {
            assert_eq!(y[i], x[i] * 10.0);
        }
    }
}

#[test]
fn random_k_is_unbiased() {
    let n = 20;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 9.5) / 10.0).collect();
    let how = Compression::RandK { fraction: 0.25 };
    let trials = 20_000;
    let mut sum = vec![0.0f64; n];
    let mut r = rng(7);
    for _ in 0..trials {
        let y = decode(&encode(&x, &how, None, &mut r).unwrap(), n).unwrap();
        for (s, v) in sum.iter_mut().zip(&y) {
            *s += *v as f64;
        }
    }
    for i in 0..n {
        let mean = sum[i] / trials as f64;
        // One draw has standard deviation |x|·sqrt(n/k − 1).
        let sd = (x[i] as f64).abs() * 3f64.sqrt() / (trials as f64).sqrt();
        assert!((mean - x[i] as f64).abs() <= 5.0 * sd + 1e-9, "{i}: mean {mean} vs {}", x[i]);
    }
}

#[test]
fn qsgd_sends_signed_levels_of_the_norm() {
    let x = sample(1000, 5);
    let norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    for levels in [1u32, 4, 16, 255] {
        let y = round_trip(&x, &Compression::Qsgd { levels });
        for (a, b) in x.iter().zip(&y) {
            let level = (*b as f64).abs() / norm * levels as f64;
            assert!((level - level.round()).abs() < 1e-4, "{b} is not a level");
            assert!(level <= levels as f64 + 1e-4);
            // Stochastic rounding only ever picks one of the two neighbouring levels.
            let exact = (*a as f64).abs() / norm * levels as f64;
            assert!(level.round() >= (exact - 1e-4).floor() && level.round() <= (exact + 1e-4).ceil(), "{a} → {b}");
            assert!(*b == 0.0 || (*a < 0.0) == (*b < 0.0));
        }
    }
    // Integral levels are exact: [3, −4, 0] has norm 5.
    assert_eq!(round_trip(&[3.0, -4.0, 0.0], &Compression::Qsgd { levels: 5 }), [3.0, -4.0, 0.0]);
    assert_eq!(round_trip(&[0.0; 7], &Compression::Qsgd { levels: 5 }), [0.0; 7]);
}

#[test]
fn qsgd_is_unbiased() {
    let x = [0.3f32, -0.05, 0.0, 0.7, -0.41, 0.12, 0.01, -0.9, 0.25, 0.5];
    let norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let (levels, trials) = (2u32, 20_000);
    let mut sum = [0.0f64; 10];
    let mut r = rng(8);
    for _ in 0..trials {
        let y = decode(&encode(&x, &Compression::Qsgd { levels }, None, &mut r).unwrap(), 10).unwrap();
        for (s, v) in sum.iter_mut().zip(&y) {
            *s += *v as f64;
        }
    }
    // One draw is off by at most one level step norm/s, so its standard deviation is ≤ step/2.
    let sd = norm / levels as f64 / 2.0 / (trials as f64).sqrt();
    for i in 0..10 {
        let mean = sum[i] / trials as f64;
        assert!((mean - x[i] as f64).abs() <= 5.0 * sd, "{i}: mean {mean} vs {}", x[i]);
    }
}

#[test]
fn top_k_q8_keeps_the_top_k_quantised() {
    let x = sample(2000, 6);
    let y = round_trip(&x, &Compression::TopKQ8 { fraction: 0.05 });
    let exact = round_trip(&x, &Compression::TopK { fraction: 0.05 });
    let lo = exact.iter().copied().filter(|v| *v != 0.0).fold(f32::INFINITY, f32::min);
    let hi = exact.iter().copied().filter(|v| *v != 0.0).fold(f32::NEG_INFINITY, f32::max);
    for (a, b) in exact.iter().zip(&y) {
        assert!((a - b).abs() <= (hi - lo) / 510.0 * 1.0001, "{a} vs {b}");
        if *a == 0.0 {
            assert_eq!(*b, 0.0);
        }
    }
}

#[test]
fn every_codec_handles_empty_and_single_values() {
    for how in all_codecs() {
        assert_eq!(round_trip(&[], &how), Vec::<f32>::new(), "{how}");
        let y = round_trip(&[-0.5], &how);
        match how {
            Compression::Q8 | Compression::None | Compression::TopK { .. } | Compression::RandK { .. } => {
                assert_eq!(y, [-0.5], "{how}")
            }
            _ => assert!((y[0] + 0.5).abs() < 1e-6, "{how}: {y:?}"),
        }
    }
}

#[test]
fn encoding_is_deterministic_given_the_rng() {
    let x = sample(500, 9);
    for how in all_codecs() {
        let a = encode(&x, &how, None, &mut rng(3)).unwrap();
        assert_eq!(a, encode(&x, &how, None, &mut rng(3)).unwrap(), "{how}");
        assert_eq!(peek_compression(&a).unwrap(), how);
    }
}

#[test]
fn encode_rejects_non_finite_and_overflowing_input() {
    for how in all_codecs() {
        let err = encode(&[1.0, f32::NAN], &how, None, &mut rng(0)).unwrap_err();
        assert!(matches!(err, CodecError::NonFiniteInput { index: 1, .. }), "{how}: {err}");
        let err = encode(&[f32::NEG_INFINITY], &how, None, &mut rng(0)).unwrap_err();
        assert!(matches!(err, CodecError::NonFiniteInput { index: 0, .. }), "{how}: {err}");
    }
    let big = [f32::MAX, f32::MAX, f32::MAX, f32::MAX];
    let err = encode(&big, &Compression::RandK { fraction: 0.25 }, None, &mut rng(0)).unwrap_err();
    assert!(matches!(err, CodecError::Overflow { .. }), "{err}");
    let err = encode(&big, &Compression::Qsgd { levels: 4 }, None, &mut rng(0)).unwrap_err();
    assert!(matches!(err, CodecError::Overflow { .. }), "{err}");
}

// ---------------------------------------------------------------- the wire format, byte by byte

#[test]
fn wire_format_examples() {
    let mut r = rng(0);
    // none
    let mut want = vec![1, TAG_NONE, 2];
    want.extend(f32s(&[1.5, -2.0]));
    assert_eq!(encode(&[1.5, -2.0], &Compression::None, None, &mut r).unwrap(), want);
    // q8: chunk 1024 = varint 0x80 0x08, min 0, max 1, codes round(0, 255, 127.5 → 128)
    let mut want = vec![1, TAG_Q8, 3, 0x80, 0x08];
    want.extend(f32s(&[0.0, 1.0]));
    want.extend([0, 255, 128]);
    assert_eq!(encode(&[0.0, 1.0, 0.5], &Compression::Q8, None, &mut r).unwrap(), want);
    // topk: fraction f64, k = 2, index 0, gap 4, values
    let mut want = vec![1, TAG_TOPK, 5];
    want.extend(0.4f64.to_le_bytes());
    want.extend([2, 0, 4]);
    want.extend(f32s(&[0.5, -0.3]));
    let g0 = [0.5, -0.1, 0.2, 0.05, -0.3];
    assert_eq!(encode(&g0, &Compression::TopK { fraction: 0.4 }, None, &mut r).unwrap(), want);
    // topk+q8: the same indices, then a Q8 block of the two values
    let mut want = vec![1, TAG_TOPK_Q8, 5];
    want.extend(0.4f64.to_le_bytes());
    want.extend([2, 0, 4, 0x80, 0x08]);
    want.extend(f32s(&[-0.3, 0.5]));
    want.extend([255, 0]);
    assert_eq!(encode(&g0, &Compression::TopKQ8 { fraction: 0.4 }, None, &mut r).unwrap(), want);
    // qsgd, s = 5: levels varint, norm 5, codes 3<<1|0 = 6 and 4<<1|1 = 9 and 0 at 4 bits each
    let mut want = vec![1, TAG_QSGD, 3, 5];
    want.extend(f32s(&[5.0]));
    want.extend([0x96, 0x00]);
    assert_eq!(encode(&[3.0, -4.0, 0.0], &Compression::Qsgd { levels: 5 }, None, &mut r).unwrap(), want);
    // randk: fraction, k = 1, seed, the value times n/k = 2
    let bytes = encode(&[1.0, 1.0], &Compression::RandK { fraction: 0.5 }, None, &mut r).unwrap();
    let mut want = vec![1, TAG_RANDK, 2];
    want.extend(0.5f64.to_le_bytes());
    want.push(1);
    want.extend(&bytes[12..20]); // the seed
    want.extend(f32s(&[2.0]));
    assert_eq!(bytes, want);
}

#[test]
fn qsgd_packs_codes_at_the_minimal_width() {
    for (levels, bits) in [(1, 2), (2, 3), (3, 3), (4, 4), (16, 6), (255, 9), (256, 10), (65535, 17), (65536, 18)] {
        assert_eq!(quantize::qsgd_code_bits(levels), bits, "{levels}");
        let x = sample(1001, 10);
        let bytes = encode(&x, &Compression::Qsgd { levels }, None, &mut rng(0)).unwrap();
        let header = 2 + varint::encoded_len(1001) + varint::encoded_len(levels as u64) + 4;
        assert_eq!(bytes.len(), header + (1001 * bits as usize).div_ceil(8), "{levels}");
    }
}

// ---------------------------------------------------------------- malformed input

fn valid_encodings(n: usize) -> Vec<(Compression, Vec<u8>)> {
    let x = sample(n, 11);
    all_codecs().into_iter().map(|how| (how.clone(), encode(&x, &how, None, &mut rng(2)).unwrap())).collect()
}

#[test]
fn every_truncation_and_any_trailing_byte_is_rejected() {
    for (how, bytes) in valid_encodings(1030) {
        assert!(decode(&bytes, 1030).is_ok());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1030).is_err(), "{how} cut at {cut} of {}", bytes.len());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer, 1030), Err(CodecError::TrailingBytes(1)), "{how}");
    }
}

#[test]
fn header_errors() {
    let bytes = encode(&[1.0, 2.0], &Compression::Q8, None, &mut rng(0)).unwrap();
    assert_eq!(decode(&bytes, 3), Err(CodecError::LengthMismatch { declared: 2, expected: 3 }));
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert_eq!(decode(&v2, 2), Err(CodecError::UnsupportedVersion(2)));
    assert_eq!(peek_compression(&v2), Err(CodecError::UnsupportedVersion(2)));
    let mut tag = bytes.clone();
    tag[1] = 6;
    assert_eq!(decode(&tag, 2), Err(CodecError::UnknownCodec(6)));
    assert!(matches!(decode(&[], 0), Err(CodecError::Truncated { what: "version byte", .. })));
    assert!(matches!(decode(&[1], 0), Err(CodecError::Truncated { what: "codec tag", .. })));
    // A huge declared length is a mismatch, not an allocation.
    let mut huge = vec![1, TAG_NONE];
    varint::put(&mut huge, u64::MAX);
    assert_eq!(decode(&huge, 4), Err(CodecError::LengthMismatch { declared: u64::MAX, expected: 4 }));
    // Overlong and overflowing varints.
    assert!(matches!(decode(&[1, TAG_NONE, 0x80, 0x00], 0), Err(CodecError::BadVarint { .. })));
    assert!(matches!(
        decode(&[1, TAG_NONE, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], 0),
        Err(CodecError::BadVarint { .. })
    ));
    // Parameters out of range.
    for how in [
        Compression::TopK { fraction: 0.0 },
        Compression::RandK { fraction: 1.5 },
        Compression::TopKQ8 { fraction: f64::NAN },
        Compression::Qsgd { levels: 0 },
        Compression::Qsgd { levels: MAX_LEVELS + 1 },
    ] {
        let mut b = Vec::new();
        write_header(&mut b, &how, 0);
        assert!(matches!(decode(&b, 0), Err(CodecError::InvalidCompression { .. })), "{how}");
    }
    let mut b = vec![1, TAG_QSGD, 0];
    varint::put(&mut b, u64::MAX);
    assert!(matches!(peek_compression(&b), Err(CodecError::InvalidCompression { .. })));
}

/// Builds a topk (or topk+q8) body by hand.
fn topk_bytes(n: u64, fraction: f64, k: u64, gaps: &[u64], values: &[f32]) -> Vec<u8> {
    let mut b = vec![1, TAG_TOPK];
    varint::put(&mut b, n);
    b.extend(fraction.to_le_bytes());
    varint::put(&mut b, k);
    for &g in gaps {
        varint::put(&mut b, g);
    }
    b.extend(f32s(values));
    b
}

#[test]
fn sparse_body_errors() {
    // Valid: indices 1 and 3 of 5.
    assert_eq!(decode(&topk_bytes(5, 0.4, 2, &[1, 2], &[7.0, 8.0]), 5).unwrap(), [0.0, 7.0, 0.0, 8.0, 0.0]);
    assert_eq!(
        decode(&topk_bytes(5, 0.4, 2, &[1, 0], &[7.0, 8.0]), 5),
        Err(CodecError::IndicesNotIncreasing { position: 1 })
    );
    assert_eq!(
        decode(&topk_bytes(5, 0.4, 2, &[1, 4], &[7.0, 8.0]), 5),
        Err(CodecError::IndexOutOfRange { position: 1, index: 5, len: 5 })
    );
    assert_eq!(
        decode(&topk_bytes(5, 0.4, 2, &[5, 1], &[7.0, 8.0]), 5),
        Err(CodecError::IndexOutOfRange { position: 0, index: 5, len: 5 })
    );
    assert!(matches!(
        decode(&topk_bytes(5, 0.4, 2, &[1, u64::MAX], &[7.0, 8.0]), 5),
        Err(CodecError::IndexOutOfRange { position: 1, .. })
    ));
    // k must match the fraction; k > len is one such mismatch.
    assert_eq!(
        decode(&topk_bytes(5, 0.4, 3, &[0, 1, 1], &[1.0, 2.0, 3.0]), 5),
        Err(CodecError::BadCount { found: 3, expected: 2 })
    );
    assert_eq!(
        decode(&topk_bytes(5, 1.0, 6, &[0, 1, 1, 1, 1, 1], &[1.0; 6]), 5),
        Err(CodecError::BadCount { found: 6, expected: 5 })
    );
    assert!(matches!(decode(&topk_bytes(5, 0.4, u64::MAX, &[], &[]), 5), Err(CodecError::BadCount { .. })));
    // A large but consistent k with no data behind it fails on the size check.
    let n = 1u64 << 31;
    let err = decode(&topk_bytes(n, 1.0, n, &[], &[]), n as usize).unwrap_err();
    assert!(matches!(err, CodecError::Truncated { .. }), "{err}");
    assert!(matches!(
        decode(&topk_bytes(5, 0.4, 2, &[1, 2], &[7.0, f32::INFINITY]), 5),
        Err(CodecError::NonFiniteValue { position: 1, .. })
    ));
    // random-k: non-finite value, and a length that cannot back k values.
    let mut b = encode(&[1.0, 2.0, 3.0, 4.0], &Compression::RandK { fraction: 0.5 }, None, &mut rng(0)).unwrap();
    let last = b.len() - 4;
    b[last..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(decode(&b, 4), Err(CodecError::NonFiniteValue { position: 1, .. })));
    // none: non-finite value.
    let mut b = vec![1, TAG_NONE, 2];
    b.extend(f32s(&[1.0, f32::NAN]));
    assert!(matches!(decode(&b, 2), Err(CodecError::NonFiniteValue { position: 1, .. })));
}

#[test]
fn quantised_body_errors() {
    let q8 = |chunk: u64, ranges: &[(f32, f32)], codes: &[u8], n: u64| {
        let mut b = vec![1, TAG_Q8];
        varint::put(&mut b, n);
        varint::put(&mut b, chunk);
        for &(lo, hi) in ranges {
            b.extend(f32s(&[lo, hi]));
            b.extend(codes);
        }
        b
    };
    assert_eq!(decode(&q8(4, &[(0.0, 1.0)], &[0, 255], 2), 2).unwrap(), [0.0, 1.0]);
    assert_eq!(decode(&q8(1, &[(0.0, 1.0), (2.0, 2.0)], &[0], 2), 2).unwrap(), [0.0, 2.0]);
    assert_eq!(decode(&q8(0, &[(0.0, 1.0)], &[0, 255], 2), 2), Err(CodecError::BadChunkSize));
    for (lo, hi) in [(1.0, 0.0), (f32::NAN, 1.0), (0.0, f32::INFINITY), (f32::NEG_INFINITY, 0.0)] {
        let err = decode(&q8(4, &[(lo, hi)], &[0, 255], 2), 2).unwrap_err();
        assert!(matches!(err, CodecError::BadRange { chunk: 0, .. }), "{err}");
    }
    // A chunk size that implies more ranges than there are bytes.
    assert!(matches!(decode(&q8(1, &[(0.0, 1.0)], &[0, 255], 2), 2), Err(CodecError::Truncated { .. })));

    let qsgd = |levels: u32, norm: f32, packed: &[u8], n: u64| {
        let mut b = vec![1, TAG_QSGD];
        varint::put(&mut b, n);
        varint::put(&mut b, levels as u64);
        b.extend(f32s(&[norm]));
        b.extend(packed);
        b
    };
    assert_eq!(decode(&qsgd(5, 5.0, &[0x96, 0x00], 3), 3).unwrap(), [3.0, -4.0, 0.0]);
    for norm in [f32::NAN, f32::INFINITY, -1.0] {
        assert!(matches!(decode(&qsgd(5, norm, &[0x96, 0x00], 3), 3), Err(CodecError::NonFiniteValue { .. })));
    }
    // Level 6 > s = 5 (code 6<<1 = 12 = 0xc).
    assert_eq!(
        decode(&qsgd(5, 5.0, &[0x9c, 0x00], 3), 3),
        Err(CodecError::BadLevel { position: 0, level: 6, levels: 5 })
    );
    // A negative zero (code 1) and nonzero padding are not canonical.
    assert!(matches!(decode(&qsgd(5, 5.0, &[0x96, 0x01], 3), 3), Err(CodecError::NonCanonical(_))));
    assert!(matches!(decode(&qsgd(5, 5.0, &[0x96, 0x10], 3), 3), Err(CodecError::NonCanonical(_))));
    assert!(matches!(decode(&qsgd(5, 5.0, &[0x96], 3), 3), Err(CodecError::Truncated { .. })));
    assert_eq!(decode(&qsgd(5, 5.0, &[0x96, 0x00, 0x00], 3), 3), Err(CodecError::TrailingBytes(1)));
}

// ---------------------------------------------------------------- properties

fn codec_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Q8),
        (0.001f64..=1.0).prop_map(|fraction| Compression::TopK { fraction }),
        (0.001f64..=1.0).prop_map(|fraction| Compression::RandK { fraction }),
        (1u32..=MAX_LEVELS).prop_map(|levels| Compression::Qsgd { levels }),
        (1u32..=8).prop_map(|levels| Compression::Qsgd { levels }),
        (0.001f64..=1.0).prop_map(|fraction| Compression::TopKQ8 { fraction }),
    ]
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![any::<f32>().prop_filter("finite", |x| x.is_finite()), -1.0f32..1.0, Just(0.0f32)]
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..64) {
        let _ = decode(&bytes, len);
        let _ = peek_compression(&bytes);
        let _ = ErrorFeedback::from_bytes(&bytes, len);
    }

    #[test]
    fn decode_never_panics_after_a_valid_prefix(
        tag in 0u8..7,
        n in 0u64..40,
        param in prop_oneof![Just(vec![]), (0.01f64..=1.0).prop_map(|f| f.to_le_bytes().to_vec()), Just(vec![16u8])],
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![1, tag];
        varint::put(&mut bytes, n);
        bytes.extend(param);
        bytes.extend(tail);
        let _ = decode(&bytes, n as usize);
    }

    #[test]
    fn decode_never_panics_on_edited_encodings(
        x in proptest::collection::vec(-10.0f32..10.0, 0..80),
        how in codec_strategy(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode(&x, &how, None, &mut rng(0)).unwrap();
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Ok(y) = decode(&bytes, x.len()) {
            prop_assert_eq!(y.len(), x.len());
            prop_assert!(y.iter().all(|v| v.is_finite()));
        }
        let _ = decode(&bytes[..cut % (bytes.len() + 1)], x.len());
    }

    #[test]
    fn decoded_updates_have_the_length_and_are_finite(
        x in proptest::collection::vec(finite_f32(), 0..120),
        how in codec_strategy(),
        seed in any::<u64>(),
    ) {
        let mut memory = ErrorFeedback::new(x.len());
        match encode(&x, &how, Some(&mut memory), &mut rng(seed)) {
            Ok(bytes) => {
                prop_assert_eq!(peek_compression(&bytes).unwrap(), how.clone());
                let y = decode(&bytes, x.len()).unwrap();
                prop_assert_eq!(y.len(), x.len());
                prop_assert!(y.iter().all(|v| v.is_finite()));
                prop_assert!(memory.as_slice().iter().all(|v| v.is_finite()));
            }
            // Only scaling (random-k) and QSGD's norm can leave f32's range.
            Err(CodecError::Overflow { .. }) => {
                prop_assert!(matches!(how, Compression::RandK { .. } | Compression::Qsgd { .. }), "{}", how)
            }
            Err(e) => prop_assert!(false, "{}: {}", how, e),
        }
    }

    #[test]
    fn moderate_updates_always_encode(
        x in proptest::collection::vec(-1e6f32..1e6, 0..120),
        how in codec_strategy(),
    ) {
        let bytes = encode(&x, &how, None, &mut rng(0)).unwrap();
        let y = decode(&bytes, x.len()).unwrap();
        prop_assert_eq!(y.len(), x.len());
        if how == Compression::None {
            prop_assert_eq!(y, x);
        }
    }
}
