//! Held-out evaluation of a model version, on all cores. `webfl serve` evaluates every new
//! version with it (off the async threads); `webfl simulate` evaluates every round.

use anyhow::Result;
use rayon::prelude::*;
use webfl_shared::backend::CpuBackend;
use webfl_shared::data::Dataset;
use webfl_shared::model::ModelSpec;
use webfl_shared::params::Params;
use webfl_shared::train::EvalStats;

/// Examples one evaluation step holds in memory: the CNN's convolution workspace for 256
/// examples is ~160 MB per thread, which a server would keep resident after every round.
const EVAL_PIECE: usize = 32;

/// The test set is cut into pieces of [`EVAL_PIECE`] evaluated in parallel (one engine per
/// worker, reused) and combined in order, so the result does not depend on scheduling.
pub fn evaluate(spec: &ModelSpec, params: &Params, data: &Dataset) -> Result<EvalStats> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let parts: Vec<EvalStats> = idx
        .par_chunks(EVAL_PIECE)
        .map_init(
            || CpuBackend::new(spec),
            |engine, piece| -> Result<EvalStats> {
                let engine = engine.as_mut().map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(engine.evaluate(params, &data.subset(piece))?)
            },
        )
        .collect::<Result<_>>()?;
    let n: usize = parts.iter().map(|p| p.examples).sum();
    let w = |f: fn(&EvalStats) -> f64| parts.iter().map(|p| f(p) * p.examples as f64).sum::<f64>() / n as f64;
    Ok(EvalStats { loss: w(|p| p.loss), accuracy: w(|p| p.accuracy), examples: n })
}
