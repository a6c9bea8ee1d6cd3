//! A client's update `Δ = w_local − w_global` as the server holds it once decoded: validated
//! (every value finite, sparse indices in range and increasing), and dense or sparse as it was
//! sent.
//!
//! The checks run once, where the values are produced — in the decoders
//! ([`crate::pipeline::decode`], [`Update::from_safetensors`]) or in
//! [`Update::dense`]/[`SparseUpdate::new`] — and the type carries the result: the strategy and
//! its aggregators trust an `Update` and never scan it again.
//!
//! A dense body whose values are plain little-endian f32s (safetensors, the `none` codec) is not
//! copied: the update keeps the received bytes ([`bytes::Bytes`], shared, not cloned) after one
//! read-only pass has checked them, and FedAvg adds them straight from there. Writing a decoded
//! copy would cost more memory traffic than adding it does.
//!
//! Sparse updates (top-k, random-k) keep only the sent coordinates, so FedAvg adds `k` values
//! rather than a model-sized vector; a stage that needs every coordinate (a robust rule) asks for
//! [`Update::to_dense`]. Dense and sparse are one type with one meaning (`Δ`), so there is one
//! definition of its norm and of clipping it.

use std::sync::Arc;

use bytes::Bytes;

use crate::params::{Layout, Params, ParamsError, all_finite, extend_f32s_from_le_bytes, le_f32s_all_finite};

/// A decoded, validated update. Built only through the checking constructors, so holding one
/// proves its values are finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Update(Form);

#[derive(Clone, Debug, PartialEq)]
enum Form {
    Dense(Params),
    Received(ReceivedValues),
    Sparse(SparseUpdate),
}

/// Every coordinate as little-endian f32s inside a received body, checked finite: tensor `i` of
/// the layout is the `4 · numel` bytes at `starts[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedValues {
    layout: Arc<Layout>,
    body: Bytes,
    starts: Vec<usize>,
}

impl ReceivedValues {
    /// The bytes of each tensor, in layout order, with the range of the flat vector it covers.
    pub fn tensors(&self) -> impl Iterator<Item = (std::ops::Range<usize>, &[u8])> {
        self.starts.iter().enumerate().map(|(i, &start)| {
            let range = self.layout.range(i);
            let bytes = &self.body[start..start + 4 * range.len()];
            (range, bytes)
        })
    }

    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.tensors()
            .flat_map(|(_, b)| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4"))))
    }

    fn to_dense(&self) -> Params {
        let mut data = Vec::with_capacity(self.layout.len());
        for (_, bytes) in self.tensors() {
            extend_f32s_from_le_bytes(&mut data, bytes);
        }
        Params::from_vec(self.layout.clone(), data).expect("sized from the layout")
    }
}

