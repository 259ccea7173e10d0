//! The embedded default store: objects are files under a root directory at their key's
//! path, so `runs/<id>/run.json` is a file an operator can `cat`; the queue is a spool of
//! message files moved between `pending/` and `inflight/` by atomic renames.

use async_trait::async_trait;
use specrun_core::keys::is_safe_key;
use specrun_core::ports::{BlobStore, Bytes, KeyPage, Queue, Received, StoreError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::fs;

/// What [`FsBlobStore::write_atomic`] does when the key already holds an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Refuse with `PreconditionFailed`: a conditional create.
    Refuse,
    Replace,
}

/// Objects as files under `root`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsBlobStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if is_safe_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(StoreError::InvalidKey(key.to_owned()))
        }
    }

    /// Writes through a temporary file and a rename, so readers never see half an object.
    async fn write_atomic(
        &self,
        key: &str,
        body: &[u8],
        existing: Existing,
    ) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let err = |e: std::io::Error| StoreError::backend(key, e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).await.map_err(err)?;
        }
        let tmp = temp_path(&path);
        fs::write(&tmp, body).await.map_err(err)?;
        if existing == Existing::Refuse {
            // A hard link fails if the target exists: a conditional create.
            let linked = fs::hard_link(&tmp, &path).await;
            let _ = fs::remove_file(&tmp).await;
            return match linked {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    Err(StoreError::PreconditionFailed(key.to_owned()))
                }
                Err(e) => Err(err(e)),
            };
        }
        fs::rename(&tmp, &path).await.map_err(err)
    }
}

/// The version tag of an object: the sha256 of its content.
fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Serialises compare-and-swap writes to one key across processes: a lock file made with
/// `create_new`, removed on drop; a lock older than [`KeyLock::STALE`] is a dead holder's.
struct KeyLock {
    path: PathBuf,
}

impl KeyLock {
    const STALE: Duration = Duration::from_secs(10);

    async fn acquire(target: &Path) -> std::io::Result<KeyLock> {
        let mut name = target
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".lock");
        let path = target.with_file_name(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).await?;
        }
        let give_up = tokio::time::Instant::now() + Self::STALE * 2;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(_) => return Ok(KeyLock { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .await
                        .and_then(|m| m.modified())
                        .map(|t| t.elapsed().unwrap_or_default() > Self::STALE)
                        .unwrap_or(false);
                    if stale {
                        let _ = fs::remove_file(&path).await;
                    } else if tokio::time::Instant::now() > give_up {
                        return Err(std::io::Error::new(
                            ErrorKind::TimedOut,
                            "the key stayed locked",
                        ));
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.tmp", uuid::Uuid::now_v7().simple()));
    path.with_file_name(name)
}

fn is_temp(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tmp" || e == "lock")
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), StoreError> {
        self.write_atomic(key, &body, Existing::Replace).await
    }

    async fn put_new(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), StoreError> {
        self.write_atomic(key, &body, Existing::Refuse).await
    }

    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        _content_type: &str,
    ) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let err = |e: std::io::Error| StoreError::backend(key, e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).await.map_err(err)?;
        }
        let tmp = temp_path(&path);
        fs::copy(source, &tmp).await.map_err(err)?;
        fs::rename(&tmp, &path).await.map_err(err)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        match fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(key.to_owned())),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path_of(key)?;
        let err = |e: std::io::Error| StoreError::backend(key, e);
        let mut file = match fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound(key.to_owned()))
            }
            Err(e) => return Err(err(e)),
        };
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(err)?;
        let mut bytes = Vec::new();
        file.take(len).read_to_end(&mut bytes).await.map_err(err)?;
        Ok(bytes)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        let bytes = self.get(key).await?;
        let version = version_of(&bytes);
        Ok((bytes, version))
    }

    async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let _lock = KeyLock::acquire(&path)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        match fs::read(&path).await {
            Ok(current) if version_of(&current) == version => {
                self.write_atomic(key, &body, Existing::Replace).await
            }
            Ok(_) => Err(StoreError::PreconditionFailed(key.to_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(StoreError::PreconditionFailed(key.to_owned()))
            }
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let mut keys = self.all_keys(prefix).await?;
        keys.retain(|k| start_after.is_none_or(|after| k.as_str() > after));
        let next = (keys.len() > limit)
            .then(|| keys[limit - 1].clone())
            .filter(|_| limit > 0);
        keys.truncate(limit);
        Ok(KeyPage { keys, next })
    }
}

