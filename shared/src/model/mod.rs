//! Model specs: a serialisable description of a sequential classifier, the built-in models, the
//! parameter layout it implies and PyTorch-default initialisation.
//!
//! A spec is the JSON a task file or a browser receives:
//! ```json
//! {"input_shape": [1, 28, 28], "layers": [
//!   {"type": "conv2d", "out_channels": 32, "kernel": 5, "padding": "same"}, {"type": "relu"},
//!   {"type": "max_pool2d", "kernel": 2}, {"type": "flatten"}, {"type": "dense", "out": 10}]}
//! ```
//! Layer `i` of the list is module `i` of the equivalent `nn.Sequential`, so its parameters are
//! named `"{i}.weight"` / `"{i}.bias"` exactly as in that module's `state_dict`.

use std::sync::Arc;

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::params::{Layout, Params, ParamsError, TensorSpec};

/// One layer of a sequential model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// `nn.Linear(in, out)`; needs a flat input.
    Dense {
        out: usize,
    },
    /// `nn.Conv2d(in, out_channels, kernel, stride, padding)` on `[C, H, W]` input.
    Conv2d {
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: Padding,
    },
    /// `nn.MaxPool2d(kernel, stride)`; stride defaults to the kernel size like PyTorch.
    MaxPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    Flatten,
    Relu,
    /// `nn.Dropout(p)`: zeroes with probability `p` in training and scales the rest by 1/(1−p).
    Dropout {
        p: f32,
    },
}

fn one() -> usize {
    1
}

/// Convolution padding. `"same"` keeps H×W (stride 1, odd kernels, like PyTorch's `"same"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Padding {
    Named(PaddingName),
    Explicit(usize),
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Explicit(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingName {
    Same,
    Valid,
}

/// A sequential classifier trained with softmax cross-entropy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Shape of one sample: `[features]` or `[channels, height, width]`.
    pub input_shape: Vec<usize>,
    pub layers: Vec<Layer>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("unknown built-in model {0:?} (expected mlp, 2nn or cnn)")]
    UnknownBuiltin(String),
    #[error("layer {index} ({layer}): {reason}")]
    BadLayer { index: usize, layer: String, reason: String },
    #[error("input shape {0:?} is invalid: {1}")]
    BadInput(Vec<usize>, String),
    #[error("the model must end in a flat output of at least 2 classes, it ends in {0:?}")]
    BadOutput(Vec<usize>),
    #[error("model has {model} outputs but the dataset has {data} classes")]
    ClassMismatch { model: usize, data: usize },
    #[error("invalid model JSON: {0}")]
    Json(String),
    #[error(transparent)]
    Params(#[from] ParamsError),
}

