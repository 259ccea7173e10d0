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

/// How long a released run's message may stay not known to be sent before another
/// refresh sends it: the releaser that marked it is taken to have died before sending.
const UNSENT_GRACE: time::Duration = time::Duration::seconds(60);

/// Brings batch.json's statuses and counts up to date and releases the held runs that
/// fit under `max_in_flight`, then sends their messages. A released run still queued
/// whose message has not been known sent for [`UNSENT_GRACE`] (its releaser died between
/// its write and its send) is sent again: a duplicate message is harmless, a runner works
/// a run only under its lease. Called when a run of the batch ends, and when the batch is
/// submitted or resubmitted.
pub async fn refresh(
    store: &dyn BlobStore,
    queue: &dyn Queue,
    id: &BatchId,
) -> Result<Option<BatchRecord>, StoreError> {
    let Some((record, released)) = update(store, id, |record, _| record.release()).await? else {
        return Ok(None);
    };
    let stale = runs::now() - UNSENT_GRACE;
    for (index, run) in record.runs.iter().enumerate() {
        if !run.released || run.status != Some(RunStatus::Queued) {
            continue;
        }
        let Ok(run_id) = RunId::parse(&run.run_id) else {
            continue;
        };
        let send = match runs::queue_send_since(store, &run_id).await? {
            Some((QueueSend::Pending, since)) => released.contains(&index) || since < stale,
            _ => false,
        };
        if !send {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FsBlobStore, FsQueue};
    use specrun_core::batch::BatchRun;
    use specrun_core::request::{Publish, RunRequest};
    use specrun_core::state::AgentConfiguration;
    use std::sync::Arc;
    use std::time::Duration;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A batch of `n` held runs, each recorded as the submit function records them.
    async fn held_batch(store: &FsBlobStore, n: usize, max: usize) -> Result<BatchId, StoreError> {
        let mut listed = Vec::new();
        for i in 0..n {
            let id = runs::new_run_id();
            let repository = format!("octo/r{i}");
            let request = RunRequest {
                repository: repository.clone(),
                specify_text: "x".into(),
                ..RunRequest::default()
            };
            runs::pin_request(store, &id, &request).await?;
            runs::mark_queue_send(store, &id, QueueSend::Pending).await?;
            let record = RunRecord::queued(
                id.as_str(),
                &repository,
                Publish::Pr,
                AgentConfiguration::default(),
                runs::now(),
            );
            runs::create_run(store, &record).await?;
            listed.push(BatchRun {
                repository,
                run_id: id.to_string(),
                released: false,
                status: Some(RunStatus::Queued),
                attempt: 0,
            });
        }
        let record = BatchRecord::new(new_batch_id(), String::new(), max, listed, runs::now());
        create(store, &record).await?;
        Ok(record.batch_id)
    }

    async fn sent(queue: &FsQueue) -> Result<usize, StoreError> {
        Ok(queue
            .receive(100, Duration::ZERO, Duration::from_secs(60))
            .await?
            .len())
    }

    #[tokio::test]
    async fn refreshes_at_once_never_release_more_than_max_in_flight() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(FsBlobStore::new(dir.path().join("state")));
        let queue = Arc::new(FsQueue::new(dir.path().join("queue")));
        let id = held_batch(&store, 6, 2).await?;
        let mut refreshes = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, queue, id) = (store.clone(), queue.clone(), id.clone());
            refreshes.spawn(async move { refresh(store.as_ref(), queue.as_ref(), &id).await });
        }
        while let Some(done) = refreshes.join_next().await {
            done??;
        }
        assert_eq!(sent(&queue).await?, 2, "two slots, two messages");
        let record = current(store.as_ref(), &id).await?.ok_or("no batch")?;
        assert_eq!(record.counts.held, 4);

        // One run ends: one slot frees, one more run is released, and only one.
        let first = RunId::parse(&record.runs[0].run_id)?;
        let (mut run, version) = runs::load_run_versioned(store.as_ref(), &first)
            .await?
            .ok_or("no run")?;
        run.start("runner-1", runs::now())?;
        run.finish(RunStatus::Succeeded, None, runs::now())?;
        runs::save_run_fenced(store.as_ref(), &run, &version).await?;
        refresh(store.as_ref(), queue.as_ref(), &id).await?;
        refresh(store.as_ref(), queue.as_ref(), &id).await?;
        assert_eq!(sent(&queue).await?, 1);
        let stored = load(store.as_ref(), &id).await?.ok_or("no batch")?.0;
        assert_eq!((stored.counts.succeeded, stored.counts.held), (1, 3));
        Ok(())
    }
}
