//! The CPU engine: a [`ModelSpec`] compiled into a [`Network`] that runs forward and backward
//! passes over a batch in f32. It is the reference every other backend is checked against.
//!
//! Buffers live in a [`Workspace`] sized once per batch size, so a training step allocates
//! nothing. Parameters and gradients are flat slices in the model's [`Layout`] order.

pub mod gemm;
pub mod layers;
pub mod loss;

use std::ops::Range;
use std::sync::Arc;

use rand::Rng as _;

use crate::model::{Layer, ModelError, ModelSpec, conv_padding};
use crate::params::Layout;
use crate::rng::Rng;
use layers::{ConvGeom, PoolGeom};

/// Whether a forward pass trains (dropout active, drawing from the generator) or evaluates.
pub enum Mode<'a> {
    Train(&'a mut Rng),
    Eval,
}

/// One compiled layer: its geometry and where its parameters live in the flat vector. Other
/// backends compile their own plans from these, so a spec is interpreted in one place.
#[derive(Clone, Debug)]
pub enum Op {
    Dense { inp: usize, out: usize, w: Range<usize>, b: Range<usize> },
    Conv { geom: ConvGeom, w: Range<usize>, b: Range<usize> },
    Pool(PoolGeom),
    Flatten,
    Relu,
    Dropout { p: f32 },
}

/// A compiled sequential model.
#[derive(Clone, Debug)]
pub struct Network {
    spec: ModelSpec,
    ops: Vec<Op>,
    /// Per-sample activation length after each op; `sizes[0]` is the input.
    sizes: Vec<usize>,
    /// Whether op `i` must produce a gradient for its input (some earlier op has parameters).
    needs_input_grad: Vec<bool>,
    layout: Arc<Layout>,
}

/// Per-op scratch that the backward pass needs from the forward pass.
enum Aux {
    None,
    Cols(Vec<f32>),
    Argmax(Vec<u32>),
    Mask(Vec<f32>),
}

/// Activation and gradient buffers for batches of up to `capacity` samples.
pub struct Workspace {
    capacity: usize,
    acts: Vec<Vec<f32>>,
    aux: Vec<Aux>,
    grad_in: Vec<f32>,
    grad_out: Vec<f32>,
    dcols: Vec<f32>,
    dlogits: Vec<f32>,
}

