//! Helpers shared by the browser test files.

use webfl_shared::data::Dataset;

/// `n` samples of a separable two-class task with 4 features.
pub fn toy_data(n: usize) -> Dataset {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let label = (i % 2) as u32;
        let s = if label == 1 { 1.0 } else { -1.0 };
        features.extend([s, 0.5 * s, (i % 7) as f32 / 7.0, -s]);
        labels.push(label);
    }
    Dataset { sample_shape: vec![4], classes: 2, class_names: vec!["a".into(), "b".into()], features, labels }
}
