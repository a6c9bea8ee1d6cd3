//! The update pipeline: what happens to an update between local training and the wire, and back.
//!
//! ```text
//! client:  Δ = w_local − w_global → clip (L2, flat or per layer) → local DP noise → compress → encode
//! server:  decode → check → strategy (central DP: clip, fixed-denominator mean, noise) → aggregate
//! ```
//!
//! One [`UpdateSpec`] — sent to every client with its assignment — configures the client half,
//! and the server decodes with the same code ([`decode`]), so browser, simulation and server
//! cannot disagree about a format. Under secure aggregation a client stops after the noise
//! ([`prepare_for_sum`]): SecAgg+ quantizes and masks the plain values itself, so such tasks take
//! no compression ([`summable`]).
//!
//! ## Noise and its caveats
//! Gaussian noise is drawn with [`add_gaussian_noise`] from the generator the caller passes. In
//! production that must be a cryptographically secure generator seeded from platform entropy (the
//! server seeds ChaCha20 from the OS, the browser from `crypto.getRandomValues`); only
//! `webfl simulate` passes a seeded one, to make runs reproducible.
//!
//! Floating-point caveat: a real-valued Gaussian sampled in floating point is not exactly a
//! Gaussian — its values lie on a grid whose fine structure depends on the value, and Mironov
//! (2012, for Laplace) and Jin et al. (2022, for Gaussian samplers) showed that such artefacts can
//! leak the un-noised value. We draw in f64 (Ziggurat via `rand_distr`) and add to an f32 update,
//! so the low bits an attack needs are mostly rounded away, but this is a mitigation, not a
//! proof; the exact remedy is a discrete Gaussian on the integer encoding that secure aggregation
//! introduces (Canonne, Kamath & Steinke 2020).

use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{self, CodecError, Compression, Decoded, ErrorFeedback};
use crate::params::{Layout, Params};
use crate::rng::Rng;
use crate::strategy::{AdaptiveClipping, CentralDpConfig};
use crate::update::{SparseUpdate, Update};

/// Where differential-privacy noise is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpMode {
    /// No noise (clipping may still be on).
    #[default]
    Off,
    /// Each client adds Gaussian noise before upload: the server is not trusted. A clipped update
    /// can change by up to 2S when the client's data changes, so the noise std is `z · 2S`.
    Local,
    /// The server adds noise to the aggregate (DP-FedAvg): the server is trusted with single
    /// updates, the released models are private.
    Central,
}

impl std::fmt::Display for DpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpMode::Off => "off",
            DpMode::Local => "local",
            DpMode::Central => "central",
        })
    }
}

impl std::str::FromStr for DpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(DpMode::Off),
            "local" => Ok(DpMode::Local),
            "central" => Ok(DpMode::Central),
            other => Err(format!("unknown DP mode {other:?}: expected off, local or central")),
        }
    }
}

/// What a client does to its update before upload; part of every assignment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct UpdateSpec {
    /// L2 bound S on the update (each tensor gets `S/√L` when `per_layer`); `None`: no clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// Clip each of the L tensors to `S/√L` instead of the whole update to S (the total stays ≤ S).
    pub per_layer: bool,
    /// Standard deviation of the Gaussian noise the client adds per coordinate (local DP); 0: none.
    pub noise_std: f64,
    /// How the update is compressed; the server accepts only this codec.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "topk:0.1+q8"))]
    pub compression: Compression,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid update spec: {0}")]
    BadSpec(String),
    #[error("the update is not finite")]
    NonFinite,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the update was compressed with {got} but the task expects {want}")]
    WrongCodec { got: String, want: String },
    #[error("the update's L2 norm {norm:.4} exceeds what the task's clip bound allows ({bound:.4})")]
    TooLarge { norm: f64, bound: f64 },
}

impl UpdateSpec {
    pub fn validate(&self) -> Result<(), PipelineError> {
        if let Some(s) = self.clip {
            if !(s.is_finite() && s > 0.0) {
                return Err(PipelineError::BadSpec(format!("clip must be a positive number, got {s}")));
            }
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(PipelineError::BadSpec(format!("noise_std must be ≥ 0, got {}", self.noise_std)));
        }
        if self.noise_std > 0.0 && self.clip.is_none() {
            return Err(PipelineError::BadSpec("noise without a clip bound protects nothing: set clip".into()));
        }
        Ok(())
    }
}

