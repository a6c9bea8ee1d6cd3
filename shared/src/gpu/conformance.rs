//! The backend conformance suite, written once and run against every engine: natively for the
//! CPU engine and wgpu (`shared/tests/conformance.rs`), and in a browser through
//! wasm-bindgen-test. Each check compares an engine with the CPU reference engine
//! ([`crate::engine::Network`]) with the tolerance stated in the check. Whole trainings and
//! evaluations go through the engine's [`Backend`], the seam every caller uses; single ops
//! through the engine's own test hooks.
#![allow(async_fn_in_trait)]

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng as _;

use super::{GpuBackend, GpuContext};
use crate::backend::{Backend, CpuBackend};
use crate::data::Dataset;
use crate::engine::{Mode, Network, loss};
use crate::model::{Layer, ModelSpec, Padding, PaddingName};
use crate::params::Params;
use crate::rng::derive;
use crate::train::{EvalStats, TrainPlan, TrainStats};

/// What the suite needs from an engine.
pub trait TestEngine {
    /// What whole trainings and evaluations run on.
    type Backend: Backend;
    fn name(&self) -> &str;
    /// The engine's backend for `spec`, built once per model.
    fn backend(&mut self, spec: &ModelSpec) -> &mut Self::Backend;
    /// Inference-mode logits `[batch, classes]` for `x` (`batch` samples).
    async fn logits(&mut self, spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<f32>;
    /// Mean loss and gradient of one training-mode step (`seed` seeds dropout).
    async fn loss_and_grad(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        x: &[f32],
        labels: &[u32],
        seed: u64,
    ) -> (f64, Vec<f32>);
    /// `A[m,k]·B[k,n]` with A, B read through (row, column) strides.
    async fn matmul(
        &mut self,
        mnk: (usize, usize, usize),
        a: &[f32],
        sa: (usize, usize),
        b: &[f32],
        sb: (usize, usize),
    ) -> Vec<f32>;
}

fn cpu_logits(spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<f32> {
    let net = Network::new(spec).expect("spec");
    let b = x.len() / net.input_len();
    let mut ws = net.workspace(b);
    ws.input_mut(b).copy_from_slice(x);
    net.forward(params, &mut ws, b, Mode::Eval).to_vec()
}

fn cpu_loss_and_grad(spec: &ModelSpec, params: &[f32], x: &[f32], labels: &[u32], seed: u64) -> (f64, Vec<f32>) {
    let net = Network::new(spec).expect("spec");
    let mut ws = net.workspace(labels.len());
    ws.input_mut(labels.len()).copy_from_slice(x);
    let mut g = vec![0.0; params.len()];
    let (l, _) = net.loss_and_grad(params, &mut ws, labels, &mut derive(seed, &[]), &mut g);
    (l, g)
}

fn cpu_train(spec: &ModelSpec, global: &Params, data: &Dataset, plan: &TrainPlan, seed: u64) -> (Params, TrainStats) {
    CpuBackend::new(spec)
        .expect("spec")
        .train(global, data, plan, &mut derive(seed, &[]), &mut |_| {})
        .expect("cpu train")
}

fn cpu_evaluate(spec: &ModelSpec, params: &Params, data: &Dataset) -> EvalStats {
    CpuBackend::new(spec).expect("spec").evaluate(params, data).expect("cpu evaluate")
}

fn cpu_matmul(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|t| f64::from(a[i * sa.0 + t * sa.1]) * f64::from(b[t * sb.0 + j * sb.1]))
                .sum::<f64>() as f32;
        }
    }
    c
}

/// The CPU reference engine; one [`CpuBackend`] per model.
#[derive(Default)]
pub struct CpuEngine {
    backends: HashMap<String, CpuBackend>,
}

impl TestEngine for CpuEngine {
    type Backend = CpuBackend;
    fn name(&self) -> &str {
        "cpu"
    }
    fn backend(&mut self, spec: &ModelSpec) -> &mut CpuBackend {
        self.backends.entry(spec.to_json()).or_insert_with(|| CpuBackend::new(spec).expect("spec"))
    }
    async fn logits(&mut self, spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<f32> {
        cpu_logits(spec, params, x)
    }
    async fn loss_and_grad(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        x: &[f32],
        labels: &[u32],
        seed: u64,
    ) -> (f64, Vec<f32>) {
        cpu_loss_and_grad(spec, params, x, labels, seed)
    }
    async fn matmul(
        &mut self,
        mnk: (usize, usize, usize),
        a: &[f32],
        sa: (usize, usize),
        b: &[f32],
        sb: (usize, usize),
    ) -> Vec<f32> {
        cpu_matmul(mnk, a, sa, b, sb)
    }
}

/// The wgpu engine; one [`GpuBackend`] per model, all on one device.
pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    backends: HashMap<String, GpuBackend>,
}

