//! Celery task results, written to the result backend the worker was given: Celery's S3
//! backend layout in the state bucket ([`BlobCeleryResults`], the default) or Celery's
//! database backend table (`specrun_store::PostgresCeleryResults`, `--result-backend`).

use super::Worker;
use async_trait::async_trait;
use specrun_core::celery::{self, CeleryState, CeleryTask};
use specrun_core::ports::{BlobStore, CeleryResultBackend, StoreError};
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_store::runs::now;
use std::sync::Arc;
use time::OffsetDateTime;

/// Celery's S3 result backend layout: one JSON object per task at
/// `<prefix>celery-task-meta-<id>` in the blob store.
pub struct BlobCeleryResults {
    pub store: Arc<dyn BlobStore>,
    /// Celery's `s3_base_path`.
    pub prefix: String,
}

#[async_trait]
impl CeleryResultBackend for BlobCeleryResults {
    async fn store_result(
        &self,
        task_id: &str,
        state: CeleryState,
        result: serde_json::Value,
        traceback: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = celery::result_key(task_id, &self.prefix);
        let document = celery::result_document(task_id, state, result, &rfc3339(now()), traceback);
        self.store
            .put(&key, document.into(), "application/json")
            .await
    }
}

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
            // What Celery shows as the task's traceback: the run's own account of the
            // failure (no Python frames exist for a run).
            let traceback = format!(
                "specrun run {} {}: {}\nerror: {}",
                record.run_id,
                record.status,
                record.status_reason.as_deref().unwrap_or("-"),
                serde_json::to_string(&record.error).unwrap_or_default()
            );
            self.write_celery_result(
                &task.task_id,
                CeleryState::Failure,
                celery::failure_result("SpecrunRunFailed", &message),
                Some(&traceback),
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
        self.write_celery_result(&task.task_id, state, result, None)
            .await;
    }

    /// Writes a task's result where the scheduler's Celery reads it.
    pub(super) async fn write_celery_result(
        &self,
        task_id: &str,
        state: CeleryState,
        result: serde_json::Value,
        traceback: Option<&str>,
    ) {
        if let Err(e) = self
            .celery_results
            .store_result(task_id, state, result, traceback)
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
