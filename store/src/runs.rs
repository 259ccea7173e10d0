//! Run records on any [`BlobStore`]: creating a run (run.json plus its listing index
//! entry), pinning the request it executes, loading and saving it, listing runs newest
//! first, and claiming idempotency keys. The submit function, the status function and the
//! runner all go through here.

use specrun_core::keys::{self, RunId};
use specrun_core::ports::{BlobStore, Bytes, StoreError};
use specrun_core::request::RunRequest;
use specrun_core::state::RunRecord;

const JSON: &str = "application/json";

/// Serialises a state object the way every client reads it: pretty JSON, newline-ended.
pub fn to_json<T: serde::Serialize>(value: &T) -> Bytes {
    // The state types serialise infallibly: plain structs with string keys.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes.into()
}

fn millis(record: &RunRecord) -> u64 {
    u64::try_from(record.created_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The record's run id, which every key of the run is built from.
/// A new run id: a UUIDv7, time-ordered, so listings sort by creation. The one place run
/// ids are made (the submit function, `specrun run`).
pub fn new_run_id() -> RunId {
    // A UUIDv7's text form is always a valid run id.
    RunId::parse(&uuid::Uuid::now_v7().to_string()).unwrap_or_else(|_| unreachable!())
}

/// The time now, for records: the one clock of the runner and the functions.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub fn run_id(record: &RunRecord) -> Result<RunId, StoreError> {
    RunId::parse(&record.run_id).map_err(|e| StoreError::InvalidKey(e.to_string()))
}

/// Writes a new run; fails with `PreconditionFailed` if the run id exists already.
pub async fn create_run(store: &dyn BlobStore, record: &RunRecord) -> Result<(), StoreError> {
    let id = run_id(record)?;
    store
        .put_new(&keys::run_json(&id), to_json(record), JSON)
        .await?;
    store
        .put(&keys::run_index(&id, millis(record)), Bytes::new(), JSON)
        .await
}

/// Replaces run.json with `record`.
pub async fn save_run(store: &dyn BlobStore, record: &RunRecord) -> Result<(), StoreError> {
    store
        .put(&keys::run_json(&run_id(record)?), to_json(record), JSON)
        .await
}

/// Replaces run.json with `record` only if it is still at `version` (what this writer
/// last read or wrote), and returns the new version. `PreconditionFailed` means someone
/// else wrote the run in between (a runner that took it over): the caller must stop
/// writing about it.
pub async fn save_run_fenced(
    store: &dyn BlobStore,
    record: &RunRecord,
    version: &str,
) -> Result<String, StoreError> {
    let key = keys::run_json(&run_id(record)?);
    let body = to_json(record);
    store
        .put_if_version(&key, body.clone(), JSON, version)
        .await?;
    let (now, new_version) = store.get_versioned(&key).await?;
    if now == body {
        Ok(new_version)
    } else {
        Err(StoreError::PreconditionFailed(format!(
            "{key} was written by someone else right after this write"
        )))
    }
}

/// The run and its version (for [`save_run_fenced`]), or `None` when there is none.
pub async fn load_run_versioned(
    store: &dyn BlobStore,
    id: &RunId,
) -> Result<Option<(RunRecord, String)>, StoreError> {
    load_json_versioned(store, &keys::run_json(id)).await
}

/// A state object and its version, or `None` when there is none at `key`.
pub async fn load_json_versioned<T: serde::de::DeserializeOwned>(
    store: &dyn BlobStore,
    key: &str,
) -> Result<Option<(T, String)>, StoreError> {
    match store.get_versioned(key).await {
        Ok((bytes, version)) => serde_json::from_slice(&bytes)
            .map(|record| Some((record, version)))
            .map_err(|e| StoreError::backend(key, e)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The run, or `None` when there is none with that id.
pub async fn load_run(store: &dyn BlobStore, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
    load_json(store, &keys::run_json(id)).await
}

/// A state object, or `None` when there is none at `key`.
pub(crate) async fn load_json<T: serde::de::DeserializeOwned>(
    store: &dyn BlobStore,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::backend(key, e)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How a request compares with the one its run was created for.
#[derive(Debug, Clone, PartialEq)]
pub enum Pinned {
    /// The run executes this request: it was stored just now, or an equal one was before.
    Same,
    /// The run was created for this other request.
    Different(Box<RunRequest>),
    /// The run was recorded before requests were stored beside runs (run.json, no
    /// request.json): only what run.json records can be compared.
    Unrecorded(Box<RunRecord>),
}

/// The request stored for a run, if one is.
pub async fn load_request(
    store: &dyn BlobStore,
    id: &RunId,
) -> Result<Option<RunRequest>, StoreError> {
    load_json(store, &keys::request(id)).await
}

/// Stores `request` (its canonical wire form) as the one run `id` executes, unless the run
/// already has one; says how the two compare. Written with a conditional write before
/// run.json, so whoever creates a run decides its request once, and a later queue message
/// or repeated submission cannot change what the run does.
pub async fn pin_request(
    store: &dyn BlobStore,
    id: &RunId,
    request: &RunRequest,
) -> Result<Pinned, StoreError> {
    let compare = |stored: RunRequest| {
        if stored == *request {
            Pinned::Same
        } else {
            Pinned::Different(Box::new(stored))
        }
    };
    if let Some(stored) = load_request(store, id).await? {
        return Ok(compare(stored));
    }
    if let Some(record) = load_run(store, id).await? {
        return Ok(Pinned::Unrecorded(Box::new(record)));
    }
    let key = keys::request(id);
    match store.put_new(&key, to_json(request), JSON).await {
        Ok(()) => Ok(Pinned::Same),
        // Another writer pinned it in the meantime.
        Err(StoreError::PreconditionFailed(_)) => match load_request(store, id).await? {
            Some(stored) => Ok(compare(stored)),
            None => Err(StoreError::backend(
                &key,
                "the conditional write failed but nothing is stored",
            )),
        },
        Err(e) => Err(e),
    }
}

/// Whether a run's queue message is known to have been sent. Kept beside run.json
/// (`runs/<id>/queue.json`) for runs submitted with an idempotency key, so that a retry
/// of a submission whose send failed, or whose answer was lost, sends it again. A run
/// without the object was queued as runs always were: known sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueSend {
    /// Not known to be on the queue: a send is to come, failed, or its answer was lost.
    Pending,
    /// The queue acknowledged the message.
    Sent,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct QueueSendRecord {
    schema_version: u32,
    state: QueueSend,
    #[serde(with = "time::serde::rfc3339")]
    at: time::OffsetDateTime,
}

fn queue_send_key(id: &RunId) -> String {
    format!("{}queue.json", keys::run_prefix(id))
}

/// Records what is known about run `id`'s queue message.
pub async fn mark_queue_send(
    store: &dyn BlobStore,
    id: &RunId,
    state: QueueSend,
) -> Result<(), StoreError> {
    let record = QueueSendRecord {
        schema_version: 1,
        state,
        at: now(),
    };
    store.put(&queue_send_key(id), to_json(&record), JSON).await
}

/// What is known about run `id`'s queue message; `None` for a run that keeps no record
/// (queued without an idempotency key, or before this record existed).
pub async fn queue_send(
    store: &dyn BlobStore,
    id: &RunId,
) -> Result<Option<QueueSend>, StoreError> {
    Ok(queue_send_since(store, id).await?.map(|(state, _)| state))
}

/// [`queue_send`] with when it was recorded.
pub async fn queue_send_since(
    store: &dyn BlobStore,
    id: &RunId,
) -> Result<Option<(QueueSend, time::OffsetDateTime)>, StoreError> {
    let record: Option<QueueSendRecord> = load_json(store, &queue_send_key(id)).await?;
    Ok(record.map(|r| (r.state, r.at)))
}

/// Run ids, newest first, `limit` at a time; pass the returned cursor to continue. The
/// cursor must be one this function returned (an index key); anything else is refused
/// before the store sees it.
pub async fn list_runs(
    store: &dyn BlobStore,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<RunId>, Option<String>), StoreError> {
    if let Some(cursor) = cursor.filter(|c| !keys::is_run_index(c)) {
        return Err(StoreError::InvalidKey(format!(
            "{cursor:?} is not a listing cursor"
        )));
    }
    let page = store.list(keys::RUN_INDEX_PREFIX, cursor, limit).await?;
    let ids = page
        .keys
        .iter()
        .filter_map(|k| keys::run_from_index(k))
        .collect();
    Ok((ids, page.next))
}

/// Claims `key_sha256` for `run`. Returns the run that claimed it first, if another did.
pub async fn claim_idempotency(
    store: &dyn BlobStore,
    key_sha256: &str,
    run: &RunId,
) -> Result<Option<RunId>, StoreError> {
    let key = keys::idempotency(key_sha256);
    let claim = serde_json::json!({ "run_id": run.as_str() });
    match store.put_new(&key, to_json(&claim), JSON).await {
        Ok(()) => Ok(None),
        Err(StoreError::PreconditionFailed(_)) => {
            let bytes = store.get(&key).await?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::backend(&key, e))?;
            let existing = value["run_id"].as_str().unwrap_or_default();
            RunId::parse(existing)
                .map(Some)
                .map_err(|e| StoreError::backend(&key, e))
        }
        Err(e) => Err(e),
    }
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The run had not started: it is now `cancelled`.
    BeforeStart,
    /// The run is in progress: its runner stops it within seconds.
    Requested,
    /// The run had already ended with this status.
    AlreadyFinished(specrun_core::RunStatus),
}

/// Cancels a run: a queued run is marked cancelled at once; a running one gets a cancel
/// marker its runner acts on. `None` when there is no such run.
pub async fn cancel_run(
    store: &dyn BlobStore,
    id: &RunId,
    by: &str,
) -> Result<Option<Cancelled>, StoreError> {
    let Some(mut record) = load_run(store, id).await? else {
        return Ok(None);
    };
    if record.status.is_final() {
        return Ok(Some(Cancelled::AlreadyFinished(record.status)));
    }
    let now = now();
    let marker = serde_json::json!({
        "requested_by": by,
        "requested_at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    });
    store.put(&keys::cancel(id), to_json(&marker), JSON).await?;
    if record.status == specrun_core::RunStatus::Queued {
        let reason = Some(format!("cancelled by {by} before it started"));
        if record
            .finish(specrun_core::RunStatus::Cancelled, reason, now)
            .is_ok()
        {
            record.skip_pending("skipped: the run was cancelled", &[], now);
            save_run(store, &record).await?;
        }
        return Ok(Some(Cancelled::BeforeStart));
    }
    Ok(Some(Cancelled::Requested))
}

/// Whether a stored cancel marker asks to stop the run: a retry leaves one that says the
/// cancel was for an earlier attempt (`"cleared": true`), as the store cannot delete.
pub fn cancel_requested(marker: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(marker)
        .map(|v| v.get("cleared") != Some(&serde_json::Value::Bool(true)))
        .unwrap_or(true)
}

/// What a retry request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// The run is queued again for a new attempt (its message still to be sent).
    Queued(Box<RunRecord>),
    /// The run cannot be retried in this status.
    Refused(specrun_core::RunStatus),
}

/// What answering a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// The answers are recorded and the run queued again (its message still to be sent).
    Queued(Box<RunRecord>),
    /// The run is not waiting for answers: it is in this status.
    Refused(specrun_core::RunStatus),
    /// The answers do not fit the run's questions: which one, and why.
    Invalid { field: String, reason: String },
}

/// Records answers to a run's saved clarification questions
/// (`artifacts/clarifications.json`) and queues it again (`RunRecord::answer`),
/// conditional on the version read. `None` when there is no such run.
pub async fn answer_run(
    store: &dyn BlobStore,
    id: &RunId,
    answers: Vec<specrun_core::clarify::Answer>,
) -> Result<Option<Answered>, StoreError> {
    let Some((mut record, version)) = load_run_versioned(store, id).await? else {
        return Ok(None);
    };
    if record.status != specrun_core::RunStatus::NeedsClarification {
        return Ok(Some(Answered::Refused(record.status)));
    }
    let saved = record
        .artifacts
        .iter()
        .find(|a| a.name == "clarifications.json")
        .map(|a| a.key.clone());
    let Some(key) = saved else {
        return Ok(Some(Answered::Refused(record.status)));
    };
    let questions: serde_json::Value = serde_json::from_slice(&store.get(&key).await?)
        .map_err(|e| StoreError::backend(&key, e))?;
    let file = questions["file"].as_str().unwrap_or_default();
    if !file.ends_with("/spec.md") {
        return Ok(Some(Answered::Invalid {
            field: "answers".to_owned(),
            reason: format!("the open questions are in {file}; only questions in the specification (spec.md) can be answered: put the answers in the specification text and submit again"),
        }));
    }
    let asked: Vec<&str> = questions["questions"]
        .as_array()
        .map(|qs| qs.iter().filter_map(|q| q.as_str()).collect())
        .unwrap_or_default();
    if let Some((i, unknown)) = answers
        .iter()
        .enumerate()
        .find(|(_, a)| !asked.contains(&a.question.as_str()))
    {
        return Ok(Some(Answered::Invalid {
            field: format!("answers[{i}].question"),
            reason: format!(
                "{:?} is not one of the run's questions: {}",
                unknown.question,
                asked
                    .iter()
                    .map(|q| format!("{q:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }));
    }
    if record.answer(answers, now()).is_err() {
        return Ok(Some(Answered::Refused(record.status)));
    }
    match save_run_fenced(store, &record, &version).await {
        Ok(_) => Ok(Some(Answered::Queued(Box::new(record)))),
        Err(StoreError::PreconditionFailed(_)) => Ok(load_run(store, id)
            .await?
            .map(|current| Answered::Refused(current.status))),
        Err(e) => Err(e),
    }
}

/// Queues a failed or cancelled run again (`RunRecord::retry`), conditional on the
/// version read, so two retries at once make one new attempt. A cancel marker left by
/// the earlier attempt is cleared. `None` when there is no such run.
pub async fn retry_run(store: &dyn BlobStore, id: &RunId) -> Result<Option<Retried>, StoreError> {
    let Some((mut record, version)) = load_run_versioned(store, id).await? else {
        return Ok(None);
    };
    if let Err(refused) = record.retry(now()) {
        return Ok(Some(Retried::Refused(refused.status)));
    }
    let marker = keys::cancel(id);
    match store.get(&marker).await {
        Ok(_) => {
            let cleared = serde_json::json!({"cleared": true, "cleared_by": "retry"});
            store.put(&marker, to_json(&cleared), JSON).await?;
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match save_run_fenced(store, &record, &version).await {
        Ok(_) => Ok(Some(Retried::Queued(Box::new(record)))),
        // Another retry (or writer) got there first: answer with what it made.
        Err(StoreError::PreconditionFailed(_)) => Ok(load_run(store, id)
            .await?
            .map(|current| Retried::Refused(current.status))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsBlobStore;
    use specrun_core::request::Publish;
    use specrun_core::state::AgentConfiguration;
    use time::macros::datetime;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn record(id: &str, at: time::OffsetDateTime) -> RunRecord {
        RunRecord::queued(
            id,
            "octo/hello",
            Publish::Pr,
            AgentConfiguration::default(),
            at,
        )
    }

    #[tokio::test]
    async fn runs_list_newest_first_and_ids_are_unique() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        create_run(
            &store,
            &record("run-aaaa-1", datetime!(2026-01-01 0:00 UTC)),
        )
        .await?;
        create_run(
            &store,
            &record("run-bbbb-2", datetime!(2026-01-02 0:00 UTC)),
        )
        .await?;
        create_run(
            &store,
            &record("run-cccc-3", datetime!(2026-01-03 0:00 UTC)),
        )
        .await?;
        let again = create_run(
            &store,
            &record("run-bbbb-2", datetime!(2026-01-04 0:00 UTC)),
        )
        .await;
        assert!(matches!(again, Err(StoreError::PreconditionFailed(_))));

        let (first, cursor) = list_runs(&store, None, 2).await?;
        let names: Vec<_> = first.iter().map(|r| r.to_string()).collect();
        assert_eq!(names, ["run-cccc-3", "run-bbbb-2"]);
        let (rest, end) = list_runs(&store, cursor.as_deref(), 2).await?;
        assert_eq!(
            rest.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["run-aaaa-1"]
        );
        assert_eq!(end, None);
        let loaded = load_run(&store, &RunId::parse("run-aaaa-1")?).await?;
        assert_eq!(loaded.map(|r| r.repository), Some("octo/hello".to_owned()));
        assert!(load_run(&store, &RunId::parse("run-zzzz-9")?)
            .await?
            .is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_cursor_that_is_no_index_key_never_reaches_the_store() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        for bad in ["runs/run-aaaa-1/run.json", "index/runs/../../etc", "zzz"] {
            let listed = list_runs(&store, Some(bad), 10).await;
            assert!(matches!(listed, Err(StoreError::InvalidKey(_))), "{bad}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_run_keeps_the_request_it_was_created_for() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        let id = RunId::parse("run-aaaa-1")?;
        let first = RunRequest {
            repository: "octo/hello".into(),
            specify_text: "Add login".into(),
            ..Default::default()
        };
        let other = RunRequest {
            repository: "evil/repo".into(),
            ..first.clone()
        };
        assert_eq!(pin_request(&store, &id, &first).await?, Pinned::Same);
        assert_eq!(pin_request(&store, &id, &first).await?, Pinned::Same);
        assert_eq!(
            pin_request(&store, &id, &other).await?,
            Pinned::Different(Box::new(first.clone()))
        );
        assert_eq!(load_request(&store, &id).await?, Some(first));

        // A run stored before requests were: only run.json can be compared.
        let old = record("run-bbbb-2", datetime!(2026-01-02 0:00 UTC));
        create_run(&store, &old).await?;
        let pinned = pin_request(&store, &RunId::parse("run-bbbb-2")?, &other).await?;
        assert_eq!(pinned, Pinned::Unrecorded(Box::new(old)));
        Ok(())
    }

    #[tokio::test]
    async fn a_run_remembers_whether_its_message_was_sent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        let id = RunId::parse("run-aaaa-1")?;
        assert_eq!(queue_send(&store, &id).await?, None);
        mark_queue_send(&store, &id, QueueSend::Pending).await?;
        assert_eq!(queue_send(&store, &id).await?, Some(QueueSend::Pending));
        mark_queue_send(&store, &id, QueueSend::Sent).await?;
        assert_eq!(queue_send(&store, &id).await?, Some(QueueSend::Sent));
        Ok(())
    }

    #[tokio::test]
    async fn the_first_claim_of_an_idempotency_key_wins() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        let (a, b) = (RunId::parse("run-aaaa-1")?, RunId::parse("run-bbbb-2")?);
        assert_eq!(claim_idempotency(&store, "abc123", &a).await?, None);
        assert_eq!(claim_idempotency(&store, "abc123", &b).await?, Some(a));
        Ok(())
    }
}
