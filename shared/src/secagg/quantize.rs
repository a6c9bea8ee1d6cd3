//! Float updates to ring elements and back, with Flower's SecAgg+ arithmetic
//! (`flwr.common.secure_aggregation.quantization`): clip to [−r, r], scale to [0, L] by
//! (x + r) · L / (2r), then round *stochastically* — up with probability equal to the fraction —
//! so the quantized value is unbiased. A sum of n quantized vectors dequantizes as
//! sum · 2r / L − n · r.

use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantizeError {
    #[error("value {index} is NaN, which has no place in the clipping range")]
    NotANumber { index: usize },
}

/// Each value as an integer in [0, `levels`]. Infinities clip like any other large value.
pub fn quantize(
    values: &[f32],
    clipping_range: f32,
    levels: u32,
    rng: &mut impl Rng,
) -> Result<Vec<u32>, QuantizeError> {
    let range = f64::from(clipping_range);
    let scale = f64::from(levels) / (2.0 * range);
    values
        .iter()
        .enumerate()
        .map(|(index, &x)| {
            if x.is_nan() {
                return Err(QuantizeError::NotANumber { index });
            }
            let scaled = (f64::from(x).clamp(-range, range) + range) * scale;
            // Flower: ceil, then down by one with probability ceil − value.
            let mut rounded = scaled.ceil();
            if rng.random::<f64>() < rounded - scaled {
                rounded -= 1.0;
            }
            // (2r) · (L / 2r) may land a hair above L in floating point; L is the top.
            Ok(rounded.clamp(0.0, f64::from(levels)) as u32)
        })
        .collect()
}

/// The float sum of `contributions` vectors whose quantized sum is `sum`.
pub fn dequantize_sum(sum: &[u32], contributions: usize, clipping_range: f32, levels: u32) -> Vec<f32> {
    let range = f64::from(clipping_range);
    let step = 2.0 * range / f64::from(levels);
    let offset = contributions as f64 * range;
    sum.iter().map(|&q| (f64::from(q) * step - offset) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn quantization_matches_flower_on_the_spot_check() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let q = quantize(&[-8.0, -1.0, 0.0, 1.0, 0.5, 8.0, 100.0], 8.0, 1 << 22, &mut rng).unwrap();
        assert_eq!(q, [0, 1835008, 2097152, 2359296, 2228224, 4194304, 4194304]);
        assert_eq!(dequantize_sum(&q[..4], 1, 8.0, 1 << 22), [-8.0, -1.0, 0.0, 1.0]);
        // Three contributions of 1.0 sum to 3·2359296 and dequantize to 3.0 (offset 3r).
        assert_eq!(dequantize_sum(&[3 * 2359296], 3, 8.0, 1 << 22), [3.0]);
    }

    #[test]
    fn stochastic_rounding_is_unbiased_and_stays_in_range() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        // 0.3 with r = 1, L = 10 scales to 6.5: half the draws 6, half 7.
        let q = quantize(&[0.3; 10_000], 1.0, 10, &mut rng).unwrap();
        assert!(q.iter().all(|&v| v == 6 || v == 7));
        let mean = q.iter().map(|&v| f64::from(v)).sum::<f64>() / q.len() as f64;
        assert!((mean - 6.5).abs() < 0.03, "{mean}");
        let edges = quantize(&[f32::INFINITY, f32::NEG_INFINITY, 0.1], 0.1, 7, &mut rng).unwrap();
        assert_eq!(edges, [7, 0, 7]);
        assert_eq!(quantize(&[0.0, f32::NAN], 1.0, 10, &mut rng), Err(QuantizeError::NotANumber { index: 1 }));
    }
}
