//! Unpacked SIMD128 GEMM kernels for wasm32, used by [`super::gemm`] for the skinny products of
//! training.
//!
//! Why our own kernel: `matrixmultiply` packs both operands into panels on every call. That pays
//! off for big square products, but the dense layers' products at batch 10–50 have one dimension
//! that small (`x·Wᵀ` has M = B, `dyᵀ·x` has K = B, `dy·W` has M = B), so the packing copies
//! about as many bytes as the product touches, and it runs through wasm's scalar-ish copy loops.
//! These kernels read the row-major operands in place, with contiguous `v128` loads along the
//! unit-stride dimension, in register-blocked tiles:
//!
//! * [`gemm_rows`] (B row-major, `b.cs == 1`): each output tile of `MR` rows × `4·NV` columns
//!   accumulates outer products, `c[i, j..j+4·NV] += a[i, p] · b[p, j..j+4·NV]`, with `a[i, p]`
//!   splatted from memory. Columns are the outer loop, so a `k × 4·NV` strip of B stays in L1
//!   while every row tile of A passes over it.
//! * [`gemm_dots`] (A row-major, B transposed: `a.cs == 1`, `b.rs == 1`): each output element is
//!   a dot product of two contiguous rows; a tile of `MR × NR` dots shares its loads and keeps
//!   four partial sums per element, summed across lanes at the end.
//!
//! Plain SIMD128 only (no relaxed-simd, which not every browser has). Both functions are
//! `unsafe`: the caller must have checked that every `(i, p)` / `(p, j)` index of the operands
//! lands inside their slices (as [`super::gemm`] does with `max_index`) and that `c` holds
//! `m · n` elements. Every pointer below is formed from such an index, as noted at each site.

use core::arch::wasm32::*;

/// Output tile height of [`gemm_rows`]: 4 rows × 2 vectors is 8 accumulators, plus 2 B vectors
/// and a splat, which fits x64's 16 xmm registers V8 allocates from.
const ROWS_MR: usize = 4;
/// Output tile of [`gemm_dots`]: 2 × 4 dots = 8 accumulators plus 2 A and 1 B vector live.
const DOTS_MR: usize = 2;
const DOTS_NR: usize = 4;

/// Stores `alpha · acc + beta · c` (just `alpha · acc` when `beta == 0`, so stale NaNs in `c`
/// do not survive, as BLAS and matrixmultiply promise).
#[inline(always)]
unsafe fn store(c: *mut f32, acc: v128, alpha: v128, beta: f32) {
    unsafe {
        let v = f32x4_mul(acc, alpha);
        if beta == 0.0 {
            v128_store(c as *mut v128, v);
        } else {
            let old = v128_load(c as *const v128);
            v128_store(c as *mut v128, f32x4_add(v, f32x4_mul(old, f32x4_splat(beta))));
        }
    }
}

#[inline(always)]
fn store_scalar(c: &mut f32, acc: f32, alpha: f32, beta: f32) {
    *c = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *c };
}

/// One `R × 4·NV` tile of [`gemm_rows`] at rows `i0..i0+R`, columns `j0..j0+4·NV`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_tile<const R: usize, const NV: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    beta: f32,
    c: *mut f32,
    n: usize,
    i0: usize,
    j0: usize,
) {
    let mut acc = [[f32x4_splat(0.0); NV]; R];
    // SAFETY: i0 + r < m, p < k and j0 + 4·NV <= n, so every A index (i, p) and B index
    // (p, j0 + 4v + lane) is in range by the caller's contract, and C index i·n + j < m·n.
    unsafe {
        for p in 0..k {
            let brow = b.add(p * brs + j0);
            let mut bv = [f32x4_splat(0.0); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = v128_load(brow.add(4 * v) as *const v128);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let s = v128_load32_splat(a.add((i0 + r) * ars + p * acs) as *const u32);
                for (accv, bvv) in row.iter_mut().zip(bv) {
                    *accv = f32x4_add(*accv, f32x4_mul(s, bvv));
                }
            }
        }
        let al = f32x4_splat(alpha);
        for (r, row) in acc.iter().enumerate() {
            for (v, accv) in row.iter().enumerate() {
                store(c.add((i0 + r) * n + j0 + 4 * v), *accv, al, beta);
            }
        }
    }
}

/// All row tiles of one column strip `j0..j0+4·NV`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_strip<const NV: usize>(
    m: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    beta: f32,
    c: *mut f32,
    n: usize,
    j0: usize,
) {
    // SAFETY: each call covers rows i0..i0+R with i0 + R <= m; the caller guarantees the rest.
    unsafe {
        let mut i0 = 0;
        while i0 + ROWS_MR <= m {
            rows_tile::<ROWS_MR, NV>(k, alpha, a, ars, acs, b, brs, beta, c, n, i0, j0);
            i0 += ROWS_MR;
        }
        match m - i0 {
            0 => {}
            1 => rows_tile::<1, NV>(k, alpha, a, ars, acs, b, brs, beta, c, n, i0, j0),
            2 => rows_tile::<2, NV>(k, alpha, a, ars, acs, b, brs, beta, c, n, i0, j0),
            _ => rows_tile::<3, NV>(k, alpha, a, ars, acs, b, brs, beta, c, n, i0, j0),
        }
    }
}

