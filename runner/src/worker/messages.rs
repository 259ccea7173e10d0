//! Sorting a delivered message into the run it asks for: specrun's own messages, bare
//! run requests and Celery tasks; and pinning it to the request its run was created with.

use super::{Disposition, Worker};
use sha2::{Digest, Sha256};
use specrun_core::celery::{self, CeleryState, CeleryTask};
use specrun_core::keys::RunId;
use specrun_core::message::Incoming;
use specrun_core::ports::Received;
use specrun_core::request::RunRequest;
use specrun_store::runs;

/// A message sorted into a run to execute.
pub(super) struct QueuedRun {
    pub run_id: RunId,
    pub request: RunRequest,
    pub celery: Option<CeleryTask>,
}

fn derived_run_id(prefix: &str, source: &str) -> RunId {
    let digest = format!("{:x}", Sha256::digest(source.as_bytes()));
    // Prefix and 32 hex digits always make a valid run id.
    RunId::parse(&format!("{prefix}-{}", &digest[..32])).unwrap_or_else(|_| unreachable!())
}

impl Worker {
    /// Sorts a message into a run that executes its run's stored request (see
    /// [`Worker::pin`]).
    pub(super) async fn queued_run(&self, message: &Received) -> Result<QueuedRun, Disposition> {
        let queued = self.sort(message).await?;
        self.pin(queued).await
    }

    /// A run executes the request it was created with, stored before its run.json; the
    /// first message for a run the submit function did not create stores its own. A
    /// message naming an existing run with another request (anyone who may write to the
    /// queue could send one, to point a queued run at their repository or text) is refused:
    /// deleted, nothing run, nothing about the run changed, no Celery result written (the
    /// task id is the run's).
    async fn pin(&self, mut job: QueuedRun) -> Result<QueuedRun, Disposition> {
        // Compared in canonical form, as the submit function stored it.
        let canonical = job
            .request
            .validate(&self.config.policy)
            .map(|request| request.to_wire())
            .unwrap_or_else(|_| job.request.clone());
        let refuse = |why: &str| {
            tracing::warn!(
                run_id = %job.run_id,
                "refused a queue message naming run {} with {why}; the message is deleted and the run left as it is",
                job.run_id
            );
            Err(Disposition::Delete)
        };
        match runs::pin_request(self.store(), &job.run_id, &canonical).await {
            Ok(runs::Pinned::Same) => {
                job.request = canonical;
                Ok(job)
            }
            Ok(runs::Pinned::Different(_)) => {
                refuse("another request than the one it was created for")
            }
            Ok(runs::Pinned::Unrecorded(record)) if record.records_request(&canonical) => Ok(job),
            Ok(runs::Pinned::Unrecorded(_)) => refuse("a request that disagrees with its run.json"),
            Err(e) => {
                tracing::warn!(error = %e, run_id = %job.run_id, "could not read the run's stored request; the message will be retried");
                Err(Disposition::Retry)
            }
        }
    }

    /// Sorts a message into a job; a message that can never run is answered (a failed run,
    /// a Celery FAILURE) and deleted, or left for the dead-letter queue when nothing can
    /// be recorded about it.
    pub(super) async fn sort(&self, message: &Received) -> Result<QueuedRun, Disposition> {
        match celery::parse_task_message(&message.body, &self.config.celery_task) {
            Ok(Some(task)) => {
                let run_id = RunId::parse(&task.task_id)
                    .unwrap_or_else(|_| derived_run_id("c", &task.task_id));
                return match serde_json::from_value::<RunRequest>(task.kwargs.clone()) {
                    Ok(request) => Ok(QueuedRun {
                        run_id,
                        request,
                        celery: Some(task),
                    }),
                    Err(e) => {
                        let result = celery::failure_result(
                            "InvalidRunRequest",
                            &format!("the task's kwargs are not a run request: {e}"),
                        );
                        self.celery_result(&task, CeleryState::Failure, result)
                            .await;
                        Err(Disposition::Delete)
                    }
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "refused a Celery message");
                return match e.task_id.clone() {
                    Some(task_id) => {
                        let result = celery::failure_result("RefusedTask", &e.to_string());
                        self.write_celery_result(&task_id, CeleryState::Failure, result, None)
                            .await;
                        Err(Disposition::Delete)
                    }
                    None => Err(Disposition::Retry),
                };
            }
        }
        match Incoming::parse(&message.body) {
            Ok(Incoming::Run(run)) => match RunId::parse(&run.run_id) {
                Ok(run_id) => Ok(QueuedRun {
                    run_id,
                    request: run.request,
                    celery: None,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "a run message with an unusable run id; leaving it for the dead-letter queue");
                    Err(Disposition::Retry)
                }
            },
            Ok(Incoming::Bare(request)) => Ok(QueuedRun {
                run_id: derived_run_id("q", &message.message_id),
                request,
                celery: None,
            }),
            Ok(Incoming::Answers(answers)) => self.answered(answers).await,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable message; leaving it for the dead-letter queue");
                Err(Disposition::Retry)
            }
        }
    }
}
