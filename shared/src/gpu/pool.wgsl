// Max pooling without padding. Forward records the winning input (first on ties, like the CPU
// engine); backward gathers, for each input, the gradients of the windows it won.
// p: 0 total, 1 H, 2 W, 3 K, 4 stride, 5 OH, 6 OW
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> argm: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let h = pu(1u);
    let w = pu(2u);
    let k = pu(3u);
    let s = pu(4u);
    let oh = pu(5u);
    let ow = pu(6u);
    let plane = idx / (oh * ow);
    let o = idx % (oh * ow);
    let first = (o / ow) * s * w + (o % ow) * s;
    let base = plane * h * w;
    var best = first;
    var bv = src[base + first];
    for (var ki = 0u; ki < k; ki++) {
        for (var kj = 0u; kj < k; kj++) {
            let i = first + ki * w + kj;
            let v = src[base + i];
            if (v > bv) {
                bv = v;
                best = i;
            }
        }
    }
    dst[idx] = bv;
    argm[idx] = best;
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let h = pu(1u);
    let w = pu(2u);
    let k = i32(pu(3u));
    let s = i32(pu(4u));
    let oh = i32(pu(5u));
    let ow = i32(pu(6u));
    let plane = idx / (h * w);
    let q = idx % (h * w);
    let iy = i32(q / w);
    let ix = i32(q % w);
    // Windows oy with oy·s <= iy < oy·s + k.
    let y0 = max(0, (iy - k + s) / s);
    let y1 = min(oh - 1, iy / s);
    let x0 = max(0, (ix - k + s) / s);
    let x1 = min(ow - 1, ix / s);
    var sum = 0.0;
    for (var oy = y0; oy <= y1; oy++) {
        for (var ox = x0; ox <= x1; ox++) {
            let o = plane * u32(oh * ow) + u32(oy * ow + ox);
            if (argm[o] == q) {
                sum += src[o];
            }
        }
    }
    dst[idx] = sum;
}