impl GpuEngine {
    /// Panics with a clear message when no adapter exists (install lavapipe natively, or run
    /// Chromium with --enable-unsafe-webgpu).
    pub async fn new() -> Self {
        match GpuContext::new().await {
            // Single-threaded in the browser; GpuBackend shares the context through an Arc.
            #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
            Ok(ctx) => GpuEngine { ctx: Arc::new(ctx), backends: HashMap::new() },
            Err(e) => panic!("no WebGPU/wgpu device for the GPU conformance suite: {e}"),
        }
    }
}

impl TestEngine for GpuEngine {
    type Backend = GpuBackend;
    fn name(&self) -> &str {
        "webgpu"
    }
    fn backend(&mut self, spec: &ModelSpec) -> &mut GpuBackend {
        let ctx = self.ctx.clone();
        self.backends
            .entry(spec.to_json())
            .or_insert_with(|| GpuBackend::new(ctx, spec).unwrap_or_else(|e| panic!("GpuBackend::new: {e}")))
    }
    async fn logits(&mut self, spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<f32> {
        self.backend(spec).forward_logits(params, x).await.unwrap_or_else(|e| panic!("forward: {e}"))
    }
    async fn loss_and_grad(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        x: &[f32],
        labels: &[u32],
        seed: u64,
    ) -> (f64, Vec<f32>) {
        let be = self.backend(spec);
        be.loss_and_grad(params, x, labels, seed as u32).await.unwrap_or_else(|e| panic!("loss_and_grad: {e}"))
    }
    async fn matmul(
        &mut self,
        mnk: (usize, usize, usize),
        a: &[f32],
        sa: (usize, usize),
        b: &[f32],
        sb: (usize, usize),
    ) -> Vec<f32> {
        super::matmul_strided(&self.ctx, mnk, a, sa, b, sb).await.unwrap_or_else(|e| panic!("matmul: {e}"))
    }
}

/// Panics unless every `got[i]` is within `abs + rel·|want[i]|` of `want[i]`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{i}]: got {g}, want {w} (rel {rel}, abs {abs})");
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = derive(seed, &[7]);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn params_for(spec: &ModelSpec, seed: u64) -> Params {
    spec.init_params(&mut derive(seed, &[1])).expect("spec")
}

fn labels(n: usize, classes: usize, seed: u64) -> Vec<u32> {
    let mut r = derive(seed, &[3]);
    (0..n).map(|_| r.random_range(0..classes as u32)).collect()
}

fn spec(input: &[usize], layers: Vec<Layer>) -> ModelSpec {
    ModelSpec { input_shape: input.to_vec(), layers }
}

fn conv(out_channels: usize, kernel: usize, stride: usize, padding: Padding) -> Layer {
    Layer::Conv2d { out_channels, kernel, stride, padding }
}

const SAME: Padding = Padding::Named(PaddingName::Same);
const NONE: Padding = Padding::Explicit(0);

/// The single- and few-layer models every forward/gradient check runs.
fn layer_specs() -> Vec<(&'static str, ModelSpec)> {
    use Layer::*;
    vec![
        ("dense", spec(&[13], vec![Dense { out: 5 }])),
        ("conv s1 same", spec(&[3, 7, 7], vec![conv(4, 3, 1, SAME), Flatten, Dense { out: 3 }])),
        ("conv s2 pad0", spec(&[2, 9, 8], vec![conv(5, 3, 2, NONE), Flatten, Dense { out: 4 }])),
        ("conv 5x5 pad1", spec(&[1, 8, 8], vec![conv(3, 5, 1, Padding::Explicit(1)), Flatten, Dense { out: 2 }])),
        (
            "pool 2x2",
            spec(
                &[2, 6, 6],
                vec![conv(3, 3, 1, SAME), MaxPool2d { kernel: 2, stride: None }, Flatten, Dense { out: 3 }],
            ),
        ),
        (
            "pool 3/2",
            spec(
                &[2, 7, 7],
                vec![conv(3, 3, 1, SAME), MaxPool2d { kernel: 3, stride: Some(2) }, Flatten, Dense { out: 3 }],
            ),
        ),
        ("relu mlp", spec(&[10], vec![Dense { out: 16 }, Relu, Dense { out: 8 }, Relu, Dense { out: 4 }])),
        ("dropout p=0", spec(&[6], vec![Dense { out: 7 }, Dropout { p: 0.0 }, Relu, Dense { out: 3 }])),
        (
            "small cnn",
            spec(
                &[1, 8, 8],
                vec![
                    conv(4, 3, 1, SAME),
                    Relu,
                    MaxPool2d { kernel: 2, stride: None },
                    conv(6, 3, 1, NONE),
                    Relu,
                    Flatten,
                    Dense { out: 5 },
                ],
            ),
        ),
    ]
}

/// Forward logits of every layer spec, batch 3, against the CPU (rel 1e-4, abs 1e-5).
pub async fn forward_matches_cpu<E: TestEngine>(e: &mut E) {
    for (i, (name, s)) in layer_specs().into_iter().enumerate() {
        let p = params_for(&s, i as u64);
        let x = random(3 * s.input_shape.iter().product::<usize>(), i as u64);
        let got = e.logits(&s, p.as_slice(), &x).await;
        assert_close(&format!("{} {name} logits", e.name()), &got, &cpu_logits(&s, p.as_slice(), &x), 1e-4, 1e-5);
    }
}

/// Loss and full gradient of every layer spec against the CPU (rel 1e-3, abs 1e-5), at batch
/// sizes 1, 3 and 7.
pub async fn gradients_match_cpu<E: TestEngine>(e: &mut E) {
    for (i, (name, s)) in layer_specs().into_iter().enumerate() {
        let classes = s.classes().expect("spec");
        for b in [1, 3, 7] {
            let p = params_for(&s, i as u64);
            let x = random(b * s.input_shape.iter().product::<usize>(), 10 + i as u64);
            let y = labels(b, classes, b as u64);
            let (l, g) = e.loss_and_grad(&s, p.as_slice(), &x, &y, 0).await;
            let (lc, gc) = cpu_loss_and_grad(&s, p.as_slice(), &x, &y, 0);
            assert!((l - lc).abs() <= 1e-4 * lc.abs() + 1e-5, "{} {name} b={b}: loss {l} vs {lc}", e.name());
            assert_close(&format!("{} {name} b={b} grad", e.name()), &g, &gc, 1e-3, 1e-5);
        }
    }
}

/// Central differences in f32 (ε = 2e-3) of the engine's own loss on up to 24 coordinates per
/// tensor: |numeric − analytic| ≤ 2e-3 + 5e-2·|analytic|.
pub async fn finite_differences<E: TestEngine>(e: &mut E) {
    for (i, (name, s)) in layer_specs().into_iter().enumerate() {
        let classes = s.classes().expect("spec");
        let p = params_for(&s, i as u64);
        let x = random(2 * s.input_shape.iter().product::<usize>(), 20 + i as u64);
        let y = labels(2, classes, 5);
        let (l0, g) = e.loss_and_grad(&s, p.as_slice(), &x, &y, 0).await;
        let layout = p.layout().clone();
        let (mut checked, mut kinks) = (0, 0);
        for t in 0..layout.tensors().len() {
            let range = layout.range(t);
            let step = (range.len() / 24).max(1);
            for c in range.step_by(step) {
                let eps = 2e-3f32;
                let mut q = p.as_slice().to_vec();
                q[c] += eps;
                let (lp, _) = e.loss_and_grad(&s, &q, &x, &y, 0).await;
                q[c] -= 2.0 * eps;
                let (lm, _) = e.loss_and_grad(&s, &q, &x, &y, 0).await;
                let num = ((lp - lm) / (2.0 * f64::from(eps))) as f32;
                // A ReLU or max-pool switch inside ±ε makes the one-sided slopes disagree;
                // such coordinates say nothing about the gradient.
                let (fwd, bwd) = ((lp - l0) / f64::from(eps), (l0 - lm) / f64::from(eps));
                if (fwd - bwd).abs() > 1e-2 * (fwd.abs() + bwd.abs()) + 4e-3 {
                    kinks += 1;
                    continue;
                }
                checked += 1;
                assert!(
                    (num - g[c]).abs() <= 2e-3 + 5e-2 * g[c].abs(),
                    "{} {name} coordinate {c}: numeric {num} vs analytic {}",
                    e.name(),
                    g[c]
                );
            }
        }
        assert!(kinks * 4 <= checked, "{} {name}: {kinks} of {} coordinates sit on kinks", e.name(), checked + kinks);
    }
}

/// Matrix products whose sizes are not multiples of the tile (both matmul kernels), plain and
/// transposed (rel 1e-4).
pub async fn matmul_odd_sizes<E: TestEngine>(e: &mut E) {
    for (m, n, k) in [(1, 1, 1), (17, 33, 65), (130, 7, 129), (97, 71, 33)] {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (n, 1)), ((k, 1), (1, k)), ((1, m), (1, k))] {
            let got = e.matmul((m, n, k), &a, sa, &b, sb).await;
            let want = cpu_matmul((m, n, k), &a, sa, &b, sb);
            assert_close(&format!("{} matmul {m}x{n}x{k} {sa:?} {sb:?}", e.name()), &got, &want, 1e-4, 1e-5);
        }
    }
}

