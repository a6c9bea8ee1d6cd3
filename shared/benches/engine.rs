//! Criterion benchmarks of the CPU engine: one SGD step of the 2NN and the CNN at batch 10 and
//! 50 (reported as samples/s), and a 512³ GEMM (reported as FLOP/s).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use webfl_shared::engine::Network;
use webfl_shared::engine::gemm::{Mat, gemm};
use webfl_shared::model::ModelSpec;
use webfl_shared::rng::derive;
use webfl_shared::train::{Sgd, TrainPlan};

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    for model in ["2nn", "cnn"] {
        for batch in [10usize, 50] {
            let spec = ModelSpec::builtin(model, &[1, 28, 28], 10).unwrap();
            let net = Network::new(&spec).unwrap();
            let mut rng = derive(0, &[]);
            let mut params = spec.init_params(&mut rng).unwrap().into_vec();
            let anchor = params.clone();
            let mut grads = vec![0.0; params.len()];
            let mut ws = net.workspace(batch);
            let input: Vec<f32> = (0..batch * 784).map(|i| (i % 255) as f32 / 255.0).collect();
            let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
            let plan = TrainPlan { lr: 0.01, batch_size: batch, ..Default::default() };
            let mut sgd = Sgd::default();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(model, batch), |b| {
                b.iter(|| {
                    ws.input_mut(batch).copy_from_slice(&input);
                    net.loss_and_grad(&params, &mut ws, &labels, &mut rng, &mut grads);
                    sgd.step(&plan, &mut params, &grads, &anchor);
                })
            });
        }
    }
    group.finish();
}

fn gemm_512(c: &mut Criterion) {
    let n = 512;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.02).collect();
    let mut out = vec![0.0f32; n * n];
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("512", |bch| bch.iter(|| gemm(1.0, Mat::new(&a, n, n), Mat::new(&b, n, n), 0.0, &mut out)));
    group.finish();
}

criterion_group!(benches, train_step, gemm_512);
criterion_main!(benches);
