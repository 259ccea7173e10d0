//! The nine phases of a run, the statuses a phase and a run can have, and which status
//! changes are allowed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One step of a run. Runs execute them in [`Phase::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prepare,
    Clone,
    Specify,
    Plan,
    Tasks,
    Commit,
    Push,
    PullRequest,
    Cleanup,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Prepare,
        Phase::Clone,
        Phase::Specify,
        Phase::Plan,
        Phase::Tasks,
        Phase::Commit,
        Phase::Push,
        Phase::PullRequest,
        Phase::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Clone => "clone",
            Phase::Specify => "specify",
            Phase::Plan => "plan",
            Phase::Tasks => "tasks",
            Phase::Commit => "commit",
            Phase::Push => "push",
            Phase::PullRequest => "pull_request",
            Phase::Cleanup => "cleanup",
        }
    }

    /// The Spec Kit phases, the ones an agent runs.
    pub fn is_agent_phase(self) -> bool {
        matches!(self, Phase::Specify | Phase::Plan | Phase::Tasks)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name did not match any phase.
#[derive(Debug, thiserror::Error)]
#[error("unknown phase {0:?}: expected one of prepare, clone, specify, plan, tasks, commit, push, pull_request, cleanup")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

/// Where one phase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl PhaseStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PhaseStatus::Succeeded | PhaseStatus::Failed | PhaseStatus::Skipped
        )
    }

    /// Whether a phase may move from `self` to `next`. A phase starts pending, runs once,
    /// and ends; a pending phase may be skipped without running.
    pub fn can_become(self, next: PhaseStatus) -> bool {
        use PhaseStatus::*;
        matches!(
            (self, next),
            (Pending, Running) | (Pending, Skipped) | (Running, Succeeded | Failed | Skipped)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Pending => "pending",
            PhaseStatus::Running => "running",
            PhaseStatus::Succeeded => "succeeded",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a whole run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    NoChanges,
    NeedsClarification,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// Whether a run may move from `self` to `next`: queued, then running, then one final
    /// status. A queued run may also fail or be cancelled before it starts.
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        match (self, next) {
            (Queued, Running) => true,
            (Queued, Failed | Cancelled) => true,
            (Running, n) => n.is_final(),
            _ => false,
        }
    }

    /// Whether the outcome counts as a success for exit codes and callers.
    pub fn is_success(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::NoChanges)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::NoChanges => "no_changes",
            RunStatus::NeedsClarification => "needs_clarification",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_their_names() {
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>().ok(), Some(phase));
        }
        assert!("deploy".parse::<Phase>().is_err());
    }

    #[test]
    fn phase_ends_once() {
        use PhaseStatus::*;
        assert!(Pending.can_become(Running));
        assert!(Pending.can_become(Skipped));
        assert!(Running.can_become(Failed));
        assert!(!Succeeded.can_become(Running));
        assert!(!Failed.can_become(Succeeded));
        assert!(!Pending.can_become(Succeeded));
    }

    #[test]
    fn run_has_one_final_status() {
        use RunStatus::*;
        assert!(Queued.can_become(Running));
        assert!(Running.can_become(NoChanges));
        assert!(!Running.can_become(Queued));
        assert!(!Succeeded.can_become(Failed));
        assert!(!Queued.can_become(Succeeded));
        assert!(NoChanges.is_success() && !NeedsClarification.is_success());
    }

    #[test]
    fn serialises_as_contract_names() {
        let json = serde_json::to_string(&Phase::PullRequest).ok();
        assert_eq!(json.as_deref(), Some("\"pull_request\""));
        let json = serde_json::to_string(&RunStatus::NeedsClarification).ok();
        assert_eq!(json.as_deref(), Some("\"needs_clarification\""));
    }
}
