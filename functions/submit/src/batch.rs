//! `POST /batches`: one specification, many repositories. Every run is recorded at once
//! (queued, held) under an idempotency key made of the batch id and its repository, the
//! batch record is written, and the first `max_in_flight` runs are released to the queue;
//! each run's end releases the next (`specrun_store::batches::refresh`). The same
//! `batch_key` sent again resubmits the batch: runs that succeeded are skipped, failed or
//! cancelled ones are retried from their last good phase, under the same bound.

use super::{invalid, Recorded, Submit};
use bytes::Bytes;
use http::StatusCode;
use specrun_core::batch::{BatchId, BatchRecord, BatchRequest, BatchRun};
use specrun_core::keys::RunId;
use specrun_core::ports::StoreError;
use specrun_core::RunStatus;
use specrun_http::{error, json, ApiResponse};
use specrun_store::{batches, runs};

/// What a resubmission did with each run.
#[derive(Default, serde::Serialize)]
struct Resubmitted {
    /// Failed or cancelled: queued again for a new attempt.
    retried: Vec<String>,
    /// Succeeded (or no changes): not run again.
    skipped: Vec<String>,
    /// Still queued or running, or waiting for answers: left as they are.
    left: Vec<String>,
}

impl Submit {
    pub(super) async fn submit_batch(&self, body: Bytes) -> ApiResponse {
        if let Some(refused) = super::too_large(&body) {
            return refused;
        }
        let parsed = BatchRequest::parse(&body, self.batch_limits, |request| {
            request
                .validate(&self.policy)
                .and_then(|r| self.check_agent(r))
        });
        let batch = match parsed {
            Ok(batch) => batch,
            Err(e) => return invalid(&e, &e.field),
        };
        let request_sha256 = batches::request_sha256(&batch.canonical());
        let batch_id = match &batch.batch_key {
            Some(key) => batches::batch_id_for_key(key),
            None => batches::new_batch_id(),
        };
        let outcome = match batches::load(self.store.as_ref(), &batch_id).await {
            Ok(Some((existing, _))) => self.resubmit(&existing, &request_sha256).await,
            Ok(None) => self.create_batch(&batch_id, batch, request_sha256).await,
            Err(e) => Err(unavailable(&batch_id, &e)),
        };
        match outcome {
            Ok(answer) => answer,
            Err(refused) => *refused,
        }
    }

