// ReLU forward/backward and inverted dropout.
// p: 0 total; dropout: 1 p (f32 bits), 2 per-layer salt
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read> seed: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx < pu(0u)) {
        dst[idx] = max(src[idx], 0.0);
    }
}

// dst = dy where the forward output (aux) was positive.
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx < pu(0u)) {
        dst[idx] = select(0.0, src[idx], aux[idx] > 0.0);
    }
}

fn hash(x: u32) -> u32 {
    // A 32-bit integer mixer (lowbias32-style constants).
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// The mask is a pure function of (step seed, layer salt, index), so the backward pass (the
// same entry point applied to dy) reuses exactly the forward mask without storing it.
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let p = pf(1u);
    let r = f32(hash(hash(seed[0] ^ pu(2u)) ^ idx) >> 8u) * (1.0 / 16777216.0);
    dst[idx] = select(0.0, src[idx] / (1.0 - p), r >= p);
}
