// im2col / col2im in gather form (one invocation per output element, no atomics) and the
// [A,B,P] -> [B,A,P] permute between the GEMM layout [OC, B·P] and NCHW.
// p: 0 total, 1 C, 2 H, 3 W, 4 K, 5 stride, 6 pad, 7 OH, 8 OW, 9 batch
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// dst = cols[C·K·K, B·P] from src = x[B, C, H, W].
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
    let oh = pu(7u);
    let ow = pu(8u);
    let bp = pu(9u) * oh * ow;
    let row = idx / bp;
    let col = idx % bp;
    let bi = col / (oh * ow);
    let p = col % (oh * ow);
    let c = row / (k * k);
    let ki = (row / k) % k;
    let kj = row % k;
    let iy = i32((p / ow) * pu(5u) + ki) - i32(pu(6u));
    let ix = i32((p % ow) * pu(5u) + kj) - i32(pu(6u));
    var v = 0.0;
    if (iy >= 0 && iy < i32(h) && ix >= 0 && ix < i32(w)) {
        v = src[((bi * ch + c) * h + u32(iy)) * w + u32(ix)];
    }
    dst[idx] = v;
}

// dst = dx[B, C, H, W] gathered from src = dcols[C·K·K, B·P].
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
    let k = pu(4u);
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
    var sum = 0.0;
    for (var ki = 0; ki < i32(k); ki++) {
        let ty = iy + pad - ki;
        if (ty < 0 || ty % s != 0 || ty / s >= oh) {
            continue;
        }
        for (var kj = 0; kj < i32(k); kj++) {
            let tx = ix + pad - kj;
            if (tx < 0 || tx % s != 0 || tx / s >= ow) {
                continue;
            }
            let row = (c * k + u32(ki)) * k + u32(kj);
            sum += src[row * bp + bi * pp + u32((ty / s) * ow + tx / s)];
        }
    }
    dst[idx] = sum;
}