/// Dropout p=0.5 in training: about half the activations are dropped, the kept ones are scaled
/// by 2, and the backward pass applies the same mask (the loss recomputed from the mask seen in
/// the gradient matches the engine's loss).
pub async fn dropout_mask<E: TestEngine>(e: &mut E) {
    let n = 4000;
    let s = spec(&[n], vec![Layer::Dropout { p: 0.5 }, Layer::Dense { out: 2 }]);
    let mut p = Params::zeros(Arc::new(s.layout().expect("spec")));
    // Row 0 sums its inputs (scaled down), row 1 is zero: logit 0 reveals the mask's sum.
    let w = p.as_mut_slice();
    w[..n].fill(1e-3);
    let x = vec![1.0; n];
    let (l, g) = e.loss_and_grad(&s, p.as_slice(), &x, &[1], 42).await;
    // dW[0, j] = dlogit0 · mask_j.
    let row = &g[..n];
    let dl0 = row.iter().copied().fold(0.0f32, |a, v| if v.abs() > a.abs() { v } else { a }) / 2.0;
    let kept = row.iter().filter(|v| v.abs() > 0.0).count();
    let rate = 1.0 - kept as f64 / n as f64;
    assert!((rate - 0.5).abs() < 0.05, "{}: drop rate {rate}", e.name());
    for (j, v) in row.iter().enumerate() {
        assert!(
            *v == 0.0 || (v - 2.0 * dl0).abs() <= 1e-4 * dl0.abs(),
            "{}: mask value {j} = {v}, want 0 or {}",
            e.name(),
            2.0 * dl0
        );
    }
    let z0 = kept as f32 * 2.0 * 1e-3;
    let (want, _) = loss::softmax_cross_entropy(&[z0, 0.0], &[1], 2, None);
    assert!((l - want).abs() < 1e-3, "{}: loss {l} does not match the mask in the gradient ({want})", e.name());
}

