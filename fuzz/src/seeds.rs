//! Seed corpora: valid inputs for every fuzz target, so the fuzzers start past the headers.
//! Generated, never committed: each target plants its seeds in cargo-fuzz's corpus folder for it,
//! `fuzz/corpus/<target>/seed-*`, when it starts (libFuzzer reads the folder after that).

use std::path::Path;

use webfl_shared::codec::{self, ErrorFeedback};
use webfl_shared::data::mnist;
use webfl_shared::data::{Dataset, Split};
use webfl_shared::params::{Layout, Params, TensorSpec};
use webfl_shared::pipeline;
use webfl_shared::rng;

/// Writes `seeds` into `fuzz/corpus/<target>/` (the folder `cargo fuzz run <target>` fuzzes
/// from). Best effort: fuzzing goes on without seeds where the folder cannot be written.
pub fn plant(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (i, seed) in seeds.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("seed-{i:02}")), seed);
    }
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
pub fn update_decode() -> Vec<Vec<u8>> {
    let layout = crate::layout();
    let mut seeds = Vec::new();
    for (s, spec) in crate::update_specs().iter().enumerate() {
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
        for len in crate::CODEC_LENGTHS {
            seeds.push(
                codec::encode(&small_values(len, 99), &spec.compression, None, &mut rng::derive(3, &[])).unwrap(),
            );
        }
    }
    seeds
}

/// The fuzzing 2NN's parameters (initialised, and all zero), and a file of other tensors.
pub fn safetensors() -> Vec<Vec<u8>> {
    let initialised = crate::two_nn().init_params(&mut rng::derive(4, &[])).unwrap();
    let zeros = Params::zeros(crate::layout());
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
pub fn wfds() -> Vec<Vec<u8>> {
    let splits = [
        Split { train: dataset(&[1, 2, 2], 3, &[0, 2, 1, 1]), test: dataset(&[1, 2, 2], 3, &[2, 0]) },
        Split { train: dataset(&[3], 1, &[]), test: dataset(&[3], 1, &[0]) },
        Split { train: dataset(&[2, 1, 1], 256, &[]), test: dataset(&[2, 1, 1], 256, &[]) },
    ];
    splits.iter().map(|s| mnist::encode(s).unwrap()).collect()
}

/// CSV texts (header or not, label first or named, string labels, CRLF, a BOM, quotes, extreme
/// values), each behind a few option selectors.
pub fn csv() -> Vec<Vec<u8>> {
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
