//! A [`BlobStore`] decorator that counts the requests made through it, by kind: what a
//! run costs the store (on S3, each is a billed request and a round trip). The benchmark
//! reads the counts (`specrun run --counts-file`); nothing else changes.

use async_trait::async_trait;
use specrun_core::ports::{BlobStore, Bytes, KeyPage, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The requests a store was asked to do, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    pub put: u64,
    pub put_new: u64,
    pub put_file: u64,
    pub put_if_version: u64,
    pub get: u64,
    pub get_range: u64,
    pub get_versioned: u64,
    pub list: u64,
    pub presign_get: u64,
}

impl StoreCounts {
    /// Requests that write an object.
    pub fn writes(&self) -> u64 {
        self.put + self.put_new + self.put_file + self.put_if_version
    }

    /// Requests that read an object or a listing.
    pub fn reads(&self) -> u64 {
        self.get + self.get_range + self.get_versioned + self.list
    }
}

#[derive(Default)]
struct Counters([AtomicU64; 9]);

/// `inner`, with every request counted.
#[derive(Clone)]
pub struct CountingStore {
    inner: Arc<dyn BlobStore>,
    counters: Arc<Counters>,
}

const PUT: usize = 0;
const PUT_NEW: usize = 1;
const PUT_FILE: usize = 2;
const PUT_IF_VERSION: usize = 3;
const GET: usize = 4;
const GET_VERSIONED: usize = 5;
const LIST: usize = 6;
const PRESIGN_GET: usize = 7;
const GET_RANGE: usize = 8;

impl CountingStore {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }

    /// What was asked so far.
    pub fn counts(&self) -> StoreCounts {
        let c = |i: usize| self.counters.0[i].load(Ordering::Relaxed);
        StoreCounts {
            put: c(PUT),
            put_new: c(PUT_NEW),
            put_file: c(PUT_FILE),
            put_if_version: c(PUT_IF_VERSION),
            get: c(GET),
            get_range: c(GET_RANGE),
            get_versioned: c(GET_VERSIONED),
            list: c(LIST),
            presign_get: c(PRESIGN_GET),
        }
    }

    fn count(&self, kind: usize) {
        self.counters.0[kind].fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.count(PUT);
        self.inner.put(key, body, content_type).await
    }

    async fn put_new(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.count(PUT_NEW);
        self.inner.put_new(key, body, content_type).await
    }

    async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<(), StoreError> {
        self.count(PUT_FILE);
        self.inner.put_file(key, path, content_type).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.count(GET);
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.count(GET_RANGE);
        self.inner.get_range(key, start, len).await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.count(GET_VERSIONED);
        self.inner.get_versioned(key).await
    }

    async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        self.count(PUT_IF_VERSION);
        self.inner
            .put_if_version(key, body, content_type, version)
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        self.count(LIST);
        self.inner.list(prefix, start_after, limit).await
    }

    async fn presign_get(
        &self,
        key: &str,
        expires: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.count(PRESIGN_GET);
        self.inner.presign_get(key, expires).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsBlobStore;

    #[tokio::test]
    async fn every_request_is_counted_by_kind() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::backend("tempdir", e))?;
        let store = CountingStore::new(Arc::new(FsBlobStore::new(dir.path().to_path_buf())));
        store
            .put("a/x.json", Bytes::from_static(b"1"), "application/json")
            .await?;
        store
            .put_new("a/y.json", Bytes::from_static(b"2"), "application/json")
            .await?;
        let (_, version) = store.get_versioned("a/x.json").await?;
        store
            .put_if_version(
                "a/x.json",
                Bytes::from_static(b"3"),
                "application/json",
                &version,
            )
            .await?;
        assert_eq!(store.get("a/x.json").await?, b"3");
        assert!(
            store.get("a/missing.json").await.is_err(),
            "a failed read is still a request"
        );
        store.list("a/", None, 10).await?;
        let counts = store.counts();
        assert_eq!(
            counts,
            StoreCounts {
                put: 1,
                put_new: 1,
                put_if_version: 1,
                get: 2,
                get_versioned: 1,
                list: 1,
                ..StoreCounts::default()
            }
        );
        assert_eq!((counts.writes(), counts.reads()), (3, 4));
        Ok(())
    }
}
