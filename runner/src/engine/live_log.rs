//! Logs that stream: while a command runs, the new bytes of its redacted log file go to
//! the store as numbered parts, each followed by the index that names it
//! (`specrun_core::live_log`), so the status API and `specrun logs -f` can tail a phase
//! before it ends. Only what the redactor already wrote to disk goes out (it holds back a
//! possible secret's beginning), so the parts are the final artifact's bytes, in order.
//!
//! One uploader task per log: never more than one upload in flight for it. A part is at
//! most [`PART_MAX_BYTES`] read back from the file, so memory stays bounded whatever the
//! log's size, and a store that is slow for a while is caught up with in large parts.
//! A failed upload is tried again at the next interval; live parts never fail a phase.

use specrun_core::live_log::{LiveLogIndex, LiveLogKeys};
use specrun_core::ports::{BlobStore, Bytes, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// How often new bytes go up while a command keeps printing (`SPECRUN_LOG_FLUSH_MS`).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// This many new bytes go up at once, without waiting for the interval.
pub const PART_THRESHOLD_BYTES: u64 = 64 * 1024;

/// The largest part: what one upload reads into memory.
const PART_MAX_BYTES: u64 = 1024 * 1024;

/// A log's first bytes go up this long after it opened (or at the interval, if that is
/// shorter): a command that ends sooner never streams, and its final artifact is all a
/// reader needs.
const FIRST_UPLOAD_AFTER: Duration = Duration::from_millis(250);

/// How long the end of a command waits for its log's last part to go up.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// After the command ended, a part that failed this many times in a row is given up:
/// the final artifact holds the bytes anyway.
const FINAL_ATTEMPTS: u32 = 3;

/// How many of the log's bytes are on disk, and whether it is complete.
#[derive(Debug, Clone, Copy, Default)]
struct OnDisk {
    bytes: u64,
    finished: bool,
}

/// The log file's side of a live log: says how many bytes are on disk.
pub struct LiveFeed {
    on_disk: watch::Sender<OnDisk>,
}

impl LiveFeed {
    /// The file holds `bytes` bytes, flushed.
    pub fn written(&self, bytes: u64) {
        self.on_disk.send_replace(OnDisk {
            bytes,
            finished: false,
        });
    }

    /// The file is complete at `bytes` bytes.
    pub fn finished(&self, bytes: u64) {
        self.on_disk.send_replace(OnDisk {
            bytes,
            finished: true,
        });
    }
}

/// The uploader of one live log.
pub struct LiveUpload {
    task: tokio::task::JoinHandle<()>,
    keys: LiveLogKeys,
}

impl LiveUpload {
    /// Starts uploading the log file at `path` under `keys`; the file's writer tells
    /// the returned feed what it wrote.
    pub fn start(
        store: Arc<dyn BlobStore>,
        keys: LiveLogKeys,
        path: PathBuf,
        interval: Duration,
    ) -> (LiveFeed, LiveUpload) {
        let (on_disk, watched) = watch::channel(OnDisk::default());
        let uploader = Uploader {
            store,
            keys: keys.clone(),
            path,
            interval,
            file: None,
            index: LiveLogIndex::new(),
        };
        let task = tokio::spawn(uploader.run(watched));
        (LiveFeed { on_disk }, LiveUpload { task, keys })
    }

    /// Waits (a bounded time) for the log's last bytes to go up, once its feed said it
    /// finished or was dropped.
    pub async fn finish(mut self) {
        if tokio::time::timeout(DRAIN_LIMIT, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(index = %self.keys.index(), "the live log's last part did not go up in time; the final artifact has it");
            self.task.abort();
        }
    }
}

/// Why a part did not go up.
#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error("reading the log file: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Uploader {
    store: Arc<dyn BlobStore>,
    keys: LiveLogKeys,
    path: PathBuf,
    interval: Duration,
    file: Option<tokio::fs::File>,
    index: LiveLogIndex,
}

