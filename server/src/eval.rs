//! Held-out evaluation of a model version, on all cores. `webfl serve` evaluates every new
//! version with it (off the async threads); `webfl simulate` evaluates every round.

use anyhow::Result;
use rayon::prelude::*;
use webfl_shared::backend::CpuBackend;
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::train::EvalStats;

/// The test set is cut into chunks evaluated in parallel and combined in order, so the result
/// does not depend on scheduling.
pub fn evaluate(spec: &ModelSpec, params: &Params, data: &Dataset) -> Result<EvalStats> {
    let chunk = data.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    let idx: Vec<usize> = (0..data.len()).collect();
    let parts: Vec<EvalStats> = idx
        .par_chunks(chunk)
        .map(|c| -> Result<EvalStats> {
            let mut be = CpuBackend::new(spec)?;
            Ok(be.evaluate(params, &data.subset(c))?)
        })
        .collect::<Result<_>>()?;
    let n: usize = parts.iter().map(|p| p.examples).sum();
    let w = |f: fn(&EvalStats) -> f64| parts.iter().map(|p| f(p) * p.examples as f64).sum::<f64>() / n as f64;
    Ok(EvalStats { loss: w(|p| p.loss), accuracy: w(|p| p.accuracy), examples: n })
}
