//! [`GpuBackend`]: training and evaluation plans recorded once per (model, batch size) and
//! replayed for every step, with all training state resident on the device.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng as _;
use rand::seq::SliceRandom;

use super::kernels::{Args, Dispatch, Kernel, Kernels, f};
use super::{GpuContext, GpuError};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::engine::layers::{ConvGeom, PoolGeom};
use crate::engine::{self, Network};
use crate::model::ModelSpec;
use crate::params::{Layout, Params};
use crate::rng::Rng;
use crate::train::{EvalStats, Progress, TrainError, TrainPlan, TrainStats, check_fits};

/// Evaluation batch, as on the CPU (smaller when the device's buffers cannot hold it).
const EVAL_BATCH: usize = 256;
/// Steps recorded per command buffer / submit.
const STEPS_PER_SUBMIT: usize = 64;

/// Longest rows a bias gradient sums in one invocation (longer ones use a tree reduction).
const SERIAL_SUM_ROWS: u32 = 512;

/// A real fault to provoke in the next training or evaluation (for tests of the CPU fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuFault {
    /// Encode a dispatch larger than the device allows, so wgpu reports a validation error.
    ValidationError,
    /// Destroy the device, so it is lost.
    DeviceLost,
}

#[derive(Clone, Debug)]
enum Op {
    Dense { inp: usize, out: usize, w: usize, b: usize },
    Conv { g: ConvGeom, w: usize, b: usize },
    Pool(PoolGeom),
    Flatten,
    Relu,
    Dropout { p: f32 },
}

impl Op {
    /// Ops whose output is their input (no kernel, shared buffers).
    fn aliases(&self) -> bool {
        matches!(self, Op::Flatten) || matches!(self, Op::Dropout { p } if *p == 0.0)
    }
}

/// Device buffers for batches of up to `cap` samples.
struct Bufs {
    cap: usize,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    mom: wgpu::Buffer,
    anchor: wgpu::Buffer,
    store: Vec<wgpu::Buffer>,
    act: Vec<usize>,
    grad: Vec<usize>,
    cols: Vec<Option<wgpu::Buffer>>,
    argmax: Vec<Option<wgpu::Buffer>>,
    scratch: wgpu::Buffer,
    dcols: wgpu::Buffer,
    labels: wgpu::Buffer,
    metrics: wgpu::Buffer,
    seed: wgpu::Buffer,
    sgd_args: wgpu::Buffer,
}

struct Plan {
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    sgd: Dispatch,
}

/// The GPU engine for one model.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    ops: Vec<Op>,
    sizes: Vec<usize>,
    needs_input_grad: Vec<bool>,
    layout: Arc<Layout>,
    bufs: Option<Bufs>,
    plans: HashMap<(usize, bool), Plan>,
    fault: Option<GpuFault>,
}