/// How an [`Update`] is stored, for the code that adds it up.
#[derive(Clone, Copy, Debug)]
pub enum UpdateView<'a> {
    /// Every coordinate.
    Dense(&'a Params),
    /// Every coordinate, as the received little-endian bytes.
    Received(&'a ReceivedValues),
    /// Only the sent coordinates; every other one is zero.
    Sparse(&'a SparseUpdate),
}

/// The nonzero part of an update: strictly increasing indices below the layout's length, and one
/// finite value per index.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseUpdate {
    layout: Arc<Layout>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// Why values could not become an [`Update`].
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("value {position} of the update is {value}, not a finite number")]
    NonFinite { position: usize, value: f32 },
    #[error("the update's values do not fit its layout: {0}")]
    Layout(#[from] ParamsError),
    #[error("sparse update: {0}")]
    BadIndices(String),
}

impl Update {
    /// A dense update; refuses non-finite values (one pass over them).
    pub fn dense(params: Params) -> Result<Self, UpdateError> {
        check_finite(params.as_slice())?;
        Ok(Update(Form::Dense(params)))
    }

    /// For decoders that have checked every value.
    pub(crate) fn trusted_dense(params: Params) -> Self {
        Update(Form::Dense(params))
    }

    pub fn sparse(sparse: SparseUpdate) -> Self {
        Update(Form::Sparse(sparse))
    }

    /// Parses a safetensors body holding exactly the tensors of `layout` and checks its values
    /// in one read-only pass; the update keeps the body rather than a copy.
    pub fn from_safetensors(layout: Arc<Layout>, body: &Bytes) -> Result<Self, UpdateError> {
        let tensors = crate::params::safetensors_values(&layout, body)?;
        let mut starts = Vec::with_capacity(tensors.len());
        let mut before = 0;
        for (i, bytes) in tensors.iter().enumerate() {
            if !le_f32s_all_finite(bytes) {
                let values: Vec<f32> =
                    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect();
                check_finite(&values).map_err(|e| e.shifted(before))?;
            }
            before += layout.range(i).len();
            starts.push(offset_in(body, bytes));
        }
        Ok(Update(Form::Received(ReceivedValues { layout, body: body.clone(), starts })))
    }

    /// For decoders: `values` (inside `body`) are the layout's little-endian f32s, in order, all
    /// checked finite.
    pub(crate) fn trusted_received(layout: Arc<Layout>, body: &Bytes, values: &[u8]) -> Self {
        let start = offset_in(body, values);
        let starts = (0..layout.tensors().len()).map(|i| start + 4 * layout.range(i).start).collect();
        Update(Form::Received(ReceivedValues { layout, body: body.clone(), starts }))
    }

    pub fn view(&self) -> UpdateView<'_> {
        match &self.0 {
            Form::Dense(p) => UpdateView::Dense(p),
            Form::Received(r) => UpdateView::Received(r),
            Form::Sparse(s) => UpdateView::Sparse(s),
        }
    }

    pub fn is_sparse(&self) -> bool {
        matches!(self.0, Form::Sparse(_))
    }

    pub fn layout(&self) -> &Arc<Layout> {
        match &self.0 {
            Form::Dense(p) => p.layout(),
            Form::Received(r) => &r.layout,
            Form::Sparse(s) => &s.layout,
        }
    }

    /// Coordinates of the model (not only the sent ones).
    pub fn len(&self) -> usize {
        self.layout().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest |value| (values are finite by construction).
    pub fn max_abs(&self) -> f32 {
        match &self.0 {
            Form::Dense(p) => p.max_abs(),
            Form::Received(r) => r.values().fold(0.0, |m: f32, v| m.max(v.abs())),
            Form::Sparse(s) => s.values.iter().fold(0.0, |m: f32, v| m.max(v.abs())),
        }
    }

    /// `‖Δ‖₂`, accumulated in f64 (the zeros of a sparse update add nothing).
    pub fn l2_norm(&self) -> f64 {
        let square = |v: f32| f64::from(v) * f64::from(v);
        let sum: f64 = match &self.0 {
            Form::Dense(p) => p.as_slice().iter().map(|&v| square(v)).sum(),
            Form::Received(r) => r.values().map(square).sum(),
            Form::Sparse(s) => s.values.iter().map(|&v| square(v)).sum(),
        };
        sum.sqrt()
    }

    /// `Some(Δ · S/‖Δ‖)` when `‖Δ‖ > S`, `None` when it is already within the bound (Sun et al.
    /// 2019). Scaled in f64, so the result lands on the bound up to f32 rounding; a sparse update
    /// stays sparse.
    pub fn clipped(&self, bound: f64) -> Option<Update> {
        let norm = self.l2_norm();
        if norm <= bound {
            return None;
        }
        let factor = bound / norm;
        let mut out = match &self.0 {
            Form::Received(r) => Update(Form::Dense(r.to_dense())),
            _ => self.clone(),
        };
        let values = match &mut out.0 {
            Form::Dense(p) => p.as_mut_slice(),
            Form::Sparse(s) => &mut s.values,
            Form::Received(_) => unreachable!("made dense above"),
        };
        for v in values {
            *v = (f64::from(*v) * factor) as f32;
        }
        Some(out)
    }

    /// Every coordinate, the unsent ones as zeros.
    pub fn to_dense(&self) -> Params {
        match &self.0 {
            Form::Dense(p) => p.clone(),
            Form::Received(r) => r.to_dense(),
            Form::Sparse(s) => s.to_dense(),
        }
    }
}

impl SparseUpdate {
    /// Checks that `indices` are strictly increasing and below `layout.len()`, that there is one
    /// value per index and that every value is finite.
    pub fn new(layout: Arc<Layout>, indices: Vec<u32>, values: Vec<f32>) -> Result<Self, UpdateError> {
        if indices.len() != values.len() {
            return Err(UpdateError::BadIndices(format!("{} indices but {} values", indices.len(), values.len())));
        }
        if let Some(p) = indices.windows(2).position(|w| w[0] >= w[1]) {
            return Err(UpdateError::BadIndices(format!("indices not increasing at position {}", p + 1)));
        }
        if let Some(&last) = indices.last() {
            if last as usize >= layout.len() {
                return Err(UpdateError::BadIndices(format!("index {last} is out of range for {}", layout.len())));
            }
        }
        check_finite(&values)?;
        Ok(Self::trusted(layout, indices, values))
    }

    /// For decoders that have checked everything [`new`](Self::new) checks.
    pub(crate) fn trusted(layout: Arc<Layout>, indices: Vec<u32>, values: Vec<f32>) -> Self {
        debug_assert!(indices.len() == values.len() && indices.last().is_none_or(|&i| (i as usize) < layout.len()));
        Self { layout, indices, values }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn values(&self) -> &[f32] {
        &self.values
    }

    pub fn to_dense(&self) -> Params {
        let mut out = Params::zeros(self.layout.clone());
        let data = out.as_mut_slice();
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            data[i as usize] = v;
        }
        out
    }
}

/// Where `part` (a subslice of `body`) starts in it.
fn offset_in(body: &[u8], part: &[u8]) -> usize {
    let offset = part.as_ptr() as usize - body.as_ptr() as usize;
    debug_assert!(offset + part.len() <= body.len());
    offset
}

impl UpdateError {
    /// The same error for a slice that starts `by` values later.
    fn shifted(self, by: usize) -> Self {
        match self {
            UpdateError::NonFinite { position, value } => UpdateError::NonFinite { position: position + by, value },
            other => other,
        }
    }
}

fn check_finite(values: &[f32]) -> Result<(), UpdateError> {
    if all_finite(values) {
        return Ok(());
    }
    let position = values.iter().position(|v| !v.is_finite()).unwrap_or_default();
    Err(UpdateError::NonFinite { position, value: values[position] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::TensorSpec;

    fn layout(n: usize) -> Arc<Layout> {
        Arc::new(Layout::new(vec![TensorSpec::new("w", vec![n])]).unwrap())
    }

    #[test]
    fn max_abs_is_the_same_in_every_form() {
        let l = layout(5);
        let values = vec![0.5, -7.0, 0.0, 3.0, 0.0];
        let dense = Update::dense(Params::from_vec(l.clone(), values.clone()).unwrap()).unwrap();
        let body = Bytes::from(Params::from_vec(l.clone(), values).unwrap().to_safetensors().unwrap());
        let received = Update::from_safetensors(l.clone(), &body).unwrap();
        let sparse = Update::sparse(SparseUpdate::new(l, vec![0, 1, 3], vec![0.5, -7.0, 3.0]).unwrap());
        for u in [&dense, &received, &sparse] {
            assert_eq!(u.max_abs(), 7.0);
        }
    }

    #[test]
    fn non_finite_values_are_refused_wherever_they_are() {
        let n = 5000;
        for at in [0, 1023, 1024, 2500, n - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![0.5f32; n];
                v[at] = bad;
                let err = Update::dense(Params::from_vec(layout(n), v.clone()).unwrap()).unwrap_err();
                assert!(matches!(err, UpdateError::NonFinite { position, .. } if position == at), "{err}");
                let bytes = Bytes::from(Params::from_vec(layout(n), v).unwrap().to_safetensors().unwrap());
                let err = Update::from_safetensors(layout(n), &bytes).unwrap_err();
                assert!(matches!(err, UpdateError::NonFinite { position, .. } if position == at), "{err}");
            }
        }
        let ok = Params::from_vec(layout(3), vec![f32::MAX, -f32::MAX, f32::MIN_POSITIVE]).unwrap();
        assert!(Update::dense(ok).is_ok());
    }

    #[test]
    fn sparse_updates_check_their_indices() {
        let l = layout(4);
        assert!(SparseUpdate::new(l.clone(), vec![0, 3], vec![1.0, 2.0]).is_ok());
        assert!(SparseUpdate::new(l.clone(), vec![], vec![]).is_ok());
        for (idx, vals) in [(vec![0, 4], vec![1.0, 2.0]), (vec![1, 1], vec![1.0, 2.0]), (vec![2, 1], vec![1.0, 2.0])] {
            assert!(matches!(SparseUpdate::new(l.clone(), idx, vals), Err(UpdateError::BadIndices(_))));
        }
        assert!(matches!(SparseUpdate::new(l.clone(), vec![0], vec![]), Err(UpdateError::BadIndices(_))));
        assert!(matches!(SparseUpdate::new(l, vec![2], vec![f32::NAN]), Err(UpdateError::NonFinite { .. })));
    }

    #[test]
    fn clipping_keeps_sparse_updates_sparse_and_agrees_with_dense() {
        let l = layout(6);
        let sparse = Update::sparse(SparseUpdate::new(l.clone(), vec![1, 4], vec![3.0, -4.0]).unwrap());
        let dense = Update::dense(sparse.to_dense()).unwrap();
        assert_eq!(sparse.l2_norm(), 5.0);
        assert_eq!(dense.l2_norm(), 5.0);
        let (cs, cd) = (sparse.clipped(1.0).unwrap(), dense.clipped(1.0).unwrap());
        assert!(cs.is_sparse());
        assert_eq!(cs.to_dense(), cd.to_dense());
        assert!((cd.l2_norm() - 1.0).abs() < 1e-6);
        assert!(sparse.clipped(5.0).is_none());
    }
}
