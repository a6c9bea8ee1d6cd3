//! Single-precision GEMM through `matrixmultiply`, which has AVX2/FMA kernels natively and a
//! SIMD128 kernel on wasm32, and takes arbitrary row/column strides so transposes are free.
//! On wasm32 the skinny products of training go to our own unpacked kernels instead
//! ([`wasm`], which says why).

#[cfg(target_arch = "wasm32")]
#[path = "gemm_wasm.rs"]
pub mod wasm;

/// A strided matrix view: element (i, j) lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows × cols`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 { 0 } else { (self.rows - 1) * self.rs + (self.cols - 1) * self.cs }
    }
}

/// Checks the operands (panicking on mismatched or out-of-bounds views) and handles the empty
/// cases; `Some((m, k, n))` when a product is left to compute.
fn checked_dims(a: &Mat<'_>, b: &Mat<'_>, beta: f32, c: &mut [f32]) -> Option<(usize, usize, usize)> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm inner dimensions differ");
    assert!(c.len() >= m * n, "gemm output too small");
    if m == 0 || n == 0 {
        return None;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v *= beta);
        return None;
    }
    // The bounds checks make the unsafe kernels sound: every index they touch is at most
    // max_index() of its operand.
    assert!(a.max_index() < a.data.len() && b.max_index() < b.data.len(), "gemm operand out of bounds");
    Some((m, k, n))
}

/// `c = alpha · a · b + beta · c` with `c` row-major `a.rows × b.cols`.
pub fn gemm(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
    let Some((m, k, n)) = checked_dims(&a, &b, beta, c) else { return };
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: m, k, n >= 1, operands bounds-checked by checked_dims, c.len() >= m·n.
        // Measured in Chromium against matrixmultiply (client/tests/cpu_gemm.rs shapes): the
        // unpacked kernels win 1.1–3.5× on the dense layers at batch 10–50 and the CNN's
        // per-sample convolutions, but lose (~0.65–0.9×) when a large A meets a wide B (the CNN's
        // 3136→512 layer at batch 50), where packing keeps the strips in cache.
        if b.cs == 1 && !(m * k >= 16_384 && n >= 1024) {
            unsafe { wasm::gemm_rows(m, k, n, alpha, a.data.as_ptr(), a.rs, a.cs, b.data.as_ptr(), b.rs, beta, c) };
            return;
        }
        if a.cs == 1 && b.rs == 1 {
            unsafe { wasm::gemm_dots(m, k, n, alpha, a.data.as_ptr(), a.rs, b.data.as_ptr(), b.cs, beta, c) };
            return;
        }
    }
    // SAFETY: checked_dims checked the operands.
    unsafe { sgemm(m, k, n, alpha, a, b, beta, c) }
}

/// [`gemm`] always through `matrixmultiply` (the reference the wasm kernels are measured
/// against). Panics like [`gemm`] on mismatched or out-of-bounds operands.
pub fn gemm_matrixmultiply(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
    let Some((m, k, n)) = checked_dims(&a, &b, beta, c) else { return };
    // SAFETY: checked_dims checked the operands.
    unsafe { sgemm(m, k, n, alpha, a, b, beta, c) }
}

/// # Safety
/// The operands must have passed [`checked_dims`] with these `m, k, n`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
    // SAFETY: every index matrixmultiply touches is at most max_index() of its operand, which the
    // caller checked.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_with_transposes() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 2x3
        let b: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect(); // 3x4
        let mut c = vec![1.0; 8];
        gemm(1.0, Mat::new(&a, 2, 3), Mat::new(&b, 3, 4), 1.0, &mut c);
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = 1.0 + (0..3).map(|p| a[i * 3 + p] * b[p * 4 + j]).sum::<f32>();
                assert_eq!(c[i * 4 + j], want);
            }
        }
        // (aᵀ)ᵀ = a: a 3x2 stored matrix read transposed.
        let at: Vec<f32> = vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        let mut c2 = vec![0.0; 8];
        gemm(1.0, Mat::new(&at, 3, 2).t(), Mat::new(&b, 3, 4), 0.0, &mut c2);
        let c1: Vec<f32> = c.iter().map(|v| v - 1.0).collect();
        assert_eq!(c1, c2);
    }
}
