//! Riding out store and queue outages: [`RetryingStore`] and [`RetryingQueue`] wrap any
//! adapter and repeat an operation that failed for a transient reason
//! ([`StoreError::is_transient`]) with exponential backoff until it works or the policy's
//! budget is spent. Permanent errors (missing object, failed condition, refused request)
//! come back at once.
//!
//! A write whose answer was lost may still have happened. Repeating a plain PUT is
//! harmless; repeating a conditional one can fail its own condition ("already exists",
//! "changed") because of the earlier, invisible success. So after an unanswered attempt a
//! failed condition is checked: if the object now holds exactly what we wrote, the write
//! was ours and counts as done, and nothing is written twice.

use async_trait::async_trait;
use specrun_core::backoff::Backoff;
use specrun_core::ports::{BlobStore, Bytes, KeyPage, Queue, Received, StoreError};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A [`BlobStore`] that retries transient failures.
pub struct RetryingStore {
    inner: Arc<dyn BlobStore>,
    policy: Backoff,
}

/// A [`Queue`] that retries transient failures. A `send` whose answer was lost may leave
/// two copies of a message: delivery is at least once anyway, and runs are idempotent.
pub struct RetryingQueue {
    inner: Arc<dyn Queue>,
    policy: Backoff,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn BlobStore>, policy: Backoff) -> Self {
        RetryingStore { inner, policy }
    }

    /// Resolves a failed condition after an unanswered attempt: did our write land?
    async fn landed(&self, key: &str, body: &[u8]) -> Result<bool, StoreError> {
        let current = retry(&self.policy, "get", key, || self.inner.get(key)).await;
        match current {
            Ok(current) => Ok(current == body),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn conditional<'a, F, Fut>(
        &'a self,
        what: &str,
        key: &'a str,
        body: &'a [u8],
        write: F,
    ) -> Result<(), StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut unanswered = false;
        let result = retry_observed(&self.policy, what, key, &write, |e| {
            unanswered |= e.is_transient();
        })
        .await;
        match result {
            Err(StoreError::PreconditionFailed(_)) if unanswered => {
                if self.landed(key, body).await? {
                    tracing::info!(%key, "a write whose answer was lost had landed; not writing it again");
                    Ok(())
                } else {
                    Err(StoreError::PreconditionFailed(key.to_owned()))
                }
            }
            other => other,
        }
    }
}

impl RetryingQueue {
    pub fn new(inner: Arc<dyn Queue>, policy: Backoff) -> Self {
        RetryingQueue { inner, policy }
    }
}

/// A number in `[0, 1)` that differs between calls and processes.
fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `op` until it succeeds, fails for good, or the policy gives up.
pub(crate) async fn retry<T, F, Fut>(
    policy: &Backoff,
    what: &str,
    key: &str,
    op: F,
) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_observed(policy, what, key, op, |_| {}).await
}

