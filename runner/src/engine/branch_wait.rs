//! The push phase under the branch lock: before pushing, a run takes the lock on its
//! repository's branch (`specrun_store::branch_locks`), across runners; while another
//! unfinished run holds it, the run waits (run.json says for which run, in
//! `waiting_for`) or is refused with `branch_busy`, as configured. The lock is held until
//! the run is final, so a pull request call never races another run's either.

use crate::engine::failure;
use crate::engine::phases::{self, Committed, Failure, Prepared, Specified, Step, StepResult};
use crate::engine::pipeline::Pipeline;
use crate::engine::run::Run;
use crate::engine::stop::StopWatch;
use specrun_core::branch_lock::{BranchBusy, BranchLock};
use specrun_core::{ErrorCode, Phase};
use specrun_store::branch_locks::{self, Acquired};
use specrun_store::runs::now;

const PHASE: Phase = Phase::Push;

impl Pipeline {
    /// Takes the branch lock, then pushes; the push phase's message says how long the run
    /// waited and for which run.
    pub(super) async fn push_under_lock(
        &self,
        run: &mut Run,
        stop: &StopWatch,
        prepared: &Prepared<'_>,
        specified: &Specified,
        committed: &Committed,
    ) -> StepResult<()> {
        let waited = self.hold_branch(run, stop, specified).await?;
        let mut step = phases::push::run(run, prepared, specified, committed).await?;
        if let (Some(note), Step::Continue(outcome, _)) = (waited, &mut step) {
            let message = outcome.message.take().unwrap_or_default();
            outcome.message = Some(format!("{message}; {note}"));
        }
        Ok(step)
    }

    /// Waits until this run holds its branch; `Some` says whom it waited for.
    async fn hold_branch(
        &self,
        run: &mut Run,
        stop: &StopWatch,
        specified: &Specified,
    ) -> Result<Option<String>, Failure> {
        let branch = specified.branch.to_string();
        loop {
            if stop.reason().is_some() || run.abandoned {
                // The pipeline records why the run stopped.
                return Err(failure::error(
                    PHASE,
                    ErrorCode::InternalError,
                    "stopped while waiting for the branch",
                    "",
                )
                .into());
            }
            let started = now();
            let wanted = BranchLock {
                schema_version: 1,
                repository: run.record.repository.clone(),
                branch: branch.clone(),
                run_id: run.run_id.to_string(),
                runner_id: Some(self.config.runner_id.clone()),
                acquired_at: started,
                expires_at: started
                    + time::Duration::try_from(self.config.run_timeout)
                        .unwrap_or(time::Duration::HOUR),
            };
            let acquired = branch_locks::acquire(self.store.as_ref(), &wanted, started)
                .await
                .map_err(|e| Failure::from(failure::store(PHASE, &e)))?;
            let holder = match acquired {
                Acquired::Held => {
                    let Some(wait) = run.record.stop_waiting() else {
                        return Ok(None);
                    };
                    self.persist_quietly(run).await;
                    let seconds = (now() - wait.since).whole_seconds();
                    return Ok(Some(format!(
                        "waited {seconds}s for run {} to finish with {branch}",
                        wait.run_id
                    )));
                }
                Acquired::Busy(holder) => holder,
            };
            if self.config.branch_busy == BranchBusy::Refuse {
                return Err(failure::error(
                    PHASE,
                    ErrorCode::BranchBusy,
                    format!(
                        "run {} is publishing {branch} of {} (runner {}); this run was refused rather than push the same branch at the same time",
                        holder.run_id,
                        holder.repository,
                        holder.runner_id.as_deref().unwrap_or("unknown"),
                    ),
                    format!("Retry this run once run {} has finished (specrun retry / POST /runs/{{id}}/retry), or set SPECRUN_BRANCH_BUSY=wait to make runs wait for the branch.", holder.run_id),
                )
                .into());
            }
            if run.record.waiting_for.as_ref().map(|w| &w.run_id) != Some(&holder.run_id) {
                tracing::info!(run_id = %run.run_id, holder = %holder.run_id, %branch, "another run holds the branch; waiting for it");
                run.record.wait_for_branch(&holder.run_id, &branch, now());
                self.persist_quietly(run).await;
            }
            tokio::time::sleep(self.config.branch_poll).await;
        }
    }

    /// Writes run.json; a failed write is logged, the next one carries the change.
    async fn persist_quietly(&self, run: &mut Run) {
        if let Err(e) = self.persist(run).await {
            tracing::warn!(error = %e, "could not record the branch wait");
        }
    }
}
