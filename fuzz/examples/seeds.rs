//! Writes the seed corpora: valid inputs for every fuzz target, so the fuzzers start past the
//! headers. `scripts/fuzz` runs it before fuzzing; nothing binary is committed.
//!
//! Usage: `cargo run --example seeds -- CORPUS_DIR` (writes `CORPUS_DIR/<target>/seed-*`).

use std::path::Path;

use webfl_shared::codec::{self, ErrorFeedback};
use webfl_shared::data::mnist;
use webfl_shared::data::{Dataset, Split};
use webfl_shared::params::{Layout, Params, TensorSpec};
use webfl_shared::pipeline;
use webfl_shared::rng;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds CORPUS_DIR");
    let dir = Path::new(&dir);
    let mut written = 0;
    for (target, seeds) in
        [("update_decode", updates()), ("safetensors", safetensors()), ("wfds", wfds()), ("csv", csv())]
    {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).expect("creating the corpus folder");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i:02}")), seed).expect("writing a seed");
        }
        println!("{target}: {} seeds, {} bytes", seeds.len(), seeds.iter().map(Vec::len).sum::<usize>());
        written += seeds.len();
    }
    println!("{written} seeds in {}", dir.display());
}

/// Small values in [-0.05, 0.05), varied by `seed`: an update well inside the dense spec's clip
/// bound of 1.
fn small_values(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| ((i.wrapping_add(seed * 7919)).wrapping_mul(2_654_435_761) % 1000) as f32 / 10_000.0 - 0.05)
        .collect()
}

/// Uploads as clients prepare them under each spec (two rounds for the error-feedback codecs, so
/// the second carries a residual), and raw encodings at the other lengths the target decodes.
fn updates() -> Vec<Vec<u8>> {
    let layout = webfl_fuzz::layout();
    let mut seeds = Vec::new();
    for (s, spec) in webfl_fuzz::update_specs().iter().enumerate() {
        let mut memory = ErrorFeedback::new(layout.len());
        for round in 0..2 {
            let values = small_values(layout.len(), (s * 2 + round) as u64);
            let mut delta = Params::from_vec(layout.clone(), values).unwrap();
            let memory = spec.compression.uses_error_feedback().then_some(&mut memory);
            let prepared =
                pipeline::prepare(&mut delta, spec, memory, &mut rng::derive(1, &[]), &mut rng::derive(2, &[]))
                    .expect("preparing a valid update");
            seeds.push(prepared.body);
        }
        for len in webfl_fuzz::CODEC_LENGTHS {
            seeds.push(
                codec::encode(&small_values(len, 99), &spec.compression, None, &mut rng::derive(3, &[])).unwrap(),
            );
        }
    }
    seeds
}

/// The fuzzing 2NN's parameters (initialised, and all zero), and a file of other tensors.
fn safetensors() -> Vec<Vec<u8>> {
    let initialised = webfl_fuzz::two_nn().init_params(&mut rng::derive(4, &[])).unwrap();
    let zeros = Params::zeros(webfl_fuzz::layout());
    let other = Layout::new(vec![TensorSpec::new("w", vec![2, 3]), TensorSpec::new("b", vec![2])]).unwrap();
    let other = Params::from_vec(other.into(), small_values(8, 5)).unwrap();
    [initialised, zeros, other].iter().map(|p| p.to_safetensors().unwrap()).collect()
}

fn dataset(shape: &[usize], classes: usize, labels: &[u32]) -> Dataset {
    let len: usize = shape.iter().product::<usize>() * labels.len();
    Dataset {
        sample_shape: shape.to_vec(),
        classes,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        features: (0..len).map(|i| (i % 256) as f32 / 255.0).collect(),
        labels: labels.to_vec(),
    }
}

/// Images (`[1, 2, 2]`, 3 classes), tabular rows, and a split with no samples at all.
fn wfds() -> Vec<Vec<u8>> {
    let splits = [
        Split { train: dataset(&[1, 2, 2], 3, &[0, 2, 1, 1]), test: dataset(&[1, 2, 2], 3, &[2, 0]) },
        Split { train: dataset(&[3], 1, &[]), test: dataset(&[3], 1, &[0]) },
        Split { train: dataset(&[2, 1, 1], 256, &[]), test: dataset(&[2, 1, 1], 256, &[]) },
    ];
    splits.iter().map(|s| mnist::encode(s).unwrap()).collect()
}

/// CSV texts (header or not, label first or named, string labels, CRLF, a BOM, quotes, extreme
/// values), each behind a few option selectors.
fn csv() -> Vec<Vec<u8>> {
    let texts = [
        "x1,label,x2\n1,cat,2\n3,dog,4.5\n-1e-3,cat,0\n",
        "label,a,b\r\n0,1,2\r\n1,3,4\r\n\r\n2,5,6\r\n",
        "\u{feff}y,f1,f2\n\"1\",\"2.5\",7\n2,3,-8e3\n10,0,0.25\n",
        "1,2,3\n4,5,6\n7,8,9\n",
        // Values at f32's limits (z-scoring them overflowed in f32).
        "label,a\n0,3.4e38\n1,3.4e38\n0,-3.4e38\n1,1e-45\n",
    ];
    let selectors = [0u8, 0b0110_0000, 0b0001_0001, 0b1000_0110, 0b0111_1011];
    let mut seeds = Vec::new();
    for text in texts {
        for selector in selectors {
            let mut seed = vec![selector];
            seed.extend_from_slice(text.as_bytes());
            seeds.push(seed);
        }
    }
    seeds
}
