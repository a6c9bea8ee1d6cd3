//! Datasets held in memory, their on-disk/wire encodings, and partitioners.
//!
//! No I/O here: loaders take bytes or text, callers (server, browser) do the reading.

pub mod csv;
pub mod mnist;
pub mod partition;

/// A labelled classification dataset: `len()` samples, each `sample_shape` f32 features
/// (row-major; images are `[channels, height, width]` like PyTorch) and a class in `0..classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub sample_shape: Vec<usize>,
    pub classes: usize,
    /// Human-readable class names (digits for MNIST, the CSV's label values otherwise).
    pub class_names: Vec<String>,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of f32 values per sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.features[i * n..(i + 1) * n]
    }

    /// A new dataset with the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.sample_len();
        let mut features = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            features.extend_from_slice(self.sample(i));
        }
        Dataset {
            sample_shape: self.sample_shape.clone(),
            classes: self.classes,
            class_names: self.class_names.clone(),
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Count of samples per class.
    pub fn class_histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.classes];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }
}

/// A train/test pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

/// `n` samples of a separable two-class task with 4 features: what the engine's own tests and
/// the browser tests of the same engine paths (`client/tests`) train on.
#[doc(hidden)]
pub fn toy_two_class(n: usize) -> Dataset {
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
