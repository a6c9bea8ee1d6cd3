// dst[b, a, p] = src[a, b, p] (+ bias[a]).
// p: 0 total, 1 A, 2 B, 3 P, 4 add bias, 5 bias_off
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let na = pu(1u);
    let nb = pu(2u);
    let np = pu(3u);
    let p = idx % np;
    let ai = (idx / np) % na;
    let bi = idx / (np * na);
    var v = src[(ai * nb + bi) * np + p];
    if (pu(4u) != 0u) {
        v += bias[pu(5u) + ai];
    }
    dst[idx] = v;
}
