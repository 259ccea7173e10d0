//! Artifacts: phase logs written to disk as they stream (redacted, hashed, counted, with
//! the last lines kept for error excerpts, and cut off at a size cap), then stored under
//! the run's prefix with their size, sha256 and expiry recorded.
//!
//! Everything the agent prints is input: a log keeps at most its cap on disk, and
//! whatever the agent prints past it is still read from the exec (so the command is not
//! blocked) but only counted. Memory stays flat: a chunk at a time, plus the tail.

use crate::engine::live_log::{LiveFeed, LiveUpload};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use specrun_core::keys::{self, RunId};
use specrun_core::live_log::LiveLogKeys;
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::redact::{RedactingStream, Redactor};
use specrun_core::state::ArtifactRef;
use specrun_core::Phase;
use specrun_sandbox::{OutputSink, Stream};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::Duration;
use tokio::io::AsyncWriteExt;

/// How many bytes of a log's end are kept for an error's excerpt.
const TAIL_BYTES: usize = 4096;

/// A log's cap when the configuration sets none (`SPECRUN_LOG_CAP_BYTES`).
pub const DEFAULT_LOG_CAP_BYTES: u64 = 64 * 1024 * 1024;

/// One log file being written.
pub struct LogFile {
    path: PathBuf,
    file: tokio::fs::File,
    redacting: RedactingStream,
    hasher: Sha256,
    size: u64,
    tail: Vec<u8>,
    /// Most bytes stored; what comes after is counted in `dropped`.
    cap: u64,
    dropped: u64,
    /// Told how many bytes are on disk when the log streams to the store as it grows.
    live: Option<LiveFeed>,
}

/// A finished log: where it is and what it holds.
#[derive(Debug, Clone)]
pub struct WrittenLog {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub tail: String,
    /// Bytes the command printed past the cap, not stored; the log then ends with a
    /// truncation marker line. None: nothing was dropped.
    pub truncated_bytes: Option<u64>,
}

impl LogFile {
    /// A log that stores at most `cap` bytes (then a truncation marker).
    pub async fn create_capped(
        path: PathBuf,
        redactor: &Redactor,
        cap: u64,
    ) -> std::io::Result<Self> {
        let file = tokio::fs::File::create(&path).await?;
        Ok(LogFile {
            path,
            file,
            redacting: redactor.stream(),
            hasher: Sha256::new(),
            size: 0,
            tail: Vec::new(),
            cap,
            dropped: 0,
            live: None,
        })
    }

    /// Streams this log to the store as it grows (see [`crate::engine::live_log`]).
    pub fn stream_live(
        &mut self,
        store: Arc<dyn BlobStore>,
        keys: LiveLogKeys,
        interval: std::time::Duration,
    ) -> LiveUpload {
        let (feed, upload) = LiveUpload::start(store, keys, self.path.clone(), interval);
        self.live = Some(feed);
        upload
    }

    /// Stores redacted bytes up to the cap and counts the rest.
    async fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let room = usize::try_from(self.cap.saturating_sub(self.size)).unwrap_or(usize::MAX);
        let (kept, over) = bytes.split_at(bytes.len().min(room));
        self.dropped += over.len() as u64;
        self.store(kept).await
    }

    async fn store(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes).await?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TAIL_BYTES * 2 {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
        if let Some(live) = &self.live {
            // The uploader reads the file: what it is told of must be there.
            self.file.flush().await?;
            live.written(self.size);
        }
        Ok(())
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.size >= self.cap {
            // Full: the bytes are counted, not redacted (nothing of them is kept).
            self.dropped += chunk.len() as u64;
            return Ok(());
        }
        let safe = self.redacting.push(chunk);
        self.emit(&safe).await
    }

    pub async fn finish(mut self) -> std::io::Result<WrittenLog> {
        let rest = self.redacting.finish();
        self.emit(&rest).await?;
        let truncated_bytes = (self.dropped > 0).then_some(self.dropped);
        if let Some(dropped) = truncated_bytes {
            // On a line of its own, also when the cap fell inside a line.
            let newline = if self.tail.last().is_some_and(|b| *b != b'\n') {
                "\n"
            } else {
                ""
            };
            let marker =
                format!("{newline}[specrun: log truncated: {dropped} further bytes not stored]\n");
            self.store(marker.as_bytes()).await?;
        }
        self.file.flush().await?;
        if let Some(live) = &self.live {
            live.finished(self.size);
        }
        let start = self.tail.len().saturating_sub(TAIL_BYTES);
        Ok(WrittenLog {
            path: self.path,
            size: self.size,
            sha256: format!("{:x}", self.hasher.finalize()),
            tail: String::from_utf8_lossy(&self.tail[start..]).into_owned(),
            truncated_bytes,
        })
    }
}