/// [`retry`], showing every failure to `observe` first.
async fn retry_observed<T, F, Fut>(
    policy: &Backoff,
    what: &str,
    key: &str,
    op: F,
    mut observe: impl FnMut(&StoreError),
) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match op().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(operation = what, %key, failures, waited_ms = started.elapsed().as_millis() as u64, "storage reachable again; the operation went through");
                }
                return Ok(value);
            }
            Err(e) => {
                observe(&e);
                if !e.is_transient() {
                    return Err(e);
                }
                failures += 1;
                let Some(wait) = policy.wait(failures, started.elapsed(), jitter()) else {
                    tracing::error!(operation = what, %key, failures, error = %e, "storage still unavailable; giving up");
                    return Err(e);
                };
                tracing::warn!(operation = what, %key, failures, retry_in_ms = wait.as_millis() as u64, error = %e, "storage unavailable; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[async_trait]
impl BlobStore for RetryingStore {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        retry(&self.policy, "put", key, || {
            self.inner.put(key, body.clone(), content_type)
        })
        .await
    }

    async fn put_new(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.conditional("put_new", key, &body, || {
            self.inner.put_new(key, body.clone(), content_type)
        })
        .await
    }

    async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<(), StoreError> {
        retry(&self.policy, "put_file", key, || {
            self.inner.put_file(key, path, content_type)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        retry(&self.policy, "get", key, || self.inner.get(key)).await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        retry(&self.policy, "get", key, || self.inner.get_versioned(key)).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        retry(&self.policy, "get", key, || {
            self.inner.get_range(key, start, len)
        })
        .await
    }

    async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        self.conditional("put_if_version", key, &body, || {
            self.inner
                .put_if_version(key, body.clone(), content_type, version)
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        retry(&self.policy, "list", prefix, || {
            self.inner.list(prefix, start_after, limit)
        })
        .await
    }

    async fn presign_get(
        &self,
        key: &str,
        expires: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner.presign_get(key, expires).await
    }
}

#[async_trait]
impl Queue for RetryingQueue {
    async fn send(&self, body: Bytes) -> Result<String, StoreError> {
        retry(&self.policy, "send", "queue", || {
            self.inner.send(body.clone())
        })
        .await
    }

    async fn send_delayed(&self, body: Bytes, delay: Duration) -> Result<String, StoreError> {
        retry(&self.policy, "send", "queue", || {
            self.inner.send_delayed(body.clone(), delay)
        })
        .await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, StoreError> {
        retry(&self.policy, "receive", "queue", || {
            self.inner.receive(max, wait, visibility)
        })
        .await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        retry(&self.policy, "extend", "queue message", || {
            self.inner.extend(receipt, visibility)
        })
        .await
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        retry(&self.policy, "delete", "queue message", || {
            self.inner.delete(receipt)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::FsBlobStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// How the next few calls to [`Flaky`] fail.
    #[derive(Clone, Copy)]
    enum Fault {
        /// Refuse before doing anything, as an unreachable endpoint does.
        Refuse,
        /// Do the write, then lose the answer, as a dropped connection does.
        LoseAnswer,
        /// Refuse for good.
        Deny,
    }

    /// A real filesystem store behind a fault injector.
    struct Flaky {
        inner: FsBlobStore,
        fault: Fault,
        failures_left: AtomicU32,
        calls: AtomicU32,
        /// Where each `put`'s body lives: the same buffer every attempt, or a copy.
        put_bodies: std::sync::Mutex<Vec<usize>>,
    }

    impl Flaky {
        fn new(dir: &Path, fault: Fault, failures: u32) -> Self {
            Flaky {
                inner: FsBlobStore::new(dir),
                fault,
                failures_left: AtomicU32::new(failures),
                calls: AtomicU32::new(0),
                put_bodies: std::sync::Mutex::default(),
            }
        }

        fn failing(&self) -> Option<Fault> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let left = self.failures_left.load(Ordering::SeqCst);
            (left > 0).then(|| {
                self.failures_left.store(left - 1, Ordering::SeqCst);
                self.fault
            })
        }

        async fn apply(
            &self,
            key: &str,
            write: impl Future<Output = Result<(), StoreError>>,
        ) -> Result<(), StoreError> {
            match self.failing() {
                None => write.await,
                Some(Fault::Refuse) => Err(StoreError::unavailable(key, "connection refused")),
                Some(Fault::LoseAnswer) => {
                    write.await?;
                    Err(StoreError::unavailable(key, "connection reset"))
                }
                Some(Fault::Deny) => Err(StoreError::backend(key, "access denied")),
            }
        }
    }

    #[async_trait]
    impl BlobStore for Flaky {
        async fn put(&self, key: &str, body: Bytes, ct: &str) -> Result<(), StoreError> {
            self.put_bodies.lock().unwrap().push(body.as_ptr() as usize);
            self.apply(key, self.inner.put(key, body, ct)).await
        }
        async fn put_new(&self, key: &str, body: Bytes, ct: &str) -> Result<(), StoreError> {
            self.apply(key, self.inner.put_new(key, body, ct)).await
        }
        async fn put_file(&self, key: &str, path: &Path, ct: &str) -> Result<(), StoreError> {
            self.apply(key, self.inner.put_file(key, path, ct)).await
        }
        async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
            self.inner.get(key).await
        }
        async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
            self.inner.get_versioned(key).await
        }
        async fn put_if_version(
            &self,
            key: &str,
            body: Bytes,
            ct: &str,
            version: &str,
        ) -> Result<(), StoreError> {
            self.apply(key, self.inner.put_if_version(key, body, ct, version))
                .await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<KeyPage, StoreError> {
            self.inner.list(prefix, start_after, limit).await
        }
    }

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(1),
            max_wait: Duration::from_millis(4),
            budget: Duration::from_secs(2),
        }
    }

    fn setup(fault: Fault, failures: u32) -> (tempfile::TempDir, Arc<Flaky>, RetryingStore) {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky::new(dir.path(), fault, failures));
        let store = RetryingStore::new(flaky.clone(), quick());
        (dir, flaky, store)
    }

    const KEY: &str = "runs/r-1/run.json";

    #[tokio::test]
    async fn a_write_goes_through_once_the_store_is_back() {
        let (_dir, flaky, store) = setup(Fault::Refuse, 3);
        store
            .put(KEY, Bytes::from_static(b"v1"), "text/plain")
            .await
            .unwrap();
        assert_eq!(store.get(KEY).await.unwrap(), b"v1");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn every_attempt_writes_the_same_buffer() {
        let (_dir, flaky, store) = setup(Fault::Refuse, 2);
        let body = Bytes::from(vec![7u8; 64 * 1024]);
        let buffer = body.as_ptr() as usize;
        store.put(KEY, body, "text/plain").await.unwrap();
        assert_eq!(*flaky.put_bodies.lock().unwrap(), [buffer; 3]);
    }

    #[tokio::test]
    async fn a_create_whose_answer_was_lost_counts_as_done() {
        let (_dir, flaky, store) = setup(Fault::LoseAnswer, 1);
        store
            .put_new(KEY, Bytes::from_static(b"mine"), "text/plain")
            .await
            .unwrap();
        assert_eq!(store.get(KEY).await.unwrap(), b"mine");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_swap_whose_answer_was_lost_counts_as_done() {
        let (_dir, flaky, store) = setup(Fault::LoseAnswer, 0);
        store
            .put_new(KEY, Bytes::from_static(b"v1"), "text/plain")
            .await
            .unwrap();
        let (_, version) = store.get_versioned(KEY).await.unwrap();
        flaky.failures_left.store(1, Ordering::SeqCst);
        store
            .put_if_version(KEY, Bytes::from_static(b"v2"), "text/plain", &version)
            .await
            .unwrap();
        assert_eq!(store.get(KEY).await.unwrap(), b"v2");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn someone_elses_object_still_fails_the_condition() {
        let (_dir, flaky, store) = setup(Fault::Refuse, 0);
        store
            .put_new(KEY, Bytes::from_static(b"theirs"), "text/plain")
            .await
            .unwrap();
        flaky.failures_left.store(1, Ordering::SeqCst);
        let refused = store
            .put_new(KEY, Bytes::from_static(b"mine"), "text/plain")
            .await;
        assert!(matches!(refused, Err(StoreError::PreconditionFailed(_))));
        assert_eq!(store.get(KEY).await.unwrap(), b"theirs");
    }

    #[tokio::test]
    async fn a_permanent_error_is_not_retried() {
        let (_dir, flaky, store) = setup(Fault::Deny, 5);
        let denied = store
            .put(KEY, Bytes::from_static(b"v1"), "text/plain")
            .await;
        assert!(matches!(denied, Err(StoreError::Backend { .. })));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_budget_is_reported() {
        let (_dir, flaky, store) = setup(Fault::Refuse, u32::MAX);
        let started = Instant::now();
        let failed = store
            .put(KEY, Bytes::from_static(b"v1"), "text/plain")
            .await;
        assert!(
            failed.as_ref().is_err_and(StoreError::is_transient),
            "{failed:?}"
        );
        assert!(flaky.calls.load(Ordering::SeqCst) > 3);
        assert!(started.elapsed() <= Duration::from_secs(3));
    }
}
