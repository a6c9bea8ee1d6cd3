//! Finite-difference gradient checks for every layer and for whole networks.
//!
//! The scalar probed is L = Σ r·y for a fixed random `r`, summed in f64, so the analytic
//! gradient of each layer is its backward pass with `dy = r`. Dense and conv are linear in each
//! argument, so central differences are exact up to rounding; inputs of ReLU and max-pool are
//! kept away from their kinks so the step never crosses one.

use rand::Rng as _;
use rand::seq::SliceRandom;

use super::layers::*;
use super::{Mode, Network};
use crate::model::ModelSpec;
use crate::rng::{Rng, derive};

const EPS: f32 = 1e-2;

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// Central differences of `f` w.r.t. each entry of `v`, compared with `analytic`.
fn check(what: &str, v: &mut [f32], analytic: &[f32], mut f: impl FnMut(&[f32]) -> f64, eps: f32) {
    assert_eq!(v.len(), analytic.len());
    let scale = analytic.iter().fold(1e-3f32, |m, g| m.max(g.abs()));
    for i in 0..v.len() {
        let orig = v[i];
        v[i] = orig + eps;
        let plus = f(v);
        v[i] = orig - eps;
        let minus = f(v);
        v[i] = orig;
        let numeric = (plus - minus) / (2.0 * f64::from(eps));
        let err = (numeric - f64::from(analytic[i])).abs();
        assert!(err <= 1e-3 * f64::from(scale) + 1e-5, "{what}[{i}]: numeric {numeric} vs analytic {}", analytic[i]);
    }
}

#[test]
fn dense_gradients() {
    let (batch, inp, out) = (3, 5, 4);
    let mut rng = derive(1, &[]);
    let (mut x, mut w, mut b, r) = (
        random(&mut rng, batch * inp),
        random(&mut rng, out * inp),
        random(&mut rng, out),
        random(&mut rng, batch * out),
    );
    let (mut dw, mut db, mut dx) = (vec![0.0; out * inp], vec![0.0; out], vec![0.0; batch * inp]);
    dense_backward(&x, &w, &r, &mut dw, &mut db, Some(&mut dx), batch, inp, out);
    let eval = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; batch * out];
        dense_forward(x, w, b, &mut y, batch, inp, out);
        dot(&r, &y)
    };
    let (w0, b0) = (w.clone(), b.clone());
    check("dense dx", &mut x, &dx, |x| eval(x, &w0, &b0), EPS);
    let x0 = x.clone();
    check("dense dw", &mut w, &dw, |w| eval(&x0, w, &b0), EPS);
    check("dense db", &mut b, &db, |b| eval(&x0, &w0, b), EPS);
}

fn conv_case(geom: ConvGeom, batch: usize) {
    let mut rng = derive(2, &[geom.stride as u64, geom.pad as u64]);
    let wl = geom.out_channels * geom.patch_len();
    let mut x = random(&mut rng, batch * geom.in_len());
    let mut w = random(&mut rng, wl);
    let mut b = random(&mut rng, geom.out_channels);
    let r = random(&mut rng, batch * geom.out_len());
    let mut cols = vec![0.0; batch * geom.patch_len() * geom.patches()];
    let mut y = vec![0.0; batch * geom.out_len()];
    conv2d_forward(&geom, &x, &w, &b, &mut y, &mut cols, batch);
    let (mut dw, mut db, mut dx) = (vec![0.0; wl], vec![0.0; geom.out_channels], vec![0.0; batch * geom.in_len()]);
    let mut dcols = vec![0.0; geom.patch_len() * geom.patches()];
    conv2d_backward(&geom, &cols, &w, &r, &mut dw, &mut db, Some((&mut dx, &mut dcols)), batch);
    let eval = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut cols = vec![0.0; batch * geom.patch_len() * geom.patches()];
        let mut y = vec![0.0; batch * geom.out_len()];
        conv2d_forward(&geom, x, w, b, &mut y, &mut cols, batch);
        dot(&r, &y)
    };
    let (w0, b0) = (w.clone(), b.clone());
    check("conv dx", &mut x, &dx, |x| eval(x, &w0, &b0), EPS);
    let x0 = x.clone();
    check("conv dw", &mut w, &dw, |w| eval(&x0, w, &b0), EPS);
    check("conv db", &mut b, &db, |b| eval(&x0, &w0, b), EPS);
}

