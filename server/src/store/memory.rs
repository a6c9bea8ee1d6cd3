//! A store that keeps everything in memory (lost on restart).

use std::collections::BTreeMap;
use std::sync::Arc;

use webfl_shared::protocol::{ClientRecord, RoundRecord};
use webfl_shared::strategy::OptimizerState;

use super::{Resume, StoreError, TaskStore};

/// Keeps everything in memory (lost on restart); for tests and throwaway servers.
#[derive(Default)]
pub struct MemoryStore {
    versions: BTreeMap<u64, Arc<Vec<u8>>>,
    history: Vec<RoundRecord>,
    optimizer: Option<OptimizerState>,
    clients: BTreeMap<String, (String, ClientRecord)>,
}

impl TaskStore for MemoryStore {
    fn put_initial(&mut self, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        self.versions.insert(0, bytes);
        Ok(())
    }

    fn get(&self, version: u64) -> Result<Option<Arc<Vec<u8>>>, StoreError> {
        Ok(self.versions.get(&version).cloned())
    }

    fn commit(
        &mut self,
        version: u64,
        bytes: Arc<Vec<u8>>,
        record: &RoundRecord,
        optimizer: &OptimizerState,
    ) -> Result<(), StoreError> {
        self.versions.insert(version, bytes);
        self.history.push(record.clone());
        self.optimizer = Some(optimizer.clone());
        Ok(())
    }

    fn record_abandoned(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        self.history.push(record.clone());
        Ok(())
    }

    fn resume(&self) -> Result<Option<Resume>, StoreError> {
        Ok(self.versions.iter().next_back().map(|(&version, bytes)| Resume {
            version,
            bytes: bytes.to_vec(),
            history: self.history.clone(),
            optimizer: self.optimizer.clone(),
        }))
    }

    fn touch_client(&mut self, client_id: &str, token_hash: &str, now_ms: u64) -> Result<(), StoreError> {
        let entry = self.clients.entry(client_id.to_string()).or_insert_with(|| {
            let record = ClientRecord {
                client_id: client_id.to_string(),
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                rounds_completed: 0,
                failures: 0,
                last_round_trip_ms: None,
                bytes_up: 0,
            };
            (token_hash.to_string(), record)
        });
        entry.1.last_seen_ms = now_ms;
        Ok(())
    }

    fn record_contribution(
        &mut self,
        client_id: &str,
        ok: bool,
        round_trip_ms: Option<u64>,
        bytes_up: u64,
    ) -> Result<(), StoreError> {
        if let Some((_, c)) = self.clients.get_mut(client_id) {
            if ok {
                c.rounds_completed += 1;
            } else {
                c.failures += 1;
            }
            c.last_round_trip_ms = round_trip_ms.or(c.last_round_trip_ms);
            if ok {
                c.bytes_up += bytes_up;
            }
        }
        Ok(())
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let mut all: Vec<ClientRecord> = self.clients.values().map(|(_, c)| c.clone()).collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.last_seen_ms));
        Ok(all)
    }

    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.clients.iter().map(|(id, (hash, _))| (id.clone(), hash.clone())).collect())
    }
}