/// `c = alpha · a · b + beta · c` for B with unit column stride (`b[p, j]` at `b[p·brs + j]`),
/// A at `a[i·ars + p·acs]`, `c` row-major `m × n`.
///
/// # Safety
/// `m, k, n >= 1`; every `a` index `(m-1)·ars + (k-1)·acs` and `b` index `(k-1)·brs + n-1` must
/// be in bounds of the allocations behind `a` and `b`, and `c` must hold `m · n` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_rows(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    beta: f32,
    c: &mut [f32],
) {
    assert!(c.len() >= m * n);
    let cp = c.as_mut_ptr();
    // SAFETY: strips cover columns j0..j0+8 or j0..j0+4 with the end <= n; see `rows_tile`.
    unsafe {
        let mut j0 = 0;
        while j0 + 8 <= n {
            rows_strip::<2>(m, k, alpha, a, ars, acs, b, brs, beta, cp, n, j0);
            j0 += 8;
        }
        if j0 + 4 <= n {
            rows_strip::<1>(m, k, alpha, a, ars, acs, b, brs, beta, cp, n, j0);
            j0 += 4;
        }
        // The last 0–3 columns, scalar.
        for j in j0..n {
            for i in 0..m {
                let mut s = 0.0;
                for p in 0..k {
                    s += *a.add(i * ars + p * acs) * *b.add(p * brs + j);
                }
                store_scalar(&mut c[i * n + j], s, alpha, beta);
            }
        }
    }
}

#[inline(always)]
fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let s = f32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s));
    f32x4_extract_lane::<0>(s)
}

/// One `R × S` tile of dot products at rows `i0..`, columns `j0..` of [`gemm_dots`].
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn dots_tile<const R: usize, const S: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    b: *const f32,
    bcs: usize,
    beta: f32,
    c: &mut [f32],
    n: usize,
    i0: usize,
    j0: usize,
) {
    let mut acc = [[f32x4_splat(0.0); S]; R];
    let k4 = k / 4 * 4;
    // SAFETY: i0 + r < m, j0 + s < n and p < k, so A index (i, p) = i·ars + p and B index
    // (p, j) = j·bcs + p are in range by the caller's contract.
    unsafe {
        let mut p = 0;
        while p < k4 {
            let mut av = [f32x4_splat(0.0); R];
            for (r, slot) in av.iter_mut().enumerate() {
                *slot = v128_load(a.add((i0 + r) * ars + p) as *const v128);
            }
            for s in 0..S {
                let bv = v128_load(b.add((j0 + s) * bcs + p) as *const v128);
                for r in 0..R {
                    acc[r][s] = f32x4_add(acc[r][s], f32x4_mul(av[r], bv));
                }
            }
            p += 4;
        }
        for r in 0..R {
            for s in 0..S {
                let mut t = hsum(acc[r][s]);
                for q in k4..k {
                    t += *a.add((i0 + r) * ars + q) * *b.add((j0 + s) * bcs + q);
                }
                store_scalar(&mut c[(i0 + r) * n + j0 + s], t, alpha, beta);
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_strip<const S: usize>(
    m: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    b: *const f32,
    bcs: usize,
    beta: f32,
    c: &mut [f32],
    n: usize,
    j0: usize,
) {
    // SAFETY: each call covers rows i0..i0+R with i0 + R <= m.
    unsafe {
        let mut i0 = 0;
        while i0 + DOTS_MR <= m {
            dots_tile::<DOTS_MR, S>(k, alpha, a, ars, b, bcs, beta, c, n, i0, j0);
            i0 += DOTS_MR;
        }
        if i0 < m {
            dots_tile::<1, S>(k, alpha, a, ars, b, bcs, beta, c, n, i0, j0);
        }
    }
}

/// `c = alpha · a · b + beta · c` for A with unit column stride (`a[i, p]` at `a[i·ars + p]`)
/// and B with unit row stride (`b[p, j]` at `b[j·bcs + p]`, i.e. a row-major matrix read
/// transposed), `c` row-major `m × n`.
///
/// # Safety
/// `m, k, n >= 1`; the `a` index `(m-1)·ars + k-1` and the `b` index `(n-1)·bcs + k-1` must be
/// in bounds of the allocations behind `a` and `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_dots(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    b: *const f32,
    bcs: usize,
    beta: f32,
    c: &mut [f32],
) {
    assert!(c.len() >= m * n);
    // SAFETY: strips cover columns j0..j0+S with the end <= n; see `dots_tile`.
    unsafe {
        let mut j0 = 0;
        while j0 + DOTS_NR <= n {
            dots_strip::<DOTS_NR>(m, k, alpha, a, ars, b, bcs, beta, c, n, j0);
            j0 += DOTS_NR;
        }
        match n - j0 {
            0 => {}
            1 => dots_strip::<1>(m, k, alpha, a, ars, b, bcs, beta, c, n, j0),
            2 => dots_strip::<2>(m, k, alpha, a, ars, b, bcs, beta, c, n, j0),
            _ => dots_strip::<3>(m, k, alpha, a, ars, b, bcs, beta, c, n, j0),
        }
    }
}
