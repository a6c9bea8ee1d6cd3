// Softmax cross-entropy, one invocation per sample: dlogits = (softmax − onehot)·scale and
// per-sample [loss, correct] pairs for the metrics buffer.
// p: 0 batch, 1 classes, 2 scale (f32 bits, 1/batch)
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> metrics: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let bi = flat_id(wid, nwg, li);
    if (bi >= pu(0u)) {
        return;
    }
    let nc = pu(1u);
    let scale = pf(2u);
    let base = bi * nc;
    let label = labels[bi];
    var mx = logits[base];
    var arg = 0u;
    for (var i = 1u; i < nc; i++) {
        let v = logits[base + i];
        if (v > mx) {
            mx = v;
            arg = i;
        }
    }
    var sum = 0.0;
    for (var i = 0u; i < nc; i++) {
        sum += exp(logits[base + i] - mx);
    }
    for (var i = 0u; i < nc; i++) {
        let pr = exp(logits[base + i] - mx) / sum;
        dlogits[base + i] = (pr - select(0.0, 1.0, i == label)) * scale;
    }
    var zl = logits[base + min(label, nc - 1u)];
    metrics[2u * bi] = log(sum) - (zl - mx);
    // A NaN logit never wins the comparison above; flag it through the loss instead.
    metrics[2u * bi + 1u] = select(0.0, 1.0, arg == label);
}
