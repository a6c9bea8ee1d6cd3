//! Compute pipelines (compiled once per backend) and the dispatch records a plan is made of.

use super::GpuError;

/// How a kernel binds a buffer (binding 0 is always the parameter uniform).
#[derive(Clone, Copy)]
enum Bind {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Matmul,
    Matmul8,
    Im2col,
    Col2im,
    Permute,
    PoolForward,
    PoolBackward,
    ReluForward,
    ReluBackward,
    Dropout,
    Loss,
    BiasGrad,
    BiasGradSerial,
    Sgd,
}

use Bind::{Read as R, Write as W};

impl Kernel {
    const ALL: [Kernel; 14] = [
        Kernel::Matmul,
        Kernel::Matmul8,
        Kernel::Im2col,
        Kernel::Col2im,
        Kernel::Permute,
        Kernel::PoolForward,
        Kernel::PoolBackward,
        Kernel::ReluForward,
        Kernel::ReluBackward,
        Kernel::Dropout,
        Kernel::Loss,
        Kernel::BiasGrad,
        Kernel::BiasGradSerial,
        Kernel::Sgd,
    ];

    fn source(self) -> (&'static str, &'static str, &'static [Bind]) {
        match self {
            Kernel::Matmul => (include_str!("matmul.wgsl"), "main", &[R, R, R, W]),
            Kernel::Matmul8 => (include_str!("matmul.wgsl"), "main8", &[R, R, R, W]),
            Kernel::Im2col => (include_str!("conv.wgsl"), "im2col", &[R, W]),
            Kernel::Col2im => (include_str!("conv.wgsl"), "col2im", &[R, W]),
            Kernel::Permute => (include_str!("permute.wgsl"), "main", &[R, R, W]),
            Kernel::PoolForward => (include_str!("pool.wgsl"), "forward", &[R, W, W]),
            Kernel::PoolBackward => (include_str!("pool.wgsl"), "backward", &[R, W, W]),
            Kernel::ReluForward => (include_str!("eltwise.wgsl"), "relu_forward", &[R, R, R, W]),
            Kernel::ReluBackward => (include_str!("eltwise.wgsl"), "relu_backward", &[R, R, R, W]),
            Kernel::Dropout => (include_str!("eltwise.wgsl"), "dropout", &[R, R, R, W]),
            Kernel::Loss => (include_str!("loss.wgsl"), "main", &[R, R, W, W]),
            Kernel::BiasGrad => (include_str!("reduce.wgsl"), "main", &[R, W]),
            Kernel::BiasGradSerial => (include_str!("reduce.wgsl"), "serial", &[R, W]),
            Kernel::Sgd => (include_str!("sgd.wgsl"), "main", &[R, R, W, W]),
        }
    }
}

/// Every pipeline with its explicit bind group layout.
pub(crate) struct Kernels {
    pipelines: Vec<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>,
    /// Bytes between per-dispatch parameter blocks in a uniform buffer.
    pub uniform_stride: u64,
    pub max_groups: u32,
}

/// Sixteen u32 parameters of one dispatch.
pub(crate) type Args = [u32; 16];

pub(crate) fn f(v: f32) -> u32 {
    v.to_bits()
}

/// One recorded dispatch: its pipeline, bind group (uniform block included) and grid.
pub(crate) struct Dispatch {
    pub kernel: Kernel,
    pub bind: wgpu::BindGroup,
    pub groups: [u32; 3],
}

impl Kernels {
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> Result<Self, GpuError> {
        let common = include_str!("common.wgsl");
        let mut pipelines = Vec::new();
        for k in Kernel::ALL {
            let (src, entry, binds) = k.source();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(format!("{common}\n{src}").into()),
            });
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }];
            for (i, b) in binds.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: matches!(b, Bind::Read) },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            pipelines.push((pipeline, bgl));
        }
        Ok(Kernels {
            pipelines,
            uniform_stride: u64::from(limits.min_uniform_buffer_offset_alignment).max(64),
            max_groups: limits.max_compute_workgroups_per_dimension,
        })
    }

    pub fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[k as usize].0
    }

    /// A bind group for dispatch `slot` of `uniforms` with `buffers` at bindings 1.., whole.
    pub fn bind(
        &self,
        device: &wgpu::Device,
        k: Kernel,
        uniforms: &wgpu::Buffer,
        slot: usize,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: uniforms,
                offset: slot as u64 * self.uniform_stride,
                size: wgpu::BufferSize::new(64),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipelines[k as usize].1,
            entries: &entries,
        })
    }

    /// A grid of `groups` workgroups, folded into y when wider than the per-dimension limit.
    pub fn grid(&self, groups: u64) -> Result<[u32; 3], GpuError> {
        let max = u64::from(self.max_groups);
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(GpuError::TooLarge {
                what: "a dispatch".into(),
                bytes: groups * 256 * 4,
                limit: max * max * 1024,
            });
        }
        Ok([x as u32, y as u32, 1])
    }

    /// The grid of a matmul with `m` rows and `n` columns in `tile`×`tile` workgroup tiles
    /// (column tiles spill into z).
    pub fn matmul_grid(&self, m: usize, n: usize, tile: u64) -> Result<[u32; 3], GpuError> {
        let max = u64::from(self.max_groups);
        let (tm, tn) = ((m as u64).div_ceil(tile), (n as u64).div_ceil(tile));
        let x = tn.clamp(1, max);
        let z = tn.div_ceil(x).max(1);
        if tm > max || z > max {
            return Err(GpuError::TooLarge {
                what: format!("a {m}×{n} matrix product"),
                bytes: (m * n * 4) as u64,
                limit: max * tile * 4,
            });
        }
        Ok([x as u32, tm.max(1) as u32, z as u32])
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, d: &Dispatch) {
        pass.set_pipeline(self.pipeline(d.kernel));
        pass.set_bind_group(0, &d.bind, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
}