#[test]
fn conv2d_gradients_same_padding() {
    let g = ConvGeom { in_channels: 2, height: 5, width: 5, out_channels: 3, kernel: 3, stride: 1, pad: 1 };
    conv_case(g, 2);
}

#[test]
fn conv2d_gradients_strided_unpadded_non_square() {
    let g = ConvGeom { in_channels: 3, height: 7, width: 6, out_channels: 2, kernel: 3, stride: 2, pad: 0 };
    conv_case(g, 2);
}

#[test]
fn conv2d_matches_direct_convolution() {
    // A hand-checkable case: 1 channel 3x3 input, 2x2 kernel, padding 1, stride 2.
    let g = ConvGeom { in_channels: 1, height: 3, width: 3, out_channels: 1, kernel: 2, stride: 2, pad: 1 };
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let w = [1.0, 2.0, 3.0, 4.0];
    let mut y = vec![0.0; g.out_len()];
    let mut cols = vec![0.0; g.patch_len() * g.patches()];
    conv2d_forward(&g, &x, &w, &[0.5], &mut y, &mut cols, 1);
    // Windows (top-left at -1,-1), (-1,1), (1,-1), (1,1) over the zero-padded input.
    assert_eq!(
        y,
        vec![
            4.0 * 1.0 + 0.5,
            3.0 * 2.0 + 4.0 * 3.0 + 0.5,
            2.0 * 4.0 + 4.0 * 7.0 + 0.5,
            5.0 + 2.0 * 6.0 + 3.0 * 8.0 + 4.0 * 9.0 + 0.5
        ]
    );
}

fn distinct_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Values 0.05 apart so a ±EPS step never changes which input wins a pooling window.
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - n as f32 * 0.025).collect();
    v.shuffle(rng);
    v
}

#[test]
fn maxpool_gradients() {
    for (kernel, stride) in [(2, 2), (3, 2)] {
        let g = PoolGeom { channels: 2, height: 6, width: 5, kernel, stride };
        let batch = 2;
        let mut rng = derive(3, &[kernel as u64]);
        let mut x = distinct_values(&mut rng, batch * g.in_len());
        let r = random(&mut rng, batch * g.out_len());
        let mut y = vec![0.0; batch * g.out_len()];
        let mut arg = vec![0; batch * g.out_len()];
        maxpool_forward(&g, &x, &mut y, &mut arg, batch);
        let mut dx = vec![0.0; batch * g.in_len()];
        maxpool_backward(&g, &arg, &r, &mut dx, batch);
        check(
            "maxpool dx",
            &mut x,
            &dx,
            |x| {
                let mut y = vec![0.0; batch * g.out_len()];
                let mut arg = vec![0; batch * g.out_len()];
                maxpool_forward(&g, x, &mut y, &mut arg, batch);
                dot(&r, &y)
            },
            EPS,
        );
    }
}

#[test]
fn relu_and_dropout_gradients() {
    let mut rng = derive(4, &[]);
    // Keep inputs at least 0.1 from the kink at 0.
    let mut x: Vec<f32> = random(&mut rng, 40).into_iter().map(|v| v + 0.1 * v.signum()).collect();
    let r = random(&mut rng, 40);
    let mut y = vec![0.0; 40];
    relu_forward(&x, &mut y);
    let mut d = r.clone();
    relu_backward(&y, &mut d);
    check(
        "relu dx",
        &mut x,
        &d,
        |x| {
            let mut y = vec![0.0; 40];
            relu_forward(x, &mut y);
            dot(&r, &y)
        },
        EPS,
    );

    let mask: Vec<f32> = (0..40).map(|i| if i % 3 == 0 { 0.0 } else { 1.25 }).collect();
    let mut d = r.clone();
    dropout_backward(&mask, &mut d);
    check(
        "dropout dx",
        &mut x,
        &d,
        |x| {
            let mut y = vec![0.0; 40];
            dropout_forward(x, &mask, &mut y);
            dot(&r, &y)
        },
        EPS,
    );
}