/// The longest line of a log read as a whole; longer lines are passed over.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Calls `each` with every line of `log` (without its line ending, decoded lossily) of at
/// most `max` bytes, and returns how many longer lines were passed over: memory holds one
/// line, whatever the log holds. Blocking; for `spawn_blocking`.
pub fn for_each_line(
    mut log: impl BufRead,
    max: usize,
    mut each: impl FnMut(&str),
) -> std::io::Result<u64> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut passed_over = 0;
    let mut end_line = |line: &mut Vec<u8>, too_long: &mut bool| {
        if std::mem::take(too_long) {
            passed_over += 1;
        } else {
            each(&String::from_utf8_lossy(line));
        }
        line.clear();
    };
    loop {
        let buffer = log.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        let newline = buffer.iter().position(|b| *b == b'\n');
        let part = &buffer[..newline.unwrap_or(buffer.len())];
        if !too_long && line.len() + part.len() > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(part);
        }
        let used = newline.map_or(buffer.len(), |at| at + 1);
        log.consume(used);
        if newline.is_some() {
            end_line(&mut line, &mut too_long);
        }
    }
    if too_long || !line.is_empty() {
        end_line(&mut line, &mut too_long);
    }
    Ok(passed_over)
}

/// The stdout and stderr logs of one command.
pub struct CommandLogs {
    pub stdout: LogFile,
    pub stderr: LogFile,
}

impl CommandLogs {
    /// Creates `<dir>/<stem>.stdout.log` and `<dir>/<stem>.stderr.log`, each capped at
    /// `cap` bytes (`RunnerConfig::log_cap_bytes`).
    pub async fn create(
        dir: &Path,
        stem: &str,
        redactor: &Redactor,
        cap: u64,
    ) -> std::io::Result<Self> {
        let log = |stream: &str| dir.join(format!("{stem}.{stream}.log"));
        Ok(CommandLogs {
            stdout: LogFile::create_capped(log("stdout"), redactor, cap).await?,
            stderr: LogFile::create_capped(log("stderr"), redactor, cap).await?,
        })
    }

    pub async fn finish(self) -> std::io::Result<(WrittenLog, WrittenLog)> {
        Ok((self.stdout.finish().await?, self.stderr.finish().await?))
    }

    /// Streams both logs to the store under `artifacts`' live keys for `phase`, named as
    /// their artifacts will be; `interval` is how often new bytes go up.
    pub fn stream_live(
        &mut self,
        artifacts: &ArtifactStore,
        phase: Phase,
        stem: &str,
        interval: std::time::Duration,
    ) -> LiveUploads {
        let mut uploads = Vec::new();
        for (stream, log) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
            let keys = artifacts.live_keys(phase, &format!("{stem}.{stream}.log"));
            uploads.push(log.stream_live(artifacts.store.clone(), keys, interval));
        }
        LiveUploads(uploads)
    }
}

/// The uploaders of a command's live logs.
pub struct LiveUploads(Vec<LiveUpload>);

impl LiveUploads {
    /// Waits, a bounded time, for the finished logs' last parts to go up.
    pub async fn finish(self) {
        // The uploaders run on their own; waiting for one lets the others go on.
        for upload in self.0 {
            upload.finish().await;
        }
    }
}

#[async_trait]
impl OutputSink for CommandLogs {
    async fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        match stream {
            Stream::Stdout => self.stdout.write(bytes).await,
            Stream::Stderr => self.stderr.write(bytes).await,
        }
    }
}

/// Stores a run's artifacts and describes them for run.json.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn BlobStore>,
    run_id: RunId,
    attempt: u32,
    retention: Duration,
}

impl ArtifactStore {
    /// Artifacts of `attempt` of the run (keys per attempt: [`keys::attempt_artifact`]).
    pub fn new(
        store: Arc<dyn BlobStore>,
        run_id: RunId,
        attempt: u32,
        retention_days: u32,
    ) -> Self {
        ArtifactStore {
            store,
            run_id,
            attempt,
            retention: Duration::days(i64::from(retention_days)),
        }
    }

    fn describe(
        &self,
        phase: Option<Phase>,
        name: &str,
        size: u64,
        sha256: String,
        content_type: &str,
    ) -> ArtifactRef {
        ArtifactRef {
            name: name.to_owned(),
            key: keys::attempt_artifact(&self.run_id, self.attempt, phase, name),
            size,
            sha256,
            content_type: content_type.to_owned(),
            phase,
            expires_at: specrun_store::runs::now() + self.retention,
        }
    }

    /// Where the live parts of this attempt's log `name` of `phase` go.
    pub fn live_keys(&self, phase: Phase, name: &str) -> LiveLogKeys {
        LiveLogKeys::new(&self.run_id, self.attempt, phase, name)
    }

    /// Uploads a finished log.
    pub async fn put_log(
        &self,
        phase: Option<Phase>,
        name: &str,
        log: &WrittenLog,
    ) -> Result<ArtifactRef, StoreError> {
        let artifact = self.describe(
            phase,
            name,
            log.size,
            log.sha256.clone(),
            "text/plain; charset=utf-8",
        );
        self.store
            .put_file(&artifact.key, &log.path, &artifact.content_type)
            .await?;
        Ok(artifact)
    }

