//! Protocol v1: what a participant and a coordinator say to each other, over HTTP in production
//! and in-process in `webfl simulate`.
//!
//! Both sides (de)serialise these same structs, so the browser client and the server cannot drift
//! apart; `docs/protocol.md` describes the exchange and `/api/openapi.json` is generated from them.
//! Model bodies are safetensors (see [`crate::params`]), update bodies the pipeline's encoding.

use serde::{Deserialize, Serialize};

use crate::model::ModelSpec;
use crate::pipeline::UpdateSpec;
use crate::secagg::{SecAggConfig, ToClient, ToServer};
use crate::train::TrainPlan;

/// Protocol version (the `/api/v{N}` prefix). Bumped by changes that break existing clients.
pub const PROTOCOL_VERSION: u32 = 1;

/// Headers of an update upload.
pub mod header {
    /// The uploading client's id.
    pub const CLIENT: &str = "x-webfl-client";
    /// The model version the update was trained from.
    pub const MODEL_VERSION: &str = "x-webfl-model-version";
    /// Local examples trained on: the update's FedAvg weight.
    pub const EXAMPLES: &str = "x-webfl-examples";
}

/// Content type of an upload body in the update pipeline's encoding (see [`crate::codec`]).
pub const UPDATE_CONTENT_TYPE: &str = "application/x-webfl-update";
/// Content type of models (and of plain safetensors updates): safetensors bytes.
pub const SAFETENSORS_CONTENT_TYPE: &str = "application/octet-stream";

/// Longest a check-in may ask the coordinator to hold it (`wait_ms`) waiting for a round.
pub const MAX_CHECK_IN_WAIT_MS: u64 = 20_000;

/// What every assignment of a task carries besides its round: how to train and what to upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignmentTerms {
    pub plan: TrainPlan,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub model: ModelSpec,
    pub upload_limit_bytes: usize,
    /// What to do to the update before upload: clip, noise, compress
    /// ([`crate::pipeline::prepare`]); the upload body is its encoding.
    #[serde(default)]
    pub update: UpdateSpec,
    /// Present when the round sums updates by secure aggregation: the client then sends no
    /// upload but takes part in the exchange of [`SecAggRequest`]s instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecAggTerms>,
}

/// What a secure-aggregation round asks of every client beyond the SecAgg+ configuration (which
/// comes with [`SecAggAnswer::Setup`] once the cohort is fixed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecAggTerms {
    /// The client's masked input is `[w·Δ, w]` with weight `w = min(examples, max_examples) /
    /// max_examples`, so the sum's mean is the FedAvg mean `Σ w·Δ / Σ w`. 1 weighs every client
    /// alike (an unweighted mean).
    pub max_examples: u64,
}

impl SecAggTerms {
    /// The FedAvg weight of a client that trained on `examples`, in (0, 1].
    pub fn weight(&self, examples: u64) -> f32 {
        let max = self.max_examples.max(1);
        (examples.clamp(1, max) as f64 / max as f64) as f32
    }
}

/// `POST /api/v1/rounds/{round}/secagg` (with `Authorization: Bearer <token>`): one step of a
/// secure-aggregation round. `message` is what the last answer asked for; without one the
/// request only asks what comes next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecAggRequest {
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ToServer>,
    /// How long the client is willing to be held when the answer would be `wait` (long poll,
    /// capped at 20 s as check-ins are). Absent or 0: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_number")]
    pub wait_ms: Option<u64>,
}

/// The answer to a [`SecAggRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SecAggAnswer {
    /// Nothing for this client yet (the cohort is not fixed, or its stage has not moved on):
    /// ask again after `retry_after_ms`.
    Wait { retry_after_ms: u64 },
    /// The cohort is fixed and this client is its member `index`: make the SecAgg+ client for
    /// `config` and send its advertised keys.
    Setup { config: SecAggConfig, index: u32 },
    /// The server's message of the current stage, to be answered with the client's.
    Message(ToClient),
    /// This client's part in the round is over.
    Done { reason: SecAggDone },
}

impl SecAggAnswer {
    /// Whether the client should be held (long poll) rather than answered now.
    pub fn is_wait(&self) -> bool {
        matches!(self, SecAggAnswer::Wait { .. })
    }
}

