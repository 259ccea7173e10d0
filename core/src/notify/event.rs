//! The event a run's final status sends (`run.finished`, version 1). New fields may be
//! added without a version change; a field that changes meaning or goes bumps it.

use crate::model_usage::Usage;
use crate::phase::RunStatus;
use crate::state::{RunRecord, Timestamp};
use serde::{Deserialize, Serialize};

/// The event format's version.
pub const EVENT_VERSION: u32 = 1;
/// The one event type so far.
pub const RUN_FINISHED: &str = "run.finished";

/// The JSON body of a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub schema_version: u32,
    #[serde(rename = "type")]
    pub kind: String,
    /// The same on every delivery of this event to every target: a receiver drops
    /// repeats by it (see [`event_id`]).
    pub event_id: String,
    pub run_id: String,
    /// The run's attempt that ended (a retried run ends once per attempt).
    pub attempt: u32,
    pub status: RunStatus,
    #[serde(default)]
    pub status_reason: Option<String>,
    pub repository: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub pull_request_url: Option<String>,
    #[serde(default)]
    pub commit_sha: Option<String>,
    /// The failed run's error code (`clone_failed`, `retries_exhausted`, ...).
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
    /// The run's model usage as the gateway metered it.
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub external_ref: Option<String>,
}

/// The id of the event `record`'s current final status sends: `<run>.<attempt>.<status>`.
pub fn event_id(record: &RunRecord) -> String {
    format!("{}.{}.{}", record.run_id, record.attempt, record.status)
}

impl RunEvent {
    /// The event for a finished run; `None` while the run is not final.
    pub fn for_run(record: &RunRecord) -> Option<RunEvent> {
        if !record.status.is_final() {
            return None;
        }
        Some(RunEvent {
            schema_version: EVENT_VERSION,
            kind: RUN_FINISHED.to_owned(),
            event_id: event_id(record),
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            status: record.status,
            status_reason: record.status_reason.clone(),
            repository: record.repository.clone(),
            branch: record.branch_name.clone(),
            pull_request_url: record.pull_request_url.clone(),
            commit_sha: record.commit_sha.clone(),
            error_code: record.error.as_ref().map(|e| e.code.to_string()),
            finished_at: record.finished_at,
            usage: record.usage.clone(),
            external_ref: record.external_ref.clone(),
        })
    }

    /// The bytes sent and signed.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Publish;
    use crate::state::{AgentConfiguration, RunError};
    use crate::ErrorCode;
    use time::macros::datetime;

    #[test]
    fn a_failed_run_sends_its_code_and_a_running_one_nothing() {
        let now = datetime!(2026-12-03 12:00 UTC);
        let mut record = RunRecord::queued(
            "run-1",
            "https://git.example/a/b",
            Publish::Pr,
            AgentConfiguration::default(),
            now,
        );
        assert!(RunEvent::for_run(&record).is_none());
        record.start("r", now).expect("start");
        record.error = Some(RunError::new(ErrorCode::EmptyRepository, "no", "fix"));
        record
            .finish(RunStatus::Failed, Some("clone failed".into()), now)
            .expect("finish");
        let event = RunEvent::for_run(&record).expect("final");
        assert_eq!(event.event_id, "run-1.1.failed");
        assert_eq!(event.error_code.as_deref(), Some("empty_repository"));
        let json: serde_json::Value = serde_json::from_slice(&event.to_body()).expect("json");
        assert_eq!(json["type"], "run.finished");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["status"], "failed");
    }
}
