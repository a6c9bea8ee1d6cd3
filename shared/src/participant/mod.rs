//! The participant: a client's role in federated training, as a pure state machine.
//!
//! A [`Session`] takes what came back from the outside world ([`Reply`]: a check-in answer, the
//! model's bytes, a finished local training, an upload's answer, an elapsed wait) and the time,
//! and returns the next thing to do ([`Action`]) plus what the user should be told ([`Notice`]).
//! It owns everything a client decides: identity, the per-version model cache, which random
//! streams a round uses, Δ = w_local − w_global, the update pipeline (clip → noise → compress →
//! encode) with its error-feedback residual, back-off, and what to do with every refusal.
//!
//! It does no I/O, reads no clock and trains nothing itself: the browser worker drives it over
//! `fetch` with the WebGPU/CPU engine, `webfl simulate` drives hundreds of sessions in one
//! process on a virtual clock, and both therefore upload byte-identical updates for the same
//! seed, plan and data.
//!
//! Boundary: the participant never imports the coordinator (`crate::coordinator`); the two meet
//! only through [`crate::protocol`] messages.

mod attack;
mod session;

pub use attack::Attack;
pub use session::{
    Action, Failure, Identity, Notice, Phase, Randomness, Reply, RoundReport, Session, SessionError, Step, TrainJob,
    UploadRequest,
};

/// The digest [`golden_upload_digest`] gives on every platform.
#[doc(hidden)]
pub const GOLDEN_UPLOAD_DIGEST: u64 = 12_337_505_888_362_244_754;

/// Two rounds of a seeded session with clipping, local noise and top-k with error feedback,
/// fed a fixed "trained" model, and the FNV-1a digest of both upload bodies. Run natively
/// (`webfl simulate`'s platform) and in the browser's wasm test worker, it pins that both
/// produce the same bytes from the same inputs.
#[doc(hidden)]
pub fn golden_upload_digest() -> u64 {
    use crate::codec::Compression;
    use crate::model::ModelSpec;
    use crate::pipeline::UpdateSpec;
    use crate::protocol::{AssignmentTerms, CheckInResponse, UploadResponse};
    use crate::rng::{self, Stream};
    use crate::train::{TrainPlan, TrainStats};

    let model = ModelSpec::builtin("2nn", &[4], 3).expect("a built-in model");
    let Ok(global) = model.init_params(&mut rng::stream(0, Stream::Init, &[])) else { return 0 };
    let terms = AssignmentTerms {
        plan: TrainPlan { epochs: 1, batch_size: 4, lr: 0.1, ..TrainPlan::default() },
        model,
        upload_limit_bytes: 1 << 20,
        update: UpdateSpec {
            clip: Some(0.5),
            per_layer: false,
            noise_std: 0.01,
            compression: Compression::TopK { fraction: 0.1 },
        },
        secure_aggregation: None,
    };
    let mut session = Session::new(40, vec!["cpu".into()], Randomness::Seeded { seed: 7, client: 3 });
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            digest = (digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut reply = Reply::Start;
    let mut now = 0.0;
    for round in 1..=2u64 {
        for _ in 0..6 {
            now += 1.0;
            let Ok(step) = session.handle(reply, now) else { return 0 };
            reply = match step.action {
                Action::CheckIn { .. } => Reply::CheckIn(Ok(CheckInResponse::Assigned {
                    client_id: "golden".into(),
                    token: "t".into(),
                    round,
                    model_version: 0,
                    deadline_ms_from_now: 1_000,
                    terms: terms.clone(),
                })),
                Action::Download { .. } => match global.to_safetensors() {
                    Ok(bytes) => Reply::Model(Ok(bytes)),
                    Err(_) => return 0,
                },
                Action::Train(job) => {
                    let mut local = (*job.global).clone();
                    // Arithmetic only: transcendental functions differ in their last bits
                    // between platforms' math libraries.
                    for (i, w) in local.as_mut_slice().iter_mut().enumerate() {
                        *w += ((i as u64 * 37 + round * 11) % 101) as f32 * 1e-3 - 0.05;
                    }
                    let stats = TrainStats { examples: 40, steps: 10, loss: 0.5, accuracy: 0.75 };
                    Reply::Trained(Ok((local, stats)))
                }
                Action::Upload(upload) => {
                    feed(&upload.body);
                    Reply::Uploaded(Ok(UploadResponse { accepted: true, round_closed: false }))
                }
                Action::SecAgg { .. } | Action::Wait { .. } | Action::Finish { .. } => return 0,
            };
            if matches!(reply, Reply::Uploaded(_)) {
                break;
            }
        }
    }
    digest
}
