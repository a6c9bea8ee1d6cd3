// The SGD step of train::Sgd: d = g + wd·w + μ(w − w0); buf = m·buf + d; w −= lr·buf.
// p: 0 n, 1 lr, 2 momentum, 3 weight decay, 4 μ (f32 bits)
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> anchor: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> buf: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = flat_id(wid, nwg, li);
    if (i >= pu(0u)) {
        return;
    }
    let wi = w[i];
    let d = grad[i] + pf(3u) * wi + pf(4u) * (wi - anchor[i]);
    let b = pf(2u) * buf[i] + d;
    buf[i] = b;
    w[i] = wi - pf(1u) * b;
}
