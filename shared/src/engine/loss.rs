//! Softmax cross-entropy, the loss of every classifier here (PyTorch's `CrossEntropyLoss` with
//! mean reduction).

/// Mean loss over the batch and the number of correct argmax predictions. Writes
/// d(mean loss)/d(logits) into `dlogits` when given.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    mut dlogits: Option<&mut [f32]>,
) -> (f64, usize) {
    let batch = labels.len();
    let mut total = 0.0f64;
    let mut correct = 0;
    for (b, &label) in labels.iter().enumerate() {
        let row = &logits[b * classes..(b + 1) * classes];
        let (argmax, max) = row
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best });
        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        let log_sum = sum.ln();
        total += log_sum - f64::from(row[label as usize] - max);
        correct += usize::from(argmax == label as usize);
        if let Some(d) = dlogits.as_deref_mut() {
            let drow = &mut d[b * classes..(b + 1) * classes];
            for (i, (dv, &v)) in drow.iter_mut().zip(row).enumerate() {
                let p = (f64::from(v - max).exp() / sum) as f32;
                *dv = (p - if i == label as usize { 1.0 } else { 0.0 }) / batch as f32;
            }
        }
    }
    (total / batch.max(1) as f64, correct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        // logits [1, 2, 3], label 2: loss = ln(e + e² + e³) − 3 = 0.40760596.
        let (loss, correct) = softmax_cross_entropy(&[1.0, 2.0, 3.0], &[2], 3, None);
        assert!((loss - 0.407_605_96).abs() < 1e-7);
        assert_eq!(correct, 1);
        // Uniform logits: ln(4), and the huge offset must not overflow.
        let (loss, _) = softmax_cross_entropy(&[1e4; 4], &[0], 4, None);
        assert!((loss - 4f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let logits: Vec<f32> = vec![0.3, -1.2, 2.0, 0.5, 0.1, 0.9, -0.4, 1.5];
        let labels = [2u32, 3];
        let mut grad = vec![0.0; 8];
        softmax_cross_entropy(&logits, &labels, 4, Some(&mut grad));
        let eps = 1e-3;
        for i in 0..logits.len() {
            let mut p = logits.clone();
            p[i] += eps;
            let mut m = logits.clone();
            m[i] -= eps;
            let num = (softmax_cross_entropy(&p, &labels, 4, None).0 - softmax_cross_entropy(&m, &labels, 4, None).0)
                / (2.0 * eps as f64);
            assert!((num - grad[i] as f64).abs() < 1e-4, "logit {i}: {num} vs {}", grad[i]);
        }
    }
}
