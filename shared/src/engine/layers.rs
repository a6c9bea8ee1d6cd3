//! Forward and backward passes of each layer on a batch, NCHW / row-major like PyTorch.
//!
//! Each function works on plain slices so it can be tested in isolation against finite
//! differences, and so a GPU backend can be checked against exactly these semantics.

use super::gemm::{Mat, gemm};

/// `y[B, out] = x[B, in] · Wᵀ + b` with `W` stored `[out, in]`.
pub fn dense_forward(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], batch: usize, inp: usize, out: usize) {
    for row in y[..batch * out].chunks_exact_mut(out) {
        row.copy_from_slice(b);
    }
    gemm(1.0, Mat::new(x, batch, inp), Mat::new(w, out, inp).t(), 1.0, y);
}

/// Gradients of a dense layer: `dW = dyᵀ·x`, `db = Σ_batch dy`, and `dx = dy·W` when wanted.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    batch: usize,
    inp: usize,
    out: usize,
) {
    gemm(1.0, Mat::new(dy, batch, out).t(), Mat::new(x, batch, inp), 0.0, dw);
    db.fill(0.0);
    for row in dy[..batch * out].chunks_exact(out) {
        for (d, g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
    if let Some(dx) = dx {
        gemm(1.0, Mat::new(dy, batch, out), Mat::new(w, out, inp), 0.0, dx);
    }
}

/// Shape of a 2-D convolution (square kernel, symmetric zero padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.pad - self.kernel) / self.stride + 1
    }
    /// Output pixels per channel.
    pub fn patches(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }
    pub fn out_len(&self) -> usize {
        self.out_channels * self.patches()
    }

    /// Output coordinates `o` whose input coordinate `o·stride + k − pad` lies inside `0..size`.
    /// Computing this range once per kernel offset keeps bounds checks out of the inner loops,
    /// which dominate im2col/col2im.
    fn valid_outputs(&self, k: usize, size: usize, outputs: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        let first = self.pad.saturating_sub(k).div_ceil(s);
        // Largest o with o·s + k − pad ≤ size − 1.
        let last = (size + self.pad).checked_sub(k + 1).map_or(0, |span| span / s + 1);
        first.min(outputs)..last.min(outputs).max(first.min(outputs))
    }

    /// Unfolds one sample `x[C, H, W]` into `cols[C·K·K, OH·OW]`.
    pub fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let (oh, ow, k, s) = (self.out_height(), self.out_width(), self.kernel, self.stride);
        let mut row = 0;
        for c in 0..self.in_channels {
            let plane = &x[c * self.height * self.width..(c + 1) * self.height * self.width];
            for ki in 0..k {
                let rows = self.valid_outputs(ki, self.height, oh);
                for kj in 0..k {
                    let cols_ok = self.valid_outputs(kj, self.width, ow);
                    let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                    dst[..rows.start * ow].fill(0.0);
                    dst[rows.end * ow..].fill(0.0);
                    for oy in rows.clone() {
                        let iy = oy * s + ki - self.pad;
                        let src = &plane[iy * self.width..(iy + 1) * self.width];
                        let dst_row = &mut dst[oy * ow..(oy + 1) * ow];
                        dst_row[..cols_ok.start].fill(0.0);
                        dst_row[cols_ok.end..].fill(0.0);
                        let ix0 = cols_ok.start * s + kj - self.pad;
                        if s == 1 {
                            dst_row[cols_ok.clone()].copy_from_slice(&src[ix0..ix0 + cols_ok.len()]);
                        } else {
                            for (i, d) in dst_row[cols_ok.clone()].iter_mut().enumerate() {
                                *d = src[ix0 + i * s];
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// Adds `cols[C·K·K, OH·OW]` back into `dx[C, H, W]` (the adjoint of `im2col`).
    pub fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let (oh, ow, k, s) = (self.out_height(), self.out_width(), self.kernel, self.stride);
        dx[..self.in_len()].fill(0.0);
        let mut row = 0;
        for c in 0..self.in_channels {
            let plane = &mut dx[c * self.height * self.width..(c + 1) * self.height * self.width];
            for ki in 0..k {
                let rows = self.valid_outputs(ki, self.height, oh);
                for kj in 0..k {
                    let cols_ok = self.valid_outputs(kj, self.width, ow);
                    let src = &cols[row * oh * ow..(row + 1) * oh * ow];
                    for oy in rows.clone() {
                        let iy = oy * s + ki - self.pad;
                        let dst = &mut plane[iy * self.width..(iy + 1) * self.width];
                        let src_row = &src[oy * ow + cols_ok.start..oy * ow + cols_ok.end];
                        let ix0 = cols_ok.start * s + kj - self.pad;
                        if s == 1 {
                            for (d, v) in dst[ix0..ix0 + src_row.len()].iter_mut().zip(src_row) {
                                *d += v;
                            }
                        } else {
                            for (i, v) in src_row.iter().enumerate() {
                                dst[ix0 + i * s] += v;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

/// Convolution forward. `cols` receives each sample's im2col matrix (kept for the backward pass).
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], cols: &mut [f32], batch: usize) {
    let (p, kl) = (g.patches(), g.patch_len());
    for n in 0..batch {
        let col = &mut cols[n * kl * p..(n + 1) * kl * p];
        g.im2col(&x[n * g.in_len()..(n + 1) * g.in_len()], col);
        let out = &mut y[n * g.out_len()..(n + 1) * g.out_len()];
        for (oc, plane) in out.chunks_exact_mut(p).enumerate() {
            plane.fill(b[oc]);
        }
        gemm(1.0, Mat::new(w, g.out_channels, kl), Mat::new(col, kl, p), 1.0, out);
    }
}

/// Convolution backward from the stored im2col matrices. `dcols` is scratch of one sample's size.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    g: &ConvGeom,
    cols: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    mut dx: Option<(&mut [f32], &mut [f32])>,
    batch: usize,
) {
    let (p, kl) = (g.patches(), g.patch_len());
    dw.fill(0.0);
    db.fill(0.0);
    for n in 0..batch {
        let dyn_ = &dy[n * g.out_len()..(n + 1) * g.out_len()];
        let col = &cols[n * kl * p..(n + 1) * kl * p];
        gemm(1.0, Mat::new(dyn_, g.out_channels, p), Mat::new(col, kl, p).t(), 1.0, dw);
        for (d, plane) in db.iter_mut().zip(dyn_.chunks_exact(p)) {
            *d += plane.iter().sum::<f32>();
        }
        if let Some((dx, dcols)) = dx.as_mut() {
            gemm(1.0, Mat::new(w, g.out_channels, kl).t(), Mat::new(dyn_, g.out_channels, p), 0.0, dcols);
            g.col2im(dcols, &mut dx[n * g.in_len()..(n + 1) * g.in_len()]);
        }
    }
}

/// Shape of a max-pooling layer (no padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl PoolGeom {
    pub fn out_height(&self) -> usize {
        (self.height - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width - self.kernel) / self.stride + 1
    }
    pub fn in_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }
}

/// Max pooling; `argmax` records which input of each window won (first one on ties, like PyTorch).
pub fn maxpool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32], batch: usize) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let planes = batch * g.channels;
    for pl in 0..planes {
        let src = &x[pl * g.height * g.width..(pl + 1) * g.height * g.width];
        for oy in 0..oh {
            for ox in 0..ow {
                let first = oy * g.stride * g.width + ox * g.stride;
                let mut best = (first, src[first]);
                for ki in 0..g.kernel {
                    for kj in 0..g.kernel {
                        let i = first + ki * g.width + kj;
                        if src[i] > best.1 {
                            best = (i, src[i]);
                        }
                    }
                }
                let o = pl * oh * ow + oy * ow + ox;
                y[o] = best.1;
                argmax[o] = best.0 as u32;
            }
        }
    }
}

pub fn maxpool_backward(g: &PoolGeom, argmax: &[u32], dy: &[f32], dx: &mut [f32], batch: usize) {
    let plane_out = g.out_height() * g.out_width();
    let plane_in = g.height * g.width;
    dx[..batch * g.in_len()].fill(0.0);
    for pl in 0..batch * g.channels {
        for o in 0..plane_out {
            let idx = pl * plane_out + o;
            dx[pl * plane_in + argmax[idx] as usize] += dy[idx];
        }
    }
}

pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.max(0.0);
    }
}

/// In place: `dy` becomes `dx`, zero where the output `y` was not positive.
pub fn relu_backward(y: &[f32], dy: &mut [f32]) {
    for (d, &v) in dy.iter_mut().zip(y) {
        if v <= 0.0 {
            *d = 0.0;
        }
    }
}

/// Inverted dropout with a precomputed mask of 0 or 1/(1−p).
pub fn dropout_forward(x: &[f32], mask: &[f32], y: &mut [f32]) {
    for ((o, &v), &m) in y.iter_mut().zip(x).zip(mask) {
        *o = v * m;
    }
}

pub fn dropout_backward(mask: &[f32], dy: &mut [f32]) {
    for (d, &m) in dy.iter_mut().zip(mask) {
        *d *= m;
    }
}
