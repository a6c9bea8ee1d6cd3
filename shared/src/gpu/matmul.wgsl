// C[M,N] (=|+=) A[M,K]·B[K,N] (+ bias), register-tiled: a 16×16 workgroup computes a 64×64 tile,
// 4×4 outputs per invocation, K in slices of 16 staged in workgroup memory. A and B are read
// through (row, column) strides, so transposed operands cost nothing.
// p: 0 M, 1 N, 2 K, 3 a_off, 4 a_rs, 5 a_cs, 6 b_off, 7 b_rs, 8 b_cs, 9 c_off, 10 ldc,
//    11 bias_off, 12 bias mode (0 none, 1 per row, 2 per column), 13 accumulate
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// [k][i] for 16 k and 64 rows/columns, as vec4 so one load feeds four FMAs.
var<workgroup> ta: array<vec4<f32>, 256>;
var<workgroup> tb: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m = pu(0u);
    let n = pu(1u);
    let k = pu(2u);
    let a_off = pu(3u);
    let a_rs = pu(4u);
    let a_cs = pu(5u);
    let b_off = pu(6u);
    let b_rs = pu(7u);
    let b_cs = pu(8u);
    let row0 = wid.y * 64u;
    let col0 = (wid.x + wid.z * nwg.x) * 64u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k; k0 += 16u) {
        // Each invocation stages four consecutive rows (and columns) at one k as whole vec4s:
        // dynamic component writes are slow on CPU implementations.
        let kk = li / 16u;
        let q = li % 16u;
        let kg = k0 + kk;
        var va = vec4<f32>(0.0);
        var vb = vec4<f32>(0.0);
        if (kg < k) {
            for (var t = 0u; t < 4u; t++) {
                let r = row0 + q * 4u + t;
                if (r < m) {
                    va[t] = a[a_off + r * a_rs + kg * a_cs];
                }
                let cc = col0 + q * 4u + t;
                if (cc < n) {
                    vb[t] = b[b_off + kg * b_rs + cc * b_cs];
                }
            }
        }
        ta[kk * 16u + q] = va;
        tb[kk * 16u + q] = vb;
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let av = ta[kk * 16u + lid.y];
            let bv = tb[kk * 16u + lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }
    let c_off = pu(9u);
    let ldc = pu(10u);
    let bias_off = pu(11u);
    let mode = pu(12u);
    let accumulate = pu(13u) != 0u;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r >= m) {
            break;
        }
        var v: vec4<f32>;
        switch i {
            case 0u: { v = acc0; }
            case 1u: { v = acc1; }
            case 2u: { v = acc2; }
            default: { v = acc3; }
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= n) {
                break;
            }
            var x = v[j];
            if (mode == 1u) {
                x += bias[bias_off + r];
            } else if (mode == 2u) {
                x += bias[bias_off + col];
            }
            let idx = c_off + r * ldc + col;
            if (accumulate) {
                x += c[idx];
            }
            c[idx] = x;
        }
    }
}
