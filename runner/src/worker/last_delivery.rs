//! A run's last delivery: the queue moves its message to the dead-letter queue next, so
//! a run that still has no live holder is recorded failed (`retries_exhausted`), but only
//! under its lease; a run another runner is finishing is left to it.

use super::lease::{self, Claim};
use super::{Disposition, QueuedRun, Worker};
use specrun_core::state::{RunError, RunRecord};
use specrun_core::{ErrorCode, RunStatus};
use specrun_store::runs::{self, now};

/// Who, on a run's last delivery, is still working on it.
pub(super) enum Holder {
    /// Its holder finished it, with this status.
    Finished(RunStatus),
    /// Nobody: no live lease, or this stale one (to take over, compare-and-swap).
    None(Option<(Option<specrun_core::lease::Lease>, String)>),
}

impl Worker {
    /// The last delivery of a run that cannot be run now, given what
    /// [`Worker::wait_for_holder`] found: done once a live holder finished the run; with
    /// no live holder the run is given up and the message goes on to the dead-letter
    /// queue.
    pub(super) async fn settle_last(
        &self,
        queued: &QueuedRun,
        deliveries: u32,
        cause: &str,
        holder: Holder,
    ) -> Disposition {
        match holder {
            Holder::Finished(status) => {
                tracing::info!(run_id = %queued.run_id, %status, "the runner holding the run finished it; this last delivery is done");
                Disposition::Delete
            }
            Holder::None(stale) => {
                tracing::error!(why = %cause, run_id = %queued.run_id, "giving up on the run; its message goes to the dead-letter queue");
                self.give_up(queued, deliveries, cause, stale).await;
                Disposition::Retry
            }
        }
    }

    /// On a run's last delivery: while another runner holds it and keeps renewing its
    /// lease, wait (the message stays hidden) until that runner finishes it. Only a run
    /// with no live holder, or one whose lease has not been renewed for two lease
    /// lifetimes (its holder died, whatever time its lease names), is given up.
    pub(super) async fn wait_for_holder(&self, job: &QueuedRun) -> Holder {
        let ttl = self.config.lease_ttl;
        let mut seen: Option<(String, std::time::Instant)> = None;
        loop {
            match runs::load_run(self.store(), &job.run_id).await {
                Ok(Some(record)) if record.status.is_final() => {
                    return Holder::Finished(record.status)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the run while waiting for its holder")
                }
            }
            let current = match lease::current(self.store(), &job.run_id).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the run's lease");
                    tokio::time::sleep(ttl / 3).await;
                    continue;
                }
            };
            let Some((lease, version)) = current else {
                return Holder::None(None);
            };
            if !lease.as_ref().is_some_and(|l| l.is_live(now())) {
                return Holder::None(None);
            }
            match &seen {
                Some((same, since)) if *same == version => {
                    if since.elapsed() >= ttl * 2 {
                        tracing::warn!(run_id = %job.run_id, "the run's lease has not been renewed for two lease lifetimes; its holder is gone");
                        return Holder::None(Some((lease, version)));
                    }
                }
                _ => seen = Some((version, std::time::Instant::now())),
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }

    /// Marks a run failed after its last delivery, whatever state it was left in, but
    /// only under its lease: taken normally, or over a `stale` one whose holder stopped
    /// renewing. A run someone else holds by now is left to them.
    async fn give_up(
        &self,
        job: &QueuedRun,
        deliveries: u32,
        cause: &str,
        stale: Option<(Option<specrun_core::lease::Lease>, String)>,
    ) {
        let store = self.pipeline.store.clone();
        let runner_id = self.pipeline.config().runner_id.clone();
        let ttl = self.config.lease_ttl;
        let claimed = match stale {
            Some(stale) => lease::take_over_stale(store, &job.run_id, &runner_id, ttl, stale).await,
            None => lease::claim(store, &job.run_id, &runner_id, ttl).await,
        };
        let held = match claimed {
            Ok(Claim::Held(held)) => held,
            Ok(Claim::Busy { runner_id }) => {
                tracing::warn!(run_id = %job.run_id, %runner_id, "another runner took the run while this one gave up on it; leaving it to them");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the run's lease to record it failed");
                return;
            }
        };
        if let Some(record) = self.record_given_up(job, deliveries, cause).await {
            if let Some(task) = &job.celery {
                self.celery_outcome(task, &record).await;
            }
        }
        held.release().await;
    }

    /// Writes the run failed/retries_exhausted, fenced on the version it read.
    async fn record_given_up(
        &self,
        job: &QueuedRun,
        deliveries: u32,
        cause: &str,
    ) -> Option<RunRecord> {
        let Ok(Some((mut record, version))) =
            runs::load_run_versioned(self.store(), &job.run_id).await
        else {
            return None;
        };
        if record.status.is_final() {
            return None;
        }
        record.error = Some(RunError::new(
            ErrorCode::RetriesExhausted,
            format!("the run could not be completed after {deliveries} deliveries: {cause}"),
            "Look at the runner's logs and the dead-letter queue's message; submit the run again once the cause is fixed.",
        ));
        let reason = Some(format!(
            "gave up after {deliveries} deliveries; the message is in the dead-letter queue"
        ));
        if record.status == RunStatus::Queued {
            let _ = record.start(&self.pipeline.config().runner_id, now());
        }
        record.finish(RunStatus::Failed, reason, now()).ok()?;
        match runs::save_run_fenced(self.store(), &record, &version).await {
            Ok(_) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "could not record the failed run");
                None
            }
        }
    }
}
