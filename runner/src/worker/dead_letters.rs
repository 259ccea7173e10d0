//! The run queue's dead-letter queue, watched. A message reaches it after its last
//! delivery, also when the runner holding that delivery died with it (SIGKILL, a lost
//! host): then nothing else would ever finish its run, which would stay `running` (or
//! `queued`) for ever. So every runner looks at the dead letters, never deleting one
//! (they are for operators): a run left unfinished is waited for while a live holder
//! renews its lease, and otherwise given up (`retries_exhausted`) under its lease. A
//! runner that dies while doing so leaves the message to come back, here, to another.

use super::Worker;
use specrun_core::ports::{Queue, Received};
use specrun_store::runs;
use std::sync::Arc;
use std::time::Duration;

/// A dead letter of a finished run is looked at again only this much later.
const SETTLED: Duration = Duration::from_secs(12 * 3600);

impl Worker {
    pub(super) async fn watch_dead_letters(&self, dead: Arc<dyn Queue>) {
        loop {
            match dead
                .receive(10, Duration::ZERO, self.config.visibility)
                .await
            {
                Ok(messages) => {
                    for message in messages {
                        if self.settle_dead_letter(&message).await {
                            let _ = dead.extend(&message.receipt, SETTLED).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the dead-letter queue")
                }
            }
            tokio::time::sleep(self.config.lease_ttl / 2).await;
        }
    }

    /// Finishes the run of a dead letter if it is not; whether its run is final now.
    async fn settle_dead_letter(&self, message: &Received) -> bool {
        let Ok(queued) = self.sort(message).await else {
            return true;
        };
        match runs::load_run(self.store(), &queued.run_id).await {
            Ok(Some(record)) if record.status.is_final() => {
                // Its notifications too, if a runner died before sending them all.
                self.notify(&queued).await;
                return true;
            }
            Ok(Some(_)) => {}
            // A run never recorded, or a store that cannot be read: look again later.
            _ => return false,
        }
        tracing::warn!(run_id = %queued.run_id, "a dead-lettered message's run is unfinished");
        let cause = "its message reached the dead-letter queue with the run unfinished";
        let holder = self.wait_for_holder(&queued).await;
        self.settle_last(&queued, message.receive_count, cause, holder)
            .await;
        let settled = matches!(
            runs::load_run(self.store(), &queued.run_id).await,
            Ok(Some(record)) if record.status.is_final()
        );
        if settled {
            self.notify(&queued).await;
        }
        settled
    }
}