    /// Records every run (held), then batch.json, then releases the first runs.
    async fn create_batch(
        &self,
        batch_id: &BatchId,
        batch: BatchRequest,
        request_sha256: String,
    ) -> Result<ApiResponse, Box<ApiResponse>> {
        let mut listed = Vec::with_capacity(batch.runs.len());
        for (index, mut request) in batch.runs.into_iter().enumerate() {
            let repository = request.repository.to_string();
            request.idempotency_key = Some(batches::run_idempotency_key(batch_id, &repository));
            let run_id = match self.record(&request, Some(batch_id)).await {
                Ok(Recorded::Created(run_id, _) | Recorded::Existing(run_id, _)) => run_id,
                Ok(Recorded::Conflict(run_id) | Recorded::Unrecorded(run_id)) => {
                    return Err(Box::new(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "batch_conflict",
                        &format!("repositories[{index}]: batch {batch_id} already made run {run_id} for {repository} with another request; use another batch_key"),
                        Some("batch_key"),
                    )))
                }
                Err(e) => return Err(unavailable(batch_id, &e)),
            };
            listed.push(BatchRun {
                repository,
                run_id: run_id.to_string(),
                released: false,
                status: Some(RunStatus::Queued),
                attempt: 0,
            });
        }
        let record = BatchRecord::new(
            batch_id.clone(),
            request_sha256.clone(),
            batch.max_in_flight,
            listed,
            runs::now(),
        );
        match batches::create(self.store.as_ref(), &record).await {
            Ok(()) => {}
            // The same batch_key sent twice at once: the other one made it.
            Err(StoreError::PreconditionFailed(_)) => {
                return match batches::load(self.store.as_ref(), batch_id).await {
                    Ok(Some((existing, _))) => self.resubmit(&existing, &request_sha256).await,
                    Ok(None) => Err(unavailable(
                        batch_id,
                        &StoreError::NotFound(batch_id.to_string()),
                    )),
                    Err(e) => Err(unavailable(batch_id, &e)),
                };
            }
            Err(e) => return Err(unavailable(batch_id, &e)),
        }
        let record = self.release(batch_id).await?;
        Ok(self.batch_answer(StatusCode::ACCEPTED, &record, None))
    }

    /// The batch sent again: the same request, or 422.
    async fn resubmit(
        &self,
        existing: &BatchRecord,
        request_sha256: &str,
    ) -> Result<ApiResponse, Box<ApiResponse>> {
        let batch_id = &existing.batch_id;
        if existing.request_sha256 != request_sha256 {
            return Err(Box::new(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_conflict",
                &format!("batch_key names batch {batch_id}, which was submitted with another request (other repositories, text or options); send that same request to resubmit it, or use another batch_key"),
                Some("batch_key"),
            )));
        }
        // Failed and cancelled runs are held first, then queued again: a held run waits
        // for a slot, so a resubmission never puts more than max_in_flight in flight.
        let held = batches::update(self.store.as_ref(), batch_id, |record, read| {
            let mut what = Resubmitted::default();
            for run in record.runs.clone() {
                match read.get(&run.run_id).map(|(status, _)| *status) {
                    Some(RunStatus::Failed | RunStatus::Cancelled) => {
                        record.hold(&run.run_id);
                        what.retried.push(run.run_id);
                    }
                    Some(RunStatus::Succeeded | RunStatus::NoChanges) => {
                        what.skipped.push(run.run_id)
                    }
                    _ => what.left.push(run.run_id),
                }
            }
            record.submissions = record.submissions.saturating_add(1);
            what
        })
        .await;
        let what = match held {
            Ok(Some((_, what))) => what,
            Ok(None) => {
                return Err(Box::new(specrun_http::not_found(&format!(
                    "no batch {batch_id}"
                ))))
            }
            Err(e) => return Err(unavailable(batch_id, &e)),
        };
        for run_id in &what.retried {
            let Ok(id) = RunId::parse(run_id) else {
                continue;
            };
            let retried = async {
                runs::mark_queue_send(self.store.as_ref(), &id, runs::QueueSend::Pending).await?;
                runs::retry_run(self.store.as_ref(), &id).await
            };
            if let Err(e) = retried.await {
                return Err(unavailable(batch_id, &e));
            }
        }
        let record = self.release(batch_id).await?;
        Ok(self.batch_answer(StatusCode::OK, &record, Some(what)))
    }

    async fn release(&self, batch_id: &BatchId) -> Result<BatchRecord, Box<ApiResponse>> {
        match batches::refresh(self.store.as_ref(), self.queue.as_ref(), batch_id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(Box::new(specrun_http::not_found(&format!(
                "no batch {batch_id}"
            )))),
            Err(e) => Err(unavailable(batch_id, &e)),
        }
    }

    fn batch_answer(
        &self,
        status: StatusCode,
        record: &BatchRecord,
        what: Option<Resubmitted>,
    ) -> ApiResponse {
        let base = self.status_base.trim_end_matches('/');
        let mut body = serde_json::to_value(record).unwrap_or_default();
        body["status_url"] = format!("{base}/batches/{}", record.batch_id).into();
        body["resubmitted"] = what.is_some().into();
        if let Some(what) = what {
            body["resubmission"] = serde_json::to_value(what).unwrap_or_default();
        }
        json(status, &body)
    }
}

/// 503 naming the batch: sending the same request (with its batch_key) again is safe.
fn unavailable(batch_id: &BatchId, e: &StoreError) -> Box<ApiResponse> {
    tracing::warn!(%batch_id, error = %e, "could not record or release a batch");
    let mut extra = serde_json::Map::new();
    extra.insert("batch_id".to_owned(), batch_id.to_string().into());
    Box::new(specrun_http::unavailable_with(
        &format!("batch {batch_id} could not be recorded or released: {e}; send the same request with a batch_key again to finish it"),
        extra,
    ))
}