impl ModelSpec {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| ModelError::Json(e.to_string()))?;
        spec.shapes()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A built-in model by name, sized for `input_shape` and `classes`.
    /// `mlp`: the seed's in→128→64→classes with dropout 0.2; `2nn` and `cnn`: McMahan et al. 2017.
    pub fn builtin(name: &str, input_shape: &[usize], classes: usize) -> Result<Self, ModelError> {
        use Layer::*;
        let conv =
            |out_channels| Conv2d { out_channels, kernel: 5, stride: 1, padding: Padding::Named(PaddingName::Same) };
        let pool = MaxPool2d { kernel: 2, stride: None };
        let layers = match name {
            "mlp" => vec![
                Flatten,
                Dense { out: 128 },
                Relu,
                Dropout { p: 0.2 },
                Dense { out: 64 },
                Relu,
                Dropout { p: 0.2 },
                Dense { out: classes },
            ],
            "2nn" => vec![Flatten, Dense { out: 200 }, Relu, Dense { out: 200 }, Relu, Dense { out: classes }],
            "cnn" => vec![
                conv(32),
                Relu,
                pool.clone(),
                conv(64),
                Relu,
                pool,
                Flatten,
                Dense { out: 512 },
                Relu,
                Dense { out: classes },
            ],
            other => return Err(ModelError::UnknownBuiltin(other.to_string())),
        };
        let spec = ModelSpec { input_shape: input_shape.to_vec(), layers };
        spec.shapes()?;
        Ok(spec)
    }

    /// The activation shape after each layer, starting with the input (len = layers + 1).
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, ModelError> {
        let input = &self.input_shape;
        if input.is_empty() || input.contains(&0) || !(input.len() == 1 || input.len() == 3) {
            return Err(ModelError::BadInput(input.clone(), "expected [features] or [channels, height, width]".into()));
        }
        let mut shapes = vec![input.clone()];
        for (index, layer) in self.layers.iter().enumerate() {
            let cur = &shapes[index];
            let bad = |reason: String| ModelError::BadLayer { index, layer: format!("{layer:?}"), reason };
            let next = match *layer {
                Layer::Dense { out } => {
                    if cur.len() != 1 {
                        return Err(bad(format!("needs a flat input, got {cur:?}; add a flatten layer before it")));
                    }
                    if out == 0 {
                        return Err(bad("out must be positive".into()));
                    }
                    vec![out]
                }
                Layer::Conv2d { out_channels, kernel, stride, padding } => {
                    let [_, h, w] = chw(cur).ok_or_else(|| bad(format!("needs [C, H, W] input, got {cur:?}")))?;
                    if out_channels == 0 || kernel == 0 || stride == 0 {
                        return Err(bad("out_channels, kernel and stride must be positive".into()));
                    }
                    let pad = conv_padding(kernel, stride, padding).map_err(bad)?;
                    let (oh, ow) = (conv_out(h, kernel, stride, pad), conv_out(w, kernel, stride, pad));
                    match (oh, ow) {
                        (Some(oh), Some(ow)) => vec![out_channels, oh, ow],
                        _ => return Err(bad(format!("kernel {kernel} does not fit input {cur:?}"))),
                    }
                }
                Layer::MaxPool2d { kernel, stride } => {
                    let [c, h, w] = chw(cur).ok_or_else(|| bad(format!("needs [C, H, W] input, got {cur:?}")))?;
                    let stride = stride.unwrap_or(kernel);
                    if kernel == 0 || stride == 0 {
                        return Err(bad("kernel and stride must be positive".into()));
                    }
                    match (conv_out(h, kernel, stride, 0), conv_out(w, kernel, stride, 0)) {
                        (Some(oh), Some(ow)) => vec![c, oh, ow],
                        _ => return Err(bad(format!("kernel {kernel} does not fit input {cur:?}"))),
                    }
                }
                Layer::Flatten => vec![cur.iter().product()],
                Layer::Relu => cur.clone(),
                Layer::Dropout { p } => {
                    if !(0.0..1.0).contains(&p) {
                        return Err(bad(format!("p must be in [0, 1), got {p}")));
                    }
                    cur.clone()
                }
            };
            shapes.push(next);
        }
        match shapes.last() {
            Some(out) if out.len() == 1 && out[0] >= 2 => Ok(shapes),
            Some(out) => Err(ModelError::BadOutput(out.clone())),
            None => Err(ModelError::BadOutput(vec![])),
        }
    }

    /// Number of classes the model predicts.
    pub fn classes(&self) -> Result<usize, ModelError> {
        Ok(self.shapes()?.last().map_or(0, |s| s[0]))
    }

    /// The parameter tensors, named like PyTorch's `state_dict` of the equivalent `nn.Sequential`.
    pub fn layout(&self) -> Result<Layout, ModelError> {
        let shapes = self.shapes()?;
        let mut tensors = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            match *layer {
                Layer::Dense { out } => {
                    tensors.push(TensorSpec::new(format!("{i}.weight"), vec![out, shapes[i][0]]));
                    tensors.push(TensorSpec::new(format!("{i}.bias"), vec![out]));
                }
                Layer::Conv2d { out_channels, kernel, .. } => {
                    tensors
                        .push(TensorSpec::new(format!("{i}.weight"), vec![out_channels, shapes[i][0], kernel, kernel]));
                    tensors.push(TensorSpec::new(format!("{i}.bias"), vec![out_channels]));
                }
                _ => {}
            }
        }
        Ok(Layout::new(tensors)?)
    }

    /// Parameters initialised like PyTorch's defaults for `nn.Linear` and `nn.Conv2d`:
    /// `kaiming_uniform_(a=√5)` for weights, which is U(−1/√fan_in, 1/√fan_in), and the same
    /// bound for biases. Deterministic for a seed (the generator is ours, not torch's).
    pub fn init_params(&self, rng: &mut crate::rng::Rng) -> Result<Params, ModelError> {
        let layout = Arc::new(self.layout()?);
        let mut params = Params::zeros(layout.clone());
        for (i, spec) in layout.tensors().iter().enumerate() {
            // Both tensors of a layer share the weight's fan-in.
            let fan_in: usize = if spec.name.ends_with(".bias") {
                layout.tensors()[i - 1].shape[1..].iter().product()
            } else {
                spec.shape[1..].iter().product()
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            for v in &mut params.as_mut_slice()[layout.range(i)] {
                *v = rng.random_range(-bound..bound);
            }
        }
        Ok(params)
    }
}

fn chw(shape: &[usize]) -> Option<[usize; 3]> {
    match *shape {
        [c, h, w] => Some([c, h, w]),
        _ => None,
    }
}

/// Resolves a padding spec to the per-side zero padding.
pub(crate) fn conv_padding(kernel: usize, stride: usize, padding: Padding) -> Result<usize, String> {
    Ok(match padding {
        Padding::Named(PaddingName::Valid) => 0,
        Padding::Explicit(p) => p,
        Padding::Named(PaddingName::Same) => {
            if stride != 1 || kernel.is_multiple_of(2) {
                return Err("padding \"same\" needs stride 1 and an odd kernel".into());
            }
            kernel / 2
        }
    })
}

