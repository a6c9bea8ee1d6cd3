//! Model parameters as named tensors over one flat `f32` buffer.
//!
//! Names, shapes and layouts follow PyTorch's `state_dict` for the equivalent `nn.Sequential`
//! (`"1.weight"` of a Linear is `[out, in]`, of a Conv2d `[out, in, kh, kw]`), so a safetensors
//! file written here loads with `model.load_state_dict(safetensors.torch.load_file(..))`.
//!
//! One contiguous buffer (rather than a `Vec` of tensors) lets the optimizer, the strategies and
//! the update pipeline treat a model as a single vector, which is what their math is written for.

use std::sync::Arc;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

/// Name and shape of one tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self { name: name.into(), shape }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered list of tensors in a parameter set and where each lives in the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    tensors: Vec<TensorSpec>,
    offsets: Vec<usize>,
    len: usize,
}

impl Layout {
    pub fn new(tensors: Vec<TensorSpec>) -> Result<Self, ParamsError> {
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut len = 0usize;
        for (i, t) in tensors.iter().enumerate() {
            if tensors[..i].iter().any(|o| o.name == t.name) {
                return Err(ParamsError::DuplicateName(t.name.clone()));
            }
            offsets.push(len);
            len += t.numel();
        }
        Ok(Self { tensors, offsets, len })
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Range of tensor `i` in the flat buffer.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.offsets[i];
        start..start + self.tensors[i].numel()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    #[error("duplicate tensor name {0:?}")]
    DuplicateName(String),
    #[error("buffer holds {got} values but the layout needs {expected}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("layouts differ: {0}")]
    LayoutMismatch(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("tensor {name:?} has dtype {dtype}, expected F32")]
    WrongDtype { name: String, dtype: String },
    #[error("tensor {name:?} missing")]
    Missing { name: String },
    #[error("unexpected tensor {name:?}")]
    Unexpected { name: String },
    #[error("tensor {name:?} has shape {got:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, got: Vec<usize> },
}

/// A parameter set: a shared layout plus one flat `f32` buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    layout: Arc<Layout>,
    data: Vec<f32>,
}

impl Params {
    pub fn zeros(layout: Arc<Layout>) -> Self {
        let data = vec![0.0; layout.len()];
        Self { layout, data }
    }

    pub fn from_vec(layout: Arc<Layout>, data: Vec<f32>) -> Result<Self, ParamsError> {
        if data.len() != layout.len() {
            return Err(ParamsError::LengthMismatch { expected: layout.len(), got: data.len() });
        }
        Ok(Self { layout, data })
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// The values of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.layout.index_of(name).map(|i| &self.data[self.layout.range(i)])
    }

    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let i = self.layout.index_of(name)?;
        let r = self.layout.range(i);
        Some(&mut self.data[r])
    }

    /// `(spec, values)` for every tensor, in layout order.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorSpec, &[f32])> {
        self.layout.tensors().iter().enumerate().map(|(i, t)| (t, &self.data[self.layout.range(i)]))
    }

    /// Errors unless `other` has the same tensor names and shapes in the same order.
    pub fn check_same_layout(&self, other: &Params) -> Result<(), ParamsError> {
        if Arc::ptr_eq(&self.layout, &other.layout) || self.layout == other.layout {
            Ok(())
        } else {
            Err(ParamsError::LayoutMismatch(format!(
                "{} tensors ({} values) vs {} tensors ({} values)",
                self.layout.tensors().len(),
                self.len(),
                other.layout.tensors().len(),
                other.len()
            )))
        }
    }

    /// `self - other`, e.g. a client update from its local and the global model.
    pub fn delta_from(&self, other: &Params) -> Result<Params, ParamsError> {
        self.check_same_layout(other)?;
        let data = self.data.iter().zip(&other.data).map(|(a, b)| a - b).collect();
        Ok(Params { layout: self.layout.clone(), data })
    }

    /// `self += alpha * other`.
    pub fn axpy(&mut self, alpha: f32, other: &Params) -> Result<(), ParamsError> {
        self.check_same_layout(other)?;
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += alpha * b;
        }
        Ok(())
    }

    pub fn scale(&mut self, alpha: f32) {
        self.data.iter_mut().for_each(|v| *v *= alpha);
    }

    /// Euclidean norm over all tensors, accumulated in f64.
    pub fn l2_norm(&self) -> f64 {
        self.data.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
    }

    /// The largest |value|; NaN when any value is NaN. Called once per committed version (and on
    /// updates only when the model nears the f32 limit), so a plain fold is enough.
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0, |m: f32, &v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) })
    }

    pub fn all_finite(&self) -> bool {
        all_finite(&self.data)
    }

    /// Serialises to safetensors bytes (F32, little endian) with PyTorch names.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ParamsError> {
        let bytes: Vec<Vec<u8>> =
            self.tensors().map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views = self
            .layout
            .tensors()
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                TensorView::new(Dtype::F32, t.shape.clone(), b)
                    .map(|v| (t.name.clone(), v))
                    .map_err(|e| ParamsError::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, None).map_err(|e| ParamsError::Safetensors(e.to_string()))
    }

    /// Parses safetensors bytes that must hold exactly the tensors of `layout`.
    pub fn from_safetensors(layout: Arc<Layout>, bytes: &[u8]) -> Result<Params, ParamsError> {
        // Filled in layout order by appending, so the buffer is never zeroed first.
        let mut data = Vec::with_capacity(layout.len());
        for tensor in safetensors_values(&layout, bytes)? {
            extend_f32s_from_le_bytes(&mut data, tensor);
        }
        Params::from_vec(layout, data)
    }

    /// Parses any F32 safetensors file; tensors are ordered by name.
    pub fn from_safetensors_any(bytes: &[u8]) -> Result<Params, ParamsError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut specs = Vec::with_capacity(names.len());
        for name in &names {
            let view = st.tensor(name).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
            specs.push(TensorSpec::new(name.clone(), view.shape().to_vec()));
        }
        let layout = Arc::new(Layout::new(specs)?);
        Self::from_safetensors(layout, bytes)
    }
}

