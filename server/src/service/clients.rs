//! Who the clients are: identities, tokens (kept only as SHA-256 hashes) and when each was last
//! seen and assigned.

use std::collections::HashMap;

use super::ServiceError;

/// A client count as connected for this long after its last request.
pub const CONNECTED_WINDOW_MS: u64 = 60_000;
/// How stale a client's stored last-seen time may get while it keeps polling.
const PERSIST_SEEN_EVERY_MS: u64 = 30_000;

pub struct Client {
    /// SHA-256 of the token, hex: the token itself is never stored, here or on disk.
    pub token_hash: String,
    pub last_seen_ms: u64,
    /// The round the client was last assigned and when, for round-trip times.
    pub assigned: Option<(u64, u64)>,
    /// When `last_seen` was last written to the store (None: not yet by this process).
    persisted_at_ms: Option<u64>,
}

/// The clients of one task, in memory; the store keeps them durable.
#[derive(Default)]
pub struct Registry {
    clients: HashMap<String, Client>,
}

impl Registry {
    /// Known clients from the store: their tokens outlive a restart; none counts as connected
    /// until it calls.
    pub fn from_stored(tokens: Vec<(String, String)>) -> Self {
        let clients = tokens
            .into_iter()
            .map(|(id, token_hash)| (id, Client { token_hash, last_seen_ms: 0, assigned: None, persisted_at_ms: None }))
            .collect();
        Self { clients }
    }

    /// A fresh identity: `(client_id, token)`.
    pub fn register(&mut self, now_ms: u64) -> Result<(String, String), ServiceError> {
        let (id, token) = (new_id(8)?, new_id(16)?);
        let client =
            Client { token_hash: token_hash(&token), last_seen_ms: now_ms, assigned: None, persisted_at_ms: None };
        self.clients.insert(id.clone(), client);
        Ok((id, token))
    }

    /// Checks that `token` is `client`'s: missing credentials or an unknown client → 401, a
    /// token that is not this client's → 403.
    pub fn authenticate(&self, client: &str, token: Option<&str>) -> Result<(), ServiceError> {
        let Some(token) = token else {
            return Err(ServiceError::Unauthorized("missing `Authorization: Bearer <token>`".into()));
        };
        let Some(known) = self.clients.get(client) else {
            return Err(ServiceError::Unauthorized(format!(
                "unknown client {client:?}: check in without a client_id to get a new identity"
            )));
        };
        if !same_token(&token_hash(token), &known.token_hash) {
            return Err(ServiceError::Forbidden("the token does not belong to this client".into()));
        }
        Ok(())
    }

    /// The token hash to write to the store, when the client is new or its stored last-seen is
    /// stale: a new client is written at once (its token must survive a restart); after that a
    /// polling client is written at most every 30 s, not with an fsync per check-in.
    pub fn due_for_store(&mut self, client: &str, now_ms: u64) -> Option<String> {
        let c = self.clients.get_mut(client)?;
        if c.persisted_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < PERSIST_SEEN_EVERY_MS) {
            return None;
        }
        c.persisted_at_ms = Some(now_ms);
        Some(c.token_hash.clone())
    }

    /// Notes a request from `client`; with `assigned_round`, when it was (first) assigned it.
    pub fn seen(&mut self, client: &str, now_ms: u64, assigned_round: Option<u64>) {
        if let Some(c) = self.clients.get_mut(client) {
            c.last_seen_ms = now_ms;
            if let Some(round) = assigned_round {
                // A repeated check-in for the same round keeps the first assignment time.
                if c.assigned.is_none_or(|(r, _)| r != round) {
                    c.assigned = Some((round, now_ms));
                }
            }
        }
    }

    /// Notes an upload: the time since the client's assignment, if it had one.
    pub fn uploaded(&mut self, client: &str, now_ms: u64) -> Option<u64> {
        let c = self.clients.get_mut(client)?;
        c.last_seen_ms = now_ms;
        c.assigned.take().map(|(_, at)| now_ms.saturating_sub(at))
    }

    /// Drops the clients the store has just forgotten (`ids`) unless this process has seen
    /// them since `seen_since_ms`; returns how many it dropped.
    pub fn forget(&mut self, ids: &[String], seen_since_ms: u64) -> usize {
        let before = self.clients.len();
        for id in ids {
            let recent =
                self.clients.get(id).is_some_and(|c| c.persisted_at_ms.is_some() && c.last_seen_ms >= seen_since_ms);
            if !recent {
                self.clients.remove(id);
            }
        }
        before - self.clients.len()
    }

    pub fn connected(&self, now_ms: u64) -> usize {
        self.clients.values().filter(|c| now_ms.saturating_sub(c.last_seen_ms) <= CONNECTED_WINDOW_MS).count()
    }
}

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
pub(super) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_id(bytes: usize) -> Result<String, ServiceError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| ServiceError::Internal(format!("no system randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_and_unknown_clients_are_told_to_start_over() {
        let mut r = Registry::default();
        let (id, token) = r.register(0).unwrap();
        assert!(r.authenticate(&id, Some(&token)).is_ok());
        assert!(matches!(r.authenticate(&id, Some("nope")), Err(ServiceError::Forbidden(_))));
        assert!(matches!(r.authenticate(&id, None), Err(ServiceError::Unauthorized(_))));
        assert!(matches!(r.authenticate("other", Some(&token)), Err(ServiceError::Unauthorized(_))));
        assert_eq!(r.due_for_store(&id, 0), Some(token_hash(&token)));
        assert_eq!(r.due_for_store(&id, 10_000), None);
        assert!(r.due_for_store(&id, 40_000).is_some());
    }
}
