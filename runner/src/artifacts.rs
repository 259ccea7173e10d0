//! Artifacts: phase logs written to disk as they stream (redacted, hashed, counted, with
//! the last lines kept for error excerpts), then stored under the run's prefix with their
//! size, sha256 and expiry recorded.

use crate::docker::{OutputSink, Stream};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use specrun_core::keys::{self, RunId};
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::redact::{RedactingStream, Redactor};
use specrun_core::state::ArtifactRef;
use specrun_core::Phase;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tokio::io::AsyncWriteExt;

/// How many bytes of a log's end are kept for an error's excerpt.
const TAIL_BYTES: usize = 4096;

/// One log file being written.
pub struct LogFile {
    path: PathBuf,
    file: tokio::fs::File,
    redacting: RedactingStream,
    hasher: Sha256,
    size: u64,
    tail: Vec<u8>,
}

/// A finished log: where it is and what it holds.
#[derive(Debug, Clone)]
pub struct WrittenLog {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub tail: String,
}

impl LogFile {
    pub async fn create(path: PathBuf, redactor: &Redactor) -> std::io::Result<Self> {
        let file = tokio::fs::File::create(&path).await?;
        Ok(LogFile {
            path,
            file,
            redacting: redactor.stream(),
            hasher: Sha256::new(),
            size: 0,
            tail: Vec::new(),
        })
    }

    async fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
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
        Ok(())
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let safe = self.redacting.push(chunk);
        self.emit(&safe).await
    }

    pub async fn finish(mut self) -> std::io::Result<WrittenLog> {
        let rest = self.redacting.finish();
        self.emit(&rest).await?;
        self.file.flush().await?;
        let start = self.tail.len().saturating_sub(TAIL_BYTES);
        Ok(WrittenLog {
            path: self.path,
            size: self.size,
            sha256: format!("{:x}", self.hasher.finalize()),
            tail: String::from_utf8_lossy(&self.tail[start..]).into_owned(),
        })
    }
}

/// The stdout and stderr logs of one command.
pub struct CommandLogs {
    pub stdout: LogFile,
    pub stderr: LogFile,
}

impl CommandLogs {
    /// Creates `<dir>/<stem>.stdout.log` and `<dir>/<stem>.stderr.log`.
    pub async fn create(dir: &Path, stem: &str, redactor: &Redactor) -> std::io::Result<Self> {
        Ok(CommandLogs {
            stdout: LogFile::create(dir.join(format!("{stem}.stdout.log")), redactor).await?,
            stderr: LogFile::create(dir.join(format!("{stem}.stderr.log")), redactor).await?,
        })
    }

    pub async fn finish(self) -> std::io::Result<(WrittenLog, WrittenLog)> {
        Ok((self.stdout.finish().await?, self.stderr.finish().await?))
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
    retention: Duration,
}

impl ArtifactStore {
    pub fn new(store: Arc<dyn BlobStore>, run_id: RunId, retention_days: u32) -> Self {
        ArtifactStore {
            store,
            run_id,
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
            key: keys::artifact(&self.run_id, phase, name),
            size,
            sha256,
            content_type: content_type.to_owned(),
            phase,
            expires_at: OffsetDateTime::now_utc() + self.retention,
        }
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
        self.store.put(&artifact.key, bytes, content_type).await?;
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
        let mut log = LogFile::create(dir.path().join("x.log"), &redactor).await?;
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
        Ok(())
    }
}
