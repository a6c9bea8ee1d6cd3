//! The CPU engine's GEMM as it runs in the browser (wasm32 + SIMD128, where `gemm` dispatches to
//! its own unpacked kernels), against a naive triple loop: many shapes, odd sizes, transposed
//! (strided) operands, alpha and beta. `cargo test -p webfl-client --target wasm32-unknown-unknown
//! --test cpu_gemm`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;
use webfl_shared::engine::gemm::{Mat, gemm, gemm_matrixmultiply};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// Deterministic values in [-1, 1) without a RNG dependency.
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// An `r × c` view of `data`, stored row-major or (transposed) column-major.
fn view(data: &[f32], r: usize, c: usize, transposed: bool) -> Mat<'_> {
    if transposed { Mat::new(data, c, r).t() } else { Mat::new(data, r, c) }
}

fn naive(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0f64;
            for p in 0..a.cols {
                s += a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * b.cols + j] as f64 };
            c[i * b.cols + j] = (alpha as f64 * s + old) as f32;
        }
    }
}

#[wasm_bindgen_test]
fn matches_naive_product() {
    let sizes = [1usize, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 31, 33];
    let mut seed = 1;
    let mut cases = 0;
    for &m in &sizes {
        for &k in &sizes {
            for &n in &sizes {
                // Every layout on a subset of shapes; all shapes see the two layouts training uses.
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    if (m + k + n) % 3 != 0 && (ta, tb) == (true, true) {
                        continue;
                    }
                    for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-1.5, 0.25)] {
                        seed += 1;
                        let ad = values(m * k, seed);
                        let bd = values(k * n, seed + 1000);
                        let a = view(&ad, m, k, ta);
                        let b = view(&bd, k, n, tb);
                        // NaNs in c must not survive beta == 0.
                        let init = if beta == 0.0 { vec![f32::NAN; m * n] } else { values(m * n, seed + 2000) };
                        let mut got = init.clone();
                        let mut want = init;
                        gemm(alpha, a, b, beta, &mut got);
                        naive(alpha, a, b, beta, &mut want);
                        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f32).sqrt() * (1.0 + alpha.abs()) + 1e-6;
                            assert!(
                                (g - w).abs() <= tol * (1.0 + w.abs()),
                                "m={m} k={k} n={n} ta={ta} tb={tb} alpha={alpha} beta={beta} at {idx}: {g} vs {w}"
                            );
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 5000);
}

/// The shapes of the benchmark's models (2NN dense layers at batch 10 and 50; the CNN's
/// per-sample convolutions), checked against matrixmultiply.
#[wasm_bindgen_test]
fn matches_matrixmultiply_on_model_shapes() {
    for (m, k, n, ta, tb) in model_shapes() {
        let ad = values(m * k, (m * 7 + k) as u32);
        let bd = values(k * n, (k * 5 + n) as u32);
        let (a, b) = (view(&ad, m, k, ta), view(&bd, k, n, tb));
        let init = values(m * n, 9);
        let mut got = init.clone();
        let mut want = init;
        gemm(1.0, a, b, 1.0, &mut got);
        gemm_matrixmultiply(1.0, a, b, 1.0, &mut want);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "m={m} k={k} n={n}: {g} vs {w}");
        }
    }
}

/// (m, k, n, a transposed, b transposed) as `layers.rs` calls `gemm`.
fn model_shapes() -> Vec<(usize, usize, usize, bool, bool)> {
    let mut v = Vec::new();
    for batch in [10, 50] {
        for (inp, out) in [(784, 200), (200, 200), (200, 10)] {
            v.push((batch, inp, out, false, true)); // y = x·Wᵀ
            v.push((out, batch, inp, true, false)); // dW = dyᵀ·x
            v.push((batch, out, inp, false, false)); // dx = dy·W
        }
        for (inp, out) in [(3136, 512), (512, 10)] {
            v.push((batch, inp, out, false, true));
            v.push((out, batch, inp, true, false));
            v.push((batch, out, inp, false, false));
        }
    }
    for (oc, kl, p) in [(32, 25, 784), (64, 800, 196)] {
        v.push((oc, kl, p, false, false)); // out = W·col
        v.push((oc, p, kl, false, true)); // dW += dy·colᵀ
        v.push((kl, oc, p, true, false)); // dcols = Wᵀ·dy
    }
    v
}