/// Derives both halves of differential privacy from one description: the clients'
/// [`UpdateSpec`] (clip, and for local DP noise of std `z · 2S`, since a clipped update can move
/// by 2S when the client's data changes) and, for central DP, the server's DP-FedAvg stage.
/// `noise_multiplier` is z, already resolved by the caller (from a target ε at its own sampling
/// rate); it is ignored when `mode` is off. Callers name their own flags for a missing clip.
pub fn privacy_stages(
    mode: DpMode,
    clip: Option<f64>,
    per_layer: bool,
    noise_multiplier: f64,
    adaptive_clip: bool,
    expected_clients: usize,
    compression: Compression,
) -> Result<(UpdateSpec, Option<CentralDpConfig>), PipelineError> {
    if adaptive_clip && mode != DpMode::Central {
        return Err(PipelineError::BadSpec("adaptive clipping applies to central DP only".into()));
    }
    let mut spec = UpdateSpec { clip, per_layer, noise_std: 0.0, compression };
    let central = match (mode, clip) {
        (DpMode::Off, _) => None,
        (_, None) => return Err(PipelineError::BadSpec(format!("DP mode {mode} needs a clip bound"))),
        (DpMode::Local, Some(s)) => {
            spec.noise_std = noise_multiplier * 2.0 * s;
            None
        }
        (DpMode::Central, Some(s)) => Some(CentralDpConfig {
            clip: s,
            noise_multiplier,
            expected_clients,
            adaptive: adaptive_clip.then(AdaptiveClipping::default),
        }),
    };
    spec.validate()?;
    Ok((spec, central))
}

/// A prepared upload and what the client should know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The encoded update, the upload body.
    pub body: Vec<u8>,
    /// `‖Δ‖₂` before clipping.
    pub norm: f64,
    /// Whether clipping scaled the update down.
    pub clipped: bool,
}

/// The client half: clips, noises, compresses and encodes `delta` (modified in place up to the
/// compression step). `memory` is the client's error-feedback residual, used by top-k codecs;
/// `noise` must be a CSPRNG outside simulation; `rng` drives randomised compression.
pub fn prepare(
    delta: &mut Params,
    spec: &UpdateSpec,
    memory: Option<&mut ErrorFeedback>,
    noise: &mut dyn RngCore,
    rng: &mut Rng,
) -> Result<Prepared, PipelineError> {
    let (norm, clipped) = clip_and_noise(delta, spec, noise)?;
    let body = codec::encode(delta.as_slice(), &spec.compression, memory, rng)?;
    Ok(Prepared { body, norm, clipped })
}

/// The client half under secure aggregation: clip → local noise, in place, and nothing more —
/// the masked sum needs the plain values (SecAgg+ quantizes them itself). Returns `‖Δ‖₂` before
/// clipping and whether clipping scaled it.
pub fn prepare_for_sum(
    delta: &mut Params,
    spec: &UpdateSpec,
    noise: &mut dyn RngCore,
) -> Result<(f64, bool), PipelineError> {
    summable(spec)?;
    clip_and_noise(delta, spec, noise)
}

/// Whether updates under `spec` can be summed by secure aggregation: only uncompressed ones.
/// Top-k sends indices of the client's own choosing, which would reveal what the masks hide, and
/// random-k would need one index set shared by the whole cohort.
pub fn summable(spec: &UpdateSpec) -> Result<(), PipelineError> {
    match spec.compression {
        Compression::None => Ok(()),
        ref other => Err(PipelineError::BadSpec(format!(
            "secure aggregation sums uncompressed updates, and compression is {other}: top-k sends indices of \
             each client's choosing, which the masks cannot hide; random-k with an index set shared by the \
             cohort is not supported yet; q8 and QSGD requantize what SecAgg+ quantizes itself"
        ))),
    }
}

/// Clip (flat or per layer), then local DP noise: the steps every client runs on `Δ`.
fn clip_and_noise(
    delta: &mut Params,
    spec: &UpdateSpec,
    noise: &mut dyn RngCore,
) -> Result<(f64, bool), PipelineError> {
    spec.validate()?;
    if !delta.all_finite() {
        return Err(PipelineError::NonFinite);
    }
    let (norm, clipped) = match spec.clip {
        Some(bound) if spec.per_layer => (delta.l2_norm(), clip_per_layer(delta, bound)),
        Some(bound) => clip_l2(delta.as_mut_slice(), bound),
        None => (delta.l2_norm(), false),
    };
    if spec.noise_std > 0.0 {
        add_gaussian_noise(delta.as_mut_slice(), spec.noise_std, noise);
    }
    Ok((norm, clipped))
}