/// The little-endian f32 bytes of each tensor of `layout` in a safetensors file, in layout
/// order, after checking that the file holds exactly those tensors with their dtype and shapes.
pub(crate) fn safetensors_values<'a>(layout: &Layout, bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, ParamsError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
    let mut values = Vec::with_capacity(layout.tensors().len());
    for spec in layout.tensors() {
        let view = st.tensor(&spec.name).map_err(|_| ParamsError::Missing { name: spec.name.clone() })?;
        check_f32_tensor(&spec.name, &view, Some(&spec.shape))?;
        values.push(view.data());
    }
    if let Some(extra) = st.names().into_iter().find(|n| layout.index_of(n).is_none()) {
        return Err(ParamsError::Unexpected { name: extra.to_string() });
    }
    Ok(values)
}

/// Checks an F32 tensor's dtype and, when given, its shape.
fn check_f32_tensor(name: &str, view: &TensorView<'_>, expected_shape: Option<&[usize]>) -> Result<(), ParamsError> {
    if view.dtype() != Dtype::F32 {
        return Err(ParamsError::WrongDtype { name: name.to_string(), dtype: format!("{:?}", view.dtype()) });
    }
    if let Some(shape) = expected_shape {
        if view.shape() != shape {
            return Err(ParamsError::WrongShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: view.shape().to_vec(),
            });
        }
    }
    Ok(())
}

/// Bits of an f32 exponent; a value is finite unless they are all set.
const EXPONENT: u32 = 0x7f80_0000;

/// Bit 31 of the result is set iff `bits` is NaN or infinite: only an all-ones exponent carries
/// into it. Integer and branch-free, so checks over slices vectorise.
#[inline(always)]
fn non_finite_flag(bits: u32) -> u32 {
    (bits & EXPONENT) + 0x0080_0000
}

/// Values per block of the finiteness checks: small enough to stop soon after a bad value, large
/// enough that the per-block branch costs nothing.
const FINITE_BLOCK: usize = 1024;

/// Whether no value is NaN or infinite, at memory speed (a short-circuiting `all(is_finite)`
/// checks one value at a time).
pub fn all_finite(v: &[f32]) -> bool {
    v.chunks(FINITE_BLOCK).all(|block| block.iter().fold(0, |flags, x| flags | non_finite_flag(x.to_bits())) >> 31 == 0)
}

/// Whether every little-endian f32 in `bytes` is finite: a read-only pass at memory speed (on
/// all cores with feature `parallel`).
pub fn le_f32s_all_finite(bytes: &[u8]) -> bool {
    #[cfg(feature = "parallel")]
    if bytes.len() >= 2 * PARALLEL_BYTES {
        use rayon::prelude::*;
        return bytes.par_chunks(PARALLEL_BYTES).all(le_f32s_all_finite_serial);
    }
    le_f32s_all_finite_serial(bytes)
}

/// Bytes per parallel task of [`le_f32s_all_finite`].
#[cfg(feature = "parallel")]
const PARALLEL_BYTES: usize = 1 << 18;

