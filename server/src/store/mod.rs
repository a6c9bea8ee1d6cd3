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
    /// Creates or refreshes a client (its token is kept only as a hash).
    fn touch_client(&mut self, client_id: &str, token_hash: &str, now_ms: u64) -> Result<(), StoreError>;
    /// Counts an accepted (`ok`) or refused upload, with the round trip from assignment to upload.
    fn record_contribution(
        &mut self,
        client_id: &str,
        ok: bool,
        round_trip_ms: Option<u64>,
        bytes_up: u64,
    ) -> Result<(), StoreError>;
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// `(client_id, token_hash)` of every known client, so tokens outlive a restart.
    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError>;
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