    /// Uploads bytes made by the runner (reports, summaries); the caller has redacted them.
    pub async fn put_bytes(
        &self,
        phase: Option<Phase>,
        name: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<ArtifactRef, StoreError> {
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let artifact = self.describe(phase, name, bytes.len() as u64, sha256, content_type);
        self.store
            .put(&artifact.key, bytes.into(), content_type)
            .await?;
        Ok(artifact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_are_redacted_hashed_and_tailed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let redactor = Redactor::new(["hunter2-secret"]);
        let mut log =
            LogFile::create_capped(dir.path().join("x.log"), &redactor, DEFAULT_LOG_CAP_BYTES)
                .await?;
        log.write(b"line one hunter2-").await?;
        log.write(b"secret end\n").await?;
        let written = log.finish().await?;
        let on_disk = tokio::fs::read_to_string(&written.path).await?;
        assert_eq!(on_disk, "line one *** end\n");
        assert_eq!(written.size, on_disk.len() as u64);
        assert_eq!(
            written.sha256,
            format!("{:x}", Sha256::digest(on_disk.as_bytes()))
        );
        assert_eq!(written.tail, on_disk);
        assert_eq!(written.truncated_bytes, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_flood_of_output_is_stored_up_to_the_cap_and_counted() -> std::io::Result<()> {
        const CAP: u64 = 1024 * 1024;
        const TOTAL: u64 = 200 * 1024 * 1024;
        let dir = tempfile::tempdir()?;
        let redactor = Redactor::new(["hunter2-secret"]);
        let mut log = LogFile::create_capped(dir.path().join("x.log"), &redactor, CAP).await?;
        // Generated a chunk at a time, as an exec streams it: never held whole.
        let mut chunk = vec![b'a'; 64 * 1024];
        chunk[..15].copy_from_slice(b"hunter2-secret\n");
        log.write(&chunk).await?;
        chunk[..15].fill(b'b');
        for _ in 1..TOTAL / chunk.len() as u64 {
            log.write(&chunk).await?;
        }
        let written = log.finish().await?;
        let on_disk = tokio::fs::read(&written.path).await?;
        // The one secret, stored, became `***`: 11 bytes fewer.
        let dropped = TOTAL - 11 - CAP;
        let marker = format!("\n[specrun: log truncated: {dropped} further bytes not stored]\n");
        assert_eq!(on_disk.len() as u64, CAP + marker.len() as u64);
        assert!(on_disk.starts_with(b"***\naaa"));
        assert!(on_disk.ends_with(marker.as_bytes()));
        assert_eq!(written.size, on_disk.len() as u64);
        assert_eq!(written.truncated_bytes, Some(dropped));
        assert!(written.tail.ends_with(&marker), "{}", written.tail);
        assert!(written.tail.len() <= TAIL_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_secret_across_the_cap_is_masked_before_the_cut() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let redactor = Redactor::new(["hunter2-secret"]);
        let mut log = LogFile::create_capped(dir.path().join("x.log"), &redactor, 9).await?;
        log.write(b"0123456hunter2-").await?;
        log.write(b"secret and more\n").await?;
        let written = log.finish().await?;
        let on_disk = tokio::fs::read_to_string(&written.path).await?;
        assert_eq!(
            on_disk,
            "0123456**\n[specrun: log truncated: 11 further bytes not stored]\n"
        );
        Ok(())
    }

    #[test]
    fn lines_are_read_one_at_a_time_and_giant_ones_passed_over() -> std::io::Result<()> {
        let mut log = b"one\r\n".to_vec();
        log.extend(vec![b'x'; 3 * 100]);
        log.extend(b"\ntwo\n\n");
        log.extend(vec![b'y'; 101]);
        let mut seen = Vec::new();
        // A small buffer, so that lines span several reads.
        let reader = std::io::BufReader::with_capacity(7, &log[..]);
        let passed_over = for_each_line(reader, 100, |line| seen.push(line.to_owned()))?;
        assert_eq!(seen, ["one\r", "two", ""]);
        assert_eq!(passed_over, 2);
        Ok(())
    }

    #[test]
    fn an_event_log_with_a_giant_line_is_summarised_around_it() -> std::io::Result<()> {
        use specrun_core::codex_events::CodexSummary;
        use specrun_core::event_summary::EventSummary;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agent.stdout.log");
        let command = r#"{"type":"item.completed","item":{"type":"command_execution","command":"ls","exit_code":0}}"#;
        let giant = format!(
            r#"{{"type":"item.completed","item":{{"type":"command_execution","command":"{}"}}}}"#,
            "x".repeat(3 * MAX_LINE_BYTES)
        );
        std::fs::write(&path, format!("{command}\n{giant}\n{command}\n"))?;
        let mut summary = CodexSummary::default();
        let reader = std::io::BufReader::new(std::fs::File::open(&path)?);
        let passed_over = for_each_line(reader, MAX_LINE_BYTES, |l| summary.add_line(l))?;
        assert_eq!(passed_over, 1);
        assert_eq!(summary.commands.len(), 2);
        Ok(())
    }
}
