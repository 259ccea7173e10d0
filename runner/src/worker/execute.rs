//! Executing a delivered run under its lease: a finished run is never run again, a run
//! another runner holds is left to it, a run whose runner died is taken over.

use super::lease::{self, Claim};
use super::{QueuedRun, Worker};
use crate::engine::Execution;
use specrun_core::celery::{CeleryState, CeleryTask};
use specrun_core::keys::RunId;
use specrun_core::ports::StoreError;
use specrun_core::state::{RunError, RunRecord};
use specrun_core::{ErrorCode, RunStatus};
use specrun_store::runs::{self, now};

/// How one attempt at a delivered run ended.
pub(super) enum Attempt {
    /// The run is over, in this state (now or by an earlier delivery).
    Finished(Box<RunRecord>),
    /// Another runner holds the run's lease.
    Busy { runner_id: String },
    /// This runner lost the run to another mid-way and recorded nothing more.
    Abandoned,
}

impl Worker {
    /// Runs the job unless an earlier delivery already finished it.
    pub(super) async fn execute(&self, job: &QueuedRun) -> Result<Attempt, StoreError> {
        let _working = self.running.lock(job.run_id.as_str()).await;
        let validated = job.request.validate(&self.config.policy);
        let existing = runs::load_run(self.store(), &job.run_id).await?;
        let record = match existing {
            Some(record) if record.status.is_final() => {
                tracing::info!(run_id = %job.run_id, status = %record.status, "duplicate delivery of a finished run; not running it again");
                return Ok(Attempt::Finished(Box::new(record)));
            }
            Some(record) => record,
            None => {
                let agent = match &validated {
                    Ok(request) => self.pipeline.agent_for(request),
                    Err(_) => Default::default(),
                };
                let record = match &validated {
                    Ok(request) => {
                        RunRecord::for_request(job.run_id.as_str(), request, agent, now())
                    }
                    Err(_) => RunRecord::queued(
                        job.run_id.as_str(),
                        &job.request.repository,
                        job.request.publish.unwrap_or_default(),
                        agent,
                        now(),
                    ),
                };
                match runs::create_run(self.store(), &record).await {
                    Ok(()) => record,
                    Err(StoreError::PreconditionFailed(_)) => {
                        runs::load_run(self.store(), &job.run_id)
                            .await?
                            .unwrap_or(record)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let request = match validated {
            Ok(request) => request,
            Err(e) => {
                return self
                    .refuse(record, &e.field, &e.reason)
                    .await
                    .map(|record| Attempt::Finished(Box::new(record)))
            }
        };
        self.run_under_lease(record, request, job.celery.as_ref())
            .await
    }

    /// Runs the job while holding its lease. A run another runner holds is left alone (the
    /// message comes back later); a run whose runner died (still `running`, lease run out)
    /// is taken over: its orphaned container is removed and a new attempt starts.
    async fn run_under_lease(
        &self,
        record: RunRecord,
        request: specrun_core::ValidatedRequest,
        celery: Option<&CeleryTask>,
    ) -> Result<Attempt, StoreError> {
        let run_id = runs::run_id(&record)?;
        let runner_id = self.pipeline.config().runner_id.clone();
        let held = match lease::claim(
            self.pipeline.store.clone(),
            &run_id,
            &runner_id,
            self.config.lease_ttl,
        )
        .await?
        {
            Claim::Held(held) => held,
            Claim::Busy { runner_id } => return Ok(Attempt::Busy { runner_id }),
        };
        let result = self
            .run_held(&held, &run_id, request, &runner_id, celery)
            .await;
        held.release().await;
        result
    }

    /// The run under a lease this runner just took: re-read (an earlier delivery may have
    /// finished it between our first read and the claim), restarted when another runner
    /// left it running, then executed with every run.json write fenced.
    async fn run_held(
        &self,
        held: &lease::HeldLease,
        run_id: &RunId,
        request: specrun_core::ValidatedRequest,
        runner_id: &str,
        celery: Option<&CeleryTask>,
    ) -> Result<Attempt, StoreError> {
        let (mut record, mut version) = runs::load_run_versioned(self.store(), run_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run_id} has no run.json")))?;
        if record.status.is_final() {
            tracing::info!(%run_id, status = %record.status, "finished while this runner claimed it; not running it again");
            return Ok(Attempt::Finished(Box::new(record)));
        }
        // Only under the lease, on a run not finished: a duplicate delivery never
        // overwrites a task's SUCCESS (or another holder's state) with STARTED.
        if let Some(task) = celery {
            let started = serde_json::json!({ "run_id": run_id.as_str() });
            self.celery_result(task, CeleryState::Started, started)
                .await;
        }
        if record.status == RunStatus::Running {
            // The new attempt is written before the old one's container goes: a holder
            // still working (its lease only looked expired, e.g. to a skewed clock) then
            // finds its next write refused and records nothing, instead of recording the
            // run failed because its container vanished.
            if record.restart(runner_id, now()).is_ok() {
                version = runs::save_run_fenced(self.store(), &record, &version).await?;
            }
            let removed = self.pipeline.remove_orphans(run_id).await;
            tracing::warn!(%run_id, removed, "taking over a run whose runner stopped; starting a new attempt");
        }
        let execution = self
            .pipeline
            .execute_leased(record, request, Some(held.lost()), Some(version))
            .await?;
        Ok(match execution {
            Execution::Finished(record) => Attempt::Finished(record),
            Execution::Abandoned => Attempt::Abandoned,
        })
    }

    /// Records a request the queue delivered but validation refused, on the run as it is
    /// stored now, and fenced like every other write of a run (never over another's).
    async fn refuse(
        &self,
        record: RunRecord,
        field: &str,
        reason: &str,
    ) -> Result<RunRecord, StoreError> {
        let run_id = runs::run_id(&record)?;
        let Some((stored, version)) = runs::load_run_versioned(self.store(), &run_id).await? else {
            return Ok(refused(record, field, reason).0);
        };
        if stored.status.is_final() {
            return Ok(stored);
        }
        let (record, finished) = refused(stored, field, reason);
        if finished {
            runs::save_run_fenced(self.store(), &record, &version).await?;
        }
        Ok(record)
    }
}

/// `record` failed with `invalid_request`, and whether that transition was allowed.
fn refused(mut record: RunRecord, field: &str, reason: &str) -> (RunRecord, bool) {
    record.error = Some(RunError::new(
        ErrorCode::InvalidRequest,
        format!("{field}: {reason}"),
        "Fix the request and submit it again.",
    ));
    let reason = Some(format!("invalid request: {field}: {reason}"));
    let finished = record.finish(RunStatus::Failed, reason, now()).is_ok();
    (record, finished)
}
