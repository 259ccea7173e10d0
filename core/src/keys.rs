//! Run identifiers and the layout of a run's objects in the bucket (or the embedded
//! store, which mirrors it): `runs/<run_id>/run.json`, `runs/<run_id>/phases/<phase>.json`,
//! `runs/<run_id>/artifacts/...`.

use crate::phase::Phase;
use std::fmt;

/// A run's identifier: lowercase letters, digits and '-', 8 to 64 characters. Runners make
/// them time-ordered (UUIDv7) so that listings sort newest last.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

/// The text is not a run identifier.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a run id (8-64 of a-z, 0-9, '-')")]
pub struct InvalidRunId(String);

impl RunId {
    pub fn parse(id: &str) -> Result<Self, InvalidRunId> {
        let ok = (8..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(RunId(id.to_owned()))
        } else {
            Err(InvalidRunId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every run's objects live under this prefix.
pub const RUNS_PREFIX: &str = "runs/";

pub fn run_prefix(run: &RunId) -> String {
    format!("{RUNS_PREFIX}{run}/")
}

pub fn run_json(run: &RunId) -> String {
    format!("{RUNS_PREFIX}{run}/run.json")
}

/// The request the run executes, written once before its run.json (see
/// `specrun_store::runs::pin_request`). Not an artifact: the status API does not serve it.
pub fn request(run: &RunId) -> String {
    format!("{RUNS_PREFIX}{run}/request.json")
}

/// Present when an operator asked to cancel the run.
pub fn cancel(run: &RunId) -> String {
    format!("{RUNS_PREFIX}{run}/cancel.json")
}

/// The run's lease (see [`crate::lease`]).
pub fn lease(run: &RunId) -> String {
    format!("{RUNS_PREFIX}{run}/lease.json")
}

pub fn phase_json(run: &RunId, phase: Phase) -> String {
    format!("{RUNS_PREFIX}{run}/phases/{phase}.json")
}

/// An artifact's key; `name` is a file name chosen by specrun, never by the agent.
/// The key of an artifact of one attempt: attempt 1's at [`artifact`], a later
/// attempt's under `artifacts/attempt-<n>/`, so a runner that took a run over never
/// overwrites what `previous_attempts` point at.
pub fn attempt_artifact(run: &RunId, attempt: u32, phase: Option<Phase>, name: &str) -> String {
    if attempt <= 1 {
        return artifact(run, phase, name);
    }
    let inner = match phase {
        Some(phase) => format!("{phase}/{name}"),
        None => name.to_owned(),
    };
    format!("{RUNS_PREFIX}{run}/artifacts/attempt-{attempt}/{inner}")
}

pub fn artifact(run: &RunId, phase: Option<Phase>, name: &str) -> String {
    match phase {
        Some(phase) => format!("{RUNS_PREFIX}{run}/artifacts/{phase}/{name}"),
        None => format!("{RUNS_PREFIX}{run}/artifacts/{name}"),
    }
}

/// Where the listing index lives: one empty object per run, named so that ascending key
/// order is newest first.
pub const RUN_INDEX_PREFIX: &str = "index/runs/";

/// The index key of a run created at `created_ms` (milliseconds since the epoch).
pub fn run_index(run: &RunId, created_ms: u64) -> String {
    let inverted = 9_999_999_999_999u64.saturating_sub(created_ms);
    format!("{RUN_INDEX_PREFIX}{inverted:013}-{run}")
}

/// The run id an index key names.
pub fn run_from_index(key: &str) -> Option<RunId> {
    let rest = key.strip_prefix(RUN_INDEX_PREFIX)?;
    let (_, id) = rest.split_once('-')?;
    RunId::parse(id).ok()
}

/// Whether `key` is exactly what [`run_index`] makes: the prefix, 13 digits, '-', a run
/// id. A listing cursor is an index key, and nothing else is passed to the store as one.
pub fn is_run_index(key: &str) -> bool {
    let Some((millis, id)) = key
        .strip_prefix(RUN_INDEX_PREFIX)
        .and_then(|rest| rest.split_once('-'))
    else {
        return false;
    };
    millis.len() == 13 && millis.bytes().all(|b| b.is_ascii_digit()) && RunId::parse(id).is_ok()
}

/// Where an idempotency key's claim lives; the key is hashed by the caller (sha256 hex).
pub fn idempotency(key_sha256: &str) -> String {
    format!("idempotency/{key_sha256}.json")
}

/// Where the lock on one repository's branch lives (see [`crate::branch_lock`]); the
/// repository and branch are hashed by the caller (sha256 hex of `repository NUL branch`).
pub fn branch_lock(repository_branch_sha256: &str) -> String {
    format!("locks/branches/{repository_branch_sha256}.json")
}

/// A key is safe to map onto a filesystem path: relative, no empty, `.` or `..` segments.
pub fn is_safe_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'))
        && !key.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_after_the_first_keeps_its_artifacts_apart() {
        let run =
            RunId::parse("0193a1b2-0000-7000-8000-000000000000").unwrap_or_else(|_| unreachable!());
        assert_eq!(
            attempt_artifact(&run, 1, Some(Phase::Plan), "agent.stdout.log"),
            artifact(&run, Some(Phase::Plan), "agent.stdout.log")
        );
        assert_eq!(
            attempt_artifact(&run, 2, Some(Phase::Plan), "agent.stdout.log"),
            "runs/0193a1b2-0000-7000-8000-000000000000/artifacts/attempt-2/plan/agent.stdout.log"
        );
        assert_eq!(
            attempt_artifact(&run, 3, None, "egress.log"),
            "runs/0193a1b2-0000-7000-8000-000000000000/artifacts/attempt-3/egress.log"
        );
    }

    #[test]
    fn layout_matches_the_contract() {
        let id = RunId::parse("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        let id = id.ok();
        let keys = id.map(|id| {
            (
                run_json(&id),
                phase_json(&id, Phase::PullRequest),
                artifact(&id, Some(Phase::Plan), "stdout.log"),
            )
        });
        assert_eq!(
            keys,
            Some((
                "runs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/run.json".into(),
                "runs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/phases/pull_request.json".into(),
                "runs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/artifacts/plan/stdout.log".into(),
            ))
        );
    }

    #[test]
    fn the_index_lists_newest_first() {
        let id = |s: &str| RunId::parse(s).ok();
        let (old, new) = (id("aaaaaaaa-old"), id("bbbbbbbb-new"));
        let keys = old
            .zip(new)
            .map(|(old, new)| (run_index(&old, 1_000), run_index(&new, 2_000)));
        let (old_key, new_key) = keys.unwrap_or_default();
        assert!(new_key < old_key);
        assert_eq!(
            run_from_index(&new_key).map(|r| r.to_string()),
            Some("bbbbbbbb-new".into())
        );
    }

    #[test]
    fn only_index_keys_pass_as_cursors() {
        let id = RunId::parse("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").ok();
        let key = id.map(|id| run_index(&id, 1_767_225_600_000));
        assert!(key.as_deref().is_some_and(is_run_index), "{key:?}");
        for bad in [
            "",
            "index/runs/",
            "index/runs/8232774399999",
            "index/runs/823277439999-0193a1b2-c3d4",
            "index/runs/+232774399999-0193a1b2-c3d4",
            "index/runs/8232774399999-UPPER-CASE",
            "index/runs/8232774399999-0193a1b2/../../x",
            "runs/0193a1b2/run.json",
            "idempotency/abc.json",
            "index/runs/8232774399999-0193a1b2\n",
        ] {
            assert!(!is_run_index(bad), "{bad:?}");
        }
    }

    #[test]
    fn hostile_ids_and_keys_are_refused() {
        for bad in ["../../etc", "short", "UPPER-CASE-ID", "a/b/c/d/e/f"] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
        for bad in ["", "/abs", "a/../b", "a//b", "a/./b", "a\\b"] {
            assert!(!is_safe_key(bad), "{bad}");
        }
        assert!(is_safe_key("runs/x/run.json"));
    }
}
