//! Celery task results, written where Celery's S3 result backend reads them.

use super::Worker;
use specrun_core::celery::{self, CeleryState, CeleryTask};
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_store::runs::now;
use time::OffsetDateTime;

impl Worker {
    pub(super) async fn celery_outcome(&self, task: &CeleryTask, record: &RunRecord) {
        let summary = serde_json::json!({
            "run_id": record.run_id,
            "status": record.status,
            "status_reason": record.status_reason,
            "repository": record.repository,
            "branch_name": record.branch_name,
            "commit_sha": record.commit_sha,
            "pull_request_url": record.pull_request_url,
            "error": record.error,
        });
        if matches!(record.status, RunStatus::Failed | RunStatus::Cancelled) {
            let message = format!(
                "run {}: {}",
                record.run_id,
                record
                    .status_reason
                    .clone()
                    .unwrap_or_else(|| record.status.to_string())
            );
            self.celery_result(
                task,
                CeleryState::Failure,
                celery::failure_result("SpecrunRunFailed", &message),
            )
            .await;
        } else {
            self.celery_result(task, CeleryState::Success, summary)
                .await;
        }
    }

    pub(super) async fn celery_result(
        &self,
        task: &CeleryTask,
        state: CeleryState,
        result: serde_json::Value,
    ) {
        self.write_celery_result(&task.task_id, state, result).await;
    }

    /// Writes a task's result where Celery's S3 backend reads it.
    pub(super) async fn write_celery_result(
        &self,
        task_id: &str,
        state: CeleryState,
        result: serde_json::Value,
    ) {
        let key = celery::result_key(task_id, &self.config.celery_result_prefix);
        let document = celery::result_document(task_id, state, result, &rfc3339(now()), None);
        if let Err(e) = self
            .store()
            .put(&key, document.into(), "application/json")
            .await
        {
            tracing::warn!(error = %e, %task_id, "could not write the Celery result");
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