fn conv_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    (size + 2 * pad).checked_sub(kernel).map(|span| span / stride + 1)
}

/// Resolves a model argument: a built-in name, or a path-free JSON spec text.
pub fn resolve(name_or_json: &str, input_shape: &[usize], classes: usize) -> Result<ModelSpec, ModelError> {
    let spec = if name_or_json.trim_start().starts_with('{') {
        ModelSpec::from_json(name_or_json)?
    } else {
        ModelSpec::builtin(name_or_json, input_shape, classes)?
    };
    if spec.input_shape.iter().product::<usize>() != input_shape.iter().product::<usize>() {
        return Err(ModelError::BadInput(
            spec.input_shape.clone(),
            format!("the dataset's samples have shape {input_shape:?}"),
        ));
    }
    let model_classes = spec.classes()?;
    if model_classes != classes {
        return Err(ModelError::ClassMismatch { model: model_classes, data: classes });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(name: &str) -> usize {
        ModelSpec::builtin(name, &[1, 28, 28], 10).unwrap().layout().unwrap().len()
    }

    #[test]
    fn builtin_parameter_counts_match_the_papers() {
        assert_eq!(count("2nn"), 199_210);
        assert_eq!(count("cnn"), 1_663_370);
        // 784*128+128 + 128*64+64 + 64*10+10
        assert_eq!(count("mlp"), 109_386);
    }

    #[test]
    fn names_and_shapes_follow_pytorch_sequential() {
        let spec = ModelSpec::builtin("cnn", &[1, 28, 28], 10).unwrap();
        let layout = spec.layout().unwrap();
        let got: Vec<(String, Vec<usize>)> =
            layout.tensors().iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        let want = [
            ("0.weight", vec![32, 1, 5, 5]),
            ("0.bias", vec![32]),
            ("3.weight", vec![64, 32, 5, 5]),
            ("3.bias", vec![64]),
            ("7.weight", vec![512, 3136]),
            ("7.bias", vec![512]),
            ("9.weight", vec![10, 512]),
            ("9.bias", vec![10]),
        ];
        assert_eq!(got, want.iter().map(|(n, s)| (n.to_string(), s.clone())).collect::<Vec<_>>());
    }

    #[test]
    fn json_round_trip_and_validation() {
        let spec = ModelSpec::builtin("cnn", &[1, 28, 28], 10).unwrap();
        assert_eq!(ModelSpec::from_json(&spec.to_json()).unwrap(), spec);
        let text = r#"{"input_shape":[1,28,28],"layers":[{"type":"dense","out":10}]}"#;
        let err = ModelSpec::from_json(text).unwrap_err();
        assert!(err.to_string().contains("add a flatten layer"), "{err}");
        let text = r#"{"input_shape":[4],"layers":[{"type":"dense","out":3},{"type":"dropout","p":1.5}]}"#;
        assert!(ModelSpec::from_json(text).unwrap_err().to_string().contains("p must be in"));
        let text = r#"{"input_shape":[3,8,8],"layers":[{"type":"conv2d","out_channels":2,"kernel":3,"stride":2,"padding":1},
            {"type":"flatten"},{"type":"dense","out":2}]}"#;
        let spec = ModelSpec::from_json(text).unwrap();
        assert_eq!(spec.shapes().unwrap()[1], vec![2, 4, 4]);
        assert!(ModelSpec::from_json(r#"{"input_shape":[4],"layers":[{"type":"nope"}]}"#).is_err());
    }

    #[test]
    fn init_matches_pytorch_bounds_and_is_seeded() {
        let spec = ModelSpec::builtin("2nn", &[784], 10).unwrap();
        let a = spec.init_params(&mut crate::rng::derive(1, &[])).unwrap();
        let b = spec.init_params(&mut crate::rng::derive(1, &[])).unwrap();
        assert_eq!(a, b);
        let w = a.tensor("1.weight").unwrap();
        let bound = 1.0 / 784f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        // U(-b, b) has variance b²/3.
        let var = w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64;
        assert!((var / (bound as f64 * bound as f64 / 3.0) - 1.0).abs() < 0.02, "{var}");
        let bias_bound = 1.0 / 200f32.sqrt();
        let b5 = a.tensor("5.bias").unwrap();
        assert!(b5.iter().all(|v| v.abs() <= bias_bound) && b5.iter().any(|v| v.abs() > bias_bound / 2.0));
    }

    #[test]
    fn resolve_checks_the_dataset() {
        assert!(resolve("2nn", &[1, 28, 28], 10).is_ok());
        assert_eq!(resolve("2nn", &[1, 28, 28], 10).map(|s| s.classes().unwrap()), Ok(10));
        assert!(matches!(resolve("cnn", &[20], 3), Err(ModelError::BadLayer { .. })));
        assert!(matches!(resolve("resnet", &[20], 3), Err(ModelError::UnknownBuiltin(_))));
    }
}
