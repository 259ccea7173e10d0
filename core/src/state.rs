//! The state objects every client reads: `run.json` (SpecAutomationRun) and
//! `phases/<phase>.json` (SpecAutomationTaskState), schema version 1. The transition
//! methods here are the only way a run's status changes, so illegal moves are caught in
//! one place.

use crate::error_code::ErrorCode;
use crate::phase::{Phase, PhaseStatus, RunStatus};
use crate::request::Publish;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Bumped when a field changes meaning or disappears; new optional fields do not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// An RFC 3339 UTC timestamp.
pub type Timestamp = OffsetDateTime;

/// A stored output of a run: a log, a diff summary, an environment report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
}

/// Which agent ran the Spec Kit phases (AgentConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfiguration {
    pub name: String,
    /// What the agent reported with its version command, once the container was up.
    #[serde(default)]
    pub version: Option<String>,
    pub image: String,
    #[serde(default)]
    pub image_digest: Option<String>,
    /// The Spec Kit integration used for `specify init`.
    pub integration: String,
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
}

impl AgentConfiguration {
    /// The agent a request asks for (`default_agent` when it names none), as recorded
    /// when the run is created; the version, digest and integration are learned later.
    /// The submit function and the runner both record runs: one constructor keeps their
    /// records alike.
    pub fn requested(
        request: &crate::request::ValidatedRequest,
        default_agent: &str,
        image: &str,
    ) -> Self {
        AgentConfiguration {
            name: request
                .agent
                .clone()
                .unwrap_or_else(|| default_agent.to_owned()),
            image: image.to_owned(),
            overrides: request.agent_options.clone(),
            ..Default::default()
        }
    }
}

/// What went wrong, and what an operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// A stable, machine-readable code such as `image_missing` or `clone_failed`.
    pub code: ErrorCode,
    pub message: String,
    pub remediation: String,
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// The last lines of the failing step's output, redacted.
    #[serde(default)]
    pub log_excerpt: Option<String>,
}

impl RunError {
    /// An error with its code, what happened and what to do; no phase, exit code or log.
    pub fn new(
        code: ErrorCode,
        message: impl Into<String>,
        remediation: impl Into<String>,
    ) -> Self {
        RunError {
            code,
            message: message.into(),
            remediation: remediation.into(),
            phase: None,
            exit_code: None,
            log_excerpt: None,
        }
    }
}

/// One entry of a run's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub status: RunStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
}

/// One phase's state: `phases/<phase>.json`, and its entry in run.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseState {
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    pub phase: Phase,
    pub status: PhaseStatus,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<Timestamp>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub retry_count: u32,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    /// What happened, in a sentence: a skip's reason, a failure's cause, a result.
    #[serde(default)]
    pub message: Option<String>,
    /// The phase's model calls, metered by the model gateway (agent phases of agents
    /// that use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::model_usage::Usage>,
    /// Set when this attempt did not run the phase: it succeeded in that earlier attempt
    /// (whose times and artifacts these are) and its output was restored from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from_attempt: Option<u32>,
}

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// Reads a run's `phases`, refusing any list but the nine phases in [`Phase::ALL`] order.
fn nine_phases<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PhaseState>, D::Error> {
    let phases = Vec::<PhaseState>::deserialize(deserializer)?;
    let in_order = phases.len() == Phase::ALL.len()
        && phases
            .iter()
            .zip(Phase::ALL)
            .all(|(state, phase)| state.phase == phase);
    if in_order {
        Ok(phases)
    } else {
        let listed: Vec<&str> = phases.iter().map(|state| state.phase.as_str()).collect();
        Err(D::Error::custom(format!(
            "phases must be the nine phases in order (prepare, clone, specify, plan, tasks, \
             commit, push, pull_request, cleanup), not [{}]",
            listed.join(", ")
        )))
    }
}

