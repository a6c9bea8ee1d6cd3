// C[M,N] (=|+=) A[M,K]·B[K,N] (+ bias), register-tiled: an 8×8 workgroup computes a 32×32 tile,
// 4×4 outputs per invocation, reading A and B straight from storage (CPU implementations such as
// lavapipe and SwiftShader pay dearly for workgroup barriers; caches serve the reuse). Edge rows
// and columns are clamped for loading and skipped when storing, so the K loop has no branches.
// A and B are read through (row, column) strides, so transposed operands cost nothing.
// p: 0 M, 1 N, 2 K, 3 a_off, 4 a_rs, 5 a_cs, 6 b_off, 7 b_rs, 8 b_cs, 9 c_off, 10 ldc,
//    11 bias_off, 12 bias mode (0 none, 1 per row, 2 per column), 13 accumulate
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn put(r: u32, col: u32, v: f32) {
    if (col >= pu(1u)) {
        return;
    }
    var x = v;
    let mode = pu(12u);
    if (mode == 1u) {
        x += bias[pu(11u) + r];
    } else if (mode == 2u) {
        x += bias[pu(11u) + col];
    }
    let idx = pu(9u) + r * pu(10u) + col;
    if (pu(13u) != 0u) {
        x += c[idx];
    }
    c[idx] = x;
}

fn put_row(r: u32, c0: u32, v: vec4<f32>) {
    if (r >= pu(0u)) {
        return;
    }
    put(r, c0, v.x);
    put(r, c0 + 1u, v.y);
    put(r, c0 + 2u, v.z);
    put(r, c0 + 3u, v.w);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = pu(0u);
    let n = pu(1u);
    let k = pu(2u);
    let r0 = wid.y * 32u + lid.y * 4u;
    let c0 = (wid.x + wid.z * nwg.x) * 32u + lid.x * 4u;
    if (r0 >= m || c0 >= n) {
        return;
    }
    let a_cs = pu(5u);
    let b_rs = pu(7u);
    let rows = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(m - 1u));
    let cols = min(vec4<u32>(c0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n - 1u));
    var ia = vec4<u32>(pu(3u)) + rows * pu(4u);
    var ib = vec4<u32>(pu(6u)) + cols * pu(8u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k; kk++) {
        let av = vec4<f32>(a[ia.x], a[ia.y], a[ia.z], a[ia.w]);
        let bv = vec4<f32>(b[ib.x], b[ib.y], b[ib.z], b[ib.w]);
        acc0 += av.x * bv;
        acc1 += av.y * bv;
        acc2 += av.z * bv;
        acc3 += av.w * bv;
        ia += vec4<u32>(a_cs);
        ib += vec4<u32>(b_rs);
    }
    put_row(r0, c0, acc0);
    put_row(r0 + 1u, c0, acc1);
    put_row(r0 + 2u, c0, acc2);
    put_row(r0 + 3u, c0, acc3);
}