/// Whole-network check of every parameter's gradient through the loss, in train mode with a
/// fixed dropout mask (the generator is re-seeded for every evaluation).
fn network_case(spec_json: &str) {
    let spec = ModelSpec::from_json(spec_json).unwrap();
    let net = Network::new(&spec).unwrap();
    let batch = 3;
    let mut rng = derive(5, &[]);
    let mut params = spec.init_params(&mut rng).unwrap().into_vec();
    let x = random(&mut rng, batch * net.input_len());
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % net.classes() as u32).collect();
    let mut ws = net.workspace(batch);
    let mut grads = vec![0.0; params.len()];
    ws.input_mut(batch).copy_from_slice(&x);
    net.loss_and_grad(&params, &mut ws, &labels, &mut derive(9, &[]), &mut grads);
    let mut loss_at = |p: &[f32]| {
        ws.input_mut(batch).copy_from_slice(&x);
        let logits = net.forward(p, &mut ws, batch, Mode::Train(&mut derive(9, &[])));
        super::loss::softmax_cross_entropy(logits, &labels, net.classes(), None).0
    };
    // Smaller step: the loss is smooth but ReLU kinks are not controlled here.
    check("network params", &mut params, &grads, &mut loss_at, 1e-3);
}

#[test]
fn network_gradients_mlp_with_dropout() {
    network_case(
        r#"{"input_shape":[6],"layers":[{"type":"dense","out":7},{"type":"relu"},
        {"type":"dropout","p":0.3},{"type":"dense","out":5},{"type":"relu"},{"type":"dense","out":3}]}"#,
    );
}

#[test]
fn network_gradients_small_cnn() {
    network_case(
        r#"{"input_shape":[2,6,6],"layers":[
        {"type":"conv2d","out_channels":3,"kernel":3,"padding":"same"},{"type":"relu"},
        {"type":"max_pool2d","kernel":2},
        {"type":"conv2d","out_channels":2,"kernel":2,"stride":1},{"type":"relu"},
        {"type":"flatten"},{"type":"dense","out":4},{"type":"relu"},{"type":"dense","out":3}]}"#,
    );
}

/// im2col against its definition, and col2im as its exact adjoint (⟨im2col x, c⟩ = ⟨x, col2im c⟩),
/// over strides, paddings and kernels that exercise every edge of the valid-range arithmetic.
#[test]
fn im2col_matches_definition_and_col2im_is_its_adjoint() {
    let mut rng = derive(6, &[]);
    for (h, w, kernel, stride, pad) in
        [(5, 5, 3, 1, 1), (7, 6, 3, 2, 0), (6, 7, 5, 3, 2), (4, 4, 1, 1, 0), (3, 5, 4, 2, 3), (8, 3, 2, 1, 0)]
    {
        let g = ConvGeom { in_channels: 2, height: h, width: w, out_channels: 1, kernel, stride, pad };
        let (oh, ow) = (g.out_height(), g.out_width());
        let x = random(&mut rng, g.in_len());
        let mut cols = vec![f32::NAN; g.patch_len() * g.patches()];
        g.im2col(&x, &mut cols);
        for c in 0..2 {
            for ki in 0..kernel {
                for kj in 0..kernel {
                    let row = (c * kernel + ki) * kernel + kj;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (iy, ix) = (
                                (oy * stride + ki) as isize - pad as isize,
                                (ox * stride + kj) as isize - pad as isize,
                            );
                            let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                            let want = if inside { x[c * h * w + iy as usize * w + ix as usize] } else { 0.0 };
                            assert_eq!(
                                cols[row * oh * ow + oy * ow + ox],
                                want,
                                "geometry {g:?} row {row} ({oy},{ox})"
                            );
                        }
                    }
                }
            }
        }
        let c = random(&mut rng, cols.len());
        let mut back = vec![f32::NAN; g.in_len()];
        g.col2im(&c, &mut back);
        let (lhs, rhs) = (dot(&cols, &c), dot(&x, &back));
        assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
    }
}