fn synthetic(shape: &[usize], n: usize, classes: usize, seed: u64) -> Dataset {
    let len: usize = shape.iter().product();
    let labels = labels(n, classes, seed);
    let mut r = derive(seed, &[9]);
    // Class-dependent means so training makes progress.
    let features = labels
        .iter()
        .flat_map(|&c| (0..len).map(move |i| if i % classes == c as usize { 1.0 } else { 0.0 }))
        .map(|v: f32| v + r.random_range(-0.3f32..0.3))
        .collect();
    Dataset {
        sample_shape: shape.to_vec(),
        classes,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        features,
        labels,
    }
}

async fn train_matches<E: TestEngine>(e: &mut E, s: ModelSpec, shape: &[usize]) {
    let data = synthetic(shape, 93, 10, 4);
    let global = params_for(&s, 8);
    let plan = TrainPlan { epochs: 3, batch_size: 20, lr: 0.05, momentum: 0.9, weight_decay: 1e-3, prox_mu: 0.1 };
    let name = e.name().to_string();
    let (got, stats) = e
        .backend(&s)
        .train(&global, &data, &plan, &mut derive(5, &[]), &mut |_| {})
        .await
        .unwrap_or_else(|err| panic!("{name} train: {err}"));
    let (want, cpu) = cpu_train(&s, &global, &data, &plan, 5);
    assert_eq!(stats.steps, cpu.steps);
    assert_eq!(stats.examples, cpu.examples);
    assert!(
        (stats.loss - cpu.loss).abs() < 1e-3 * cpu.loss.abs() + 1e-4,
        "{}: loss {} vs {}",
        e.name(),
        stats.loss,
        cpu.loss
    );
    assert!(
        (stats.accuracy - cpu.accuracy).abs() <= 2.0 / 93.0,
        "{}: accuracy {} vs {}",
        e.name(),
        stats.accuracy,
        cpu.accuracy
    );
    assert_close(&format!("{} trained weights", e.name()), got.as_slice(), want.as_slice(), 1e-2, 1e-4);
}