/// Why a client's part in a secure-aggregation round is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecAggDone {
    /// It answered the unmask request: its update is in the sum.
    Contributed,
    /// A stage ended without its message; the round goes on without it.
    Dropped,
    /// The round was abandoned: no sum, no new version.
    Abandoned,
}

impl SecAggDone {
    /// In words, for people.
    pub fn describe(self) -> &'static str {
        match self {
            SecAggDone::Contributed => "the update is in the secure sum",
            SecAggDone::Dropped => "the round went on without this client",
            SecAggDone::Abandoned => "the secure round was abandoned",
        }
    }
}

/// `POST /api/v1/checkin`. A first check-in sends no `client_id`; later ones send it together
/// with `Authorization: Bearer <token>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckInRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How long the client is willing to wait for an assignment before the answer (long poll,
    /// capped at 20 s): a client that would be told `retry` is instead held until a round can
    /// take it, so it learns of a new round the moment it opens. Absent or 0: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_number")]
    pub wait_ms: Option<u64>,
}

/// What a client can do; informs the operator (recorded nowhere yet).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// Training backends the client can run, best first (`"cpu"`, `"webgpu"`).
    #[serde(default)]
    pub backends: Vec<String>,
    /// Local examples the client holds, if it knows.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_number")]
    pub examples: Option<u64>,
}

/// An optional unsigned integer, also when written with a zero fraction (`386.0`): JSON Schema
/// counts that as an integer, so a client generated from the OpenAPI document may send it.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Unsigned(u64),
        Float(f64),
    }
    match Option::<Number>::deserialize(d)? {
        None => Ok(None),
        Some(Number::Unsigned(n)) => Ok(Some(n)),
        Some(Number::Float(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        Some(Number::Float(f)) => Err(serde::de::Error::custom(format_args!("expected an unsigned integer, got {f}"))),
    }
}

/// The answer to a check-in: an assignment, or when to come back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckInResponse {
    /// Selected for `round`: download `model_version`, train following `plan`, upload before the
    /// deadline.
    Assigned {
        client_id: String,
        token: String,
        round: u64,
        model_version: u64,
        deadline_ms_from_now: u64,
        #[serde(flatten)]
        terms: AssignmentTerms,
    },
    /// Not selected now: come back after `retry_after_ms` (`reason` says why).
    Retry {
        client_id: String,
        token: String,
        retry_after_ms: u64,
        #[serde(default)]
        reason: WaitReason,
    },
    /// The task takes no more rounds (e.g. its privacy budget is spent): stop checking in.
    Done { client_id: String, token: String, reason: String },
}

/// Why a client was not given an assignment. None of these is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The open round has selected all the clients it needs.
    #[default]
    RoundFull,
    /// This client's update for the open round is in; the next round will take it.
    Reported,
    /// A round just closed and its new version is being stored.
    Committing,
    /// The open round's deadline passed and it is being settled.
    Closing,
}

impl WaitReason {
    /// In words, for people.
    pub fn describe(self) -> &'static str {
        match self {
            WaitReason::RoundFull => "not needed this round",
            WaitReason::Reported => "update in; waiting for the next round",
            WaitReason::Committing => "the new model version is being stored",
            WaitReason::Closing => "the round is closing",
        }
    }
}

impl CheckInResponse {
    /// The identity the server confirmed or issued, whichever the answer.
    pub fn identity(&self) -> (&str, &str) {
        match self {
            CheckInResponse::Assigned { client_id, token, .. }
            | CheckInResponse::Retry { client_id, token, .. }
            | CheckInResponse::Done { client_id, token, .. } => (client_id, token),
        }
    }
}

/// `202` answer to an accepted upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadResponse {
    pub accepted: bool,
    /// This update closed the round and a new version was committed.
    pub round_closed: bool,
}

/// Every refusal: a machine-readable `error` code and a human `message`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// `GET /api/v1/task`: what a client needs before it checks in (to pick and shape its data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskInfo {
    pub protocol_version: u32,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub model: ModelSpec,
    pub plan: TrainPlan,
    pub dataset: DatasetInfo,
    pub upload_limit_bytes: usize,
}

