// Bias gradients: dst[out_off + o] = Σ_r src[in_off + o·so + r·sr], one workgroup per output
// with a tree reduction in workgroup memory.
// p: 0 outputs, 1 R, 2 so, 3 sr, 4 in_off, 5 out_off
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let o = wid.x + wid.y * nwg.x;
    let rows = pu(1u);
    let base = pu(4u) + o * pu(2u);
    let sr = pu(3u);
    var s = 0.0;
    if (o < pu(0u)) {
        for (var r = li; r < rows; r += 256u) {
            s += src[base + r * sr];
        }
    }
    part[li] = s;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (li < half) {
            part[li] += part[li + half];
        }
        workgroupBarrier();
    }
    if (li == 0u && o < pu(0u)) {
        dst[pu(5u) + o] = part[0];
    }
}

// The same sums for short rows (R ≤ a few hundred, e.g. dense bias gradients over a batch): one
// invocation per output, no workgroup memory or barriers (which CPU implementations pay dearly for).
@compute @workgroup_size(64)
fn serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let o = (wid.x + wid.y * nwg.x) * 64u + li;
    if (o >= pu(0u)) {
        return;
    }
    let rows = pu(1u);
    let sr = pu(3u);
    var idx = pu(4u) + o * pu(2u);
    var s = 0.0;
    for (var r = 0u; r < rows; r++) {
        s += src[idx];
        idx += sr;
    }
    dst[pu(5u) + o] = s;
}
