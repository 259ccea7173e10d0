//! One run per repository and branch at a time: the lock a run holds on the branch it
//! publishes, from its push until it reaches a final status. Taken with a conditional
//! write in the store (`locks/branches/<sha256>.json`), across runners, so two pushes to
//! one branch never race. Whether a holder still holds it is decided here, from what the
//! store says about the holder's run; callers pass the facts and the time in.
//!
//! "Same branch" is the branch the run publishes, known for a request that names
//! `branch_name` from the start, and for Spec Kit's auto-named branches (`NNN-short-name`)
//! only after specify: so the lock is taken where every run knows it, right before push.

use crate::lease::Lease;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;

/// `locks/branches/<sha256(repository NUL branch)>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchLock {
    #[serde(default = "one")]
    pub schema_version: u32,
    pub repository: String,
    pub branch: String,
    /// The run that holds (or last held) the branch.
    pub run_id: String,
    #[serde(default)]
    pub runner_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    /// For a holder without a lease (`specrun run`): when its run's time limit ends, after
    /// which the lock is free whatever its run.json says (the process may have died).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

fn one() -> u32 {
    1
}

/// What the store says about the run a lock names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderRun {
    /// No run.json: the run was removed (or never written).
    Missing,
    /// The run reached a final status: it publishes nothing more.
    Finished,
    /// The run is queued or running.
    Unfinished,
}

impl BranchLock {
    /// Whether the lock still keeps other runs off the branch: its run is unfinished and
    /// alive, by its lease when it has one (a runner's run), else by the lock's own expiry
    /// (a `specrun run` that may have died with its process).
    pub fn is_held(&self, holder: HolderRun, lease: Option<&Lease>, now: OffsetDateTime) -> bool {
        match holder {
            HolderRun::Missing | HolderRun::Finished => false,
            HolderRun::Unfinished => match lease {
                Some(lease) => lease.is_live(now),
                None => now < self.expires_at,
            },
        }
    }
}

/// What a run does when another run holds its branch (`SPECRUN_BRANCH_BUSY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BranchBusy {
    /// Wait, recorded in run.json (`waiting_for`), until the holder finishes.
    #[default]
    Wait,
    /// Fail at once with `branch_busy`.
    Refuse,
}

impl fmt::Display for BranchBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BranchBusy::Wait => "wait",
            BranchBusy::Refuse => "refuse",
        })
    }
}

/// Not `wait` or `refuse`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not wait or refuse")]
pub struct UnknownBranchBusy(pub String);

impl FromStr for BranchBusy {
    type Err = UnknownBranchBusy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wait" => Ok(BranchBusy::Wait),
            "refuse" => Ok(BranchBusy::Refuse),
            other => Err(UnknownBranchBusy(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn lock() -> BranchLock {
        BranchLock {
            schema_version: 1,
            repository: "octo/hello".into(),
            branch: "001-login".into(),
            run_id: "run-a".into(),
            runner_id: Some("runner-a".into()),
            acquired_at: datetime!(2026-12-03 12:00 UTC),
            expires_at: datetime!(2026-12-03 13:00 UTC),
        }
    }

    fn lease(until: OffsetDateTime) -> Lease {
        Lease {
            run_id: "run-a".into(),
            runner_id: "runner-a".into(),
            token: "t".into(),
            attempt: 1,
            expires_at: until,
        }
    }

    #[test]
    fn a_finished_or_missing_holder_frees_the_branch() {
        let now = datetime!(2026-12-03 12:01 UTC);
        let live = lease(datetime!(2026-12-03 12:05 UTC));
        assert!(!lock().is_held(HolderRun::Finished, Some(&live), now));
        assert!(!lock().is_held(HolderRun::Missing, None, now));
        assert!(lock().is_held(HolderRun::Unfinished, Some(&live), now));
    }

    #[test]
    fn a_dead_holder_frees_the_branch_by_its_lease_or_else_the_lock_expiry() {
        let now = datetime!(2026-12-03 12:10 UTC);
        let lapsed = lease(datetime!(2026-12-03 12:05 UTC));
        assert!(!lock().is_held(HolderRun::Unfinished, Some(&lapsed), now));
        assert!(lock().is_held(HolderRun::Unfinished, None, now));
        assert!(!lock().is_held(HolderRun::Unfinished, None, datetime!(2026-12-03 13:00 UTC)));
    }

    #[test]
    fn the_policy_reads_its_two_names_only() {
        assert_eq!("wait".parse::<BranchBusy>().ok(), Some(BranchBusy::Wait));
        assert_eq!(
            "refuse".parse::<BranchBusy>().ok(),
            Some(BranchBusy::Refuse)
        );
        assert!("Wait".parse::<BranchBusy>().is_err());
    }
}