/// The server half: decodes an upload into an update of `layout`, refusing anything the task's
/// spec rules out — another codec or other codec parameters (a `topk:0.3` body on a `topk:0.1`
/// task), non-finite values, and an update larger than the clip bound allows. Sparse codecs stay
/// sparse, and plain f32 values are kept in `body` rather than copied. Values are checked for
/// finiteness once, as they are read. Never panics on
/// untrusted bytes.
pub fn decode(body: &Bytes, layout: Arc<Layout>, spec: &UpdateSpec) -> Result<Update, PipelineError> {
    let got = codec::peek_compression(body)?;
    if got != spec.compression {
        return Err(PipelineError::WrongCodec { got: got.to_string(), want: spec.compression.to_string() });
    }
    // The codec checks every value it reads (and its indices); its output is a valid update.
    let update = match codec::decode_values(body, layout.len())? {
        Decoded::Raw(values) => Update::trusted_received(layout, body, values),
        Decoded::Dense(values) => {
            Update::trusted_dense(Params::from_vec(layout, values).map_err(|e| PipelineError::BadSpec(e.to_string()))?)
        }
        Decoded::Sparse { indices, values } => Update::sparse(SparseUpdate::trusted(layout, indices, values)),
    };
    check(&update, spec)?;
    Ok(update)
}

/// What every decoded update must satisfy under `spec` beyond being a valid [`Update`]
/// (finite values, which its type guarantees), however it arrived (the pipeline's encoding or
/// plain safetensors): a dense update within the clip bound.
pub fn check(update: &Update, spec: &UpdateSpec) -> Result<(), PipelineError> {
    if let Some(bound) = norm_bound(spec, update.len()) {
        let norm = update.l2_norm();
        if norm > bound {
            return Err(PipelineError::TooLarge { norm, bound });
        }
    }
    Ok(())
}

/// The largest L2 norm an honest client's decoded update can have under `spec`, for dense
/// updates: the clip bound, plus the local noise's norm with room for chance
/// (‖N(0, σ²I_d)‖ > σ(√d + 10) has probability below e^{-50}), plus float slack. Compressed
/// updates have no such bound: top-k sends error-feedback residuals of earlier rounds too, and
/// 8-bit, random-k and QSGD rescale or requantise values.
fn norm_bound(spec: &UpdateSpec, len: usize) -> Option<f64> {
    let clip = spec.clip?;
    if spec.compression != Compression::None {
        return None;
    }
    let noise = spec.noise_std * ((len as f64).sqrt() + 10.0);
    Some((clip + noise) * (1.0 + 1e-5))
}

/// Scales `v` to L2 norm at most `bound`; returns the norm before and whether it was scaled.
pub fn clip_l2(v: &mut [f32], bound: f64) -> (f64, bool) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm > bound {
        let scale = (bound / norm) as f32;
        v.iter_mut().for_each(|x| *x *= scale);
        (norm, true)
    } else {
        (norm, false)
    }
}

/// Clips each of the L tensors to `bound/√L`, so the whole update stays within `bound` (the
/// uniform per-layer split of McMahan et al. 2018). Returns whether any tensor was scaled.
pub fn clip_per_layer(params: &mut Params, bound: f64) -> bool {
    let layout = params.layout().clone();
    let per_tensor = bound / (layout.tensors().len() as f64).sqrt();
    let mut any = false;
    for i in 0..layout.tensors().len() {
        any |= clip_l2(&mut params.as_mut_slice()[layout.range(i)], per_tensor).1;
    }
    any
}