impl PhaseState {
    pub fn pending(phase: Phase) -> Self {
        PhaseState {
            schema_version: SCHEMA_VERSION,
            phase,
            status: PhaseStatus::Pending,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            retry_count: 0,
            artifacts: Vec::new(),
            message: None,
            usage: None,
            restored_from_attempt: None,
        }
    }
}

/// `run.json`: everything about one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema_version: u32,
    pub run_id: String,
    pub repository: String,
    pub base_branch: Option<String>,
    pub branch_name: Option<String>,
    pub publish: Publish,
    pub status: RunStatus,
    /// Why the run ended as it did, in a sentence (for no_changes, the rationale: SC-004).
    #[serde(default)]
    pub status_reason: Option<String>,
    pub status_timeline: Vec<StatusEvent>,
    /// The nine phases in [`Phase::ALL`] order, which [`RunRecord::phase`] relies on; a
    /// stored record that lists them otherwise is refused rather than misread.
    #[serde(deserialize_with = "nine_phases")]
    pub phases: Vec<PhaseState>,
    #[serde(default)]
    pub pull_request_url: Option<String>,
    #[serde(default)]
    pub commit_sha: Option<String>,
    pub agent: AgentConfiguration,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    #[serde(default)]
    pub error: Option<RunError>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<Timestamp>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub runner_id: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub external_ref: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The batch this run belongs to (`POST /batches`); its end releases the batch's next
    /// held run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Earlier attempts that did not finish (their runner died), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_attempts: Vec<AttemptRecord>,
    /// The run's model calls, metered by the model gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::model_usage::Usage>,
    /// Set while the run waits for another run that holds the branch it publishes
    /// (`crate::branch_lock`); cleared once it holds the branch itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<BranchWait>,
    /// For a retried run: the phases its new attempt restores rather than runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// The operator's answers to the run's clarification questions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<RecordedAnswer>,
    /// Deliveries of the run's final-status events to its webhook and callback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<crate::notify::NotificationRecord>,
}

/// An answer as run.json keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedAnswer {
    pub question: String,
    pub answer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub answered_at: Timestamp,
    /// The attempt that asked.
    pub attempt: u32,
}

/// The run another run waits for before it may push the same branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchWait {
    pub run_id: String,
    pub branch: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: Timestamp,
}

/// An attempt that ended without finishing the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[serde(default)]
    pub runner_id: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<Timestamp>,
    /// When the attempt ended: abandoned by its runner, or (for a retried run) finished.
    #[serde(with = "time::serde::rfc3339")]
    pub abandoned_at: Timestamp,
    /// The phases as that attempt left them.
    pub phases: Vec<PhaseState>,
    /// How a finished attempt ended, for a run that was retried after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

/// Where a retried run continues: the phases up to `after` succeeded in attempt
/// `from_attempt`, whose output is restored from its `checkpoint` artifact instead of
/// running them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub from_attempt: u32,
    pub after: Phase,
    /// The store key of the checkpoint artifact.
    pub checkpoint: String,
    /// The run was answered: `after` is the phase that asked; the new attempt records the
    /// answers in its output and checks it for questions again instead of restoring it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
}

/// The name of the artifact an agent phase leaves for a retry to restore.
pub const CHECKPOINT_ARTIFACT: &str = "checkpoint.json";

/// Why a run cannot be retried.
#[derive(Debug, thiserror::Error)]
#[error("run is {status}: only a {wanted} run can be {what}")]
pub struct RetryRefused {
    pub status: RunStatus,
    wanted: &'static str,
    what: &'static str,
}

/// A status change the state machine does not allow.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("run cannot move from {from} to {to}")]
    Run { from: RunStatus, to: RunStatus },
    #[error("phase {phase} cannot move from {from} to {to}")]
    Phase {
        phase: Phase,
        from: PhaseStatus,
        to: PhaseStatus,
    },
}

/// How a phase ended.
#[derive(Debug, Clone, Default)]
pub struct PhaseOutcome {
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub artifacts: Vec<ArtifactRef>,
}