/// 2nn, 3 epochs of 93 samples at batch 20 (partial last batch), momentum, weight decay and
/// FedProx: weights within rel 1e-2 / abs 1e-4 of the CPU run's.
pub async fn train_2nn_matches_cpu<E: TestEngine>(e: &mut E) {
    let s = ModelSpec::builtin("2nn", &[1, 6, 6], 10).expect("2nn");
    train_matches(e, s, &[1, 6, 6]).await;
}

/// A small CNN (conv, relu, pool, conv, relu, dense), same plan and tolerance as the 2nn.
pub async fn train_cnn_matches_cpu<E: TestEngine>(e: &mut E) {
    use Layer::*;
    let s = spec(
        &[1, 8, 8],
        vec![
            conv(4, 3, 1, SAME),
            Relu,
            MaxPool2d { kernel: 2, stride: None },
            conv(8, 3, 1, NONE),
            Relu,
            Flatten,
            Dense { out: 10 },
        ],
    );
    train_matches(e, s, &[1, 8, 8]).await;
}

/// evaluate() on 300 samples (more than one evaluation batch) matches the CPU (1e-4).
pub async fn evaluate_matches_cpu<E: TestEngine>(e: &mut E) {
    let s = ModelSpec::builtin("mlp", &[1, 6, 6], 10).expect("mlp");
    let data = synthetic(&[1, 6, 6], 300, 10, 6);
    let p = params_for(&s, 3);
    let name = e.name().to_string();
    let got = e.backend(&s).evaluate(&p, &data).await.unwrap_or_else(|err| panic!("{name} evaluate: {err}"));
    let want = cpu_evaluate(&s, &p, &data);
    assert_eq!(got.examples, want.examples);
    assert!((got.loss - want.loss).abs() < 1e-4 * want.loss.abs() + 1e-5, "{}: {got:?} vs {want:?}", e.name());
    assert!((got.accuracy - want.accuracy).abs() < 1e-9, "{}: {got:?} vs {want:?}", e.name());
}

/// Expands to one test per conformance check for the engine `$engine` (an expression evaluated
/// inside an async block, so it may `.await`). `native` emits `#[test]` functions that block
/// with pollster; `wasm` emits `#[wasm_bindgen_test] async fn`s (the caller depends on
/// `wasm-bindgen-test`).
#[macro_export]
macro_rules! backend_conformance_suite {
    ($engine:expr, native) => {
        $crate::backend_conformance_suite!(@each native $engine;
            forward_matches_cpu, gradients_match_cpu, finite_differences, matmul_odd_sizes, dropout_mask,
            train_2nn_matches_cpu, train_cnn_matches_cpu, evaluate_matches_cpu);
    };
    ($engine:expr, wasm) => {
        $crate::backend_conformance_suite!(@each wasm $engine;
            forward_matches_cpu, gradients_match_cpu, finite_differences, matmul_odd_sizes, dropout_mask,
            train_2nn_matches_cpu, train_cnn_matches_cpu, evaluate_matches_cpu);
    };
    (@each native $engine:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                $crate::gpu::block_on(async {
                    let mut engine = $engine;
                    $crate::gpu::conformance::$check(&mut engine).await
                })
            }
        )*
    };
    (@each wasm $engine:expr; $($check:ident),*) => {
        $(
            #[::wasm_bindgen_test::wasm_bindgen_test]
            async fn $check() {
                let mut engine = $engine;
                $crate::gpu::conformance::$check(&mut engine).await
            }
        )*
    };
}
