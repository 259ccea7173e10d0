//! Batch records on any [`BlobStore`] (`batches/<id>/batch.json`): creating one, reading
//! its runs' real statuses, and releasing held runs to the queue under the batch's
//! `max_in_flight`. Every write of batch.json is conditional on the version read, so
//! runners, the submit function and resubmissions can release at once without ever
//! queueing more than `max_in_flight` of a batch: the slot count lives in the store, not
//! in any process.

use crate::runs::{self, to_json, QueueSend};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use specrun_core::batch::{batch_json, BatchId, BatchRecord};
use specrun_core::keys::RunId;
use specrun_core::message::RunMessage;
use specrun_core::ports::{BlobStore, Queue, StoreError};
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use std::collections::HashMap;

const JSON: &str = "application/json";

/// How many of a batch's run records are read at once.
const READS_AT_ONCE: usize = 8;

/// How many times a refresh reads again after another writer changed batch.json first.
const CONTENDED_TRIES: usize = 50;

fn hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A new batch id (from a UUIDv7's digits: time-ordered).
pub fn new_batch_id() -> BatchId {
    BatchId::from_hex(&uuid::Uuid::now_v7().simple().to_string()).unwrap_or_else(|| unreachable!())
}

/// The batch a client's `batch_key` names: the same key, the same batch.
pub fn batch_id_for_key(batch_key: &str) -> BatchId {
    BatchId::from_hex(&hex(format!("batch_key:{batch_key}").as_bytes()))
        .unwrap_or_else(|| unreachable!())
}

/// The idempotency key of the batch's run for `repository` (its normalised form): a
/// resubmission finds the run it made.
pub fn run_idempotency_key(batch: &BatchId, repository: &str) -> String {
    format!("batch:{batch}:{}", &hex(repository.as_bytes())[..32])
}

/// SHA-256 of a batch request's canonical form.
pub fn request_sha256(canonical: &[u8]) -> String {
    hex(canonical)
}

/// Writes a new batch.json; `PreconditionFailed` if the batch exists.
pub async fn create(store: &dyn BlobStore, record: &BatchRecord) -> Result<(), StoreError> {
    store
        .put_new(&batch_json(&record.batch_id), to_json(record), JSON)
        .await
}

/// batch.json and its version; `None` when there is no such batch.
pub async fn load(
    store: &dyn BlobStore,
    id: &BatchId,
) -> Result<Option<(BatchRecord, String)>, StoreError> {
    runs::load_json_versioned(store, &batch_json(id)).await
}

/// Each run's status and attempt as run.json has them now, read a few at a time.
pub async fn read_runs(
    store: &dyn BlobStore,
    record: &BatchRecord,
) -> Result<HashMap<String, (RunStatus, u32)>, StoreError> {
    let ids: Vec<RunId> = record
        .runs
        .iter()
        .filter_map(|run| RunId::parse(&run.run_id).ok())
        .collect();
    let mut loaded = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(READS_AT_ONCE) {
        let reads: Vec<BoxFuture<'_, Result<Option<RunRecord>, StoreError>>> = chunk
            .iter()
            .map(|id| Box::pin(runs::load_run(store, id)) as BoxFuture<'_, _>)
            .collect();
        loaded.extend(futures_util::future::join_all(reads).await);
    }
    let mut read = HashMap::new();
    for entry in loaded {
        if let Some(run) = entry? {
            read.insert(run.run_id, (run.status, run.attempt));
        }
    }
    Ok(read)
}

/// The batch as its runs stand now (read from each run.json), without writing anything:
/// what `GET /batches/{id}` answers, right even when no runner is alive to update
/// batch.json.
pub async fn current(
    store: &dyn BlobStore,
    id: &BatchId,
) -> Result<Option<BatchRecord>, StoreError> {
    let Some((mut record, _)) = load(store, id).await? else {
        return Ok(None);
    };
    let read = read_runs(store, &record).await?;
    record.observe(&read, runs::now());
    Ok(Some(record))
}

/// Applies `change` to batch.json and stores it conditionally, reading again while
/// another writer gets there first. Returns the stored record and what `change` returned.
pub async fn update<T>(
    store: &dyn BlobStore,
    id: &BatchId,
    mut change: impl FnMut(&mut BatchRecord, &HashMap<String, (RunStatus, u32)>) -> T,
) -> Result<Option<(BatchRecord, T)>, StoreError> {
    for _ in 0..CONTENDED_TRIES {
        let Some((mut record, version)) = load(store, id).await? else {
            return Ok(None);
        };
        let read = read_runs(store, &record).await?;
        record.observe(&read, runs::now());
        let outcome = change(&mut record, &read);
        match store
            .put_if_version(&batch_json(id), to_json(&record), JSON, &version)
            .await
        {
            Ok(_) => return Ok(Some((record, outcome))),
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::PreconditionFailed(format!(
        "{}: changed by others {CONTENDED_TRIES} times in a row",
        batch_json(id)
    )))
}

/// Brings batch.json's statuses and counts up to date and releases the held runs that
/// fit under `max_in_flight`, then sends their messages. Released runs still queued whose
/// message is not known to be sent (a releaser died between its write and its send) are
/// sent again: a duplicate message is harmless, a runner works a run only under its lease.
/// Called when a run of the batch ends, when the batch is submitted or resubmitted.
pub async fn refresh(
    store: &dyn BlobStore,
    queue: &dyn Queue,
    id: &BatchId,
) -> Result<Option<BatchRecord>, StoreError> {
    let Some((record, _)) = update(store, id, |record, _| record.release()).await? else {
        return Ok(None);
    };
    for run in record
        .runs
        .iter()
        .filter(|r| r.released && r.status == Some(RunStatus::Queued))
    {
        let Ok(run_id) = RunId::parse(&run.run_id) else {
            continue;
        };
        if runs::queue_send(store, &run_id).await? != Some(QueueSend::Pending) {
            continue;
        }
        let Some(request) = runs::load_request(store, &run_id).await? else {
            continue;
        };
        let message = RunMessage::new(run_id.as_str(), request);
        queue.send(message.to_json().into()).await?;
        runs::mark_queue_send(store, &run_id, QueueSend::Sent).await?;
        tracing::info!(batch_id = %id, %run_id, "released a run of the batch");
    }
    Ok(Some(record))
}