fn le_f32s_all_finite_serial(bytes: &[u8]) -> bool {
    bytes.chunks(4 * FINITE_BLOCK).all(|block| {
        let flags = block
            .chunks_exact(4)
            .fold(0, |flags, c| flags | non_finite_flag(u32::from_le_bytes(c.try_into().expect("chunks of 4"))));
        flags >> 31 == 0
    })
}

/// Appends the little-endian f32s of `bytes` (4 per value) to `out` and returns whether all are
/// finite: one pass over the input that converts a block into memory that is not zeroed first
/// and checks it while it is in L1.
pub(crate) fn extend_f32s_from_le_bytes(out: &mut Vec<f32>, bytes: &[u8]) -> bool {
    out.reserve(bytes.len() / 4);
    let mut finite = true;
    for block in bytes.chunks(4 * FINITE_BLOCK) {
        let start = out.len();
        // One 4-byte load per value (an array built byte by byte compiles to byte gathers).
        out.extend(block.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4"))));
        finite &= all_finite(&out[start..]);
    }
    finite
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_sees_every_value_and_nan() {
        let layout = std::sync::Arc::new(super::Layout::new(vec![super::TensorSpec::new("w", vec![11])]).unwrap());
        let mut v = vec![0.5f32; 11];
        for at in [0, 7, 8, 10] {
            v[at] = -3.0;
            let p = super::Params::from_vec(layout.clone(), v.clone()).unwrap();
            assert_eq!(p.max_abs(), 3.0);
            v[at] = f32::NAN;
            let p = super::Params::from_vec(layout.clone(), v.clone()).unwrap();
            assert!(p.max_abs().is_nan(), "NaN at {at}");
            v[at] = 0.5;
        }
        v[3] = f32::NEG_INFINITY;
        assert_eq!(super::Params::from_vec(layout, v).unwrap().max_abs(), f32::INFINITY);
    }

    fn layout() -> Arc<Layout> {
        Arc::new(
            Layout::new(vec![TensorSpec::new("1.weight", vec![3, 2]), TensorSpec::new("1.bias", vec![3])]).unwrap(),
        )
    }

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_and_values() {
        let p = Params::from_vec(layout(), (0..9).map(|i| i as f32 * 0.5 - 1.0).collect()).unwrap();
        let bytes = p.to_safetensors().unwrap();
        let q = Params::from_safetensors(layout(), &bytes).unwrap();
        assert_eq!(p, q);
        let any = Params::from_safetensors_any(&bytes).unwrap();
        assert_eq!(any.tensor("1.weight").unwrap(), p.tensor("1.weight").unwrap());
        assert_eq!(any.layout().tensors()[1].shape, vec![3, 2]);
    }

    #[test]
    fn safetensors_with_wrong_shape_or_extra_tensor_is_rejected() {
        let other = Arc::new(Layout::new(vec![TensorSpec::new("1.weight", vec![2, 3])]).unwrap());
        let bytes = Params::zeros(other).to_safetensors().unwrap();
        let err = Params::from_safetensors(layout(), &bytes).unwrap_err();
        assert!(matches!(err, ParamsError::WrongShape { .. } | ParamsError::Missing { .. }), "{err}");

        let bigger = Arc::new(
            Layout::new(vec![
                TensorSpec::new("1.weight", vec![3, 2]),
                TensorSpec::new("1.bias", vec![3]),
                TensorSpec::new("extra", vec![1]),
            ])
            .unwrap(),
        );
        let bytes = Params::zeros(bigger).to_safetensors().unwrap();
        assert_eq!(
            Params::from_safetensors(layout(), &bytes).unwrap_err(),
            ParamsError::Unexpected { name: "extra".into() }
        );
        assert!(Params::from_safetensors(layout(), b"garbage").is_err());
    }

    #[test]
    fn arithmetic_checks_layouts() {
        let a = Params::from_vec(layout(), vec![1.0; 9]).unwrap();
        let mut b = Params::from_vec(layout(), vec![3.0; 9]).unwrap();
        let d = b.delta_from(&a).unwrap();
        assert!(d.as_slice().iter().all(|&v| v == 2.0));
        b.axpy(-0.5, &d).unwrap();
        assert!(b.as_slice().iter().all(|&v| v == 2.0));
        assert!((d.l2_norm() - (9.0f64 * 4.0).sqrt()).abs() < 1e-12);
        let other = Params::zeros(Arc::new(Layout::new(vec![TensorSpec::new("x", vec![9])]).unwrap()));
        assert!(a.delta_from(&other).is_err());
    }
}