/// Adds independent N(0, std²) noise to every coordinate (drawn in f64, see the module doc).
pub fn add_gaussian_noise(v: &mut [f32], std: f64, rng: &mut dyn RngCore) {
    for x in v {
        let z: f64 = StandardNormal.sample(rng);
        *x = (f64::from(*x) + std * z) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::TensorSpec;
    use rand::SeedableRng;

    fn params(values: &[f32]) -> Params {
        let layout =
            Layout::new(vec![TensorSpec::new("a", vec![2]), TensorSpec::new("b", vec![values.len() - 2])]).unwrap();
        Params::from_vec(Arc::new(layout), values.to_vec()).unwrap()
    }

    #[test]
    fn flat_clipping_scales_to_the_bound_and_leaves_small_updates_alone() {
        let mut v = [3.0f32, 4.0];
        assert_eq!(clip_l2(&mut v, 1.0), (5.0, true));
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut small = [0.3f32, 0.4];
        let (norm, clipped) = clip_l2(&mut small, 1.0);
        assert!((norm - 0.5).abs() < 1e-7 && !clipped);
        assert_eq!(small, [0.3, 0.4]);
    }

    #[test]
    fn per_layer_clipping_bounds_each_tensor_by_s_over_root_l() {
        // Two tensors: each gets 2/√2 = √2. a = [3,4] (norm 5) is scaled; b = [1,0] (norm 1) is not.
        let mut p = params(&[3.0, 4.0, 1.0, 0.0]);
        assert!(clip_per_layer(&mut p, 2.0));
        let a = p.tensor("a").unwrap();
        assert!((f64::from(a[0]) - 3.0 / 5.0 * 2f64.sqrt()).abs() < 1e-6);
        assert_eq!(p.tensor("b").unwrap(), &[1.0, 0.0]);
        assert!(p.l2_norm() <= 2.0 + 1e-6);
    }

    #[test]
    fn noise_has_the_requested_standard_deviation() {
        let mut v = vec![0.0f32; 200_000];
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        add_gaussian_noise(&mut v, 0.5, &mut rng);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.005, "std {}", var.sqrt());
    }

    #[test]
    fn a_prepared_update_decodes_to_the_clipped_update() {
        let mut delta = params(&[3.0, 4.0, 0.0, 0.0]);
        let spec = UpdateSpec { clip: Some(1.0), ..UpdateSpec::default() };
        let mut noise = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let prepared = prepare(&mut delta, &spec, None, &mut noise, &mut crate::rng::derive(0, &[])).unwrap();
        assert_eq!((prepared.norm, prepared.clipped), (5.0, true));
        let back = decode(&Bytes::from(prepared.body.clone()), delta.layout().clone(), &spec).unwrap().to_dense();
        assert_eq!(back.as_slice(), delta.as_slice());
        assert!((back.l2_norm() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_server_accepts_only_the_tasks_codec() {
        let mut delta = params(&[0.1, 0.2, 0.3, 0.4]);
        let q8 = UpdateSpec { compression: Compression::Q8, ..UpdateSpec::default() };
        let mut noise = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let prepared = prepare(&mut delta, &q8, None, &mut noise, &mut crate::rng::derive(0, &[])).unwrap();
        let err =
            decode(&Bytes::from(prepared.body.clone()), delta.layout().clone(), &UpdateSpec::default()).unwrap_err();
        assert!(matches!(err, PipelineError::WrongCodec { .. }), "{err}");
        assert!(decode(&Bytes::from_static(b"\x01"), delta.layout().clone(), &q8).is_err());
    }

    #[test]
    fn the_server_refuses_other_codec_parameters_and_updates_beyond_the_clip_bound() {
        let topk = |fraction| UpdateSpec { compression: Compression::TopK { fraction }, ..UpdateSpec::default() };
        let mut noise = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let mut delta = params(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let wide = prepare(
            &mut delta,
            &topk(0.5),
            Some(&mut ErrorFeedback::new(6)),
            &mut noise,
            &mut crate::rng::derive(0, &[]),
        )
        .unwrap();
        let err = decode(&Bytes::from(wide.body.clone()), delta.layout().clone(), &topk(0.2)).unwrap_err();
        assert!(matches!(err, PipelineError::WrongCodec { .. }), "{err}");
        assert!(decode(&Bytes::from(wide.body.clone()), delta.layout().clone(), &topk(0.5)).is_ok());

        // A clipped task: an honest update passes, one that skipped clipping does not.
        let clipped = UpdateSpec { clip: Some(1.0), ..UpdateSpec::default() };
        let mut honest = params(&[3.0, 4.0, 0.0, 0.0]);
        let body = prepare(&mut honest, &clipped, None, &mut noise, &mut crate::rng::derive(0, &[])).unwrap().body;
        assert!(decode(&Bytes::from(body.clone()), honest.layout().clone(), &clipped).is_ok());
        let mut hostile = params(&[3.0, 4.0, 0.0, 0.0]);
        let body = prepare(&mut hostile, &UpdateSpec::default(), None, &mut noise, &mut crate::rng::derive(0, &[]))
            .unwrap()
            .body;
        let err = decode(&Bytes::from(body.clone()), hostile.layout().clone(), &clipped).unwrap_err();
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
        // With local noise the bound leaves room for it: honest noisy updates pass.
        let noisy = UpdateSpec { clip: Some(1.0), noise_std: 0.5, ..UpdateSpec::default() };
        for seed in 0..20 {
            let mut d = params(&[3.0, 4.0, 1.0, 2.0]);
            let mut n = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let body = prepare(&mut d, &noisy, None, &mut n, &mut crate::rng::derive(0, &[])).unwrap().body;
            assert!(decode(&Bytes::from(body.clone()), d.layout().clone(), &noisy).is_ok());
        }
    }

    #[test]
    fn noise_without_clipping_is_refused() {
        let spec = UpdateSpec { noise_std: 1.0, ..UpdateSpec::default() };
        assert!(spec.validate().is_err());
    }
}
