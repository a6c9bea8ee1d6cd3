//! Criterion benchmarks of the update codecs on a CNN-sized update (the built-in `cnn`,
//! 1,663,370 parameters): encode and decode throughput in MB/s of dense f32 input, and, printed
//! once, the encoded size of each codec against dense f32 with its reconstruction error.
//!
//! The update is real when `data/mnist.wfds` exists (one local epoch of the default plan on 512
//! MNIST training samples, from the PyTorch-default initialisation); otherwise it is the
//! difference of two initialisations scaled by 0.01.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use webfl_shared::backend::CpuBackend;
use webfl_shared::codec::{Compression, ErrorFeedback, decode, encode};
use webfl_shared::model::ModelSpec;
use webfl_shared::rng::derive;
use webfl_shared::train::TrainPlan;

const CODECS: [&str; 7] = ["none", "q8", "topk:0.1", "topk:0.01", "topk:0.01+q8", "randk:0.1", "qsgd:16"];
const SAMPLES: usize = 512;

fn update() -> (Vec<f32>, String) {
    let spec = ModelSpec::builtin("cnn", &[1, 28, 28], 10).unwrap();
    let global = spec.init_params(&mut derive(0, &[0])).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist.wfds");
    if let Ok(bytes) = std::fs::read(path) {
        let split = webfl_shared::data::mnist::decode(&bytes).unwrap();
        let data = split.train.subset(&(0..SAMPLES).collect::<Vec<_>>());
        let plan = TrainPlan::default();
        let mut backend = CpuBackend::new(&spec).unwrap();
        let (local, stats) = backend.train(&global, &data, &plan, &mut derive(0, &[1]), &mut |_| {}).unwrap();
        let how = format!(
            "one local epoch (batch {}, lr {}) on {SAMPLES} MNIST samples, loss {:.3}",
            plan.batch_size, plan.lr, stats.loss
        );
        (local.delta_from(&global).unwrap().into_vec(), how)
    } else {
        let other = spec.init_params(&mut derive(1, &[0])).unwrap();
        let mut delta = other.delta_from(&global).unwrap();
        delta.scale(0.01);
        (delta.into_vec(), "0.01 × (init(seed 1) − init(seed 0)); data/mnist.wfds not found".to_string())
    }
}

fn norm(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| x as f64 * x as f64).sum::<f64>().sqrt()
}

fn print_sizes(x: &[f32], how: &str) {
    let dense = x.len() * 4;
    println!("\ncodec sizes for {} parameters ({how}); dense f32 = {dense} bytes", x.len());
    println!("{:<14} {:>12} {:>10} {:>10}  relative L2 error of one round", "codec", "bytes", "of dense", "ratio");
    let x_norm = norm(x.iter().copied());
    for name in CODECS {
        let codec: Compression = name.parse().unwrap();
        let mut memory = ErrorFeedback::new(x.len());
        let bytes = encode(x, &codec, Some(&mut memory), &mut derive(0, &[2])).unwrap();
        let y = decode(&bytes, x.len()).unwrap();
        let err = norm(x.iter().zip(&y).map(|(a, b)| a - b)) / x_norm;
        println!(
            "{name:<14} {:>12} {:>9.2}% {:>9.1}×  {err:.4}",
            bytes.len(),
            100.0 * bytes.len() as f64 / dense as f64,
            dense as f64 / bytes.len() as f64
        );
    }
    println!();
}

fn codecs(c: &mut Criterion) {
    let (x, how) = update();
    print_sizes(&x, &how);
    let mut group = c.benchmark_group("codec");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    group.throughput(Throughput::BytesDecimal(4 * x.len() as u64));
    for name in CODECS {
        let codec: Compression = name.parse().unwrap();
        let mut rng = derive(0, &[3]);
        let mut memory = ErrorFeedback::new(x.len());
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| encode(&x, &codec, Some(&mut memory), &mut rng).unwrap())
        });
        let bytes = encode(&x, &codec, None, &mut rng).unwrap();
        group.bench_function(BenchmarkId::new("decode", name), |b| b.iter(|| decode(&bytes, x.len()).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
