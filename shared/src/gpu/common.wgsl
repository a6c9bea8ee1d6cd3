// Shared prelude of every kernel (prepended at pipeline creation): sixteen u32 parameters per
// dispatch, f32 ones passed as bit patterns, and the 1-D invocation id folded over a 2-D grid
// (dispatches wider than the per-dimension workgroup limit spill into y).
struct Params { p: array<vec4<u32>, 4> }
@group(0) @binding(0) var<uniform> u: Params;

fn pu(i: u32) -> u32 {
    return u.p[i / 4u][i % 4u];
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(pu(i));
}

fn flat_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}