impl Workspace {
    /// The input buffer for a batch of `batch` samples; fill it before [`Network::forward`].
    pub fn input_mut(&mut self, batch: usize) -> &mut [f32] {
        let n = self.acts[0].len() / self.capacity.max(1);
        &mut self.acts[0][..batch * n]
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Network {
    pub fn new(spec: &ModelSpec) -> Result<Self, ModelError> {
        let shapes = spec.shapes()?;
        let layout = Arc::new(spec.layout()?);
        let mut ops = Vec::with_capacity(spec.layers.len());
        let mut cursor = 0;
        let mut take = |n: usize| {
            let r = cursor..cursor + n;
            cursor += n;
            r
        };
        for (i, layer) in spec.layers.iter().enumerate() {
            let inp = &shapes[i];
            let out = &shapes[i + 1];
            ops.push(match *layer {
                Layer::Dense { out: o } => {
                    let w = take(o * inp[0]);
                    Op::Dense { inp: inp[0], out: o, w, b: take(o) }
                }
                Layer::Conv2d { out_channels, kernel, stride, padding } => {
                    let pad = conv_padding(kernel, stride, padding).map_err(|reason| ModelError::BadLayer {
                        index: i,
                        layer: format!("{layer:?}"),
                        reason,
                    })?;
                    let geom = ConvGeom {
                        in_channels: inp[0],
                        height: inp[1],
                        width: inp[2],
                        out_channels,
                        kernel,
                        stride,
                        pad,
                    };
                    let w = take(out_channels * geom.patch_len());
                    Op::Conv { geom, w, b: take(out_channels) }
                }
                Layer::MaxPool2d { kernel, stride } => Op::Pool(PoolGeom {
                    channels: inp[0],
                    height: inp[1],
                    width: inp[2],
                    kernel,
                    stride: stride.unwrap_or(kernel),
                }),
                Layer::Flatten => Op::Flatten,
                Layer::Relu => Op::Relu,
                Layer::Dropout { p } => Op::Dropout { p },
            });
            debug_assert_eq!(shapes[i + 1], *out);
        }
        debug_assert_eq!(cursor, layout.len());
        let mut needs_input_grad = Vec::with_capacity(ops.len());
        let mut seen_params = false;
        for op in &ops {
            needs_input_grad.push(seen_params);
            seen_params |= matches!(op, Op::Dense { .. } | Op::Conv { .. });
        }
        let sizes = shapes.iter().map(|s| s.iter().product()).collect();
        Ok(Self { spec: spec.clone(), ops, sizes, needs_input_grad, layout })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Per-sample activation length before each op and after the last (`sizes[0]` is the input).
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Whether op `i` must produce a gradient for its input (some earlier op has parameters).
    pub fn needs_input_grad(&self) -> &[bool] {
        &self.needs_input_grad
    }

    /// f32 values per input sample.
    pub fn input_len(&self) -> usize {
        self.sizes[0]
    }

    pub fn classes(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    pub fn workspace(&self, capacity: usize) -> Workspace {
        let acts = self.sizes.iter().map(|&n| vec![0.0; n * capacity]).collect();
        let mut max_dcols = 0;
        let aux = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Conv { geom, .. } => {
                    max_dcols = max_dcols.max(geom.patch_len() * geom.patches());
                    Aux::Cols(vec![0.0; geom.patch_len() * geom.patches() * capacity])
                }
                Op::Pool(g) => Aux::Argmax(vec![0; g.out_len() * capacity]),
                Op::Dropout { .. } => Aux::Mask(Vec::new()),
                _ => Aux::None,
            })
            .collect();
        let widest = self.sizes.iter().copied().max().unwrap_or(0) * capacity;
        Workspace {
            capacity,
            acts,
            aux,
            grad_in: vec![0.0; widest],
            grad_out: vec![0.0; widest],
            dcols: vec![0.0; max_dcols],
            dlogits: Vec::new(),
        }
    }

    /// Runs the batch already placed in `ws.input_mut(batch)` and returns the logits `[batch, classes]`.
    pub fn forward<'w>(&self, params: &[f32], ws: &'w mut Workspace, batch: usize, mut mode: Mode<'_>) -> &'w [f32] {
        assert!(batch <= ws.capacity, "batch {batch} exceeds workspace capacity {}", ws.capacity);
        assert_eq!(params.len(), self.layout.len(), "parameter vector has the wrong length");
        for (i, op) in self.ops.iter().enumerate() {
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let x = &before[i][..batch * self.sizes[i]];
            let y = &mut after[0][..batch * self.sizes[i + 1]];
            match (op, &mut ws.aux[i]) {
                (Op::Dense { inp, out, w, b }, _) => {
                    layers::dense_forward(x, &params[w.clone()], &params[b.clone()], y, batch, *inp, *out)
                }
                (Op::Conv { geom, w, b }, Aux::Cols(cols)) => {
                    layers::conv2d_forward(geom, x, &params[w.clone()], &params[b.clone()], y, cols, batch)
                }
                (Op::Pool(g), Aux::Argmax(argmax)) => layers::maxpool_forward(g, x, y, argmax, batch),
                (Op::Relu, _) => layers::relu_forward(x, y),
                (Op::Dropout { p }, Aux::Mask(mask)) => match &mut mode {
                    Mode::Train(rng) if *p > 0.0 => {
                        let keep = 1.0 / (1.0 - p);
                        mask.clear();
                        mask.extend((0..x.len()).map(|_| if rng.random::<f32>() < *p { 0.0 } else { keep }));
                        layers::dropout_forward(x, mask, y);
                    }
                    _ => {
                        mask.clear();
                        mask.resize(x.len(), 1.0);
                        y.copy_from_slice(x);
                    }
                },
                (Op::Flatten, _) => y.copy_from_slice(x),
                (op, _) => unreachable!("workspace does not match op {op:?}"),
            }
        }
        &ws.acts[self.ops.len()][..batch * self.classes()]
    }

    /// Back-propagates `dlogits` through the last forward pass and writes every parameter's
    /// gradient into `grads` (overwriting it).
    pub fn backward(&self, params: &[f32], ws: &mut Workspace, batch: usize, dlogits: &[f32], grads: &mut [f32]) {
        assert_eq!(grads.len(), self.layout.len(), "gradient vector has the wrong length");
        let mut dy = std::mem::take(&mut ws.grad_in);
        let mut dx = std::mem::take(&mut ws.grad_out);
        dy[..dlogits.len()].copy_from_slice(dlogits);
        for (i, op) in self.ops.iter().enumerate().rev() {
            let x = &ws.acts[i][..batch * self.sizes[i]];
            let y = &ws.acts[i + 1][..batch * self.sizes[i + 1]];
            let need_dx = self.needs_input_grad[i];
            let g_out = &mut dy[..batch * self.sizes[i + 1]];
            let g_in = &mut dx[..batch * self.sizes[i]];
            let swap = match (op, &ws.aux[i]) {
                (Op::Dense { inp, out, w, b }, _) => {
                    let (dw, db) = grads[w.start..b.end].split_at_mut(w.len());
                    let g_in = need_dx.then_some(g_in);
                    layers::dense_backward(x, &params[w.clone()], g_out, dw, db, g_in, batch, *inp, *out);
                    true
                }
                (Op::Conv { geom, w, b }, Aux::Cols(cols)) => {
                    let (dw, db) = grads[w.start..b.end].split_at_mut(w.len());
                    let g_in = need_dx.then_some((g_in, ws.dcols.as_mut_slice()));
                    layers::conv2d_backward(geom, cols, &params[w.clone()], g_out, dw, db, g_in, batch);
                    true
                }
                (Op::Pool(g), Aux::Argmax(argmax)) => {
                    if need_dx {
                        layers::maxpool_backward(g, argmax, g_out, g_in, batch);
                    }
                    true
                }
                (Op::Relu, _) => {
                    layers::relu_backward(y, g_out);
                    false
                }
                (Op::Dropout { .. }, Aux::Mask(mask)) => {
                    layers::dropout_backward(mask, g_out);
                    false
                }
                (Op::Flatten, _) => false,
                (op, _) => unreachable!("workspace does not match op {op:?}"),
            };
            if swap {
                std::mem::swap(&mut dy, &mut dx);
            }
        }
        ws.grad_in = dy;
        ws.grad_out = dx;
    }

    /// Forward, loss and backward for the batch in `ws` with `labels`: returns the mean loss and
    /// the number of correct predictions, and writes the gradient into `grads`.
    pub fn loss_and_grad(
        &self,
        params: &[f32],
        ws: &mut Workspace,
        labels: &[u32],
        rng: &mut Rng,
        grads: &mut [f32],
    ) -> (f64, usize) {
        let batch = labels.len();
        let classes = self.classes();
        let mut dlogits = std::mem::take(&mut ws.dlogits);
        dlogits.resize(batch * classes, 0.0);
        let logits = self.forward(params, ws, batch, Mode::Train(rng));
        let (loss, correct) = loss::softmax_cross_entropy(logits, labels, classes, Some(&mut dlogits));
        self.backward(params, ws, batch, &dlogits, grads);
        ws.dlogits = dlogits;
        (loss, correct)
    }
}

#[cfg(test)]
mod gradcheck;