impl FsBlobStore {
    async fn all_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let mut entries = match fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::backend(prefix, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| StoreError::backend(prefix, e))?
            {
                let path = entry.path();
                let kind = entry
                    .file_type()
                    .await
                    .map_err(|e| StoreError::backend(prefix, e))?;
                let Ok(relative) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = relative.to_string_lossy().replace('\\', "/");
                if kind.is_dir() {
                    // Only descend where keys with the prefix can be.
                    let as_prefix = format!("{key}/");
                    if as_prefix.starts_with(prefix) || prefix.starts_with(&as_prefix) {
                        dirs.push(path);
                    }
                } else if kind.is_file() && key.starts_with(prefix) && !is_temp(&path) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// A queue of message files. `receive` claims a message by renaming it from `pending/`
/// into `inflight/`; the in-flight file's modification time is its visibility deadline, and
/// an expired claim goes back to `pending/`. A pending file's modification time is when it
/// may first be delivered (later than its writing for a delayed send). File names are
/// `<id>.<receive count>`, so the count lives in the directory and outlasts the process.
///
/// With a `max_receives`, a message already delivered that many times is not delivered
/// again but moved, body untouched, to `dead-letter/` beside a `<name>.why` note, as SQS's
/// redrive policy moves one to its dead-letter queue.
#[derive(Debug, Clone)]
pub struct FsQueue {
    pending: PathBuf,
    inflight: PathBuf,
    dead_letter: PathBuf,
    max_receives: Option<u32>,
}

fn queue_error(e: std::io::Error) -> StoreError {
    StoreError::backend("queue", e)
}

/// The note left beside a dead-lettered message, for the operator who finds it.
#[derive(Debug, serde::Serialize)]
struct DeadLetterNote<'a> {
    message_id: &'a str,
    receive_count: u32,
    max_receives: u32,
    dead_lettered_at: String,
    reason: String,
}

impl FsQueue {
    /// A queue that delivers a message any number of times.
    pub fn new(root: impl AsRef<Path>) -> Self {
        FsQueue {
            pending: root.as_ref().join("pending"),
            inflight: root.as_ref().join("inflight"),
            dead_letter: root.as_ref().join("dead-letter"),
            max_receives: None,
        }
    }

    /// Delivers a message at most `max` times (at least once); the next receive moves it to
    /// `dead-letter/`. The runner passes its `--max-receives`, SQS's `maxReceiveCount`.
    pub fn with_max_receives(mut self, max: u32) -> Self {
        self.max_receives = Some(max.max(1));
        self
    }

    /// Where dead-lettered messages and their notes are.
    pub fn dead_letter_dir(&self) -> &Path {
        &self.dead_letter
    }

    async fn ensure_dirs(&self) -> Result<(), StoreError> {
        for dir in [&self.pending, &self.inflight] {
            fs::create_dir_all(dir).await.map_err(queue_error)?;
        }
        Ok(())
    }

    /// Returns expired claims to `pending/`.
    async fn requeue_expired(&self) -> Result<(), StoreError> {
        let now = SystemTime::now();
        for name in sorted_names(&self.inflight).await? {
            let path = self.inflight.join(&name);
            if is_due(&path, now).await {
                let _ = fs::rename(&path, self.pending.join(&name)).await;
            }
        }
        Ok(())
    }

    fn inflight_path(&self, receipt: &str) -> Result<PathBuf, StoreError> {
        match parse_name(receipt) {
            Some(_) => Ok(self.inflight.join(receipt)),
            None => Err(StoreError::InvalidKey(receipt.to_owned())),
        }
    }

