//! What the server tells operators and dashboards (`/api/status`, `/api/rounds`,
//! `/api/clients`). These Rust types are the OpenAPI schemas (derived, never mirrored by hand),
//! and the pages' TypeScript types are generated from that document.

use serde::{Deserialize, Serialize};

// Every field is always serialised, so each schema marks every field required (utoipa would
// otherwise leave `Option` and `#[serde(default)]` fields out, and the pages' generated types
// would make them optional).

/// `GET /api/status`: the server's state for people and dashboards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    /// The protocol version the server speaks (the `/api/vN` prefix).
    pub protocol_version: u32,
    /// The task's name.
    pub task: String,
    /// The current committed model version (0 before the first round).
    pub model_version: u64,
    /// Updates accepted into rounds since the server started.
    pub updates_accepted: u64,
    /// Rounds that produced a new version.
    pub rounds_completed: u64,
    /// Held-out accuracy (0..1) of the latest version that has one; null before the first round.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub test_accuracy: Option<f64>,
    /// Clients seen in the last 60 s.
    pub clients_connected: u64,
    /// The round currently taking updates, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub open_round: Option<u64>,
    /// Encoded update bytes accepted since the server started.
    pub bytes_up_total: u64,
    /// Model bytes served since the server started.
    pub bytes_down_total: u64,
    /// The codec clients compress updates with (`none`, `q8`, `topk:F`, …).
    pub compression: String,
    /// Differential privacy spent so far; null when the task has none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub privacy: Option<PrivacyStatus>,
    /// Bytes the server's store holds (kept model versions, rounds, clients).
    pub store_bytes: u64,
}

/// `privacy` in `GET /api/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrivacyStatus {
    /// `local` or `central`.
    pub mode: String,
    /// ε spent by the committed rounds (RDP accountant).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub epsilon: Option<f64>,
    pub delta: f64,
    /// The budget; rounds stop when the next would exceed it.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub target_epsilon: Option<f64>,
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    /// Whether one more round fits the budget.
    pub budget_left: bool,
}

/// How a round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RoundOutcome {
    /// Closed when its target number of updates was in.
    Closed,
    /// Closed at its deadline with at least the minimum number of updates.
    ClosedByDeadline,
    /// Fewer than the minimum by its deadline; its partial aggregate was discarded.
    Abandoned,
    /// Aggregated, but the new version could not be stored; discarded (never in the database).
    StoreFailed,
}

impl RoundOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RoundOutcome::Closed => "closed",
            RoundOutcome::ClosedByDeadline => "closed_by_deadline",
            RoundOutcome::Abandoned => "abandoned",
            RoundOutcome::StoreFailed => "store_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "closed" => RoundOutcome::Closed,
            "closed_by_deadline" => RoundOutcome::ClosedByDeadline,
            "abandoned" => RoundOutcome::Abandoned,
            "store_failed" => RoundOutcome::StoreFailed,
            _ => return None,
        })
    }
}

/// One settled round (`GET /api/rounds`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoundRecord {
    pub round: u64,
    pub outcome: RoundOutcome,
    /// The version the round produced (null when it produced none).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub version: Option<u64>,
    pub selected: u64,
    pub reports: u64,
    /// When the round opened and settled, Unix milliseconds.
    pub opened_at_ms: u64,
    pub closed_at_ms: u64,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub test_loss: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub test_accuracy: Option<f64>,
    /// Encoded update bytes the round accepted.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub bytes_up: u64,
    /// Model bytes served to clients while the round was open.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub bytes_down: u64,
    /// Updates the server's norm bound (or central DP's clip) scaled down.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub clipped: u64,
    /// L2 norm of the aggregated update, before the server optimizer (null without a version).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub update_norm: Option<f64>,
    /// Who took part in each stage, in a secure-aggregation round (null otherwise).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub secagg: Option<SecAggRecord>,
}

/// Who took part in each stage of a secure-aggregation round: the cohort fixed at its start,
/// then the clients whose message of each stage the server took. A stage's dropouts are the
/// previous count minus its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecAggRecord {
    pub cohort: u32,
    /// Advertised their keys.
    pub advertised: u32,
    /// Shared their secrets with their neighbours.
    pub shared: u32,
    /// Uploaded a masked input: the clients whose updates are in the sum, when there is one.
    pub masked: u32,
    /// Answered the unmask request.
    pub unmasked: u32,
}

impl SecAggRecord {
    /// "cohort 13 → keys 13 → shares 12 → masked 11 → unmasked 11", for logs and tables.
    pub fn describe(&self) -> String {
        format!(
            "cohort {} → keys {} → shares {} → masked {} → unmasked {}",
            self.cohort, self.advertised, self.shared, self.masked, self.unmasked
        )
    }
}

/// `GET /api/clients`: one page of clients, most recently seen first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientsPage {
    pub clients: Vec<ClientRecord>,
    /// Pass as `after` for the next page; null on the last page.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_after: Option<String>,
}

/// What the operator sees about a client (`GET /api/clients`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientRecord {
    pub client_id: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub rounds_completed: u64,
    pub failures: u64,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_round_trip_ms: Option<u64>,
    /// Encoded update bytes this client has had accepted.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub bytes_up: u64,
}
