//! A client's update `Δ = w_local − w_global` as the server holds it once decoded: validated
//! (every value finite, sparse indices in range and increasing), and dense or sparse as it was
//! sent.
//!
//! The checks run once, where the values are produced — fused into the decoder's conversion
//! loop ([`crate::pipeline::decode`], [`Update::from_safetensors`]) or in
//! [`Update::dense`]/[`SparseUpdate::new`] — and the type carries the result: the strategy and
//! its aggregators trust an `Update` and never scan it again.
//!
//! Sparse updates (top-k, random-k) keep only the sent coordinates, so FedAvg adds `k` values
//! rather than a model-sized vector; a stage that needs every coordinate (a robust rule) asks for
//! [`Update::to_dense`]. Dense and sparse are one type with one meaning (`Δ`), so there is one
//! definition of its norm and of clipping it.

use std::sync::Arc;

use crate::params::{Layout, Params, ParamsError, all_finite};

/// A decoded, validated update. Built only through the checking constructors, so holding one
/// proves its values are finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Update(Form);

#[derive(Clone, Debug, PartialEq)]
enum Form {
    Dense(Params),
    Sparse(SparseUpdate),
}

/// How an [`Update`] is stored, for the code that adds it up.
#[derive(Clone, Copy, Debug)]
pub enum UpdateView<'a> {
    /// Every coordinate.
    Dense(&'a Params),
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

    /// Parses a safetensors body holding exactly the tensors of `layout`; values are converted
    /// and checked for finiteness in one pass.
    pub fn from_safetensors(layout: Arc<Layout>, bytes: &[u8]) -> Result<Self, UpdateError> {
        let (params, finite) = Params::from_safetensors_checking(layout, bytes)?;
        if !finite {
            check_finite(params.as_slice())?;
        }
        Ok(Update(Form::Dense(params)))
    }

    pub fn view(&self) -> UpdateView<'_> {
        match &self.0 {
            Form::Dense(p) => UpdateView::Dense(p),
            Form::Sparse(s) => UpdateView::Sparse(s),
        }
    }

    pub fn is_sparse(&self) -> bool {
        matches!(self.0, Form::Sparse(_))
    }

    pub fn layout(&self) -> &Arc<Layout> {
        match &self.0 {
            Form::Dense(p) => p.layout(),
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

    /// The values that are stored: all of them when dense, the sent ones when sparse.
    pub fn stored_values(&self) -> &[f32] {
        match &self.0 {
            Form::Dense(p) => p.as_slice(),
            Form::Sparse(s) => &s.values,
        }
    }

    /// `‖Δ‖₂`, accumulated in f64 (the zeros of a sparse update add nothing).
    pub fn l2_norm(&self) -> f64 {
        self.stored_values().iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
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
        let mut out = self.clone();
        let values = match &mut out.0 {
            Form::Dense(p) => p.as_mut_slice(),
            Form::Sparse(s) => &mut s.values,
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
    fn non_finite_values_are_refused_wherever_they_are() {
        let n = 5000;
        for at in [0, 1023, 1024, 2500, n - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![0.5f32; n];
                v[at] = bad;
                let err = Update::dense(Params::from_vec(layout(n), v.clone()).unwrap()).unwrap_err();
                assert!(matches!(err, UpdateError::NonFinite { position, .. } if position == at), "{err}");
                let bytes = Params::from_vec(layout(n), v).unwrap().to_safetensors().unwrap();
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
