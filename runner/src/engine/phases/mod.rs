//! The phases, one file each. A phase takes the run and what earlier phases made (typed:
//! it cannot be called before that exists), does its one job, and says whether the run
//! goes on (with what it made), stops with an outcome, or failed and why. The pipeline
//! owns order, persistence and cleanup; no phase imports it.

// A failure carries its artifacts and a full error report; it is the cold path, so its
// size does not matter.
#![allow(clippy::result_large_err)]

mod agent;
pub(crate) mod checkpoint;
pub(crate) mod cleanup;
pub(crate) mod clone;
mod command;
pub(crate) mod commit;
mod document;
pub(crate) mod output;
pub(crate) mod plan;
pub(crate) mod prepare;
pub(crate) mod pull_request;
pub(crate) mod push;
pub(crate) mod specify;
pub(crate) mod tasks;
mod watchdog;

use crate::engine::failure;
use specrun_core::agent::AgentProfile;
use specrun_core::branch::BranchName;
use specrun_core::feature::FeatureDir;
use specrun_core::state::{ArtifactRef, PhaseOutcome, RunError};
use specrun_core::{Phase, RunStatus};
use specrun_sandbox::Job;
use std::collections::BTreeMap;

/// How a phase that did its work ended; `T` is what it made for the phases after it.
pub(crate) enum Step<T> {
    /// Go on with the next phase.
    Continue(PhaseOutcome, T),
    /// The phase had nothing to do, for the reason given; go on.
    Skip(String, T),
    /// The run is over, successfully, with nothing more to do (no changes, questions).
    Stop {
        outcome: PhaseOutcome,
        status: RunStatus,
        reason: String,
    },
}

/// A phase failed: why, and the artifacts it left for investigation.
pub(crate) struct Failure {
    pub error: RunError,
    pub artifacts: Vec<ArtifactRef>,
}

impl From<RunError> for Failure {
    fn from(error: RunError) -> Self {
        Failure {
            error,
            artifacts: Vec::new(),
        }
    }
}

pub(crate) type StepResult<T> = Result<Step<T>, Failure>;

/// The agent a run uses: its profile and the environment every command of it gets,
/// secrets included (never persisted).
pub(crate) struct Agent {
    pub profile: AgentProfile,
    pub env: BTreeMap<String, String>,
}

/// What exists after prepare: the run's job and the agent that runs in it.
pub(crate) struct Prepared<'j> {
    pub job: &'j dyn Job,
    pub agent: Agent,
}

/// What exists after clone.
pub(crate) struct Cloned {
    /// The feature directories under `specs/` before the agent ran.
    pub specs_before: Vec<String>,
    /// The remote's default branch, which no run may push to.
    pub default_branch: Option<String>,
}

/// What exists after specify: the feature and the branch it is published on.
pub(crate) struct Specified {
    pub feature: FeatureDir,
    pub branch: BranchName,
    /// Files `specify init` created: part of what the commit may hold.
    pub init_files: Vec<String>,
}

/// What exists after commit.
pub(crate) struct Committed {
    pub sha: String,
}

fn message(text: impl Into<String>) -> PhaseOutcome {
    PhaseOutcome {
        message: Some(text.into()),
        ..Default::default()
    }
}

fn store_failure(phase: Phase) -> impl Fn(specrun_core::ports::StoreError) -> Failure {
    move |e| failure::store(phase, &e).into()
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// Runs blocking work (file reads, git) off the async threads; a task that did not
/// finish (it panicked) fails the phase with `internal_error`.
async fn blocking<T: Send + 'static>(
    phase: Phase,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        failure::error(
            phase,
            specrun_core::ErrorCode::InternalError,
            e.to_string(),
            "Retry the run.",
        )
    })
}

/// The first 12 characters of an id, as git and Docker show them.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
