//! A settled round's commit sequence: evaluate the new version (on a blocking thread, lock
//! released), store it durably together with its round record and the server optimizer's state,
//! and only then announce it to clients. If storing fails, the coordinator rolls back the model
//! and the optimizer state, and the round is recorded as `store_failed`.

use std::sync::Arc;
use std::time::Instant;

use webfl_shared::coordinator::{PendingCommit, Settled};
use webfl_shared::protocol::{RoundOutcome, RoundRecord};

use super::Service;
use crate::eval;
use crate::store::unix_ms;

/// Runs the sequence for `settled`; returns whether a new version was committed.
pub(super) async fn settle(service: &Service, settled: Settled) -> bool {
    match settled {
        Settled::Abandoned { round, reports, selected, opened_at_ms, why, secagg } => {
            let stages = secagg.as_ref().map(|s| s.describe());
            tracing::warn!(round, reports, selected, %why, secure_aggregation = stages, "round abandoned");
            let mut record = RoundRecord {
                round,
                outcome: RoundOutcome::Abandoned,
                version: None,
                selected: selected as u64,
                reports: reports as u64,
                opened_at_ms: service.wall_ms_of(opened_at_ms),
                closed_at_ms: unix_ms(),
                test_loss: None,
                test_accuracy: None,
                bytes_up: 0,
                bytes_down: 0,
                clipped: 0,
                update_norm: None,
                secagg,
            };
            {
                let mut state = service.lock();
                state.metrics.rounds_abandoned += 1;
                record.bytes_up = std::mem::take(&mut state.metrics.bytes_up_this_round);
                record.bytes_down = std::mem::take(&mut state.metrics.bytes_down_this_round);
            }
            let stored = record.clone();
            match service.on_store(move |store| store.record_abandoned(&stored)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(round, error = %e, "recording an abandoned round failed"),
                Err(e) => tracing::warn!(round, error = %e, "recording an abandoned round failed"),
            }
            service.lock().history.push(record);
            false
        }
        Settled::Closed(pending) => commit_version(service, pending).await,
    }
}

async fn commit_version(service: &Service, pending: Box<PendingCommit>) -> bool {
    let task = service.task.clone();
    let eval_started = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let eval = eval::evaluate(&task.spec, &pending.params, &task.test);
        let bytes = pending.params.to_safetensors();
        (pending, eval, bytes)
    })
    .await;
    let (pending, eval, bytes) = match work {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "evaluating a new version panicked; round discarded");
            if let Err(e) = service.lock().coordinator.abort_commit() {
                tracing::error!(error = %e, "undoing the server optimizer step failed");
            }
            return false;
        }
    };
    let (test_loss, test_accuracy) = match &eval {
        Ok(s) => (Some(s.loss), Some(s.accuracy)),
        Err(e) => {
            tracing::warn!(error = %e, "evaluating the new version failed");
            (None, None)
        }
    };
    let PendingCommit {
        round, version, reports, selected, closed_by_deadline, opened_at_ms, ref summary, secagg, ..
    } = *pending;
    if let Some(stages) = &secagg {
        tracing::info!(round, secure_aggregation = stages.describe(), "secure round unmasked");
    }
    let mut record = RoundRecord {
        round,
        outcome: if closed_by_deadline { RoundOutcome::ClosedByDeadline } else { RoundOutcome::Closed },
        version: Some(version),
        selected: selected as u64,
        reports: reports as u64,
        opened_at_ms: service.wall_ms_of(opened_at_ms),
        closed_at_ms: unix_ms(),
        test_loss,
        test_accuracy,
        bytes_up: 0,
        bytes_down: 0,
        clipped: summary.clipped as u64,
        update_norm: Some(summary.delta_norm),
        secagg,
    };
    let eval_ms = eval_started.elapsed().as_millis() as u64;
    let store_started = Instant::now();
    let optimizer = {
        let mut state = service.lock();
        record.bytes_up = std::mem::take(&mut state.metrics.bytes_up_this_round);
        record.bytes_down = std::mem::take(&mut state.metrics.bytes_down_this_round);
        state.metrics.bytes_up_total += record.bytes_up;
        // The optimizer state after this round's step is part of the commit; the coordinator's
        // strategy has already taken that step when it produced the pending version. While it
        // is committing, the coordinator hands out nothing, so the state lock can be let go.
        state.coordinator.optimizer_state()
    };
    // Durable before announced: the store's commit returns once the transaction is on disk.
    let to_store = record.clone();
    let stored = match bytes {
        Ok(b) => {
            let b = Arc::new(b);
            let kept = b.clone();
            service
                .on_store(move |store| store.commit(version, kept, &to_store, &optimizer))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from))
                .map(|()| b)
        }
        Err(e) => Err(anyhow::Error::from(e)),
    };
    let committed = {
        let mut state = service.lock();
        let committed =
            match stored.and_then(|b| state.coordinator.commit(*pending).map(|()| b).map_err(anyhow::Error::from)) {
                Ok(bytes) => {
                    state.current_model = bytes;
                    let store_ms = store_started.elapsed().as_millis() as u64;
                    tracing::info!(
                        round,
                        version,
                        reports,
                        selected,
                        ?test_accuracy,
                        eval_ms,
                        store_ms,
                        "new model version"
                    );
                    true
                }
                Err(e) => {
                    tracing::error!(round, version, error = %e, "storing the new version failed; round discarded");
                    if let Err(e) = state.coordinator.abort_commit() {
                        tracing::error!(error = %e, "undoing the server optimizer step failed");
                    }
                    record.version = None;
                    record.update_norm = None;
                    record.outcome = RoundOutcome::StoreFailed;
                    false
                }
            };
        state.history.push(record);
        committed
    };
    if committed {
        prune(service).await;
    }
    committed
}

/// Deletes the versions the retention policy no longer keeps, and measures the store.
async fn prune(service: &Service) {
    let keep = service.task.retention;
    let pruned = service
        .on_store(move |store| {
            let deleted = store.prune_versions(&keep)?;
            Ok::<_, crate::store::StoreError>((deleted, store.size_bytes()?))
        })
        .await;
    match pruned {
        Ok(Ok((deleted, bytes))) => {
            if deleted > 0 {
                tracing::debug!(deleted, store_bytes = bytes, "pruned model versions");
            }
            service.lock().store_bytes = bytes;
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "pruning old model versions failed"),
        Err(e) => tracing::warn!(error = %e, "pruning old model versions failed"),
    }
}