impl Uploader {
    async fn run(mut self, mut watched: watch::Receiver<OnDisk>) {
        // The first upload is due a moment after the log opened, the others an interval
        // after the one before (whether it went up or not).
        let mut due = Instant::now() + FIRST_UPLOAD_AFTER.min(self.interval);
        let mut failures = 0u32;
        let mut closed = false;
        loop {
            let on_disk = *watched.borrow_and_update();
            let finished = on_disk.finished || closed;
            if finished && self.index.part_starts.is_empty() {
                // Nothing went up while it ran: readers go to the final artifact.
                return;
            }
            let pending = on_disk.bytes.saturating_sub(self.index.size);
            let rested = Instant::now() >= due;
            if pending > 0 && (finished || rested || pending >= PART_THRESHOLD_BYTES) {
                match self.put_part(pending.min(PART_MAX_BYTES)).await {
                    Ok(()) => {
                        failures = 0;
                        due = Instant::now() + self.interval;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(index = %self.keys.index(), failures, error = %e, "a live log part did not go up; trying again later");
                        if finished && failures >= FINAL_ATTEMPTS {
                            return;
                        }
                        due = Instant::now() + self.interval;
                    }
                }
            } else if finished && pending == 0 {
                return;
            }
            let wait = match pending {
                0 => Duration::from_secs(3600),
                _ => due.saturating_duration_since(Instant::now()),
            };
            if closed {
                tokio::time::sleep(wait).await;
                continue;
            }
            tokio::select! {
                changed = watched.changed() => closed = changed.is_err(),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Uploads the next `len` bytes of the file as a part, then the index naming it.
    async fn put_part(&mut self, len: u64) -> Result<(), PartError> {
        let start = self.index.size;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tokio::fs::File::open(&self.path).await?),
        };
        file.seek(std::io::SeekFrom::Start(start)).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut bytes).await?;
        if bytes.is_empty() {
            return Err(PartError::Read(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the log file ends at {start} bytes, before what its writer reported"),
            )));
        }
        let mut next = self.index.clone();
        let number = next.push_part(bytes.len() as u64);
        self.store
            .put(
                &self.keys.part(number),
                Bytes::from(bytes),
                "text/plain; charset=utf-8",
            )
            .await?;
        let index = serde_json::to_vec(&next).unwrap_or_default();
        self.store
            .put(&self.keys.index(), Bytes::from(index), "application/json")
            .await?;
        self.index = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::artifacts::LogFile;
    use specrun_core::keys::RunId;
    use specrun_core::redact::Redactor;
    use specrun_core::Phase;
    use specrun_store::FsBlobStore;

    /// The parts the index names, end to end.
    async fn live_bytes(store: &dyn BlobStore, keys: &LiveLogKeys) -> anyhow::Result<Vec<u8>> {
        let index: LiveLogIndex = match store.get(&keys.index()).await {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(StoreError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        for number in 0..index.part_starts.len() {
            bytes.extend(store.get(&keys.part(number)).await?);
        }
        anyhow::ensure!(
            bytes.len() as u64 == index.size,
            "the index's size is wrong"
        );
        Ok(bytes)
    }

    #[tokio::test]
    async fn a_store_that_refuses_parts_fails_no_log() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // A store rooted under a file: every write fails, as a full or broken disk does.
        let blocker = dir.path().join("not-a-directory");
        std::fs::write(&blocker, b"")?;
        let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(blocker.join("store")));
        let run = RunId::parse("0193a1b2-0000-7000-8000-000000000000")?;
        let keys = LiveLogKeys::new(&run, 1, Phase::Plan, "agent.stdout.log");
        let redactor = Redactor::new(["hunter2-secret"]);
        let mut log = LogFile::create_capped(dir.path().join("x.log"), &redactor, 1 << 20).await?;
        let upload = log.stream_live(store.clone(), keys.clone(), Duration::from_millis(20));
        for line in 0..50 {
            log.write(format!("line {line}\n").as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let written = log.finish().await?;
        // Given up after a few tries once the log is complete: the phase goes on.
        tokio::time::timeout(Duration::from_secs(5), upload.finish()).await?;
        assert_eq!(
            written.size,
            tokio::fs::read(&written.path).await?.len() as u64
        );
        assert!(matches!(
            store.get(&keys.index()).await,
            Err(StoreError::NotFound(_) | StoreError::Backend { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_growing_log_reaches_the_store_redacted_before_it_ends() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(dir.path().join("store")));
        let run = RunId::parse("0193a1b2-0000-7000-8000-000000000000")?;
        let keys = LiveLogKeys::new(&run, 1, Phase::Specify, "agent.stdout.log");
        let redactor = Redactor::new(["hunter2-secret"]);
        let mut log = LogFile::create_capped(dir.path().join("x.log"), &redactor, 1 << 30).await?;
        let upload = log.stream_live(store.clone(), keys.clone(), Duration::from_millis(100));
        log.write(b"first line\nthe key is hunter2-").await?;
        // The line is there while the log is still open; the secret's beginning is not.
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = live_bytes(store.as_ref(), &keys).await?;
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.starts_with(b"first line\n"), "{seen:?}");
        assert!(
            !String::from_utf8_lossy(&seen).contains("hunter2"),
            "{seen:?}"
        );
        log.write(b"secret, then a flood\n").await?;
        // More than a part's threshold at once, and more than the largest part.
        let flood = vec![b'x'; 3 * 1024 * 1024];
        log.write(&flood).await?;
        let written = log.finish().await?;
        upload.finish().await;
        let live = live_bytes(store.as_ref(), &keys).await?;
        let on_disk = tokio::fs::read(&written.path).await?;
        assert_eq!(live.len(), on_disk.len());
        assert!(live == on_disk, "the parts differ from the final log");
        assert!(!String::from_utf8_lossy(&live).contains("hunter2"));
        // Memory holds a part at a time: none is larger than the most one upload reads.
        let index: LiveLogIndex = serde_json::from_slice(&store.get(&keys.index()).await?)?;
        assert!(index.part_starts.len() >= 4, "{index:?}");
        for number in 0..index.part_starts.len() {
            let (start, end) = index.part_range(number).unwrap_or_default();
            assert!(
                end - start <= PART_MAX_BYTES,
                "part {number}: {start}..{end}"
            );
        }
        Ok(())
    }
}
