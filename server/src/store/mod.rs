//! Durable server state: what a task's store must offer ([`TaskStore`]) and its two
//! implementations — [`TaskDb`] over one embedded SQLite database (`<data>/webfl.db`, what
//! `webfl serve` uses) and [`MemoryStore`] (tests, throwaway servers).
//!
//! Invariant: every recording method returns only once the write is durable, so a version is
//! never announced before it would survive a crash. The store persists the protocol's records
//! (`webfl_shared::protocol::{RoundRecord, ClientRecord}`) in its own tables; its rows are not the
//! wire format.

mod memory;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use webfl_shared::protocol::{ClientRecord, RoundRecord};
use webfl_shared::strategy::OptimizerState;

pub use memory::MemoryStore;
pub use sqlite::{Store, StoredVersion, TaskDb};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("creating data folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this build understands ({})", sqlite::SCHEMA_VERSION)]
    TooNew { found: i64 },
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("version {version} of task {task:?} already exists")]
    VersionExists { task: String, version: u64 },
    #[error(
        "the data folder holds task {task:?} trained under other settings ({}); keep the old settings, \
         give the task another `name`, or use another --data folder — versions of different settings are never mixed",
        differences.join("; ")
    )]
    ConfigChanged { task: String, differences: Vec<String> },
}

/// Where one task's committed state lives. Every recording method returns only once the write
/// is durable, so a version is never announced before it would survive a crash.
pub trait TaskStore: Send {
    /// Stores version 0 of a new task.
    fn put_initial(&mut self, bytes: Arc<Vec<u8>>) -> Result<(), StoreError>;
    fn get(&self, version: u64) -> Result<Option<Arc<Vec<u8>>>, StoreError>;
    /// Records a closed round: its new version, its record and the optimizer state, atomically.
    fn commit(
        &mut self,
        version: u64,
        bytes: Arc<Vec<u8>>,
        record: &RoundRecord,
        optimizer: &OptimizerState,
    ) -> Result<(), StoreError>;
    fn record_abandoned(&mut self, record: &RoundRecord) -> Result<(), StoreError>;
    /// What a restarted server continues from; `None` for a task that has never been stored.
    fn resume(&self) -> Result<Option<Resume>, StoreError>;
    /// Records client bookkeeping, in order, as one transaction (the service batches it).
    fn record_clients(&mut self, events: &[ClientEvent]) -> Result<(), StoreError>;
    /// Up to `limit` clients, most recently seen first, starting after `after`.
    fn clients_page(&self, after: Option<&ClientCursor>, limit: usize) -> Result<Vec<ClientRecord>, StoreError>;
    /// Forgets the clients last seen before `unseen_since_ms` (Unix ms); returns their ids.
    fn forget_clients(&mut self, unseen_since_ms: u64) -> Result<Vec<String>, StoreError>;
    /// `(client_id, token_hash)` of every known client, so tokens outlive a restart.
    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletes the versions `keep` does not keep (never the latest); returns how many.
    fn prune_versions(&mut self, keep: &Retention) -> Result<u64, StoreError>;
    /// Bytes the store uses.
    fn size_bytes(&self) -> Result<u64, StoreError>;
}

/// Client bookkeeping, recorded in batches.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// Creates or refreshes a client (its token is kept only as a hash).
    Seen { client_id: String, token_hash: String, at_ms: u64 },
    /// An accepted (`ok`, with its encoded size) or refused upload, with the round trip from
    /// assignment to upload.
    Contributed { client_id: String, ok: bool, round_trip_ms: Option<u64>, bytes_up: u64 },
}

/// Where a page of `GET /api/clients` ends: the last client's `last_seen_ms` and id, written
/// `"<ms>.<id>"` on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCursor {
    pub last_seen_ms: u64,
    pub client_id: String,
}

impl ClientCursor {
    pub fn of(record: &ClientRecord) -> Self {
        Self { last_seen_ms: record.last_seen_ms, client_id: record.client_id.clone() }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (ms, id) = text.split_once('.')?;
        Some(Self { last_seen_ms: ms.parse().ok()?, client_id: id.to_string() })
    }

    /// Whether `record` comes after this cursor in most-recently-seen-first order.
    pub fn precedes(&self, record: &ClientRecord) -> bool {
        record.last_seen_ms < self.last_seen_ms
            || (record.last_seen_ms == self.last_seen_ms && record.client_id > self.client_id)
    }
}

impl std::fmt::Display for ClientCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.last_seen_ms, self.client_id)
    }
}

/// Which model versions the store keeps: the last `last`, every multiple of `every` (0: none),
/// and version 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub last: u64,
    pub every: u64,
}

impl Retention {
    pub fn keeps(&self, version: u64, latest: u64) -> bool {
        version == 0 || version + self.last.max(1) > latest || (self.every > 0 && version.is_multiple_of(self.every))
    }
}

/// The last committed state of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    pub version: u64,
    pub bytes: Vec<u8>,
    pub history: Vec<RoundRecord>,
    pub optimizer: Option<OptimizerState>,
}

/// Wall-clock milliseconds since the Unix epoch, for records people read.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