fn millis_between(from: Timestamp, to: Timestamp) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

impl RunRecord {
    /// A run as the submitter records it, before any runner has taken it.
    pub fn queued(
        run_id: &str,
        repository: &str,
        publish: Publish,
        agent: AgentConfiguration,
        now: Timestamp,
    ) -> Self {
        RunRecord {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.to_owned(),
            repository: repository.to_owned(),
            base_branch: None,
            branch_name: None,
            publish,
            status: RunStatus::Queued,
            status_reason: None,
            status_timeline: vec![StatusEvent {
                status: RunStatus::Queued,
                at: now,
            }],
            phases: Phase::ALL.into_iter().map(PhaseState::pending).collect(),
            pull_request_url: None,
            commit_sha: None,
            agent,
            artifacts: Vec::new(),
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            runner_id: None,
            attempt: 0,
            external_ref: None,
            idempotency_key: None,
            batch_id: None,
            previous_attempts: Vec::new(),
            usage: None,
            waiting_for: None,
            resume: None,
            answers: Vec::new(),
            notifications: Vec::new(),
        }
    }

    /// A queued run for a validated request.
    pub fn for_request(
        run_id: &str,
        request: &crate::request::ValidatedRequest,
        agent: AgentConfiguration,
        now: Timestamp,
    ) -> Self {
        let mut record = RunRecord::queued(
            run_id,
            &request.repository.to_string(),
            request.publish,
            agent,
            now,
        );
        record.base_branch = request.base_branch.as_ref().map(ToString::to_string);
        record.branch_name = request.branch_name.as_ref().map(ToString::to_string);
        record.external_ref = request.external_ref.clone();
        record.idempotency_key = request.idempotency_key.clone();
        record
    }

    /// Whether this run could have been created for `request` (a wire form), judged by
    /// what run.json records; for runs stored before their request was. The branches count
    /// when the request names them: a run fills them in as it goes.
    pub fn records_request(&self, request: &crate::request::RunRequest) -> bool {
        let branch = |recorded: &Option<String>, requested: &Option<String>| {
            requested.is_none() || recorded == requested
        };
        self.repository == request.repository
            && self.publish == request.publish.unwrap_or_default()
            && self.external_ref == request.external_ref
            && self.idempotency_key == request.idempotency_key
            && branch(&self.base_branch, &request.base_branch)
            && branch(&self.branch_name, &request.branch_name)
    }

