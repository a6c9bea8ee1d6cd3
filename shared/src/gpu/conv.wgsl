// im2col / col2im in gather form (one invocation per output element, no atomics) and the
// [A,B,P] -> [B,A,P] permute between the GEMM layout [OC, B·P] and NCHW.
// p: 0 total, 1 C, 2 H, 3 W, 4 K, 5 stride, 6 pad, 7 OH, 8 OW, 9 batch
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// dst = cols[C·K·K, B·P] from src = x[B, C, H, W]: one invocation per (row, image, output row)
// writes the OW outputs of that row (the divisions are paid once per row, not per element).
// Here p0 is C·K·K · B · OH.
@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let ch = pu(1u);
    let h = pu(2u);
    let w = pu(3u);
    let k = pu(4u);
    let s = pu(5u);
    let pad = i32(pu(6u));
    let oh = pu(7u);
    let ow = pu(8u);
    let batch = pu(9u);
    let pp = oh * ow;
    let oy = idx % oh;
    let t = idx / oh;
    let bi = t % batch;
    let row = t / batch;
    let c = row / (k * k);
    let ki = (row / k) % k;
    let kj = row % k;
    let iy = i32(oy * s + ki) - pad;
    let o = row * batch * pp + bi * pp + oy * ow;
    if (iy < 0 || iy >= i32(h)) {
        for (var ox = 0u; ox < ow; ox++) {
            dst[o + ox] = 0.0;
        }
        return;
    }
    let base = ((bi * ch + c) * h + u32(iy)) * w;
    var ix = i32(kj) - pad;
    for (var ox = 0u; ox < ow; ox++) {
        var v = 0.0;
        if (ix >= 0 && ix < i32(w)) {
            v = src[base + u32(ix)];
        }
        dst[o + ox] = v;
        ix += i32(s);
    }
}

// dst = dx[B, C, H, W] gathered from src = dcols[C·K·K, B·P]: only the output positions whose
// window covers (iy, ix) are visited (bounds from two divisions per axis), in ascending (ki, kj).
@compute @workgroup_size(256)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let idx = flat_id(wid, nwg, li);
    if (idx >= pu(0u)) {
        return;
    }
    let ch = pu(1u);
    let h = pu(2u);
    let w = pu(3u);
    let k = i32(pu(4u));
    let s = i32(pu(5u));
    let pad = i32(pu(6u));
    let oh = i32(pu(7u));
    let ow = i32(pu(8u));
    let pp = u32(oh * ow);
    let bp = pu(9u) * pp;
    let ix = i32(idx % w);
    let iy = i32((idx / w) % h);
    let c = (idx / (w * h)) % ch;
    let bi = idx / (w * h * ch);
    let ty = iy + pad;
    let tx = ix + pad;
    let oy_lo = (max(ty - k + 1, 0) + s - 1) / s;
    let oy_hi = min(ty / s, oh - 1);
    let ox_lo = (max(tx - k + 1, 0) + s - 1) / s;
    let ox_hi = min(tx / s, ow - 1);
    let base = bi * pp;
    var sum = 0.0;
    for (var oy = oy_hi; oy >= oy_lo; oy--) {
        let ki = u32(ty - oy * s);
        for (var ox = ox_hi; ox >= ox_lo; ox--) {
            let row = (c * u32(k) + ki) * u32(k) + u32(tx - ox * s);
            sum += src[row * bp + base + u32(oy * ow + ox)];
        }
    }
    dst[idx] = sum;
}
