//! Logs that stream: while a phase runs, its redacted log reaches the store as numbered
//! parts, with a small index that says where each part starts and how many bytes are
//! live, so a reader answers from any offset by reading one index and the parts it needs.
//! The parts hold exactly the bytes the final artifact holds, in order, so an offset
//! means the same in both. Pure data: the runner writes parts
//! (`runner/src/engine/live_log.rs`), `specrun_store::log_tail` reads them.

use crate::keys::{self, RunId};
use crate::phase::Phase;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which of a command's two logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        LogStream::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command whose logs are a phase's logs (its artifacts are `<stem>.stdout.log` and
/// `<stem>.stderr.log`): the agent's in the Spec Kit phases (specify also runs Spec
/// Kit's initialisation first, which is not streamed), the agent's version check in
/// prepare, a retry's restore in clone. The other phases run no command in the job.
pub fn phase_log_stem(phase: Phase) -> Option<&'static str> {
    match phase {
        Phase::Prepare => Some("agent-version"),
        Phase::Clone => Some("restore"),
        Phase::Specify | Phase::Plan | Phase::Tasks => Some("agent"),
        Phase::Commit | Phase::Push | Phase::PullRequest | Phase::Cleanup => None,
    }
}

/// The artifact name of a phase's log of `stream`, when the phase has a log.
pub fn phase_log_name(phase: Phase, stream: LogStream) -> Option<String> {
    phase_log_stem(phase).map(|stem| format!("{stem}.{stream}.log"))
}

/// Where one live log's objects are: `runs/<id>/live/attempt-<n>/<phase>/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLogKeys {
    prefix: String,
}

impl LiveLogKeys {
    /// The live log of the artifact `name` of `phase`, in `attempt` of the run (attempts
    /// apart, as their artifacts are: a retried phase starts a log of its own).
    pub fn new(run: &RunId, attempt: u32, phase: Phase, name: &str) -> Self {
        LiveLogKeys {
            prefix: format!(
                "{}live/attempt-{}/{phase}/{name}/",
                keys::run_prefix(run),
                attempt.max(1)
            ),
        }
    }

    pub fn index(&self) -> String {
        format!("{}index.json", self.prefix)
    }

    /// Part `number` (from 0), named so that listing order is part order.
    pub fn part(&self, number: usize) -> String {
        format!("{}part-{number:06}", self.prefix)
    }
}

/// The index object: the log's live size and where each part starts. Parts are written
/// before the index that names them, so every part it names exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveLogIndex {
    pub schema_version: u32,
    /// Bytes stored in parts so far: the parts end-to-end are the log's first `size` bytes.
    pub size: u64,
    /// The offset of each part's first byte, ascending; part `i` ends where part `i + 1`
    /// starts (the last one at `size`).
    pub part_starts: Vec<u64>,
}

/// The index's format version.
pub const LIVE_LOG_SCHEMA_VERSION: u32 = 1;

impl LiveLogIndex {
    pub fn new() -> Self {
        LiveLogIndex {
            schema_version: LIVE_LOG_SCHEMA_VERSION,
            ..Default::default()
        }
    }

    /// Records a part of `len` bytes after the last; returns its number.
    pub fn push_part(&mut self, len: u64) -> usize {
        self.part_starts.push(self.size);
        self.size += len;
        self.part_starts.len() - 1
    }

    /// The byte range `[start, end)` part `number` holds.
    pub fn part_range(&self, number: usize) -> Option<(u64, u64)> {
        let start = *self.part_starts.get(number)?;
        let end = self
            .part_starts
            .get(number + 1)
            .copied()
            .unwrap_or(self.size);
        Some((start, end))
    }

    /// The part that holds byte `offset`; none past the live bytes.
    pub fn part_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        // The last part starting at or before the offset.
        let after = self.part_starts.partition_point(|start| *start <= offset);
        after.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_found_in_the_part_that_holds_it() {
        let mut index = LiveLogIndex::new();
        assert_eq!(index.part_at(0), None);
        assert_eq!(index.push_part(10), 0);
        assert_eq!(index.push_part(5), 1);
        assert_eq!(index.push_part(1), 2);
        assert_eq!(index.size, 16);
        assert_eq!(index.part_at(0), Some(0));
        assert_eq!(index.part_at(9), Some(0));
        assert_eq!(index.part_at(10), Some(1));
        assert_eq!(index.part_at(15), Some(2));
        assert_eq!(index.part_at(16), None);
        assert_eq!(index.part_range(1), Some((10, 15)));
        assert_eq!(index.part_range(2), Some((15, 16)));
        assert_eq!(index.part_range(3), None);
    }

    #[test]
    fn keys_sit_under_the_run_per_attempt_and_phase() {
        let run = RunId::parse("0193a1b2-0000-7000-8000-000000000000").ok();
        let keys = run.map(|run| LiveLogKeys::new(&run, 2, Phase::Plan, "agent.stdout.log"));
        assert_eq!(
            keys.map(|k| (k.index(), k.part(7))),
            Some((
                "runs/0193a1b2-0000-7000-8000-000000000000/live/attempt-2/plan/agent.stdout.log/index.json".to_owned(),
                "runs/0193a1b2-0000-7000-8000-000000000000/live/attempt-2/plan/agent.stdout.log/part-000007".to_owned(),
            ))
        );
        assert_eq!(
            phase_log_name(Phase::Specify, LogStream::Stderr).as_deref(),
            Some("agent.stderr.log")
        );
        assert_eq!(phase_log_name(Phase::Push, LogStream::Stdout), None);
        assert_eq!(LogStream::parse("stderr"), Some(LogStream::Stderr));
        assert_eq!(LogStream::parse("both"), None);
    }
}
