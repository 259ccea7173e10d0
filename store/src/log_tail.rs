//! Reading a phase's log from an offset, the same bytes live and final: while the phase
//! runs, from the parts the runner streams (`specrun_core::live_log`); once it ended,
//! from its final artifact by range reads. Memory holds at most one answer, whatever the
//! log's size. The status API (`GET /runs/{id}/logs/{phase}`) and `specrun logs -f` both
//! read through here.

use crate::runs::{load_json, run_id};
use specrun_core::live_log::{phase_log_name, LiveLogIndex, LiveLogKeys, LogStream};
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::state::RunRecord;
use specrun_core::Phase;

/// The most bytes one read returns.
pub const MAX_READ_BYTES: u64 = 1024 * 1024;

/// Bytes of a phase's log from an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub bytes: Vec<u8>,
    /// Where the next read starts: the offset plus the bytes returned.
    pub next_offset: u64,
    /// The phase is running, or has not run yet in a run that is not over: more bytes
    /// may come. False once the phase ended (its final log stored) or never ran.
    pub writing: bool,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("offset {offset} is past the {size} bytes of this log stored so far")]
    PastEnd { offset: u64, size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Up to `max` bytes (at most [`MAX_READ_BYTES`]) of the `stream` log of `phase` of the
/// run `record`, from `offset`.
pub async fn read_phase_log(
    store: &dyn BlobStore,
    record: &RunRecord,
    phase: Phase,
    stream: LogStream,
    offset: u64,
    max: u64,
) -> Result<LogChunk, TailError> {
    let state = record.phase(phase);
    let writing = !state.status.is_final() && !record.status.is_final();
    let max = max.min(MAX_READ_BYTES);
    let Some(name) = phase_log_name(phase, stream) else {
        // A phase that runs no command in the job has an empty log.
        check_offset(offset, 0)?;
        return Ok(chunk(Vec::new(), offset, writing));
    };
    let bytes = match state.artifacts.iter().find(|a| a.name == name) {
        Some(artifact) => {
            let size = artifact.size;
            check_offset(offset, size)?;
            let len = max.min(size - offset);
            if len == 0 {
                Vec::new()
            } else {
                store.get_range(&artifact.key, offset, len).await?
            }
        }
        None => {
            let run = run_id(record)?;
            let keys = LiveLogKeys::new(&run, record.attempt, phase, &name);
            read_live(store, &keys, offset, max).await?
        }
    };
    Ok(chunk(bytes, offset, writing))
}

fn chunk(bytes: Vec<u8>, offset: u64, writing: bool) -> LogChunk {
    LogChunk {
        next_offset: offset + bytes.len() as u64,
        bytes,
        writing,
    }
}

fn check_offset(offset: u64, size: u64) -> Result<(), TailError> {
    if offset > size {
        return Err(TailError::PastEnd { offset, size });
    }
    Ok(())
}

/// Reads from the live parts: the index, then the parts from the one holding `offset`.
async fn read_live(
    store: &dyn BlobStore,
    keys: &LiveLogKeys,
    offset: u64,
    max: u64,
) -> Result<Vec<u8>, TailError> {
    let index: LiveLogIndex = load_json(store, &keys.index())
        .await?
        .unwrap_or_else(LiveLogIndex::new);
    check_offset(offset, index.size)?;
    let mut bytes = Vec::new();
    let mut at = offset;
    while (bytes.len() as u64) < max {
        let Some((number, (start, end))) = index
            .part_at(at)
            .and_then(|n| index.part_range(n).map(|range| (n, range)))
        else {
            break;
        };
        let want = (end - at).min(max - bytes.len() as u64);
        let part = store
            .get_range(&keys.part(number), at - start, want)
            .await?;
        if part.is_empty() {
            break;
        }
        at += part.len() as u64;
        bytes.extend_from_slice(&part);
    }
    Ok(bytes)
}