/// The task's data as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetInfo {
    /// `mnist`, or the CSV file's name.
    pub name: String,
    /// Shape of one sample, e.g. `[1, 28, 28]`.
    pub sample_shape: Vec<usize>,
    pub classes: usize,
    /// Where a demo client can fetch the public training split (WFDS, see
    /// [`crate::data::mnist`]) to take a partition of; absent when the task has no public data
    /// and each client must bring its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_data_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_may_be_written_as_whole_floats_but_not_fractions() {
        let r: CheckInRequest =
            serde_json::from_str(r#"{"wait_ms": 20.0, "capabilities": {"examples": 386.0}}"#).unwrap();
        assert_eq!((r.wait_ms, r.capabilities.examples), (Some(20), Some(386)));
        let r: CheckInRequest = serde_json::from_str(r#"{"capabilities": {"examples": 386}}"#).unwrap();
        assert_eq!((r.wait_ms, r.capabilities.examples), (None, Some(386)));
        for bad in [r#"{"wait_ms": 1.5}"#, r#"{"wait_ms": -1}"#, r#"{"wait_ms": "5"}"#] {
            assert!(serde_json::from_str::<CheckInRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_in_answers_are_tagged_by_status() {
        let retry = CheckInResponse::Retry {
            client_id: "c".into(),
            token: "t".into(),
            retry_after_ms: 5,
            reason: WaitReason::Reported,
        };
        let json = serde_json::to_value(&retry).unwrap();
        let want = serde_json::json!({
            "status": "retry", "client_id": "c", "token": "t", "retry_after_ms": 5, "reason": "reported"
        });
        assert_eq!(json, want);
        let back: CheckInResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, retry);
        assert_eq!(back.identity(), ("c", "t"));
    }

    #[test]
    fn secure_aggregation_answers_are_tagged_by_status_and_old_assignments_still_parse() {
        use crate::secagg::UnmaskRequest;
        let unmask = SecAggAnswer::Message(ToClient::Unmask(UnmaskRequest {
            round: 2,
            survivors: vec![0, 1],
            dropped: vec![2],
        }));
        let json = serde_json::to_value(&unmask).unwrap();
        let want = serde_json::json!({
            "status": "message", "stage": "unmask", "round": 2, "survivors": [0, 1], "dropped": [2]
        });
        assert_eq!(json, want);
        assert_eq!(serde_json::from_value::<SecAggAnswer>(json).unwrap(), unmask);
        let done = SecAggAnswer::Done { reason: SecAggDone::Dropped };
        assert_eq!(serde_json::to_value(&done).unwrap(), serde_json::json!({"status": "done", "reason": "dropped"}));
        let wait = serde_json::json!({"status": "wait", "retry_after_ms": 5});
        assert_eq!(serde_json::from_value::<SecAggAnswer>(wait).unwrap(), SecAggAnswer::Wait { retry_after_ms: 5 });
        let poll = SecAggRequest { client_id: "c".into(), message: None, wait_ms: None };
        assert_eq!(serde_json::to_value(&poll).unwrap(), serde_json::json!({"client_id": "c"}));
        assert!(serde_json::from_str::<SecAggRequest>(r#"{"client_id": "c", "wait_ms": 1.5}"#).is_err());

        // An assignment without secure aggregation says nothing about it, as before.
        let terms = AssignmentTerms {
            plan: TrainPlan::default(),
            model: ModelSpec::builtin("mlp", &[4], 2).unwrap(),
            upload_limit_bytes: 10,
            update: UpdateSpec::default(),
            secure_aggregation: None,
        };
        let json = serde_json::to_value(&terms).unwrap();
        assert!(json.get("secure_aggregation").is_none());
        assert_eq!(serde_json::from_value::<AssignmentTerms>(json).unwrap(), terms);
        assert_eq!(SecAggTerms { max_examples: 200 }.weight(50), 0.25);
        assert_eq!(SecAggTerms { max_examples: 200 }.weight(500), 1.0);
    }

    #[test]
    fn an_empty_check_in_is_a_new_client() {
        let req: CheckInRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(req, CheckInRequest::default());
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"capabilities":{"backends":[]}}"#);
    }
}
