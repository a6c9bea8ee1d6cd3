//! Durable server state in one embedded SQLite database (`<data>/webfl.db`).
//!
//! Why SQLite: one file, real transactions, crash safety through its write-ahead log, no server
//! process to run, tooling everyone has (`sqlite3 webfl.db`), and SQL that carries over to
//! PostgreSQL when several replicas must share state. The database runs in WAL mode with
//! `synchronous = FULL`, so a committed transaction survives a process kill or power loss.
//!
//! The one write that matters most, [`Store::commit_version`], puts the new model version, its
//! round record and the server optimizer's state into a single transaction: after a crash either
//! all of a round is there or none of it, and a version is never announced before this returns.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use webfl_shared::protocol::{ClientRecord, RoundOutcome, RoundRecord};
use webfl_shared::strategy::OptimizerState;

use super::{ClientCursor, ClientEvent, Resume, Retention, StoreError, TaskStore, unix_ms};

/// Schema version stored in `PRAGMA user_version`; bump with a migration step below.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// A stored model version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredVersion {
    pub version: u64,
    pub safetensors: Vec<u8>,
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<dir>/webfl.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder { path: dir.to_path_buf(), source })?;
        let path = dir.join("webfl.db");
        let conn = Connection::open(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        if found < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE tasks (
                     name TEXT PRIMARY KEY,
                     config_json TEXT NOT NULL,
                     created_at_ms INTEGER NOT NULL);
                 CREATE TABLE model_versions (
                     task TEXT NOT NULL REFERENCES tasks(name),
                     version INTEGER NOT NULL,
                     round INTEGER,
                     safetensors BLOB NOT NULL,
                     created_at_ms INTEGER NOT NULL,
                     PRIMARY KEY (task, version));
                 CREATE TABLE rounds (
                     task TEXT NOT NULL REFERENCES tasks(name),
                     round INTEGER NOT NULL,
                     outcome TEXT NOT NULL,
                     version INTEGER,
                     selected INTEGER NOT NULL,
                     reports INTEGER NOT NULL,
                     opened_at_ms INTEGER NOT NULL,
                     closed_at_ms INTEGER NOT NULL,
                     test_loss REAL,
                     test_accuracy REAL,
                     PRIMARY KEY (task, round));
                 CREATE TABLE optimizer_state (
                     task TEXT PRIMARY KEY REFERENCES tasks(name),
                     state_json TEXT NOT NULL);
                 CREATE TABLE clients (
                     task TEXT NOT NULL REFERENCES tasks(name),
                     client_id TEXT NOT NULL,
                     token_hash TEXT NOT NULL,
                     first_seen_ms INTEGER NOT NULL,
                     last_seen_ms INTEGER NOT NULL,
                     rounds_completed INTEGER NOT NULL DEFAULT 0,
                     failures INTEGER NOT NULL DEFAULT 0,
                     last_round_trip_ms INTEGER,
                     PRIMARY KEY (task, client_id));
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if found < 2 {
            // v2: encoded update bytes per round (compression is visible per round).
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE rounds ADD COLUMN bytes_up INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE rounds ADD COLUMN bytes_down INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE clients ADD COLUMN bytes_up INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if found < 3 {
            // v3: what aggregation did in each round (updates clipped, the update's norm).
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE rounds ADD COLUMN clipped INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE rounds ADD COLUMN update_norm REAL;
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if found < 4 {
            // v4: clients are paged most recently seen first, and expired by last seen.
            conn.execute_batch(
                "BEGIN;
                 CREATE INDEX clients_by_last_seen ON clients (task, last_seen_ms DESC, client_id);
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        if found < 5 {
            // v5: who took part in each stage of a secure-aggregation round (JSON; NULL otherwise).
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE rounds ADD COLUMN secagg TEXT;
                 PRAGMA user_version = 5;
                 COMMIT;",
            )?;
        }
        Ok(Self { conn })
    }

    /// Registers a task (or returns its stored config if it exists already).
    pub fn ensure_task(&self, name: &str, config_json: &str, now_ms: u64) -> Result<String, StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO tasks (name, config_json, created_at_ms) VALUES (?1, ?2, ?3)",
            params![name, config_json, now_ms as i64],
        )?;
        Ok(self.conn.query_row("SELECT config_json FROM tasks WHERE name = ?1", [name], |r| r.get(0))?)
    }

    /// Stores the initial model (version 0) of a new task.
    pub fn put_initial_version(&self, task: &str, safetensors: &[u8], now_ms: u64) -> Result<(), StoreError> {
        insert_version(&self.conn, task, 0, None, safetensors, now_ms)
    }

    /// Durably records a closed round: its new model version, the round record and the server
    /// optimizer state, all in one transaction. Call before announcing the version.
    pub fn commit_version(
        &mut self,
        task: &str,
        version: u64,
        safetensors: &[u8],
        record: &RoundRecord,
        optimizer_state_json: &str,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        insert_version(&tx, task, version, Some(record.round), safetensors, record.closed_at_ms)?;
        insert_round(&tx, task, record)?;
        tx.execute(
            "INSERT INTO optimizer_state (task, state_json) VALUES (?1, ?2)
             ON CONFLICT(task) DO UPDATE SET state_json = excluded.state_json",
            params![task, optimizer_state_json],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records an abandoned round (no new version).
    pub fn record_abandoned(&self, task: &str, record: &RoundRecord) -> Result<(), StoreError> {
        insert_round(&self.conn, task, record)
    }

    pub fn latest_version(&self, task: &str) -> Result<Option<StoredVersion>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT version, safetensors FROM model_versions WHERE task = ?1 ORDER BY version DESC LIMIT 1",
                [task],
                |r| Ok(StoredVersion { version: r.get::<_, i64>(0)? as u64, safetensors: r.get(1)? }),
            )
            .optional()?)
    }

    pub fn version(&self, task: &str, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT safetensors FROM model_versions WHERE task = ?1 AND version = ?2",
                params![task, version as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn versions(&self, task: &str) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT version FROM model_versions WHERE task = ?1 ORDER BY version")?;
        let rows = stmt.query_map([task], |r| r.get::<_, i64>(0))?;
        Ok(rows.map(|v| v.map(|v| v as u64)).collect::<Result<_, _>>()?)
    }

    pub fn optimizer_state(&self, task: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT state_json FROM optimizer_state WHERE task = ?1", [task], |r| r.get(0))
            .optional()?)
    }

    pub fn rounds(&self, task: &str) -> Result<Vec<RoundRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, outcome, version, selected, reports, opened_at_ms, closed_at_ms, test_loss, test_accuracy,
                    bytes_up, bytes_down, clipped, update_norm, secagg
             FROM rounds WHERE task = ?1 ORDER BY round",
        )?;
        let rows = stmt.query_map([task], |r| {
            let outcome: String = r.get(1)?;
            Ok(RoundRecord {
                round: r.get::<_, i64>(0)? as u64,
                outcome: RoundOutcome::parse(&outcome).unwrap_or(RoundOutcome::Abandoned),
                version: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                selected: r.get::<_, i64>(3)? as u64,
                reports: r.get::<_, i64>(4)? as u64,
                opened_at_ms: r.get::<_, i64>(5)? as u64,
                closed_at_ms: r.get::<_, i64>(6)? as u64,
                test_loss: r.get(7)?,
                test_accuracy: r.get(8)?,
                bytes_up: r.get::<_, i64>(9)? as u64,
                bytes_down: r.get::<_, i64>(10)? as u64,
                clipped: r.get::<_, i64>(11)? as u64,
                update_norm: r.get(12)?,
                // A record this server wrote; one it cannot read says nothing rather than fail.
                secagg: r.get::<_, Option<String>>(13)?.and_then(|json| serde_json::from_str(&json).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The number the next round gets: one past the highest recorded round.
    pub fn next_round(&self, task: &str) -> Result<u64, StoreError> {
        let max: Option<i64> =
            self.conn.query_row("SELECT MAX(round) FROM rounds WHERE task = ?1", [task], |r| r.get(0))?;
        Ok(max.map_or(1, |m| m as u64 + 1))
    }

    /// Records client bookkeeping as one transaction: one fsync for the whole batch.
    pub fn record_clients(&mut self, task: &str, events: &[ClientEvent]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut seen = tx.prepare_cached(
                "INSERT INTO clients (task, client_id, token_hash, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(task, client_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )?;
            let mut contributed = tx.prepare_cached(
                "UPDATE clients SET rounds_completed = rounds_completed + ?3, failures = failures + ?4,
                     last_round_trip_ms = COALESCE(?5, last_round_trip_ms), bytes_up = bytes_up + ?6
                 WHERE task = ?1 AND client_id = ?2",
            )?;
            for event in events {
                match event {
                    ClientEvent::Seen { client_id, token_hash, at_ms } => {
                        seen.execute(params![task, client_id, token_hash, *at_ms as i64])?;
                    }
                    ClientEvent::Contributed { client_id, ok, round_trip_ms, bytes_up } => {
                        contributed.execute(params![
                            task,
                            client_id,
                            i64::from(*ok),
                            i64::from(!*ok),
                            round_trip_ms.map(|v| v as i64),
                            if *ok { *bytes_up as i64 } else { 0 }
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn client_tokens(&self, task: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT client_id, token_hash FROM clients WHERE task = ?1")?;
        let rows = stmt.query_map([task], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of clients, most recently seen first (keyset pagination over an index: a page
    /// costs the same however many clients there are).
    pub fn clients_page(
        &self,
        task: &str,
        after: Option<&ClientCursor>,
        limit: usize,
    ) -> Result<Vec<ClientRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT client_id, first_seen_ms, last_seen_ms, rounds_completed, failures, last_round_trip_ms, bytes_up
             FROM clients WHERE task = ?1
               AND (?2 IS NULL OR last_seen_ms < ?2 OR (last_seen_ms = ?2 AND client_id > ?3))
             ORDER BY last_seen_ms DESC, client_id LIMIT ?4",
        )?;
        let (ms, id) = after.map_or((None, ""), |c| (Some(c.last_seen_ms as i64), c.client_id.as_str()));
        let rows = stmt.query_map(params![task, ms, id, limit as i64], |r| {
            Ok(ClientRecord {
                client_id: r.get(0)?,
                first_seen_ms: r.get::<_, i64>(1)? as u64,
                last_seen_ms: r.get::<_, i64>(2)? as u64,
                rounds_completed: r.get::<_, i64>(3)? as u64,
                failures: r.get::<_, i64>(4)? as u64,
                last_round_trip_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                bytes_up: r.get::<_, i64>(6)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the clients last seen before `unseen_since_ms`; returns their ids.
    pub fn forget_clients(&mut self, task: &str, unseen_since_ms: u64) -> Result<Vec<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let ids = {
            let mut stmt =
                tx.prepare("DELETE FROM clients WHERE task = ?1 AND last_seen_ms < ?2 RETURNING client_id")?;
            let rows = stmt.query_map(params![task, unseen_since_ms as i64], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        tx.commit()?;
        Ok(ids)
    }

    /// Deletes the versions `keep` does not keep; the latest always stays.
    pub fn prune_versions(&mut self, task: &str, keep: &Retention) -> Result<u64, StoreError> {
        let versions = self.versions(task)?;
        let Some(&latest) = versions.last() else { return Ok(0) };
        let tx = self.conn.transaction()?;
        let mut deleted = 0;
        for v in versions.into_iter().filter(|&v| !keep.keeps(v, latest)) {
            deleted += tx
                .execute("DELETE FROM model_versions WHERE task = ?1 AND version = ?2", params![task, v as i64])?
                as u64;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Bytes in use by the database (freed pages are reused, not counted).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: i64 = self.conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let size: i64 = self.conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(((pages - free) * size) as u64)
    }
}

/// One task's view of the SQLite [`Store`].
pub struct TaskDb {
    db: Store,
    task: String,
}

impl TaskDb {
    /// Opens `<dir>/webfl.db` for `task`, registering it with `config_json` if new. A task
    /// stored under other settings is refused, naming what differs: resuming its versions under
    /// new settings would silently mix two experiments.
    pub fn open(dir: &Path, task: &str, config_json: &str, now_ms: u64) -> Result<Self, StoreError> {
        let db = Store::open(dir)?;
        let stored = db.ensure_task(task, config_json, now_ms)?;
        let differences = config_differences(&stored, config_json);
        if !differences.is_empty() {
            return Err(StoreError::ConfigChanged { task: task.to_string(), differences });
        }
        Ok(Self { db, task: task.to_string() })
    }

    pub fn store(&self) -> &Store {
        &self.db
    }
}

impl TaskStore for TaskDb {
    fn put_initial(&mut self, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        self.db.put_initial_version(&self.task, &bytes, unix_ms())
    }

    fn get(&self, version: u64) -> Result<Option<Arc<Vec<u8>>>, StoreError> {
        Ok(self.db.version(&self.task, version)?.map(Arc::new))
    }

    fn commit(
        &mut self,
        version: u64,
        bytes: Arc<Vec<u8>>,
        record: &RoundRecord,
        optimizer: &OptimizerState,
    ) -> Result<(), StoreError> {
        let state = serde_json::to_string(optimizer)?;
        self.db.commit_version(&self.task, version, &bytes, record, &state)
    }

    fn record_abandoned(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        self.db.record_abandoned(&self.task, record)
    }

    fn resume(&self) -> Result<Option<Resume>, StoreError> {
        let Some(latest) = self.db.latest_version(&self.task)? else { return Ok(None) };
        let optimizer = match self.db.optimizer_state(&self.task)? {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        };
        Ok(Some(Resume {
            version: latest.version,
            bytes: latest.safetensors,
            history: self.db.rounds(&self.task)?,
            optimizer,
        }))
    }

    fn record_clients(&mut self, events: &[ClientEvent]) -> Result<(), StoreError> {
        self.db.record_clients(&self.task, events)
    }

    fn clients_page(&self, after: Option<&ClientCursor>, limit: usize) -> Result<Vec<ClientRecord>, StoreError> {
        self.db.clients_page(&self.task, after, limit)
    }

    fn forget_clients(&mut self, unseen_since_ms: u64) -> Result<Vec<String>, StoreError> {
        self.db.forget_clients(&self.task, unseen_since_ms)
    }

    fn prune_versions(&mut self, keep: &Retention) -> Result<u64, StoreError> {
        self.db.prune_versions(&self.task, keep)
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        self.db.size_bytes()
    }

    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.db.client_tokens(&self.task)
    }
}

/// The settings that differ between two task configurations (JSON), as `path: old → new`.
/// Unreadable JSON counts as one difference.
fn config_differences(stored: &str, current: &str) -> Vec<String> {
    use serde_json::Value;
    fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
        match (old, new) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&sub, a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), out);
                }
            }
            (a, b) if a != b => out.push(format!("{path}: {a} → {b}")),
            _ => {}
        }
    }
    match (serde_json::from_str::<Value>(stored), serde_json::from_str::<Value>(current)) {
        (Ok(old), Ok(new)) => {
            let mut out = Vec::new();
            walk("", &old, &new, &mut out);
            out
        }
        _ => vec!["the stored settings are unreadable".to_string()],
    }
}

fn insert_version(
    conn: &Connection,
    task: &str,
    version: u64,
    round: Option<u64>,
    safetensors: &[u8],
    now_ms: u64,
) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO model_versions (task, version, round, safetensors, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![task, version as i64, round.map(|r| r as i64), safetensors, now_ms as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::VersionExists { task: task.to_string(), version });
    }
    Ok(())
}

fn insert_round(conn: &Connection, task: &str, r: &RoundRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO rounds (task, round, outcome, version, selected, reports, opened_at_ms, closed_at_ms,
                             test_loss, test_accuracy, bytes_up, bytes_down, clipped, update_norm, secagg)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            task,
            r.round as i64,
            r.outcome.as_str(),
            r.version.map(|v| v as i64),
            r.selected as i64,
            r.reports as i64,
            r.opened_at_ms as i64,
            r.closed_at_ms as i64,
            r.test_loss,
            r.test_accuracy,
            r.bytes_up as i64,
            r.bytes_down as i64,
            r.clipped as i64,
            r.update_norm,
            r.secagg.map(|s| serde_json::to_string(&s)).transpose()?
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(round: u64, version: Option<u64>, outcome: RoundOutcome) -> RoundRecord {
        RoundRecord {
            round,
            outcome,
            version,
            selected: 5,
            reports: 4,
            opened_at_ms: 10,
            closed_at_ms: 20,
            test_loss: version.map(|_| 0.5),
            test_accuracy: version.map(|_| 0.9),
            bytes_up: 0,
            bytes_down: 0,
            clipped: 1,
            update_norm: version.map(|_| 0.25),
            secagg: None,
        }
    }

    #[test]
    fn a_secure_rounds_stages_are_kept_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let stages =
            webfl_shared::protocol::SecAggRecord { cohort: 8, advertised: 8, shared: 8, masked: 7, unmasked: 5 };
        {
            let s = Store::open(dir.path()).unwrap();
            s.ensure_task("t", "{}", 1).unwrap();
            let secure = RoundRecord { secagg: Some(stages), ..record(1, None, RoundOutcome::Abandoned) };
            s.record_abandoned("t", &secure).unwrap();
            s.record_abandoned("t", &record(2, None, RoundOutcome::Abandoned)).unwrap();
        }
        let rounds = Store::open(dir.path()).unwrap().rounds("t").unwrap();
        assert_eq!(rounds.iter().map(|r| r.secagg).collect::<Vec<_>>(), [Some(stages), None]);
    }

    #[test]
    fn committed_versions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.ensure_task("mnist", "{}", 1).unwrap();
            s.put_initial_version("mnist", b"v0", 1).unwrap();
            let seen = ClientEvent::Seen { client_id: "c1".into(), token_hash: "h".into(), at_ms: 2 };
            s.record_clients("mnist", &[seen]).unwrap();
            s.commit_version("mnist", 1, b"v1", &record(1, Some(1), RoundOutcome::Closed), r#"{"steps":1}"#).unwrap();
            s.record_abandoned("mnist", &record(2, None, RoundOutcome::Abandoned)).unwrap();
            let done =
                ClientEvent::Contributed { client_id: "c1".into(), ok: true, round_trip_ms: Some(1234), bytes_up: 100 };
            s.record_clients("mnist", &[done]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.latest_version("mnist").unwrap(), Some(StoredVersion { version: 1, safetensors: b"v1".to_vec() }));
        assert_eq!(s.version("mnist", 0).unwrap().as_deref(), Some(&b"v0"[..]));
        assert_eq!(s.versions("mnist").unwrap(), vec![0, 1]);
        assert_eq!(s.next_round("mnist").unwrap(), 3);
        assert_eq!(s.optimizer_state("mnist").unwrap().as_deref(), Some(r#"{"steps":1}"#));
        let rounds = s.rounds("mnist").unwrap();
        assert_eq!(rounds, vec![record(1, Some(1), RoundOutcome::Closed), record(2, None, RoundOutcome::Abandoned)]);
        let clients = s.clients_page("mnist", None, 10).unwrap();
        assert_eq!((clients[0].rounds_completed, clients[0].last_round_trip_ms), (1, Some(1234)));
        assert_eq!(clients[0].bytes_up, 100);
        assert_eq!(s.client_tokens("mnist").unwrap(), vec![("c1".to_string(), "h".to_string())]);
    }

    #[test]
    fn clients_page_by_last_seen_and_expire() {
        let mut s = Store::in_memory().unwrap();
        s.ensure_task("t", "{}", 0).unwrap();
        let seen = |id: &str, at_ms| ClientEvent::Seen { client_id: id.into(), token_hash: "h".into(), at_ms };
        s.record_clients("t", &[seen("a", 5), seen("b", 9), seen("c", 5), seen("d", 1), seen("a", 7)]).unwrap();
        let ids = |page: &[ClientRecord]| page.iter().map(|c| c.client_id.clone()).collect::<Vec<_>>();
        let first = s.clients_page("t", None, 2).unwrap();
        assert_eq!(ids(&first), ["b", "a"]);
        let second = s.clients_page("t", Some(&ClientCursor::of(&first[1])), 2).unwrap();
        assert_eq!(ids(&second), ["c", "d"]);
        assert!(s.clients_page("t", Some(&ClientCursor::of(&second[1])), 2).unwrap().is_empty());
        assert_eq!(ClientCursor::parse(&ClientCursor::of(&second[0]).to_string()), Some(ClientCursor::of(&second[0])));
        let mut forgotten = s.forget_clients("t", 6).unwrap();
        forgotten.sort();
        assert_eq!(forgotten, ["c", "d"]);
        assert_eq!(ids(&s.clients_page("t", None, 10).unwrap()), ["b", "a"]);
    }

    #[test]
    fn retention_keeps_the_last_versions_every_nth_and_the_first() {
        let keep = Retention { last: 3, every: 5 };
        let kept: Vec<u64> = (0..=12).filter(|&v| keep.keeps(v, 12)).collect();
        assert_eq!(kept, [0, 5, 10, 11, 12]);
        let mut s = Store::in_memory().unwrap();
        s.ensure_task("t", "{}", 0).unwrap();
        s.put_initial_version("t", b"v0", 0).unwrap();
        for v in 1..=12 {
            s.commit_version("t", v, b"v", &record(v, Some(v), RoundOutcome::Closed), "{}").unwrap();
        }
        let before = s.size_bytes().unwrap();
        assert_eq!(s.prune_versions("t", &keep).unwrap(), 8);
        assert_eq!(s.versions("t").unwrap(), kept);
        assert_eq!(s.prune_versions("t", &keep).unwrap(), 0);
        assert!(s.size_bytes().unwrap() <= before);
        // The round history is kept whole.
        assert_eq!(s.rounds("t").unwrap().len(), 12);
    }

    #[test]
    fn a_failed_commit_leaves_nothing_half_written() {
        let mut s = Store::in_memory().unwrap();
        s.ensure_task("t", "{}", 0).unwrap();
        s.put_initial_version("t", b"v0", 0).unwrap();
        s.commit_version("t", 1, b"v1", &record(1, Some(1), RoundOutcome::Closed), "{}").unwrap();
        // Same round again with a new version: the round insert fails, so the version must not stay.
        let err = s.commit_version("t", 2, b"v2", &record(1, Some(2), RoundOutcome::Closed), "{}").unwrap_err();
        assert!(matches!(err, StoreError::Sql(_)), "{err}");
        assert_eq!(s.versions("t").unwrap(), vec![0, 1]);
        // And an existing version is never overwritten.
        let err = s.commit_version("t", 1, b"other", &record(3, Some(1), RoundOutcome::Closed), "{}").unwrap_err();
        assert!(matches!(err, StoreError::VersionExists { version: 1, .. }));
        assert_eq!(s.version("t", 1).unwrap().as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn task_db_resumes_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let state = OptimizerState { steps: 3, ..Default::default() };
        {
            let mut db = TaskDb::open(dir.path(), "t", "{}", 0).unwrap();
            assert_eq!(db.resume().unwrap(), None);
            db.put_initial(Arc::new(b"v0".to_vec())).unwrap();
            db.commit(1, Arc::new(b"v1".to_vec()), &record(1, Some(1), RoundOutcome::Closed), &state).unwrap();
            db.record_abandoned(&record(2, None, RoundOutcome::Abandoned)).unwrap();
        }
        let db = TaskDb::open(dir.path(), "t", "{}", 0).unwrap();
        let resume = db.resume().unwrap().unwrap();
        assert_eq!((resume.version, resume.bytes.as_slice()), (1, &b"v1"[..]));
        assert_eq!(resume.history.len(), 2);
        assert_eq!(resume.optimizer, Some(state));
        assert_eq!(db.get(0).unwrap().as_deref().map(Vec::as_slice), Some(&b"v0"[..]));
    }

    #[test]
    fn a_task_stored_under_other_settings_is_refused_naming_the_differences() {
        let dir = tempfile::tempdir().unwrap();
        let first = r#"{"model":"2nn","plan":{"lr":0.1,"epochs":1}}"#;
        drop(TaskDb::open(dir.path(), "t", first, 0).unwrap());
        // The same settings (in another key order) resume.
        assert!(TaskDb::open(dir.path(), "t", r#"{"plan":{"epochs":1,"lr":0.1},"model":"2nn"}"#, 1).is_ok());
        let err = TaskDb::open(dir.path(), "t", r#"{"model":"cnn","plan":{"lr":0.05,"epochs":1}}"#, 2).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("model: \"2nn\" → \"cnn\"") && text.contains("plan.lr: 0.1 → 0.05"), "{text}");
        // Another task name in the same folder is a new task.
        assert!(TaskDb::open(dir.path(), "t2", r#"{"model":"cnn"}"#, 3).is_ok());
    }

    #[test]
    fn a_fresh_task_starts_at_round_one_and_keeps_its_first_config() {
        let s = Store::in_memory().unwrap();
        assert_eq!(s.ensure_task("t", r#"{"a":1}"#, 0).unwrap(), r#"{"a":1}"#);
        assert_eq!(s.ensure_task("t", r#"{"a":2}"#, 0).unwrap(), r#"{"a":1}"#);
        assert_eq!(s.next_round("t").unwrap(), 1);
        assert_eq!(s.latest_version("t").unwrap(), None);
    }
}
