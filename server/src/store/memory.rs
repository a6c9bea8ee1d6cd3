//! A store that keeps everything in memory (lost on restart).

use std::collections::BTreeMap;
use std::sync::Arc;

use webfl_shared::protocol::{ClientRecord, RoundRecord};
use webfl_shared::strategy::OptimizerState;

use super::{ClientCursor, ClientEvent, Resume, Retention, StoreError, TaskStore};

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

    fn record_clients(&mut self, events: &[ClientEvent]) -> Result<(), StoreError> {
        for event in events {
            match event {
                ClientEvent::Seen { client_id, token_hash, at_ms } => {
                    let entry = self.clients.entry(client_id.clone()).or_insert_with(|| {
                        let record = ClientRecord {
                            client_id: client_id.clone(),
                            first_seen_ms: *at_ms,
                            last_seen_ms: *at_ms,
                            rounds_completed: 0,
                            failures: 0,
                            last_round_trip_ms: None,
                            bytes_up: 0,
                        };
                        (token_hash.clone(), record)
                    });
                    entry.1.last_seen_ms = *at_ms;
                }
                ClientEvent::Contributed { client_id, ok, round_trip_ms, bytes_up } => {
                    if let Some((_, c)) = self.clients.get_mut(client_id) {
                        if *ok {
                            c.rounds_completed += 1;
                            c.bytes_up += bytes_up;
                        } else {
                            c.failures += 1;
                        }
                        c.last_round_trip_ms = round_trip_ms.or(c.last_round_trip_ms);
                    }
                }
            }
        }
        Ok(())
    }

    fn clients_page(&self, after: Option<&ClientCursor>, limit: usize) -> Result<Vec<ClientRecord>, StoreError> {
        let mut all: Vec<ClientRecord> = self
            .clients
            .values()
            .map(|(_, c)| c)
            .filter(|c| after.is_none_or(|cursor| cursor.precedes(c)))
            .cloned()
            .collect();
        all.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then_with(|| a.client_id.cmp(&b.client_id)));
        all.truncate(limit);
        Ok(all)
    }

    fn forget_clients(&mut self, unseen_since_ms: u64) -> Result<Vec<String>, StoreError> {
        let gone: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, (_, c))| c.last_seen_ms < unseen_since_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.clients.remove(id);
        }
        Ok(gone)
    }

    fn prune_versions(&mut self, keep: &Retention) -> Result<u64, StoreError> {
        let Some(&latest) = self.versions.keys().next_back() else { return Ok(0) };
        let before = self.versions.len();
        self.versions.retain(|&v, _| keep.keeps(v, latest));
        Ok((before - self.versions.len()) as u64)
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.versions.values().map(|b| b.len() as u64).sum())
    }

    fn client_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.clients.iter().map(|(id, (hash, _))| (id.clone(), hash.clone())).collect())
    }
}