fn storage(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn uniform(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("args"),
        size: bytes.max(64),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn args(v: &[u32]) -> Args {
    let mut a = [0; 16];
    a[..v.len()].copy_from_slice(v);
    a
}

/// Dispatches being planned: their arguments go into one uniform buffer at the end.
struct Recorder<'a> {
    k: &'a Kernels,
    items: Vec<(Kernel, Args, Vec<&'a wgpu::Buffer>, [u32; 3])>,
}

impl<'a> Recorder<'a> {
    fn push(&mut self, kernel: Kernel, a: &[u32], bufs: Vec<&'a wgpu::Buffer>, groups: [u32; 3]) {
        self.items.push((kernel, args(a), bufs, groups));
    }

    /// One invocation per element.
    fn elementwise(&mut self, kernel: Kernel, a: &[u32], bufs: Vec<&'a wgpu::Buffer>) -> Result<(), GpuError> {
        let groups = self.k.grid(u64::from(a[0]).div_ceil(256))?;
        self.push(kernel, a, bufs, groups);
        Ok(())
    }

    /// Sums of `a[1]` strided rows per output (`a`: outputs, R, so, sr, in_off, out_off): one
    /// invocation per output for short rows, a workgroup tree reduction per output for long ones.
    fn bias_grad(&mut self, a: &[u32; 6], bufs: Vec<&'a wgpu::Buffer>) -> Result<(), GpuError> {
        let outputs = u64::from(a[0]);
        if a[1] <= SERIAL_SUM_ROWS {
            let groups = self.k.grid(outputs.div_ceil(64))?;
            self.push(Kernel::BiasGradSerial, a, bufs, groups);
        } else {
            let groups = self.k.grid(outputs)?;
            self.push(Kernel::BiasGrad, a, bufs, groups);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        (m, n, k): (usize, usize, usize),
        a: (&'a wgpu::Buffer, usize, usize, usize),
        b: (&'a wgpu::Buffer, usize, usize, usize),
        bias: Option<(&'a wgpu::Buffer, usize, u32)>,
        c: (&'a wgpu::Buffer, usize, usize),
    ) -> Result<(), GpuError> {
        let (bb, bo, mode) = bias.unwrap_or((a.0, 0, 0));
        let v = [m, n, k, a.1, a.2, a.3, b.1, b.2, b.3, c.1, c.2, bo].map(|x| x as u32);
        // 8×8 outputs per invocation where the product is wide enough both ways, else 4×4.
        let (kernel, tile) = if m >= 64 && n >= 64 { (Kernel::Matmul8, 64) } else { (Kernel::Matmul, 32) };
        let groups = self.k.matmul_grid(m, n, tile)?;
        let mut all = v.to_vec();
        all.extend([mode, 0]);
        self.push(kernel, &all, vec![a.0, b.0, bb, c.0], groups);
        Ok(())
    }

    fn finish(self, ctx: &GpuContext) -> Vec<Dispatch> {
        let stride = self.k.uniform_stride as usize;
        let mut bytes = vec![0u8; stride * self.items.len().max(1)];
        for (i, (_, a, _, _)) in self.items.iter().enumerate() {
            bytes[i * stride..i * stride + 64].copy_from_slice(bytemuck::cast_slice(a));
        }
        let ubuf = uniform(ctx, bytes.len() as u64);
        ctx.queue.write_buffer(&ubuf, 0, &bytes);
        self.items
            .iter()
            .enumerate()
            .map(|(i, (kernel, _, bufs, groups))| Dispatch {
                kernel: *kernel,
                bind: self.k.bind(&ctx.device, *kernel, &ubuf, i, bufs),
                groups: *groups,
            })
            .collect()
    }
}

impl GpuBackend {
    pub fn new(ctx: Arc<GpuContext>, spec: &ModelSpec) -> Result<Self, GpuError> {
        // The CPU engine interprets the spec (shapes, padding, parameter offsets); this plans from it.
        let net = Network::new(spec)?;
        let ops = net
            .ops()
            .iter()
            .map(|op| match op {
                engine::Op::Dense { inp, out, w, b } => Op::Dense { inp: *inp, out: *out, w: w.start, b: b.start },
                engine::Op::Conv { geom, w, b } => Op::Conv { g: *geom, w: w.start, b: b.start },
                engine::Op::Pool(g) => Op::Pool(*g),
                engine::Op::Flatten => Op::Flatten,
                engine::Op::Relu => Op::Relu,
                engine::Op::Dropout { p } => Op::Dropout { p: *p },
            })
            .collect();
        let (sizes, needs_input_grad, layout) =
            (net.sizes().to_vec(), net.needs_input_grad().to_vec(), net.layout().clone());
        let kernels = Kernels::new(&ctx.device, &ctx.limits)?;
        Ok(Self { ctx, kernels, ops, sizes, needs_input_grad, layout, bufs: None, plans: HashMap::new(), fault: None })
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Provokes `fault` during the next training or evaluation, after its first submit.
    pub fn inject_fault(&mut self, fault: GpuFault) {
        self.fault = Some(fault);
    }

    fn input_len(&self) -> usize {
        self.sizes[0]
    }

    fn classes(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    fn has_dropout(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Dropout { p } if *p > 0.0))
    }

    fn buffer_limit(&self) -> u64 {
        self.ctx.limits.max_storage_buffer_binding_size.min(self.ctx.limits.max_buffer_size)
    }

    /// Largest f32 count per sample of any batch-sized buffer.
    fn per_sample_floats(&self) -> usize {
        let mut m = self.sizes.iter().copied().max().unwrap_or(1).max(2);
        for op in &self.ops {
            if let Op::Conv { g, .. } = op {
                m = m.max(g.patch_len() * g.patches()).max(g.out_len());
            }
        }
        m
    }

    /// Most samples per batch the device's buffer limits allow.
    fn max_batch(&self) -> Result<usize, GpuError> {
        let per = self.per_sample_floats() as u64 * 4;
        let limit = self.buffer_limit();
        let cap = (limit / per) as usize;
        let params = self.layout.len() as u64 * 4;
        if params > limit {
            return Err(GpuError::TooLarge { what: "the model's parameters".into(), bytes: params, limit });
        }
        if cap == 0 {
            return Err(GpuError::TooLarge { what: "one sample's activations".into(), bytes: per, limit });
        }
        Ok(cap)
    }

    fn ensure_bufs(&mut self, cap: usize) -> Result<(), GpuError> {
        let max = self.max_batch()?;
        if cap > max {
            let per = self.per_sample_floats() as u64 * 4;
            return Err(GpuError::TooLarge {
                what: format!("a batch of {cap} samples"),
                bytes: per * cap as u64,
                limit: self.buffer_limit(),
            });
        }
        if self.bufs.as_ref().is_some_and(|b| b.cap >= cap) {
            return Ok(());
        }
        self.plans.clear();
        let ctx = &self.ctx;
        let l = self.layout.len() as u64 * 4;
        let n = self.ops.len();
        let c = cap as u64 * 4;
        let mut store = Vec::new();
        let mut act = vec![0; n + 1];
        store.push(storage(ctx, "input", self.sizes[0] as u64 * c));
        for i in 0..n {
            act[i + 1] = if self.ops[i].aliases() {
                act[i]
            } else {
                store.push(storage(ctx, "act", self.sizes[i + 1] as u64 * c));
                store.len() - 1
            };
        }
        let mut grad = vec![0; n + 1];
        store.push(storage(ctx, "dlogits", self.sizes[n] as u64 * c));
        grad[n] = store.len() - 1;
        for i in (0..n).rev() {
            grad[i] = if self.ops[i].aliases() {
                grad[i + 1]
            } else if self.needs_input_grad[i] {
                store.push(storage(ctx, "grad", self.sizes[i] as u64 * c));
                store.len() - 1
            } else {
                grad[i + 1]
            };
        }
        let (mut scratch, mut dcols) = (1, 1);
        let mut cols = Vec::new();
        let mut argmax = Vec::new();
        for op in &self.ops {
            cols.push(match op {
                Op::Conv { g, .. } => {
                    scratch = scratch.max(g.out_len());
                    dcols = dcols.max(g.patch_len() * g.patches());
                    Some(storage(ctx, "cols", (g.patch_len() * g.patches()) as u64 * c))
                }
                _ => None,
            });
            argmax.push(match op {
                Op::Pool(g) => Some(storage(ctx, "argmax", g.out_len() as u64 * c)),
                _ => None,
            });
        }
        self.bufs = Some(Bufs {
            cap,
            params: storage(ctx, "params", l),
            grads: storage(ctx, "grads", l),
            mom: storage(ctx, "momentum", l),
            anchor: storage(ctx, "anchor", l),
            store,
            act,
            grad,
            cols,
            argmax,
            scratch: storage(ctx, "scratch", scratch as u64 * c),
            dcols: storage(ctx, "dcols", dcols as u64 * c),
            labels: storage(ctx, "labels", c),
            metrics: storage(ctx, "metrics", 2 * c),
            seed: storage(ctx, "seed", 16),
            sgd_args: uniform(ctx, 64),
        });
        Ok(())
    }

    /// The dispatches of one step with `b` samples (`train`: dropout active, backward, SGD).
    fn plan(&mut self, b: usize, train: bool) -> Result<(), GpuError> {
        if self.plans.contains_key(&(b, train)) {
            return Ok(());
        }
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        let k = &self.kernels;
        let n = self.ops.len();
        let buf = |id: usize| &bufs.store[id];
        let u = |x: usize| x as u32;
        let mut fw = Recorder { k, items: Vec::new() };
        for (i, op) in self.ops.iter().enumerate() {
            let (x, y) = (buf(bufs.act[i]), buf(bufs.act[i + 1]));
            match op {
                Op::Dense { inp, out, w, b: bo } => fw.matmul(
                    (b, *out, *inp),
                    (x, 0, *inp, 1),
                    (&bufs.params, *w, 1, *inp),
                    Some((&bufs.params, *bo, 2)),
                    (y, 0, *out),
                )?,
                Op::Conv { g, w, b: bo } => {
                    let cols = bufs.cols[i].as_ref().ok_or_else(|| GpuError::Validation("missing cols".into()))?;
                    let (p, kl, oc) = (g.patches(), g.patch_len(), g.out_channels);
                    let geo =
                        [g.in_channels, g.height, g.width, g.kernel, g.stride, g.pad, g.out_height(), g.out_width(), b];
                    let mut a = vec![u(kl * b * g.out_height())];
                    a.extend(geo.map(u));
                    fw.elementwise(Kernel::Im2col, &a, vec![x, cols])?;
                    fw.matmul(
                        (oc, b * p, kl),
                        (&bufs.params, *w, kl, 1),
                        (cols, 0, b * p, 1),
                        None,
                        (&bufs.scratch, 0, b * p),
                    )?;
                    let a = [u(b * oc * p), u(oc), u(b), u(p), 1, u(*bo)];
                    fw.elementwise(Kernel::Permute, &a, vec![&bufs.scratch, &bufs.params, y])?;
                }
                Op::Pool(g) => {
                    let am = bufs.argmax[i].as_ref().ok_or_else(|| GpuError::Validation("missing argmax".into()))?;
                    let a =
                        [b * g.out_len(), g.height, g.width, g.kernel, g.stride, g.out_height(), g.out_width()].map(u);
                    fw.elementwise(Kernel::PoolForward, &a, vec![x, am, y])?;
                }
                Op::Relu => fw.elementwise(Kernel::ReluForward, &[u(b * self.sizes[i])], vec![x, x, &bufs.seed, y])?,
                Op::Dropout { p } if !op.aliases() => {
                    let p = if train { *p } else { 0.0 };
                    fw.elementwise(Kernel::Dropout, &[u(b * self.sizes[i]), f(p), u(i)], vec![x, x, &bufs.seed, y])?;
                }
                Op::Dropout { .. } | Op::Flatten => {}
            }
        }
        let logits = buf(bufs.act[n]);
        let dlogits = buf(bufs.grad[n]);
        let a = [u(b), u(self.classes()), f(1.0 / b as f32)];
        fw.elementwise(Kernel::Loss, &a, vec![logits, &bufs.labels, dlogits, &bufs.metrics])?;

        let mut bw = Recorder { k, items: Vec::new() };
        if train {
            for (i, op) in self.ops.iter().enumerate().rev() {
                let need = self.needs_input_grad[i];
                let (x, y) = (buf(bufs.act[i]), buf(bufs.act[i + 1]));
                let (dx, dy) = (buf(bufs.grad[i]), buf(bufs.grad[i + 1]));
                match op {
                    Op::Dense { inp, out, w, b: bo } => {
                        bw.matmul((*out, *inp, b), (dy, 0, 1, *out), (x, 0, *inp, 1), None, (&bufs.grads, *w, *inp))?;
                        bw.bias_grad(&[u(*out), u(b), 1, u(*out), 0, u(*bo)], vec![dy, &bufs.grads])?;
                        if need {
                            bw.matmul(
                                (b, *inp, *out),
                                (dy, 0, *out, 1),
                                (&bufs.params, *w, *inp, 1),
                                None,
                                (dx, 0, *inp),
                            )?;
                        }
                    }
                    Op::Conv { g, w, b: bo } => {
                        let cols = bufs.cols[i].as_ref().ok_or_else(|| GpuError::Validation("missing cols".into()))?;
                        let (p, kl, oc) = (g.patches(), g.patch_len(), g.out_channels);
                        bw.elementwise(
                            Kernel::Permute,
                            &[u(b * oc * p), u(b), u(oc), u(p), 0, 0],
                            vec![dy, dy, &bufs.scratch],
                        )?;
                        bw.matmul(
                            (oc, kl, b * p),
                            (&bufs.scratch, 0, b * p, 1),
                            (cols, 0, 1, b * p),
                            None,
                            (&bufs.grads, *w, kl),
                        )?;
                        let a = [u(oc), u(b * p), u(b * p), 1, 0, u(*bo)];
                        bw.bias_grad(&a, vec![&bufs.scratch, &bufs.grads])?;
                        if need {
                            bw.matmul(
                                (kl, b * p, oc),
                                (&bufs.params, *w, 1, kl),
                                (&bufs.scratch, 0, b * p, 1),
                                None,
                                (&bufs.dcols, 0, b * p),
                            )?;
                            let geo = [
                                g.in_channels,
                                g.height,
                                g.width,
                                g.kernel,
                                g.stride,
                                g.pad,
                                g.out_height(),
                                g.out_width(),
                                b,
                            ];
                            let mut a = vec![u(b * g.in_len())];
                            a.extend(geo.map(u));
                            bw.elementwise(Kernel::Col2im, &a, vec![&bufs.dcols, dx])?;
                        }
                    }
                    Op::Pool(g) if need => {
                        let am =
                            bufs.argmax[i].as_ref().ok_or_else(|| GpuError::Validation("missing argmax".into()))?;
                        let a = [b * g.in_len(), g.height, g.width, g.kernel, g.stride, g.out_height(), g.out_width()]
                            .map(u);
                        bw.elementwise(Kernel::PoolBackward, &a, vec![dy, am, dx])?;
                    }
                    Op::Relu if need => {
                        bw.elementwise(Kernel::ReluBackward, &[u(b * self.sizes[i])], vec![dy, y, &bufs.seed, dx])?
                    }
                    Op::Dropout { p } if need && !op.aliases() => bw.elementwise(
                        Kernel::Dropout,
                        &[u(b * self.sizes[i]), f(*p), u(i)],
                        vec![dy, dy, &bufs.seed, dx],
                    )?,
                    _ => {}
                }
            }
        }
        let l = self.layout.len();
        let sgd = Dispatch {
            kernel: Kernel::Sgd,
            bind: k.bind(
                &self.ctx.device,
                Kernel::Sgd,
                &bufs.sgd_args,
                0,
                &[&bufs.grads, &bufs.anchor, &bufs.params, &bufs.mom],
            ),
            groups: k.grid((l as u64).div_ceil(256))?,
        };
        let plan = Plan { forward: fw.finish(&self.ctx), backward: bw.finish(&self.ctx), sgd };
        self.plans.insert((b, train), plan);
        Ok(())
    }

    fn check_data(&self, data: &Dataset) -> Result<(), GpuError> {
        Ok(check_fits(data, self.input_len(), self.classes())?)
    }

    fn check_params(&self, p: &Params) -> Result<(), GpuError> {
        p.check_same_layout(&Params::zeros(self.layout.clone())).map_err(TrainError::from)?;
        Ok(())
    }

    /// Samples per upload window: whole batches, within the device's buffer size.
    fn window(&self, n: usize, batch: usize) -> Result<usize, GpuError> {
        let per = self.input_len() as u64 * 4;
        let limit = self.ctx.limits.max_buffer_size;
        let fit = (limit / per) as usize / batch * batch;
        if fit == 0 {
            return Err(GpuError::TooLarge {
                what: format!("a batch of {batch} input samples"),
                bytes: per * batch as u64,
                limit,
            });
        }
        Ok(fit.min(n.next_multiple_of(batch)))
    }

    fn record_step(&self, enc: &mut wgpu::CommandEncoder, plan: &Plan, train: bool) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for d in plan.forward.iter().chain(&plan.backward) {
            self.kernels.record(&mut pass, d);
        }
        if train {
            self.kernels.record(&mut pass, &plan.sgd);
        }
    }

    /// Pops error scopes pushed by [`Self::scopes`] and turns what they caught into errors.
    async fn pop_scopes(&self, scopes: (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard)) -> Result<(), GpuError> {
        let (val, oom) = scopes;
        let v = val.pop().await;
        let o = oom.pop().await;
        self.ctx.check()?;
        if let Some(e) = o {
            return Err(GpuError::OutOfMemory(e.to_string()));
        }
        if let Some(e) = v {
            return Err(GpuError::Validation(e.to_string()));
        }
        Ok(())
    }

    /// (validation, out-of-memory): tuple fields drop in order, and scopes must pop in reverse.
    fn scopes(&self) -> (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard) {
        let oom = self.ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        (val, oom)
    }

    /// Provokes `fault` (one taken from `self.fault`) now.
    fn provoke(&self, fault: Option<GpuFault>) {
        match fault {
            Some(GpuFault::ValidationError) => {
                let Some(bufs) = self.bufs.as_ref() else { return };
                let d = self.kernels.bind(
                    &self.ctx.device,
                    Kernel::Sgd,
                    &bufs.sgd_args,
                    0,
                    &[&bufs.grads, &bufs.anchor, &bufs.params, &bufs.mom],
                );
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(self.kernels.pipeline(Kernel::Sgd));
                    pass.set_bind_group(0, &d, &[]);
                    // One workgroup more than the device allows in x: invalid by construction.
                    pass.dispatch_workgroups(self.kernels.max_groups.saturating_add(1), 1, 1);
                }
                self.ctx.queue.submit([enc.finish()]);
            }
            Some(GpuFault::DeviceLost) => self.ctx.device.destroy(),
            None => {}
        }
    }

    async fn train_on_device(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), GpuError> {
        plan.validate()?;
        self.check_data(data)?;
        self.check_params(global)?;
        if data.is_empty() {
            return Err(TrainError::Empty.into());
        }
        self.ctx.check_lost()?;
        let n = data.len();
        let batch = plan.batch_size.min(n);
        let last = n % batch;
        self.ensure_bufs(batch)?;
        self.plan(batch, true)?;
        if last > 0 {
            self.plan(last, true)?;
        }
        let window = self.window(n, batch)?;
        let sl = data.sample_len();
        let steps_per_epoch = n.div_ceil(batch);
        let total_steps = steps_per_epoch * plan.epochs;
        let dropout = self.has_dropout();
        let scopes = self.scopes();
        let ctx = self.ctx.clone();
        let (features, labels, metrics, seeds) = {
            let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
            ctx.queue.write_buffer(&bufs.params, 0, bytemuck::cast_slice(global.as_slice()));
            ctx.queue.write_buffer(&bufs.anchor, 0, bytemuck::cast_slice(global.as_slice()));
            let a = args(&[
                u32::try_from(self.layout.len()).unwrap_or(u32::MAX),
                f(plan.lr),
                f(plan.momentum),
                f(plan.weight_decay),
                f(plan.prox_mu),
            ]);
            ctx.queue.write_buffer(&bufs.sgd_args, 0, bytemuck::cast_slice(&a));
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&bufs.mom, 0, None);
            ctx.queue.submit([enc.finish()]);
            let metrics_bytes = n as u64 * 8;
            if metrics_bytes > ctx.limits.max_buffer_size {
                return Err(GpuError::TooLarge {
                    what: "per-sample metrics".into(),
                    bytes: metrics_bytes,
                    limit: ctx.limits.max_buffer_size,
                });
            }
            (
                storage(&ctx, "features", (window * sl * 4) as u64),
                storage(&ctx, "labels", window as u64 * 4),
                storage(&ctx, "epoch metrics", metrics_bytes),
                storage(&ctx, "seeds", steps_per_epoch as u64 * 4),
            )
        };
        self.pop_scopes(scopes).await?;
        let mut order: Vec<usize> = (0..n).collect();
        let mut stats = TrainStats { examples: n, ..Default::default() };
        let mut shown_loss = 0.0;
        let mut feat_host = Vec::with_capacity(window * sl);
        let mut label_host = Vec::with_capacity(window);
        let mut fault = self.fault.take();
        for epoch in 0..plan.epochs {
            order.shuffle(rng);
            let scopes = self.scopes();
            if dropout {
                // Only dropout models draw seeds, so other models shuffle exactly like the CPU.
                let s: Vec<u32> = (0..steps_per_epoch).map(|_| rng.random()).collect();
                ctx.queue.write_buffer(&seeds, 0, bytemuck::cast_slice(&s));
            }
            let mut step = 0;
            while step < steps_per_epoch {
                // A window of whole batches, uploaded in this epoch's order.
                let w0 = step * batch;
                let w1 = (w0 + window).min(n);
                feat_host.clear();
                label_host.clear();
                for &idx in &order[w0..w1] {
                    feat_host.extend_from_slice(data.sample(idx));
                    label_host.push(data.labels[idx]);
                }
                ctx.queue.write_buffer(&features, 0, bytemuck::cast_slice(&feat_host));
                ctx.queue.write_buffer(&labels, 0, bytemuck::cast_slice(&label_host));
                let wsteps = (w1 - w0).div_ceil(batch);
                let mut s = 0;
                while s < wsteps {
                    let chunk = (wsteps - s).min(STEPS_PER_SUBMIT);
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    for j in s..s + chunk {
                        let start = j * batch;
                        let bsz = batch.min(w1 - w0 - start);
                        let bufs =
                            self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
                        let p =
                            self.plans.get(&(bsz, true)).ok_or_else(|| GpuError::Validation("missing plan".into()))?;
                        enc.copy_buffer_to_buffer(
                            &features,
                            (start * sl * 4) as u64,
                            &bufs.store[0],
                            0,
                            (bsz * sl * 4) as u64,
                        );
                        enc.copy_buffer_to_buffer(&labels, (start * 4) as u64, &bufs.labels, 0, (bsz * 4) as u64);
                        if dropout {
                            enc.copy_buffer_to_buffer(&seeds, ((step + j) * 4) as u64, &bufs.seed, 0, 4);
                        }
                        self.record_step(&mut enc, p, true);
                        enc.copy_buffer_to_buffer(
                            &bufs.metrics,
                            0,
                            &metrics,
                            ((w0 + start) * 8) as u64,
                            (bsz * 8) as u64,
                        );
                    }
                    ctx.queue.submit([enc.finish()]);
                    s += chunk;
                    stats.steps += chunk;
                    self.provoke(fault.take());
                    // Per-step losses stay on the device until the epoch ends; show the last
                    // epoch's mean meanwhile.
                    progress(Progress { epoch, step: stats.steps, total_steps, loss: shown_loss });
                }
                step += wsteps;
            }
            let m = ctx.read_f32(&metrics, 0, 2 * n).await?;
            self.pop_scopes(scopes).await?;
            let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
            for (i, pair) in m.chunks_exact(2).enumerate() {
                if !pair[0].is_finite() {
                    return Err(TrainError::Diverged { step: epoch * steps_per_epoch + i / batch }.into());
                }
                loss_sum += f64::from(pair[0]);
                correct += f64::from(pair[1]);
            }
            stats.loss = loss_sum / n as f64;
            stats.accuracy = correct / n as f64;
            shown_loss = stats.loss;
        }
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        let w = ctx.read_f32(&bufs.params, 0, self.layout.len()).await?;
        ctx.check()?;
        let local = Params::from_vec(global.layout().clone(), w).map_err(TrainError::from)?;
        Ok((local, stats))
    }

    async fn evaluate_on_device(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, GpuError> {
        self.check_data(data)?;
        self.check_params(params)?;
        if data.is_empty() {
            return Err(TrainError::Empty.into());
        }
        self.ctx.check_lost()?;
        let n = data.len();
        let cap = EVAL_BATCH.min(n).min(self.max_batch()?);
        let cap = self.bufs.as_ref().map_or(cap, |b| cap.max(b.cap.min(EVAL_BATCH).min(n)));
        self.ensure_bufs(cap)?;
        self.plan(cap, false)?;
        if !n.is_multiple_of(cap) {
            self.plan(n % cap, false)?;
        }
        let window = self.window(n, cap)?;
        let sl = data.sample_len();
        let ctx = self.ctx.clone();
        let scopes = self.scopes();
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        ctx.queue.write_buffer(&bufs.params, 0, bytemuck::cast_slice(params.as_slice()));
        let features = storage(&ctx, "features", (window * sl * 4) as u64);
        let labels = storage(&ctx, "labels", window as u64 * 4);
        let metrics = storage(&ctx, "eval metrics", n as u64 * 8);
        let mut fault = self.fault.take();
        for w0 in (0..n).step_by(window) {
            let w1 = (w0 + window).min(n);
            ctx.queue.write_buffer(&features, 0, bytemuck::cast_slice(&data.features[w0 * sl..w1 * sl]));
            ctx.queue.write_buffer(&labels, 0, bytemuck::cast_slice(&data.labels[w0..w1]));
            let starts: Vec<usize> = (0..w1 - w0).step_by(cap).collect();
            for chunk in starts.chunks(STEPS_PER_SUBMIT) {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                for &start in chunk {
                    let bsz = cap.min(w1 - w0 - start);
                    let p = self.plans.get(&(bsz, false)).ok_or_else(|| GpuError::Validation("missing plan".into()))?;
                    enc.copy_buffer_to_buffer(
                        &features,
                        (start * sl * 4) as u64,
                        &bufs.store[0],
                        0,
                        (bsz * sl * 4) as u64,
                    );
                    enc.copy_buffer_to_buffer(&labels, (start * 4) as u64, &bufs.labels, 0, (bsz * 4) as u64);
                    self.record_step(&mut enc, p, false);
                    enc.copy_buffer_to_buffer(&bufs.metrics, 0, &metrics, ((w0 + start) * 8) as u64, (bsz * 8) as u64);
                }
                ctx.queue.submit([enc.finish()]);
                self.provoke(fault.take());
            }
        }
        let m = ctx.read_f32(&metrics, 0, 2 * n).await?;
        self.pop_scopes(scopes).await?;
        let loss: f64 = m.chunks_exact(2).map(|p| f64::from(p[0])).sum();
        let correct: f64 = m.chunks_exact(2).map(|p| f64::from(p[1])).sum();
        Ok(EvalStats { loss: loss / n as f64, accuracy: correct / n as f64, examples: n })
    }

    /// Uploads `params` and a batch, runs the forward pass (and with `labels`, the loss and
    /// backward pass): for the conformance suite.
    async fn single(
        &mut self,
        params: &[f32],
        x: &[f32],
        labels: Option<&[u32]>,
        seed: u32,
    ) -> Result<usize, GpuError> {
        let b = x.len() / self.input_len().max(1);
        if b == 0 || b * self.input_len() != x.len() {
            return Err(TrainError::InputMismatch { model: self.input_len(), data: x.len() }.into());
        }
        if params.len() != self.layout.len() {
            return Err(GpuError::Validation(format!(
                "expected {} parameters, got {}",
                self.layout.len(),
                params.len()
            )));
        }
        let train = labels.is_some();
        self.ensure_bufs(b)?;
        self.plan(b, train)?;
        let ctx = self.ctx.clone();
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        ctx.queue.write_buffer(&bufs.params, 0, bytemuck::cast_slice(params));
        ctx.queue.write_buffer(&bufs.store[0], 0, bytemuck::cast_slice(x));
        let zeros = vec![0u32; b];
        ctx.queue.write_buffer(&bufs.labels, 0, bytemuck::cast_slice(labels.unwrap_or(&zeros)));
        ctx.queue.write_buffer(&bufs.seed, 0, bytemuck::cast_slice(&[seed]));
        let p = self.plans.get(&(b, train)).ok_or_else(|| GpuError::Validation("missing plan".into()))?;
        let scopes = self.scopes();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        self.record_step(&mut enc, p, false);
        ctx.queue.submit([enc.finish()]);
        self.pop_scopes(scopes).await?;
        Ok(b)
    }

    #[doc(hidden)]
    pub async fn forward_logits(&mut self, params: &[f32], x: &[f32]) -> Result<Vec<f32>, GpuError> {
        let b = self.single(params, x, None, 0).await?;
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        let n = self.ops.len();
        self.ctx.read_f32(&bufs.store[bufs.act[n]], 0, b * self.classes()).await
    }

    /// Mean loss and the gradient of one training-mode step (dropout seeded by `seed`).
    #[doc(hidden)]
    pub async fn loss_and_grad(
        &mut self,
        params: &[f32],
        x: &[f32],
        labels: &[u32],
        seed: u32,
    ) -> Result<(f64, Vec<f32>), GpuError> {
        let b = self.single(params, x, Some(labels), seed).await?;
        let bufs = self.bufs.as_ref().ok_or_else(|| GpuError::Validation("buffers not allocated".into()))?;
        let m = self.ctx.read_f32(&bufs.metrics, 0, 2 * b).await?;
        let g = self.ctx.read_f32(&bufs.grads, 0, self.layout.len()).await?;
        let loss = m.chunks_exact(2).map(|p| f64::from(p[0])).sum::<f64>() / b as f64;
        Ok((loss, g))
    }
}

/// GFLOP/s of the training matmul kernel on an `n`×`n`×`n` product (`reps` dispatches in one
/// submit), timed with `now_ms` (milliseconds from any origin; this crate reads no clocks).
pub async fn bench_matmul(ctx: &GpuContext, n: usize, reps: usize, now_ms: &dyn Fn() -> f64) -> Result<f64, GpuError> {
    let k = Kernels::new(&ctx.device, &ctx.limits)?;
    let bytes = (n * n * 4) as u64;
    let limit = ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size);
    if bytes > limit {
        return Err(GpuError::TooLarge { what: format!("a {n}×{n} matrix"), bytes, limit });
    }
    let a = storage(ctx, "a", bytes);
    let b = storage(ctx, "b", bytes);
    let c = storage(ctx, "c", bytes);
    let host: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    ctx.queue.write_buffer(&a, 0, bytemuck::cast_slice(&host));
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&host));
    let mut r = Recorder { k: &k, items: Vec::new() };
    r.matmul((n, n, n), (&a, 0, n, 1), (&b, 0, n, 1), None, (&c, 0, n))?;
    let d = r.finish(ctx);
    let run = |count: usize| {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..count {
                k.record(&mut pass, &d[0]);
            }
        }
        ctx.queue.submit([enc.finish()]);
    };
    // (validation, out-of-memory) so that an early return drops them in reverse push order.
    let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let scopes = (ctx.device.push_error_scope(wgpu::ErrorFilter::Validation), oom);
    run(1);
    ctx.finish().await?;
    let t0 = now_ms();
    run(reps.max(1));
    ctx.finish().await?;
    let ms = now_ms() - t0;
    let (val, oom) = scopes;
    if let Some(e) = val.pop().await {
        return Err(GpuError::Validation(e.to_string()));
    }
    if let Some(e) = oom.pop().await {
        return Err(GpuError::OutOfMemory(e.to_string()));
    }
    ctx.check()?;
    Ok(2.0 * (n as f64).powi(3) * reps.max(1) as f64 / (ms.max(1e-3) * 1e6))
}

/// A training error stays what it is; everything else is the device's failure (which the
/// [`crate::backend::Engine`] answers by falling back to the CPU).
fn to_train_error(e: GpuError) -> TrainError {
    match e {
        GpuError::Train(t) => t,
        other => TrainError::Device(other.to_string()),
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "webgpu"
    }

    async fn train(
        &mut self,
        global: &Params,
        data: &Dataset,
        plan: &TrainPlan,
        rng: &mut Rng,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Params, TrainStats), TrainError> {
        self.train_on_device(global, data, plan, rng, progress).await.map_err(to_train_error)
    }

    async fn evaluate(&mut self, params: &Params, data: &Dataset) -> Result<EvalStats, TrainError> {
        self.evaluate_on_device(params, data).await.map_err(to_train_error)
    }
}

/// `C[m,n] = A·B` with A and B read through (row, column) strides: for the conformance suite.
#[doc(hidden)]
pub async fn matmul_strided(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) -> Result<Vec<f32>, GpuError> {
    let kern = Kernels::new(&ctx.device, &ctx.limits)?;
    let (ab, bb) = (storage(ctx, "a", (a.len() * 4) as u64), storage(ctx, "b", (b.len() * 4) as u64));
    let cb = storage(ctx, "c", (m * n * 4) as u64);
    ctx.queue.write_buffer(&ab, 0, bytemuck::cast_slice(a));
    ctx.queue.write_buffer(&bb, 0, bytemuck::cast_slice(b));
    let mut r = Recorder { k: &kern, items: Vec::new() };
    r.matmul((m, n, k), (&ab, 0, a_rs, a_cs), (&bb, 0, b_rs, b_cs), None, (&cb, 0, n))?;
    let d = r.finish(ctx);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        kern.record(&mut pass, &d[0]);
    }
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32(&cb, 0, m * n).await
}
