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

// The same product with 8×8 outputs per invocation (a 64×64 tile per workgroup): 16 loads per 64
// multiply-adds instead of 8 per 16, which is what CPU adapters pay for. Chosen at plan time for
// products at least 64 wide both ways (narrow ones would waste the clamped edge work).
fn put_row8(r: u32, c0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    put_row(r, c0, lo);
    put_row(r, c0 + 4u, hi);
}

@compute @workgroup_size(8, 8)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = pu(0u);
    let n = pu(1u);
    let k = pu(2u);
    let r0 = wid.y * 64u + lid.y * 8u;
    let c0 = (wid.x + wid.z * nwg.x) * 64u + lid.x * 8u;
    if (r0 >= m || c0 >= n) {
        return;
    }
    let a_cs = vec4<u32>(pu(5u));
    let b_rs = vec4<u32>(pu(7u));
    let lo = vec4<u32>(0u, 1u, 2u, 3u);
    let hi = vec4<u32>(4u, 5u, 6u, 7u);
    let rlo = min(vec4<u32>(r0) + lo, vec4<u32>(m - 1u));
    let rhi = min(vec4<u32>(r0) + hi, vec4<u32>(m - 1u));
    let clo = min(vec4<u32>(c0) + lo, vec4<u32>(n - 1u));
    let chi = min(vec4<u32>(c0) + hi, vec4<u32>(n - 1u));
    var ia0 = vec4<u32>(pu(3u)) + rlo * pu(4u);
    var ia1 = vec4<u32>(pu(3u)) + rhi * pu(4u);
    var ib0 = vec4<u32>(pu(6u)) + clo * pu(8u);
    var ib1 = vec4<u32>(pu(6u)) + chi * pu(8u);
    var s0 = vec4<f32>(0.0);
    var t0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var t1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var t2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    var t3 = vec4<f32>(0.0);
    var s4 = vec4<f32>(0.0);
    var t4 = vec4<f32>(0.0);
    var s5 = vec4<f32>(0.0);
    var t5 = vec4<f32>(0.0);
    var s6 = vec4<f32>(0.0);
    var t6 = vec4<f32>(0.0);
    var s7 = vec4<f32>(0.0);
    var t7 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k; kk++) {
        let a0 = vec4<f32>(a[ia0.x], a[ia0.y], a[ia0.z], a[ia0.w]);
        let a1 = vec4<f32>(a[ia1.x], a[ia1.y], a[ia1.z], a[ia1.w]);
        let b0 = vec4<f32>(b[ib0.x], b[ib0.y], b[ib0.z], b[ib0.w]);
        let b1 = vec4<f32>(b[ib1.x], b[ib1.y], b[ib1.z], b[ib1.w]);
        s0 += a0.x * b0;
        t0 += a0.x * b1;
        s1 += a0.y * b0;
        t1 += a0.y * b1;
        s2 += a0.z * b0;
        t2 += a0.z * b1;
        s3 += a0.w * b0;
        t3 += a0.w * b1;
        s4 += a1.x * b0;
        t4 += a1.x * b1;
        s5 += a1.y * b0;
        t5 += a1.y * b1;
        s6 += a1.z * b0;
        t6 += a1.z * b1;
        s7 += a1.w * b0;
        t7 += a1.w * b1;
        ia0 += a_cs;
        ia1 += a_cs;
        ib0 += b_rs;
        ib1 += b_rs;
    }
    put_row8(r0, c0, s0, t0);
    put_row8(r0 + 1u, c0, s1, t1);
    put_row8(r0 + 2u, c0, s2, t2);
    put_row8(r0 + 3u, c0, s3, t3);
    put_row8(r0 + 4u, c0, s4, t4);
    put_row8(r0 + 5u, c0, s5, t5);
    put_row8(r0 + 6u, c0, s6, t6);
    put_row8(r0 + 7u, c0, s7, t7);
}
