//! The small traits adapters implement: where state objects are kept ([`BlobStore`]) and
//! where run requests wait ([`Queue`]). The embedded default implements both on the local
//! filesystem; the serverless path on S3 and SQS.

use async_trait::async_trait;
pub use bytes::Bytes;
use std::path::Path;
use std::time::Duration;

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no object at {0}")]
    NotFound(String),
    #[error("object at {0} already exists or changed")]
    PreconditionFailed(String),
    #[error("{0:?} is not a valid key")]
    InvalidKey(String),
    /// The bucket itself is missing: a setting names the wrong one (or the deployment is
    /// not there), which no retry and no other key can mend.
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("storage error at {key}: {source}")]
    Backend {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store or queue could not be reached, timed out, or answered that it is busy
    /// (5xx, throttling): the same request may well work a little later.
    #[error("storage unavailable at {key}: {source}")]
    Unavailable {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub fn backend(
        key: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            key: key.into(),
            source: source.into(),
        }
    }

    pub fn unavailable(
        key: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Unavailable {
            key: key.into(),
            source: source.into(),
        }
    }

    /// Whether trying the same operation again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Objects under keys such as `runs/<id>/run.json`, readable by any client of the store.
/// Bodies are [`Bytes`], so that a decorator that tries a write again (the retrying store)
/// hands each attempt the same buffer instead of a copy.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes (or replaces) an object.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError>;

    /// Writes an object only if none exists at `key` yet.
    async fn put_new(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError>;

    /// Uploads a local file, streaming it rather than holding it in memory.
    async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<(), StoreError>;

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// At most `len` bytes of an object from byte `start`: fewer at its end, none from
    /// its end on. How a log is served from an offset in bounded memory; the fs and S3
    /// adapters read only the range, this default (for adapters that cannot) reads the
    /// object and keeps the range.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let bytes = self.get(key).await?;
        let from = usize::try_from(start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let to = from.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(bytes[from..to.min(bytes.len())].to_vec())
    }

    /// An object and its version tag (an ETag), for [`BlobStore::put_if_version`].
    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError>;

    /// Replaces an object only if it still has `version`; `PreconditionFailed` otherwise.
    /// With [`BlobStore::put_new`] this is the compare-and-swap leases are built on.
    async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        version: &str,
    ) -> Result<(), StoreError>;

    /// Up to `limit` keys starting with `prefix`, in ascending order, after `start_after`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError>;

    /// A URL that lets its holder GET the object until `expires` passes; `None` when the
    /// store cannot make one (the embedded store serves artifacts itself).
    async fn presign_get(
        &self,
        _key: &str,
        _expires: Duration,
    ) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// One page of a listing; `next` continues it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<String>,
    pub next: Option<String>,
}

/// A message taken from a queue; `receipt` acknowledges or extends it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Stable across redeliveries of the same message.
    pub message_id: String,
    pub receipt: String,
    pub body: Vec<u8>,
    /// How many times this message has been handed out, this time included.
    pub receive_count: u32,
}

/// At-least-once delivery of run requests.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, body: Bytes) -> Result<String, StoreError>;

    /// Sends a message that no receiver sees until `delay` has passed (SQS caps the delay
    /// at 15 minutes; a longer one is shortened to that). A new message starts with no
    /// receives, which is how a Celery `eta` waits without using up the message's
    /// deliveries. A queue that cannot delay answers with an error (the default).
    async fn send_delayed(&self, _body: Bytes, delay: Duration) -> Result<String, StoreError> {
        Err(StoreError::backend(
            "queue",
            format!("this queue cannot delay a message (by {delay:?})"),
        ))
    }

    /// Waits up to `wait` for at most `max` messages, hiding each for `visibility`.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, StoreError>;

    /// Keeps a message hidden for `visibility` from now: the run is still going.
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError>;

    /// Acknowledges a message for good.
    async fn delete(&self, receipt: &str) -> Result<(), StoreError>;
}

/// Where Celery clients read task results (`AsyncResult(task_id).get()`): the bucket
/// Celery's S3 backend reads, or the table of Celery's database backend. Run state stays
/// in the [`BlobStore`]; this is only the answer a Celery producer waits for.
#[async_trait]
pub trait CeleryResultBackend: Send + Sync {
    /// Records `state` for the task, replacing what was there (STARTED, then SUCCESS or
    /// FAILURE). `result` is the JSON meta's `result` (for a failure, the exception dict of
    /// [`crate::celery::failure_result`]); `traceback` is the text Celery shows as the
    /// task's traceback.
    async fn store_result(
        &self,
        task_id: &str,
        state: crate::celery::CeleryState,
        result: serde_json::Value,
        traceback: Option<&str>,
    ) -> Result<(), StoreError>;
}
