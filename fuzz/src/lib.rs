//! What the fuzz targets share: the model layout the update and safetensors targets parse into,
//! the task specs the update decoder runs under, how a CSV input's first byte picks the parser's
//! options, and the seed corpora (`seeds`), which every target plants when it starts.

pub mod seeds;

use std::sync::Arc;

use webfl_shared::codec::Compression;
use webfl_shared::data::csv::{CsvOptions, LabelColumn};
use webfl_shared::model::{Layer, ModelSpec};
use webfl_shared::params::Layout;
use webfl_shared::pipeline::UpdateSpec;

/// The 2NN (`Flatten, Linear, ReLU, Linear, ReLU, Linear`: tensors `1.*`, `3.*`, `5.*`, as
/// PyTorch names them) on 4 features with hidden width 8 and 3 classes: 139 values, so whole,
/// valid files are a few hundred bytes and the fuzzer reaches the paths past the header.
pub fn two_nn() -> ModelSpec {
    use Layer::*;
    ModelSpec {
        input_shape: vec![4],
        layers: vec![Flatten, Dense { out: 8 }, Relu, Dense { out: 8 }, Relu, Dense { out: 3 }],
    }
}

pub fn layout() -> Arc<Layout> {
    Arc::new(two_nn().layout().expect("the fuzzing 2NN is a valid model"))
}

/// The update specs a task can announce, one per codec (the dense one with a clip bound, so the
/// server's norm check runs too). Parameters as a task file would give them.
pub fn update_specs() -> Vec<UpdateSpec> {
    ["none", "q8", "topk:0.1", "topk:0.01+q8", "qsgd:16", "randk:0.1"]
        .iter()
        .map(|codec| UpdateSpec {
            clip: (*codec == "none").then_some(1.0),
            compression: codec.parse::<Compression>().expect("a valid codec string"),
            ..UpdateSpec::default()
        })
        .collect()
}

/// Lengths the raw codec decoder is asked for besides the layout's: empty, one value, a short
/// vector, and one just over a Q8 chunk.
pub const CODEC_LENGTHS: [usize; 4] = [0, 1, 7, 1025];

/// The options and split parameters a CSV input's first byte selects: bits 0–1 the label column
/// (auto, index 0, index 2, the name "label"), bits 2–3 the header (auto, yes, no), bit 4 z-scoring,
/// bits 5–7 the test fraction in eighths.
pub fn csv_options(selector: u8) -> (CsvOptions, f64) {
    let label_column = match selector & 0b11 {
        0 => LabelColumn::Auto,
        1 => LabelColumn::Index(0),
        2 => LabelColumn::Index(2),
        _ => LabelColumn::Name("label".into()),
    };
    let has_header = match (selector >> 2) & 0b11 {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    };
    let standardize = selector & 0b1_0000 != 0;
    let test_fraction = f64::from(selector >> 5) / 8.0;
    (CsvOptions { label_column, has_header, standardize }, test_fraction)
}