    /// Writes a message into `pending/`, first deliverable `delay` from now.
    async fn enqueue(&self, body: Bytes, delay: Duration) -> Result<String, StoreError> {
        self.ensure_dirs().await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let tmp = self.pending.join(format!("{id}.tmp"));
        fs::write(&tmp, body).await.map_err(queue_error)?;
        if !delay.is_zero() {
            set_deadline(&tmp, delay).await?;
        }
        fs::rename(&tmp, self.pending.join(format!("{id}.0")))
            .await
            .map_err(queue_error)?;
        Ok(id)
    }

    /// Moves pending `name`, delivered `count` times already, to `dead-letter/` when that
    /// is the most it may be; whether it did (or another receiver took the file first).
    async fn dead_letter_if_spent(&self, name: &str, id: &str, count: u32) -> bool {
        let Some(max) = self.max_receives.filter(|max| count >= *max) else {
            return false;
        };
        if let Err(e) = fs::create_dir_all(&self.dead_letter).await {
            tracing::warn!(error = %e, "could not create the queue's dead-letter directory; the message stays pending");
            return false;
        }
        // Losing the rename means another receiver claimed or moved it first.
        if fs::rename(self.pending.join(name), self.dead_letter.join(name))
            .await
            .is_err()
        {
            return true;
        }
        let note = DeadLetterNote {
            message_id: id,
            receive_count: count,
            max_receives: max,
            dead_lettered_at: crate::runs::now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            reason: format!(
                "delivered {count} times without being deleted (max_receives {max}): its runs kept failing or never finished"
            ),
        };
        let note_path = self.dead_letter.join(format!("{name}.why"));
        let written = match serde_json::to_vec_pretty(&note) {
            Ok(bytes) => fs::write(&note_path, bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, message_id = id, "could not write the dead-letter note");
        }
        tracing::warn!(
            message_id = id,
            receive_count = count,
            "moved a queue message to the dead-letter directory"
        );
        true
    }
}

/// Whether a file's deadline (its modification time) has passed at `now`.
async fn is_due(path: &Path, now: SystemTime) -> bool {
    match fs::metadata(path).await {
        Ok(meta) => meta
            .modified()
            .map(|deadline| deadline <= now)
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// `<id>.<count>` into its parts; anything else is not a message file.
fn parse_name(name: &str) -> Option<(&str, u32)> {
    let (id, count) = name.rsplit_once('.')?;
    let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    valid_id.then_some(())?;
    Some((id, count.parse().ok()?))
}

async fn set_deadline(path: &Path, visibility: Duration) -> Result<(), StoreError> {
    let file = fs::File::options()
        .write(true)
        .open(path)
        .await
        .map_err(queue_error)?;
    let file = file.into_std().await;
    let deadline = SystemTime::now() + visibility;
    tokio::task::spawn_blocking(move || file.set_modified(deadline))
        .await
        .map_err(|e| StoreError::backend("queue", e))?
        .map_err(queue_error)
}

async fn sorted_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut entries = fs::read_dir(dir).await.map_err(queue_error)?;
    while let Some(entry) = entries.next_entry().await.map_err(queue_error)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_name(&name).is_some() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[async_trait]
impl Queue for FsQueue {
    async fn send(&self, body: Bytes) -> Result<String, StoreError> {
        self.enqueue(body, Duration::ZERO).await
    }

    async fn send_delayed(&self, body: Bytes, delay: Duration) -> Result<String, StoreError> {
        self.enqueue(body, delay).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, StoreError> {
        self.ensure_dirs().await?;
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            self.requeue_expired().await?;
            let now = SystemTime::now();
            let mut received = Vec::new();
            for name in sorted_names(&self.pending).await? {
                if received.len() >= max {
                    break;
                }
                let Some((id, count)) = parse_name(&name) else {
                    continue;
                };
                if !is_due(&self.pending.join(&name), now).await
                    || self.dead_letter_if_spent(&name, id, count).await
                {
                    continue;
                }
                let receipt = format!("{id}.{}", count + 1);
                let target = self.inflight.join(&receipt);
                // Losing the rename means another receiver claimed it first.
                if fs::rename(self.pending.join(&name), &target).await.is_err() {
                    continue;
                }
                set_deadline(&target, visibility).await?;
                let body = fs::read(&target).await.map_err(queue_error)?;
                received.push(Received {
                    message_id: id.to_owned(),
                    receipt,
                    body,
                    receive_count: count + 1,
                });
            }
            if !received.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(received);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        let path = self.inflight_path(receipt)?;
        set_deadline(&path, visibility)
            .await
            .map_err(|_| StoreError::NotFound(receipt.to_owned()))
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let path = self.inflight_path(receipt)?;
        fs::remove_file(path)
            .await
            .map_err(|_| StoreError::NotFound(receipt.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn a_range_is_read_without_the_rest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        let key = "runs/a1/artifacts/plan/agent.stdout.log";
        store
            .put(key, Bytes::from_static(b"0123456789"), "text/plain")
            .await?;
        assert_eq!(store.get_range(key, 3, 4).await?, b"3456");
        assert_eq!(store.get_range(key, 8, 100).await?, b"89");
        assert_eq!(store.get_range(key, 10, 5).await?, b"");
        assert_eq!(store.get_range(key, 50, 5).await?, b"");
        assert!(matches!(
            store.get_range("runs/a1/missing", 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn objects_round_trip_and_list_by_prefix() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        store
            .put(
                "runs/a1/run.json",
                Bytes::from_static(b"{}"),
                "application/json",
            )
            .await?;
        store
            .put(
                "runs/a1/phases/plan.json",
                Bytes::from_static(b"1"),
                "application/json",
            )
            .await?;
        store
            .put(
                "runs/b2/run.json",
                Bytes::from_static(b"2"),
                "application/json",
            )
            .await?;
        assert_eq!(store.get("runs/a1/run.json").await?, b"{}");
        let page = store.list("runs/a1/", None, 10).await?;
        assert_eq!(page.keys, ["runs/a1/phases/plan.json", "runs/a1/run.json"]);
        assert_eq!(page.next, None);
        let first = store.list("runs/", None, 2).await?;
        assert_eq!(first.keys.len(), 2);
        let rest = store.list("runs/", first.next.as_deref(), 2).await?;
        assert_eq!(rest.keys, ["runs/b2/run.json"]);
        assert!(matches!(
            store.get("runs/zz/run.json").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.get("../etc/passwd").await,
            Err(StoreError::InvalidKey(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn put_if_version_is_compare_and_swap() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        store
            .put_new(
                "runs/x/lease.json",
                Bytes::from_static(b"one"),
                "application/json",
            )
            .await?;
        let (_, version) = store.get_versioned("runs/x/lease.json").await?;
        store
            .put_if_version(
                "runs/x/lease.json",
                Bytes::from_static(b"two"),
                "application/json",
                &version,
            )
            .await?;
        let stale = store
            .put_if_version(
                "runs/x/lease.json",
                Bytes::from_static(b"three"),
                "application/json",
                &version,
            )
            .await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed(_))));
        assert_eq!(store.get("runs/x/lease.json").await?, b"two");
        assert_eq!(
            store.list("runs/", None, 10).await?.keys,
            ["runs/x/lease.json"],
            "no lock file is listed"
        );
        Ok(())
    }

    #[tokio::test]
    async fn put_new_refuses_to_overwrite() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = FsBlobStore::new(dir.path());
        store
            .put_new("k/v", Bytes::from_static(b"first"), "text/plain")
            .await?;
        let second = store
            .put_new("k/v", Bytes::from_static(b"second"), "text/plain")
            .await;
        assert!(matches!(second, Err(StoreError::PreconditionFailed(_))));
        assert_eq!(store.get("k/v").await?, b"first");
        Ok(())
    }

    #[tokio::test]
    async fn a_message_comes_back_after_its_visibility_unless_deleted() -> TestResult {
        let dir = tempfile::tempdir()?;
        let queue = FsQueue::new(dir.path());
        queue.send(Bytes::from_static(b"run-1")).await?;
        let short = Duration::from_millis(50);
        let first = queue.receive(10, Duration::ZERO, short).await?;
        assert_eq!(first.len(), 1);
        assert!(queue.receive(10, Duration::ZERO, short).await?.is_empty());
        tokio::time::sleep(Duration::from_millis(80)).await;
        let again = queue
            .receive(10, Duration::from_millis(200), Duration::from_secs(60))
            .await?;
        assert_eq!((again.len(), again[0].receive_count), (1, 2));
        queue
            .extend(&again[0].receipt, Duration::from_secs(60))
            .await?;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(queue.receive(10, Duration::ZERO, short).await?.is_empty());
        queue.delete(&again[0].receipt).await?;
        assert!(queue.receive(10, Duration::ZERO, short).await?.is_empty());
        Ok(())
    }

    /// Receives everything visible once and lets it come straight back (visibility zero).
    async fn receive_and_drop(queue: &FsQueue) -> Result<Vec<Received>, StoreError> {
        queue.receive(10, Duration::ZERO, Duration::ZERO).await
    }

    #[tokio::test]
    async fn a_message_received_max_times_moves_to_dead_letter_with_its_body() -> TestResult {
        let dir = tempfile::tempdir()?;
        let queue = FsQueue::new(dir.path()).with_max_receives(2);
        let id = queue.send(Bytes::from_static(b"run-7 body")).await?;
        let counts: Vec<u32> = [
            receive_and_drop(&queue).await?,
            receive_and_drop(&queue).await?,
        ]
        .iter()
        .flatten()
        .map(|m| m.receive_count)
        .collect();
        assert_eq!(counts, [1, 2]);
        assert!(
            receive_and_drop(&queue).await?.is_empty(),
            "a third delivery"
        );
        assert!(receive_and_drop(&queue).await?.is_empty());

        let dead = queue.dead_letter_dir();
        assert_eq!(std::fs::read(dead.join(format!("{id}.2")))?, b"run-7 body");
        let note: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dead.join(format!("{id}.2.why")))?)?;
        assert_eq!(note["message_id"], id.as_str());
        assert_eq!(
            (
                note["receive_count"].as_u64(),
                note["max_receives"].as_u64()
            ),
            (Some(2), Some(2))
        );
        assert!(
            note["reason"]
                .as_str()
                .is_some_and(|r| r.contains("delivered 2 times")),
            "{note}"
        );
        assert_eq!(std::fs::read_dir(dir.path().join("pending"))?.count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("inflight"))?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn receive_counts_outlast_the_queue_object() -> TestResult {
        let dir = tempfile::tempdir()?;
        let id = FsQueue::new(dir.path())
            .send(Bytes::from_static(b"m"))
            .await?;
        for expected in 1..=2 {
            // A new queue object each time, as after a runner restart.
            let queue = FsQueue::new(dir.path()).with_max_receives(3);
            let got = receive_and_drop(&queue).await?;
            assert_eq!(
                got.iter().map(|m| m.receive_count).collect::<Vec<_>>(),
                [expected]
            );
        }
        let restarted = FsQueue::new(dir.path()).with_max_receives(2);
        assert!(receive_and_drop(&restarted).await?.is_empty());
        assert!(restarted
            .dead_letter_dir()
            .join(format!("{id}.2"))
            .is_file());
        Ok(())
    }

    #[tokio::test]
    async fn without_max_receives_a_message_is_delivered_again_and_again() -> TestResult {
        let dir = tempfile::tempdir()?;
        let queue = FsQueue::new(dir.path());
        queue.send(Bytes::from_static(b"m")).await?;
        for expected in 1..=5 {
            let got = receive_and_drop(&queue).await?;
            assert_eq!(
                got.iter().map(|m| m.receive_count).collect::<Vec<_>>(),
                [expected]
            );
        }
        assert!(!queue.dead_letter_dir().exists());
        Ok(())
    }

    #[tokio::test]
    async fn a_delayed_message_is_hidden_until_its_delay_passes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let queue = FsQueue::new(dir.path()).with_max_receives(1);
        queue
            .send_delayed(Bytes::from_static(b"later"), Duration::from_millis(300))
            .await?;
        assert!(receive_and_drop(&queue).await?.is_empty());
        let got = queue
            .receive(10, Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].body.as_slice(), got[0].receive_count),
            (&b"later"[..], 1)
        );
        Ok(())
    }
}
