//! A queue message answering a run's clarification questions (the queue form of
//! `POST /runs/{id}/answers`): the answers are recorded and the run executes its stored
//! request from the phase that asked. A redelivered message finds the answers recorded
//! (the run no longer waits for them) and carries on with the run as any delivery does.

use super::messages::QueuedRun;
use super::{Disposition, Worker};
use specrun_core::keys::RunId;
use specrun_core::message::AnswersMessage;
use specrun_store::runs::{self, Answered};

impl Worker {
    pub(super) async fn answered(&self, message: AnswersMessage) -> Result<QueuedRun, Disposition> {
        let Ok(run_id) = RunId::parse(&message.run_id) else {
            tracing::warn!(run_id = %message.run_id, "an answers message naming no run; deleting it");
            return Err(Disposition::Delete);
        };
        let request = match runs::load_request(self.store(), &run_id).await {
            Ok(Some(request)) => request,
            Ok(None) => {
                tracing::warn!(%run_id, "an answers message for a run with no stored request; deleting it");
                return Err(Disposition::Delete);
            }
            Err(e) => {
                tracing::warn!(error = %e, %run_id, "could not read the run's request; the message will be retried");
                return Err(Disposition::Retry);
            }
        };
        match runs::answer_run(self.store(), &run_id, message.answers).await {
            Ok(Some(Answered::Queued(_) | Answered::Refused(_))) => Ok(QueuedRun {
                run_id,
                request,
                celery: None,
            }),
            Ok(Some(Answered::Invalid { field, reason })) => {
                tracing::warn!(%run_id, %field, %reason, "refused an answers message; deleting it");
                Err(Disposition::Delete)
            }
            Ok(None) => {
                tracing::warn!(%run_id, "an answers message for an unknown run; deleting it");
                Err(Disposition::Delete)
            }
            Err(e) => {
                tracing::warn!(error = %e, %run_id, "could not record the answers; the message will be retried");
                Err(Disposition::Retry)
            }
        }
    }
}