    fn set_status(&mut self, to: RunStatus, now: Timestamp) -> Result<(), TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError::Run {
                from: self.status,
                to,
            });
        }
        self.status = to;
        self.status_timeline.push(StatusEvent {
            status: to,
            at: now,
        });
        Ok(())
    }

    /// A runner takes the run.
    pub fn start(&mut self, runner_id: &str, now: Timestamp) -> Result<(), TransitionError> {
        self.set_status(RunStatus::Running, now)?;
        self.runner_id = Some(runner_id.to_owned());
        // `attempt` comes from stored JSON: any u32, so no plain `+ 1`.
        self.attempt = self.attempt.saturating_add(1);
        self.started_at = Some(now);
        Ok(())
    }

    /// Starts a new attempt of a run whose earlier attempt never finished (its runner
    /// died): that attempt's phases are kept in `previous_attempts`, the phases start over.
    pub fn restart(&mut self, runner_id: &str, now: Timestamp) -> Result<(), TransitionError> {
        if self.status != RunStatus::Running {
            return Err(TransitionError::Run {
                from: self.status,
                to: RunStatus::Running,
            });
        }
        let phases = std::mem::replace(
            &mut self.phases,
            Phase::ALL.into_iter().map(PhaseState::pending).collect(),
        );
        self.previous_attempts.push(AttemptRecord {
            attempt: self.attempt,
            runner_id: self.runner_id.take(),
            started_at: self.started_at,
            abandoned_at: now,
            phases,
            status: None,
            error: None,
        });
        self.artifacts.clear();
        self.error = None;
        self.status_timeline.push(StatusEvent {
            status: RunStatus::Running,
            at: now,
        });
        self.runner_id = Some(runner_id.to_owned());
        self.attempt = self.attempt.saturating_add(1);
        self.started_at = Some(now);
        Ok(())
    }

    /// Queues a failed or cancelled run again for a new attempt. The ended attempt goes to
    /// `previous_attempts` with its outcome; its agent phases that succeeded in a row from
    /// specify and left a checkpoint are named in `resume`, so the new attempt restores
    /// their output instead of running them again.
    pub fn retry(&mut self, now: Timestamp) -> Result<(), RetryRefused> {
        if !matches!(self.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(RetryRefused {
                status: self.status,
                wanted: "failed or cancelled",
                what: "retried",
            });
        }
        self.resume = self.resumable();
        self.requeue(now);
        Ok(())
    }

    /// Records the operator's answers to a run that ended `needs_clarification` and
    /// queues it again: the new attempt continues on the same branch from the phase that
    /// asked, with the answers recorded in its output (see `RunRecord::retry`).
    pub fn answer(
        &mut self,
        answers: Vec<crate::clarify::Answer>,
        now: Timestamp,
    ) -> Result<(), RetryRefused> {
        let refused = RetryRefused {
            status: self.status,
            wanted: "needs_clarification",
            what: "answered",
        };
        if self.status != RunStatus::NeedsClarification {
            return Err(refused);
        }
        // The phase that asked succeeded with its questions (and its checkpoint).
        let Some(mut resume) = self.resumable() else {
            return Err(refused);
        };
        resume.answered = true;
        let attempt = self.attempt;
        self.answers
            .extend(answers.into_iter().map(|a| RecordedAnswer {
                question: a.question,
                answer: a.answer,
                answered_at: now,
                attempt,
            }));
        self.resume = Some(resume);
        self.requeue(now);
        Ok(())
    }

    /// The ended attempt into `previous_attempts`, the phases pending, the run queued.
    fn requeue(&mut self, now: Timestamp) {
        let phases = std::mem::replace(
            &mut self.phases,
            Phase::ALL.into_iter().map(PhaseState::pending).collect(),
        );
        self.previous_attempts.push(AttemptRecord {
            attempt: self.attempt,
            runner_id: self.runner_id.take(),
            started_at: self.started_at,
            abandoned_at: self.finished_at.unwrap_or(now),
            phases,
            status: Some(self.status),
            error: self.error.take(),
        });
        self.artifacts.clear();
        self.status = RunStatus::Queued;
        self.status_reason = None;
        self.finished_at = None;
        self.waiting_for = None;
        self.status_timeline.push(StatusEvent {
            status: RunStatus::Queued,
            at: now,
        });
    }

    /// The last agent phase that succeeded (each before it too) with a checkpoint.
    fn resumable(&self) -> Option<Resume> {
        let mut resume = None;
        for phase in [Phase::Specify, Phase::Plan, Phase::Tasks] {
            let state = self.phase(phase);
            let checkpoint = state
                .artifacts
                .iter()
                .find(|a| a.name == CHECKPOINT_ARTIFACT && a.phase == Some(phase));
            match checkpoint {
                Some(checkpoint) if state.status == PhaseStatus::Succeeded => {
                    resume = Some(Resume {
                        from_attempt: state.restored_from_attempt.unwrap_or(self.attempt),
                        after: phase,
                        checkpoint: checkpoint.key.clone(),
                        answered: false,
                    });
                }
                _ => break,
            }
        }
        resume
    }

    /// Records a pending phase as done by an earlier attempt: `earlier` is its state there
    /// (times, artifacts, message), kept as it was, marked restored from `attempt`.
    pub fn restore_phase(
        &mut self,
        earlier: &PhaseState,
        attempt: u32,
    ) -> Result<(), TransitionError> {
        let state = self.phase_mut(earlier.phase);
        if state.status != PhaseStatus::Pending || earlier.status != PhaseStatus::Succeeded {
            return Err(TransitionError::Phase {
                phase: earlier.phase,
                from: state.status,
                to: PhaseStatus::Succeeded,
            });
        }
        let message = match earlier.restored_from_attempt {
            // Restored once already: its message says so.
            Some(_) => earlier.message.clone(),
            None => Some(format!(
                "not run again: succeeded in attempt {attempt}, output restored ({})",
                earlier.message.as_deref().unwrap_or("no message")
            )),
        };
        *state = PhaseState {
            restored_from_attempt: Some(earlier.restored_from_attempt.unwrap_or(attempt)),
            message,
            ..earlier.clone()
        };
        self.artifacts.extend(earlier.artifacts.iter().cloned());
        Ok(())
    }

    /// The run ends with `status`; every phase still pending is skipped with `reason`.
    pub fn finish(
        &mut self,
        status: RunStatus,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.set_status(status, now)?;
        self.status_reason = reason;
        self.finished_at = Some(now);
        Ok(())
    }

    /// Records what the model gateway metered: `phase`'s calls (if it made any) and the
    /// run's so far. Usage is not status: it may change in any phase.
    pub fn set_usage(
        &mut self,
        phase: Phase,
        phase_usage: Option<crate::model_usage::Usage>,
        run_usage: crate::model_usage::Usage,
    ) {
        if phase_usage.is_some() {
            self.phase_mut(phase).usage = phase_usage;
        }
        self.usage = Some(run_usage);
    }

    pub fn phase(&self, phase: Phase) -> &PhaseState {
        // `queued` creates all nine and nothing removes one.
        &self.phases[Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0)]
    }

    fn phase_mut(&mut self, phase: Phase) -> &mut PhaseState {
        let index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        &mut self.phases[index]
    }

    fn move_phase(
        &mut self,
        phase: Phase,
        to: PhaseStatus,
    ) -> Result<&mut PhaseState, TransitionError> {
        let state = self.phase_mut(phase);
        if !state.status.can_become(to) {
            return Err(TransitionError::Phase {
                phase,
                from: state.status,
                to,
            });
        }
        state.status = to;
        Ok(state)
    }

    pub fn begin_phase(&mut self, phase: Phase, now: Timestamp) -> Result<(), TransitionError> {
        let state = self.move_phase(phase, PhaseStatus::Running)?;
        state.started_at = Some(now);
        Ok(())
    }

    /// Ends a running phase as succeeded or failed.
    pub fn end_phase(
        &mut self,
        phase: Phase,
        status: PhaseStatus,
        outcome: PhaseOutcome,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        let state = self.move_phase(phase, status)?;
        state.finished_at = Some(now);
        state.duration_ms = state.started_at.map(|start| millis_between(start, now));
        state.exit_code = outcome.exit_code;
        state.message = outcome.message;
        state.artifacts.extend(outcome.artifacts.iter().cloned());
        self.artifacts.extend(outcome.artifacts);
        Ok(())
    }

    /// Skips a phase that has not run, saying why.
    pub fn skip_phase(
        &mut self,
        phase: Phase,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        let state = self.move_phase(phase, PhaseStatus::Skipped)?;
        state.finished_at = Some(now);
        state.message = Some(reason.to_owned());
        Ok(())
    }

    /// Skips every phase from `from` onwards that is still pending, except `keep`.
    pub fn skip_pending(&mut self, reason: &str, keep: &[Phase], now: Timestamp) {
        for phase in Phase::ALL {
            if self.phase(phase).status == PhaseStatus::Pending && !keep.contains(&phase) {
                // Pending always may become skipped.
                let _ = self.skip_phase(phase, reason, now);
            }
        }
    }

    /// The run waits for `holder`, which publishes `branch`; the first call's time is kept.
    pub fn wait_for_branch(&mut self, holder: &str, branch: &str, now: Timestamp) {
        let since = match &self.waiting_for {
            Some(wait) if wait.run_id == holder => wait.since,
            _ => now,
        };
        self.waiting_for = Some(BranchWait {
            run_id: holder.to_owned(),
            branch: branch.to_owned(),
            since,
        });
    }

    /// The run holds its branch now; returns what it waited for, if anything.
    pub fn stop_waiting(&mut self) -> Option<BranchWait> {
        self.waiting_for.take()
    }

    /// An artifact that belongs to the run as a whole rather than one phase.
    pub fn add_artifact(&mut self, artifact: ArtifactRef) {
        self.artifacts.push(artifact);
    }

    /// The phase that failed, if any.
    pub fn failed_phase(&self) -> Option<Phase> {
        self.phases
            .iter()
            .find(|p| p.status == PhaseStatus::Failed)
            .map(|p| p.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn record() -> RunRecord {
        RunRecord::queued(
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "octo/hello",
            Publish::Branch,
            AgentConfiguration::default(),
            datetime!(2026-11-24 10:00 UTC),
        )
    }

    #[test]
    fn a_request_names_its_agent_or_gets_the_default() -> Result<(), crate::request::RequestError> {
        let policy = crate::repo::RepoPolicy::default();
        let plain = crate::request::RunRequest::from_json(
            br#"{"repository": "octo/hello", "specify_text": "x"}"#,
            &policy,
        )?;
        assert_eq!(
            AgentConfiguration::requested(&plain, "scripted", "specrun-job:1"),
            AgentConfiguration {
                name: "scripted".to_owned(),
                image: "specrun-job:1".to_owned(),
                ..Default::default()
            }
        );
        let named = crate::request::RunRequest::from_json(
            br#"{"repository": "octo/hello", "specify_text": "x", "agent": "codex",
                "agent_options": {"model": "gpt-5"}}"#,
            &policy,
        )?;
        let agent = AgentConfiguration::requested(&named, "scripted", "specrun-job:1");
        assert_eq!(agent.name, "codex");
        assert_eq!(
            agent.overrides,
            BTreeMap::from([("model".to_owned(), "gpt-5".to_owned())])
        );
        Ok(())
    }

    #[test]
    fn a_run_records_its_timeline_and_durations() -> Result<(), TransitionError> {
        let mut run = record();
        run.start("runner-1", datetime!(2026-11-24 10:00:01 UTC))?;
        run.begin_phase(Phase::Prepare, datetime!(2026-11-24 10:00:01 UTC))?;
        run.end_phase(
            Phase::Prepare,
            PhaseStatus::Succeeded,
            PhaseOutcome::default(),
            datetime!(2026-11-24 10:00:02.5 UTC),
        )?;
        run.skip_pending(
            "no changes",
            &[Phase::Cleanup],
            datetime!(2026-11-24 10:00:03 UTC),
        );
        run.finish(
            RunStatus::NoChanges,
            Some("nothing".into()),
            datetime!(2026-11-24 10:00:04 UTC),
        )?;
        assert_eq!(run.phase(Phase::Prepare).duration_ms, Some(1500));
        assert_eq!(run.phase(Phase::Push).status, PhaseStatus::Skipped);
        assert_eq!(run.phase(Phase::Cleanup).status, PhaseStatus::Pending);
        let statuses: Vec<_> = run.status_timeline.iter().map(|e| e.status).collect();
        assert_eq!(
            statuses,
            [RunStatus::Queued, RunStatus::Running, RunStatus::NoChanges]
        );
        assert_eq!(run.attempt, 1);
        Ok(())
    }

    #[test]
    fn a_restart_keeps_the_abandoned_attempt() -> Result<(), TransitionError> {
        let mut run = record();
        run.start("runner-a", datetime!(2026-11-24 10:00:01 UTC))?;
        run.begin_phase(Phase::Prepare, datetime!(2026-11-24 10:00:01 UTC))?;
        run.restart("runner-b", datetime!(2026-11-24 10:05 UTC))?;
        assert_eq!(
            (run.attempt, run.runner_id.as_deref()),
            (2, Some("runner-b"))
        );
        assert_eq!(run.previous_attempts.len(), 1);
        assert_eq!(
            run.previous_attempts[0].runner_id.as_deref(),
            Some("runner-a")
        );
        assert_eq!(
            run.previous_attempts[0].phases[0].status,
            PhaseStatus::Running
        );
        assert_eq!(run.phase(Phase::Prepare).status, PhaseStatus::Pending);
        let statuses: Vec<_> = run.status_timeline.iter().map(|e| e.status).collect();
        assert_eq!(
            statuses,
            [RunStatus::Queued, RunStatus::Running, RunStatus::Running]
        );
        Ok(())
    }

    fn artifact(phase: Phase, name: &str) -> ArtifactRef {
        ArtifactRef {
            name: name.to_owned(),
            key: format!("runs/r/artifacts/{phase}/{name}"),
            size: 1,
            sha256: String::new(),
            content_type: "application/json".to_owned(),
            phase: Some(phase),
            expires_at: datetime!(2026-12-24 10:00 UTC),
        }
    }

    /// A run whose specify and plan succeeded (plan without a checkpoint) and whose tasks
    /// failed.
    fn failed_at_tasks() -> Result<RunRecord, TransitionError> {
        let mut run = record();
        let at = datetime!(2026-11-24 10:00:01 UTC);
        run.start("runner-a", at)?;
        for (phase, status, artifacts) in [
            (
                Phase::Specify,
                PhaseStatus::Succeeded,
                vec![artifact(Phase::Specify, CHECKPOINT_ARTIFACT)],
            ),
            (
                Phase::Plan,
                PhaseStatus::Succeeded,
                vec![artifact(Phase::Plan, "plan.stdout.log")],
            ),
            (Phase::Tasks, PhaseStatus::Failed, vec![]),
        ] {
            run.begin_phase(phase, at)?;
            let outcome = PhaseOutcome {
                artifacts,
                ..Default::default()
            };
            run.end_phase(phase, status, outcome, at)?;
        }
        run.error = Some(RunError::new(
            ErrorCode::AgentPhaseFailed,
            "tasks failed",
            "retry",
        ));
        run.finish(RunStatus::Failed, None, at)?;
        Ok(run)
    }

    #[test]
    fn a_retry_keeps_the_ended_attempt_and_resumes_after_the_last_checkpoint(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut run = failed_at_tasks()?;
        run.retry(datetime!(2026-11-24 11:00 UTC))?;
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.error, None);
        let earlier = run.previous_attempts[0].clone();
        assert_eq!(
            (earlier.attempt, earlier.status),
            (1, Some(RunStatus::Failed))
        );
        assert_eq!(
            earlier.error.as_ref().map(|e| e.message.as_str()),
            Some("tasks failed")
        );
        // Plan succeeded but left no checkpoint: the retry resumes after specify.
        let resume = run.resume.clone().ok_or("no resume")?;
        assert_eq!((resume.from_attempt, resume.after), (1, Phase::Specify));
        assert!(run.phases.iter().all(|p| p.status == PhaseStatus::Pending));
        run.start("runner-b", datetime!(2026-11-24 11:00:01 UTC))?;
        assert_eq!(run.attempt, 2);
        let specify = earlier.phases[2].clone();
        run.restore_phase(&specify, 1)?;
        let restored = run.phase(Phase::Specify);
        assert_eq!(restored.restored_from_attempt, Some(1));
        assert_eq!(restored.started_at, specify.started_at);
        assert!(
            run.restore_phase(&specify, 1).is_err(),
            "a phase is restored once"
        );
        Ok(())
    }

    #[test]
    fn only_failed_or_cancelled_runs_are_retried() -> Result<(), TransitionError> {
        let mut run = record();
        assert!(run.retry(datetime!(2026-11-24 11:00 UTC)).is_err());
        run.start("runner-a", datetime!(2026-11-24 10:00:01 UTC))?;
        assert!(run.retry(datetime!(2026-11-24 11:00 UTC)).is_err());
        run.finish(RunStatus::Succeeded, None, datetime!(2026-11-24 10:01 UTC))?;
        let refused = run.retry(datetime!(2026-11-24 11:00 UTC)).err();
        assert_eq!(refused.map(|r| r.status), Some(RunStatus::Succeeded));
        assert!(run.previous_attempts.is_empty());
        Ok(())
    }

    #[test]
    fn illegal_moves_are_errors() {
        let mut run = record();
        let now = datetime!(2026-11-24 10:00 UTC);
        assert!(run.finish(RunStatus::Succeeded, None, now).is_err());
        assert!(run
            .end_phase(
                Phase::Plan,
                PhaseStatus::Succeeded,
                PhaseOutcome::default(),
                now
            )
            .is_err());
    }

    #[test]
    fn a_stored_run_with_phases_missing_or_out_of_order_is_refused() {
        // Found by the `state` fuzz target: `phase()` indexes by position, so a run.json
        // whose first phase was `cleanup` made `phase(Prepare)` return cleanup's state, and
        // one with fewer than nine phases made it panic.
        let good = serde_json::to_value(record()).unwrap_or_default();
        let mut swapped = good.clone();
        swapped["phases"][0]["phase"] = "cleanup".into();
        let mut short = good.clone();
        if let Some(phases) = short["phases"].as_array_mut() {
            phases.truncate(3);
        }
        let mut empty = good.clone();
        empty["phases"] = serde_json::json!([]);
        for bad in [swapped, short, empty] {
            let err = serde_json::from_value::<RunRecord>(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("nine phases in order"), "{err}");
        }
        assert!(serde_json::from_value::<RunRecord>(good).is_ok());
    }

    #[test]
    fn a_stored_attempt_count_at_its_limit_does_not_overflow() -> Result<(), TransitionError> {
        let mut run = record();
        run.attempt = u32::MAX;
        run.start("runner-a", datetime!(2026-11-24 10:00:01 UTC))?;
        run.restart("runner-b", datetime!(2026-11-24 10:05 UTC))?;
        assert_eq!(run.attempt, u32::MAX);
        Ok(())
    }

    #[test]
    fn a_run_records_the_request_it_was_made_for_and_no_other() {
        let mut run = record();
        run.branch_name = Some("001-login".into());
        let request = crate::request::RunRequest {
            repository: "octo/hello".into(),
            specify_text: "Add login".into(),
            publish: Some(Publish::Branch),
            ..Default::default()
        };
        assert!(
            run.records_request(&request),
            "the branch was filled in by the run"
        );
        for other in [
            crate::request::RunRequest {
                repository: "evil/repo".into(),
                ..request.clone()
            },
            crate::request::RunRequest {
                publish: Some(Publish::Pr),
                ..request.clone()
            },
            crate::request::RunRequest {
                branch_name: Some("main".into()),
                ..request.clone()
            },
        ] {
            assert!(!run.records_request(&other), "{other:?}");
        }
    }

    #[test]
    fn json_uses_contract_field_names_and_rfc3339() {
        let json = serde_json::to_value(record()).unwrap_or_default();
        assert_eq!(json["status"], "queued");
        assert_eq!(json["created_at"], "2026-11-24T10:00:00Z");
        assert_eq!(json["phases"][7]["phase"], "pull_request");
        let back: Result<RunRecord, _> = serde_json::from_value(json);
        assert_eq!(back.ok(), Some(record()));
    }
}
