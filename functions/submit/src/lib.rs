//! The submit function: `POST /runs` validates a run request, assigns the run id, stores
//! the request and run.json as `queued`, sends the queue message and answers 202 with the
//! run id and the status URL. A repeated `idempotency_key` answers with the run it first
//! created, or 422 when it comes with another request; when that run's message is not
//! known to be on the queue (the send failed, or its answer was lost), it is sent again.

use bytes::Bytes;
use http::{Method, StatusCode};
use sha2::{Digest, Sha256};
use specrun_core::agents_file::AgentRegistry;
use specrun_core::batch::{BatchId, BatchLimits};
use specrun_core::keys::RunId;
use specrun_core::message::RunMessage;
use specrun_core::ports::{BlobStore, Queue, StoreError};
use specrun_core::repo::RepoPolicy;
use specrun_core::request::{RequestError, RunRequest, ValidatedRequest};
use specrun_core::state::{AgentConfiguration, RunError, RunRecord};
use specrun_core::RunStatus;
use specrun_http::{error, error_with, json, path, ApiRequest, ApiResponse};
use specrun_store::runs;
use std::sync::Arc;

mod batch;

/// Largest request body accepted; the text itself is limited to 64 KiB.
pub const MAX_BODY: usize = 128 * 1024;

/// What the submit function needs.
#[derive(Clone)]
pub struct Submit {
    pub store: Arc<dyn BlobStore>,
    pub queue: Arc<dyn Queue>,
    /// Repository hosts requests may name.
    pub policy: RepoPolicy,
    /// Base of the status URLs handed back, e.g. the status function's URL.
    pub status_base: String,
    pub default_agent: String,
    pub image: String,
    /// Agents a request may name. `None` when an agents file decides at run time: the
    /// runner then refuses unknown agents when the run starts.
    pub agents: Option<AgentRegistry>,
    /// The operator's model budget: a request may lower it, never raise it.
    pub model_budget: specrun_core::model_usage::Budget,
    /// How large a batch may be and how many of its runs may be queued at once.
    pub batch_limits: BatchLimits,
}

/// Batch limits from `SPECRUN_BATCH_MAX_REPOSITORIES` and `SPECRUN_BATCH_MAX_IN_FLIGHT`,
/// the defaults where unset or not a positive number.
pub fn batch_limits_from_env() -> BatchLimits {
    let read = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let defaults = BatchLimits::default();
    BatchLimits {
        max_repositories: read("SPECRUN_BATCH_MAX_REPOSITORIES", defaults.max_repositories),
        max_in_flight: read("SPECRUN_BATCH_MAX_IN_FLIGHT", defaults.max_in_flight),
    }
}

/// Where a request's `callback_url` may point: the hosts in `SPECRUN_CALLBACK_HOSTS`
/// (comma-separated `host` or `host:port`), plain http to loopback only with
/// `SPECRUN_CALLBACK_ALLOW_HTTP_LOOPBACK=1` (tests on one machine). Runners read the same
/// variables: they validate the stored request again before running it.
pub fn callback_policy_from_env() -> specrun_core::notify::CallbackPolicy {
    let loopback = std::env::var("SPECRUN_CALLBACK_ALLOW_HTTP_LOOPBACK")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    specrun_core::notify::CallbackPolicy::allowing(
        &std::env::var("SPECRUN_CALLBACK_HOSTS").unwrap_or_default(),
        loopback,
    )
}

impl Submit {
    /// The deployment's settings from the environment, on `store` and `queue`: the
    /// submit function's, and the status function's when it takes the console's posts.
    pub fn from_env(store: Arc<dyn BlobStore>, queue: Arc<dyn Queue>) -> Result<Submit, String> {
        Ok(Submit {
            store,
            queue,
            policy: RepoPolicy {
                callbacks: callback_policy_from_env(),
                ..RepoPolicy::allowing(
                    &std::env::var("SPECRUN_ALLOW_REPO_HOSTS").unwrap_or_default(),
                )
            },
            status_base: std::env::var("SPECRUN_STATUS_URL").unwrap_or_default(),
            default_agent: std::env::var("SPECRUN_DEFAULT_AGENT")
                .unwrap_or_else(|_| "codex".to_owned()),
            image: std::env::var("SPECRUN_IMAGE")
                .unwrap_or_else(|_| "specrun-job:latest".to_owned()),
            agents: match std::env::var("SPECRUN_AGENTS_FILE") {
                Ok(_) => None,
                Err(_) => Some(AgentRegistry::builtins()),
            },
            model_budget: match std::env::var("SPECRUN_MODEL_BUDGET") {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("SPECRUN_MODEL_BUDGET is not a budget: {e}"))?,
                Err(_) => Default::default(),
            },
            batch_limits: batch_limits_from_env(),
        })
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, request: ApiRequest) -> ApiResponse {
        let route = path(&request).to_owned();
        if let Some(id) = route
            .strip_prefix("/runs/")
            .and_then(|rest| rest.strip_suffix("/cancel"))
        {
            return match request.method() {
                &Method::POST => self.cancel(id).await,
                _ => specrun_http::method_not_allowed("POST"),
            };
        }
        if let Some(id) = route
            .strip_prefix("/runs/")
            .and_then(|rest| rest.strip_suffix("/retry"))
        {
            return match request.method() {
                &Method::POST => self.retry(id).await,
                _ => specrun_http::method_not_allowed("POST"),
            };
        }
        if let Some(id) = route
            .strip_prefix("/runs/")
            .and_then(|rest| rest.strip_suffix("/answers"))
        {
            return match (request.method(), specrun_http::require_json(&request)) {
                (&Method::POST, Ok(())) => self.answer(id, request.into_body()).await,
                (&Method::POST, Err(refused)) => *refused,
                _ => specrun_http::method_not_allowed("POST"),
            };
        }
        match (request.method(), route.as_str()) {
            (&Method::POST, "/batches") => match specrun_http::require_json(&request) {
                Ok(()) => self.submit_batch(request.into_body()).await,
                Err(refused) => *refused,
            },
            (_, "/batches") => specrun_http::method_not_allowed("POST"),
            (&Method::POST, "/runs") => match specrun_http::require_json(&request) {
                Ok(()) => self.submit(request.into_body()).await,
                Err(refused) => *refused,
            },
            (_, "/runs") => specrun_http::method_not_allowed("POST"),
            (_, other) => specrun_http::not_found(&format!(
                "no route {other}; submit runs with POST /runs, batches with POST /batches"
            )),
        }
    }

    /// `POST /runs/{id}/cancel`: a queued run is cancelled at once (200), a running one
    /// within seconds (202); a finished run answers 409.
    async fn cancel(&self, id: &str) -> ApiResponse {
        let Ok(run_id) = RunId::parse(id) else {
            return specrun_http::not_found(&format!("no run {id}"));
        };
        match runs::cancel_run(self.store.as_ref(), &run_id, "the submit API").await {
            Ok(None) => specrun_http::not_found(&format!("no run {id}")),
            Ok(Some(runs::Cancelled::BeforeStart)) => json(
                StatusCode::OK,
                &serde_json::json!({"run_id": id, "status": "cancelled"}),
            ),
            Ok(Some(runs::Cancelled::Requested)) => json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"run_id": id, "status": "cancel_requested"}),
            ),
            Ok(Some(runs::Cancelled::AlreadyFinished(status))) => error(
                StatusCode::CONFLICT,
                "already_finished",
                &format!("run {id} already ended: {status}"),
                None,
            ),
            Err(e) => specrun_http::unavailable(&e.to_string()),
        }
    }

    /// `POST /runs/{id}/retry`: a failed or cancelled run is queued again for a new
    /// attempt that continues from its last good phase (202); a run in progress or
    /// finished otherwise answers 409. A retried run whose message is not known to be on
    /// the queue (the send failed) is sent again.
    async fn retry(&self, id: &str) -> ApiResponse {
        let Ok(run_id) = RunId::parse(id) else {
            return specrun_http::not_found(&format!("no run {id}"));
        };
        let store = self.store.as_ref();
        let request = match runs::load_request(store, &run_id).await {
            Ok(Some(request)) => request,
            Ok(None) => {
                return match runs::load_run(store, &run_id).await {
                    Ok(None) => specrun_http::not_found(&format!("no run {id}")),
                    Ok(Some(_)) => error(
                        StatusCode::CONFLICT,
                        "not_retryable",
                        &format!("run {id} has no stored request to run again (it was recorded before requests were stored): submit it again with POST /runs"),
                        None,
                    ),
                    Err(e) => specrun_http::unavailable(&e.to_string()),
                }
            }
            Err(e) => return specrun_http::unavailable(&e.to_string()),
        };
        let retried = match runs::retry_run(store, &run_id).await {
            Ok(Some(retried)) => retried,
            Ok(None) => return specrun_http::not_found(&format!("no run {id}")),
            Err(e) => return specrun_http::unavailable(&e.to_string()),
        };
        let record = match retried {
            runs::Retried::Queued(record) => record,
            runs::Retried::Refused(RunStatus::Queued)
                if runs::queue_send(store, &run_id).await.ok().flatten()
                    == Some(runs::QueueSend::Pending) =>
            {
                match runs::load_run(store, &run_id).await {
                    Ok(Some(record)) => Box::new(record),
                    Ok(None) => return specrun_http::not_found(&format!("no run {id}")),
                    Err(e) => return specrun_http::unavailable(&e.to_string()),
                }
            }
            runs::Retried::Refused(status) => {
                let why = match status {
                    RunStatus::Queued | RunStatus::Running => "it is still in progress: wait for it to end, or cancel it first",
                    RunStatus::NeedsClarification => "it ended with open questions: answer them in the specification text and submit again",
                    _ => "it succeeded: there is nothing to retry",
                };
                return error_with(
                    StatusCode::CONFLICT,
                    "not_retryable",
                    &format!("run {id} is {status}; only a failed or cancelled run can be retried, and {why}"),
                    None,
                    serde_json::Map::from_iter([("status".to_owned(), serde_json::json!(status))]),
                );
            }
        };
        self.queue_again(&run_id, request, &record, "retry").await
    }

    /// Sends a run queued again (retried or answered) and answers 202; a failed send
    /// leaves it marked not known to be on the queue, for the same call to send again.
    async fn queue_again(
        &self,
        run_id: &RunId,
        request: RunRequest,
        record: &RunRecord,
        route: &str,
    ) -> ApiResponse {
        let store = self.store.as_ref();
        if let Err(e) = runs::mark_queue_send(store, run_id, runs::QueueSend::Pending).await {
            return specrun_http::unavailable(&e.to_string());
        }
        let message = RunMessage::new(run_id.as_str(), request);
        if let Err(e) = self.queue.send(message.to_json().into()).await {
            tracing::warn!(%run_id, error = %e, "could not queue a run again");
            return specrun_http::unavailable(&format!(
                "run {run_id} is queued again but its message could not be sent ({e}); POST /runs/{run_id}/{route} again"
            ));
        }
        if let Err(e) = runs::mark_queue_send(store, run_id, runs::QueueSend::Sent).await {
            tracing::warn!(%run_id, error = %e, "queued a run again but could not record it");
        }
        json(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "run_id": run_id.as_str(),
                "status": "queued",
                "attempt": record.attempt.saturating_add(1),
                "resume_after": record.resume.as_ref().map(|r| r.after),
                "answers": record.answers.len(),
                "status_url": format!("{}/runs/{run_id}", self.status_base.trim_end_matches('/')),
            }),
        )
    }

    /// `POST /runs/{id}/answers` with `{"answers": [{"question", "answer"}, ...]}`: a run
    /// that ended `needs_clarification` records the answers to its saved questions and is
    /// queued again, to go on from the phase that asked on the same branch (202); 400 for
    /// answers that do not fit its questions; 409 for a run not waiting for answers.
    async fn answer(&self, id: &str, body: Bytes) -> ApiResponse {
        let Ok(run_id) = RunId::parse(id) else {
            return specrun_http::not_found(&format!("no run {id}"));
        };
        if let Some(refused) = too_large(&body) {
            return refused;
        }
        let answers = match specrun_core::clarify::parse_answers(&body) {
            Ok(answers) => answers,
            Err(e) => return invalid(&e, &e.field),
        };
        let store = self.store.as_ref();
        let request = match runs::load_request(store, &run_id).await {
            Ok(Some(request)) => request,
            Ok(None) => {
                return specrun_http::not_found(&format!("no run {id} with a stored request"))
            }
            Err(e) => return specrun_http::unavailable(&e.to_string()),
        };
        let record = match runs::answer_run(store, &run_id, answers).await {
            Ok(Some(runs::Answered::Queued(record))) => record,
            Ok(Some(runs::Answered::Invalid { field, reason })) => {
                return specrun_http::invalid_request(&field, &format!("{field}: {reason}"))
            }
            Ok(Some(runs::Answered::Refused(status))) => {
                return error_with(
                    StatusCode::CONFLICT,
                    "not_waiting_for_answers",
                    &format!(
                    "run {id} is {status}; only a run that ended needs_clarification takes answers"
                ),
                    None,
                    serde_json::Map::from_iter([("status".to_owned(), serde_json::json!(status))]),
                )
            }
            Ok(None) => return specrun_http::not_found(&format!("no run {id}")),
            Err(e) => return specrun_http::unavailable(&e.to_string()),
        };
        self.queue_again(&run_id, request, &record, "answers").await
    }

    async fn submit(&self, body: Bytes) -> ApiResponse {
        if let Some(refused) = too_large(&body) {
            return refused;
        }
        let request =
            match RunRequest::from_json(&body, &self.policy).and_then(|r| self.check_agent(r)) {
                Ok(request) => request,
                Err(e) => return invalid(&e, &e.field),
            };
        let (run_id, fresh) = match self.accept(&request).await {
            Ok(Accepted::New(run_id)) => (run_id, true),
            Ok(Accepted::Duplicate(run_id)) => (run_id, false),
            Ok(Accepted::Conflict(run_id)) => return conflict(&request, &run_id),
            Ok(Accepted::NotQueued(run_id, e)) => return not_queued(&request, &run_id, &e),
            Err(e) => {
                tracing::error!(error = %e, "could not accept a run");
                return specrun_http::unavailable(&format!(
                    "the run could not be queued: {e}; retry with the same idempotency_key"
                ));
            }
        };
        let status = if fresh {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        json(
            status,
            &serde_json::json!({
                "run_id": run_id.as_str(),
                "status_url": format!("{}/runs/{run_id}", self.status_base.trim_end_matches('/')),
                "duplicate": !fresh,
            }),
        )
    }

    /// Records and queues the run, unless an earlier request with the same idempotency
    /// key already created it. "The same request" is the validated request's canonical
    /// wire form ([`ValidatedRequest::to_wire`]), every field included.
    async fn accept(&self, request: &ValidatedRequest) -> Result<Accepted, StoreError> {
        match self.record(request, None).await? {
            Recorded::Conflict(run_id) => Ok(Accepted::Conflict(run_id)),
            // A run recorded before requests were stored: answered as it always was.
            Recorded::Unrecorded(run_id) => Ok(Accepted::Duplicate(run_id)),
            Recorded::Existing(run_id, record) => {
                self.requeue_if_pending(&record, run_id, request).await
            }
            Recorded::Created(run_id, record) => {
                let accepted = self.send(run_id, request).await;
                if let (Accepted::NotQueued(_, e), None) = (&accepted, &request.idempotency_key) {
                    self.withdraw(*record, e).await;
                }
                Ok(accepted)
            }
        }
    }

    /// Records the run without sending it, unless an earlier request with the same
    /// idempotency key already created it. A run of a batch names its batch.
    async fn record(
        &self,
        request: &ValidatedRequest,
        batch: Option<&BatchId>,
    ) -> Result<Recorded, StoreError> {
        let mut run_id = runs::new_run_id();
        let mut claimed_before = false;
        if let Some(key) = &request.idempotency_key {
            let digest = format!("{:x}", Sha256::digest(key.as_bytes()));
            if let Some(existing) =
                runs::claim_idempotency(self.store.as_ref(), &digest, &run_id).await?
            {
                run_id = existing;
                claimed_before = true;
            }
        }
        // The request is stored before run.json, once: a runner executes the stored one.
        match runs::pin_request(self.store.as_ref(), &run_id, &request.to_wire()).await? {
            runs::Pinned::Different(_) => return Ok(Recorded::Conflict(run_id)),
            runs::Pinned::Unrecorded(_) => return Ok(Recorded::Unrecorded(run_id)),
            runs::Pinned::Same => {}
        }
        if claimed_before {
            if let Some(record) = runs::load_run(self.store.as_ref(), &run_id).await? {
                return Ok(Recorded::Existing(run_id, Box::new(record)));
            }
        }
        // Otherwise this is a new run, or the first request with this key stopped before
        // recording it: record it now. With a key, the run is marked not known to be
        // queued before run.json exists, so a retry after any failure from here on (the
        // store, the queue, this process) finds it and sends its message.
        if request.idempotency_key.is_some() {
            runs::mark_queue_send(self.store.as_ref(), &run_id, runs::QueueSend::Pending).await?;
        }
        let mut record = RunRecord::for_request(
            run_id.as_str(),
            request,
            AgentConfiguration::requested(request, &self.default_agent, &self.image),
            runs::now(),
        );
        record.batch_id = batch.map(ToString::to_string);
        match runs::create_run(self.store.as_ref(), &record).await {
            Ok(()) | Err(StoreError::PreconditionFailed(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(Recorded::Created(run_id, Box::new(record)))
    }

    /// The idempotency key's earlier request recorded `record`: a run still queued whose
    /// message is not known to have been sent is sent now. A duplicate message (the
    /// earlier send went out but its answer was lost) is harmless: a runner works a run
    /// only under its lease and never runs a finished run again.
    async fn requeue_if_pending(
        &self,
        record: &RunRecord,
        run_id: RunId,
        request: &ValidatedRequest,
    ) -> Result<Accepted, StoreError> {
        if record.status != RunStatus::Queued {
            return Ok(Accepted::Duplicate(run_id));
        }
        match runs::queue_send(self.store.as_ref(), &run_id).await? {
            Some(runs::QueueSend::Pending) => Ok(self.send(run_id, request).await),
            Some(runs::QueueSend::Sent) | None => Ok(Accepted::Duplicate(run_id)),
        }
    }

    /// Sends the run's message; with an idempotency key, records that it was sent.
    async fn send(&self, run_id: RunId, request: &ValidatedRequest) -> Accepted {
        let message = RunMessage::new(run_id.as_str(), request.to_wire());
        if let Err(e) = self.queue.send(message.to_json().into()).await {
            tracing::warn!(%run_id, error = %e, "could not queue a run");
            return Accepted::NotQueued(run_id, e);
        }
        if request.idempotency_key.is_some() {
            // Left pending, a later retry with the key sends a duplicate: harmless, so the
            // submission still succeeded.
            let sent = runs::QueueSend::Sent;
            if let Err(e) = runs::mark_queue_send(self.store.as_ref(), &run_id, sent).await {
                tracing::warn!(%run_id, error = %e, "queued a run but could not record it");
            }
        }
        Accepted::New(run_id)
    }

    /// The agent must be known and its options declared; checked here so a bad request
    /// is a 400 now rather than a failed run later.
    fn check_agent(&self, request: ValidatedRequest) -> Result<ValidatedRequest, RequestError> {
        if let Some(asked) = &request.budget {
            self.model_budget
                .lowered_by(asked)
                .map_err(|e| RequestError {
                    field: "budget".to_owned(),
                    reason: e.to_string(),
                })?;
        }
        let Some(agents) = &self.agents else {
            return Ok(request);
        };
        let name = request.agent.as_deref().unwrap_or(&self.default_agent);
        let field = |field: &str, reason: String| RequestError {
            field: field.to_owned(),
            reason,
        };
        let profile = agents
            .get(name)
            .map_err(|e| field("agent", e.to_string()))?;
        profile
            .option_env(&request.agent_options)
            .map_err(|e| field("agent_options", e.to_string()))?;
        Ok(request)
    }

    /// A run submitted without an idempotency key whose send failed is withdrawn: no
    /// retry can name it (a resubmission is a new run), and the client was told it was
    /// not accepted, so it must neither stay `queued` forever nor run if its message did
    /// go out. Only a run still queued is withdrawn, fenced on the version read, so a
    /// runner that already took it is never overwritten.
    async fn withdraw(&self, mut record: RunRecord, e: &StoreError) {
        record.error = Some(RunError::new(
            specrun_core::ErrorCode::QueueUnavailable,
            format!("the run could not be queued: {e}"),
            "Submit the run again; check the queue's availability and the function's permissions.",
        ));
        let reason = Some("the run could not be queued".to_owned());
        let Ok(run_id) = RunId::parse(&record.run_id) else {
            return;
        };
        let Ok(Some((stored, version))) =
            runs::load_run_versioned(self.store.as_ref(), &run_id).await
        else {
            return;
        };
        if stored.status == RunStatus::Queued
            && record
                .finish(RunStatus::Failed, reason, runs::now())
                .is_ok()
        {
            let _ = runs::save_run_fenced(self.store.as_ref(), &record, &version).await;
        }
    }
}

/// 400 naming the refused field and why.
fn invalid(e: &impl std::fmt::Display, field: &str) -> ApiResponse {
    specrun_http::invalid_request(field, &e.to_string())
}

/// 413 for a body over [`MAX_BODY`].
fn too_large(body: &Bytes) -> Option<ApiResponse> {
    (body.len() > MAX_BODY).then(|| {
        let message = format!("the body is {} bytes; the limit is {MAX_BODY}", body.len());
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &message,
            Some("body"),
        )
    })
}

/// What recording a run found.
enum Recorded {
    /// A new run, recorded now (not yet sent).
    Created(RunId, Box<RunRecord>),
    /// The idempotency key's earlier, equal request made this run.
    Existing(RunId, Box<RunRecord>),
    /// The idempotency key made this run for another request.
    Conflict(RunId),
    /// The key's run was recorded before requests were stored.
    Unrecorded(RunId),
}

/// What a submission did.
enum Accepted {
    /// Recorded and queued a new run.
    New(RunId),
    /// The idempotency key's earlier, equal request made this run.
    Duplicate(RunId),
    /// The idempotency key made this run for another request.
    Conflict(RunId),
    /// Recorded, but the queue did not take the message.
    NotQueued(RunId, StoreError),
}

/// 503: the run is recorded but its message did not reach the queue (or its answer was
/// lost). With an idempotency key the run stays queued and the same request retried
/// queues it; without one it was withdrawn.
fn not_queued(request: &ValidatedRequest, run_id: &RunId, e: &StoreError) -> ApiResponse {
    let message = match request.idempotency_key {
        Some(_) => format!(
            "run {run_id} is recorded but could not be queued: {e}; retry the same request \
             with the same idempotency_key to queue it"
        ),
        None => format!(
            "the run could not be queued: {e}; run {run_id} will not run; submit again, \
             with an idempotency_key so that retrying is safe"
        ),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("run_id".to_owned(), run_id.as_str().into());
    specrun_http::unavailable_with(&message, extra)
}

/// 422: the idempotency key already made `run_id`, for another request.
fn conflict(request: &ValidatedRequest, run_id: &RunId) -> ApiResponse {
    let message = format!(
        "idempotency_key {:?} was first sent with another request, which made run {run_id}; \
         send that same request to get run {run_id}, or use another key for a new run",
        request.idempotency_key.as_deref().unwrap_or_default()
    );
    let mut extra = serde_json::Map::new();
    extra.insert("run_id".to_owned(), run_id.as_str().into());
    error_with(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_conflict",
        &message,
        Some("idempotency_key"),
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use specrun_store::{FsBlobStore, FsQueue};
    use std::time::Duration;

    /// How [`FlakyQueue`] answers a send.
    #[derive(Clone, Copy, PartialEq)]
    enum Send {
        Works,
        /// The queue cannot be reached: nothing is sent.
        Fails,
        /// The message goes out, but its answer is lost.
        AnswerLost,
    }

    /// A queue whose sends fail on demand.
    struct FlakyQueue {
        inner: FsQueue,
        send: std::sync::Mutex<Send>,
    }

    impl FlakyQueue {
        fn set(&self, send: Send) {
            *self.send.lock().unwrap_or_else(|e| e.into_inner()) = send;
        }
    }

    #[async_trait::async_trait]
    impl Queue for FlakyQueue {
        async fn send(&self, body: Bytes) -> Result<String, StoreError> {
            let send = *self.send.lock().unwrap_or_else(|e| e.into_inner());
            let lost = || StoreError::unavailable("queue", "injected by the test");
            match send {
                Send::Works => self.inner.send(body).await,
                Send::Fails => Err(lost()),
                Send::AnswerLost => Err(self.inner.send(body).await.map_or_else(|e| e, |_| lost())),
            }
        }

        async fn receive(
            &self,
            max: usize,
            wait: Duration,
            visibility: Duration,
        ) -> Result<Vec<specrun_core::ports::Received>, StoreError> {
            self.inner.receive(max, wait, visibility).await
        }

        async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
            self.inner.extend(receipt, visibility).await
        }

        async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
            self.inner.delete(receipt).await
        }
    }

    /// [`submit`] on a [`FlakyQueue`].
    fn flaky(dir: &std::path::Path) -> (Submit, Arc<FlakyQueue>) {
        let queue = Arc::new(FlakyQueue {
            inner: FsQueue::new(dir.join("queue")),
            send: std::sync::Mutex::new(Send::Works),
        });
        let submit = Submit {
            queue: queue.clone(),
            ..submit(dir)
        };
        (submit, queue)
    }

    async fn messages(submit: &Submit) -> Result<usize, StoreError> {
        let received = submit
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await?;
        Ok(received.len())
    }

    /// The one run recorded: its id and status.
    async fn the_run(submit: &Submit) -> Result<(String, RunStatus), Box<dyn std::error::Error>> {
        let listed = runs::list_runs(submit.store.as_ref(), None, 10).await?.0;
        let [run_id] = listed.as_slice() else {
            return Err(format!("runs recorded: {listed:?}").into());
        };
        let record = runs::load_run(submit.store.as_ref(), run_id)
            .await?
            .ok_or("no run.json")?;
        Ok((run_id.to_string(), record.status))
    }

    fn submit(dir: &std::path::Path) -> Submit {
        Submit {
            store: Arc::new(FsBlobStore::new(dir.join("state"))),
            queue: Arc::new(FsQueue::new(dir.join("queue"))),
            policy: RepoPolicy {
                allowed_hosts: vec!["git.example.com".into()],
                trusted: false,
                callbacks: Default::default(),
            },
            status_base: "https://status.example".into(),
            default_agent: "scripted".into(),
            image: "specrun-job:latest".into(),
            agents: Some(AgentRegistry::builtins()),
            model_budget: specrun_core::model_usage::Budget {
                run: specrun_core::model_usage::Limits {
                    max_tokens: Some(1_000_000),
                    max_usd: Some(5.0),
                    max_requests: None,
                },
                phase: Default::default(),
            },
            batch_limits: BatchLimits::default(),
        }
    }

    fn post(body: &str) -> ApiRequest {
        post_as(Some("application/json"), body)
    }

    fn post_as(content_type: Option<&str>, body: &str) -> ApiRequest {
        let mut request = http::Request::post("/runs");
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        request
            .body(Bytes::from(body.to_owned()))
            .unwrap_or_default()
    }

    /// Nothing was recorded or queued.
    async fn assert_nothing_created(submit: &Submit) -> Result<(), Box<dyn std::error::Error>> {
        let listed = runs::list_runs(submit.store.as_ref(), None, 10).await?.0;
        assert_eq!(listed.len(), 0, "runs recorded: {listed:?}");
        let queued = submit
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(1))
            .await?;
        assert!(queued.is_empty(), "messages queued: {}", queued.len());
        Ok(())
    }

    fn body(response: &ApiResponse) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap_or_default()
    }

    #[tokio::test]
    async fn accepts_queues_and_records_a_run() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        let response = submit
            .handle(post(
                r#"{"repository":"octo/hello","specify_text":"Add login"}"#,
            ))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer = body(&response);
        let run_id = answer["run_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            answer["status_url"],
            format!("https://status.example/runs/{run_id}")
        );
        let record = runs::load_run(submit.store.as_ref(), &RunId::parse(&run_id)?).await?;
        assert_eq!(record.map(|r| r.status), Some(RunStatus::Queued));
        let messages = submit
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await?;
        let message: RunMessage = serde_json::from_slice(&messages[0].body)?;
        assert_eq!(message.run_id, run_id);
        let stored = runs::load_request(submit.store.as_ref(), &RunId::parse(&run_id)?).await?;
        assert_eq!(
            stored,
            Some(message.request),
            "the queued request is the stored one"
        );
        Ok(())
    }

    #[tokio::test]
    async fn only_json_bodies_are_taken() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        let request = r#"{"repository":"octo/hello","specify_text":"Add login"}"#;
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let response = submit.handle(post_as(content_type, request)).await;
            assert_eq!(
                response.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            assert_eq!(body(&response)["error"]["required"], "application/json");
        }
        assert_nothing_created(&submit).await?;
        let charset = post_as(Some("Application/JSON; charset=UTF-8"), request);
        assert_eq!(submit.handle(charset).await.status(), StatusCode::ACCEPTED);
        Ok(())
    }

    #[tokio::test]
    async fn an_idempotency_key_with_another_request_is_a_conflict(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        let first =
            r#"{"repository":"octo/hello","specify_text":"Add login","idempotency_key":"k-1"}"#;
        let created = body(&submit.handle(post(first)).await);
        // The same request written otherwise (defaults spelled out, keys reordered) is
        // the same request.
        let same = r#"{"idempotency_key":"k-1","specify_text":"Add login","repository":"octo/hello","publish":"pr","draft":false}"#;
        let again = submit.handle(post(same)).await;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(body(&again)["run_id"], created["run_id"]);
        for other in [
            r#"{"repository":"octo/hello","specify_text":"Add logout","idempotency_key":"k-1"}"#,
            r#"{"repository":"octo/other","specify_text":"Add login","idempotency_key":"k-1"}"#,
            r#"{"repository":"octo/hello","specify_text":"Add login","idempotency_key":"k-1","labels":["x"]}"#,
        ] {
            let response = submit.handle(post(other)).await;
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{other}"
            );
            let answer = body(&response);
            assert_eq!(answer["error"]["code"], "idempotency_conflict");
            assert_eq!(answer["error"]["field"], "idempotency_key");
            assert_eq!(answer["error"]["run_id"], created["run_id"]);
        }
        let messages = submit
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await?;
        assert_eq!(messages.len(), 1, "one run, one message");
        let run_id = RunId::parse(created["run_id"].as_str().unwrap_or_default())?;
        let stored = runs::load_request(submit.store.as_ref(), &run_id).await?;
        assert_eq!(stored.map(|r| r.specify_text), Some("Add login".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn the_same_idempotency_key_returns_the_same_run(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        let request = r#"{"repository":"octo/hello","specify_text":"Add login","idempotency_key":"nightly-42"}"#;
        let first = submit.handle(post(request)).await;
        let second = submit.handle(post(request)).await;
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::ACCEPTED, StatusCode::OK)
        );
        assert_eq!(body(&first)["run_id"], body(&second)["run_id"]);
        assert_eq!(body(&second)["duplicate"], true);
        let messages = submit
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await?;
        assert_eq!(messages.len(), 1, "one run, one message");
        Ok(())
    }

    const KEYED: &str =
        r#"{"repository":"octo/hello","specify_text":"Add login","idempotency_key":"k-9"}"#;

    /// Submits [`KEYED`] while sends go `send`: a 503 naming the run, which stays queued.
    async fn submit_while(
        dir: &std::path::Path,
        send: Send,
    ) -> Result<(Submit, Arc<FlakyQueue>, String), Box<dyn std::error::Error>> {
        let (submit, queue) = flaky(dir);
        queue.set(send);
        let refused = submit.handle(post(KEYED)).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "5");
        let answer = body(&refused);
        assert_eq!(answer["error"]["code"], "unavailable");
        let (run_id, status) = the_run(&submit).await?;
        assert_eq!(
            status,
            RunStatus::Queued,
            "an unsure send must not fail the run"
        );
        assert_eq!(answer["error"]["run_id"], run_id.as_str(), "{answer}");
        Ok((submit, queue, run_id))
    }

    /// [`KEYED`] again once the queue works: 202 and queued, then 200, the same run.
    async fn assert_retry_queues(submit: &Submit, queue: &FlakyQueue, run_id: &str) {
        queue.set(Send::Works);
        for expected in [StatusCode::ACCEPTED, StatusCode::OK] {
            let answer = submit.handle(post(KEYED)).await;
            assert_eq!(answer.status(), expected);
            assert_eq!(body(&answer)["run_id"], run_id);
        }
    }

    #[tokio::test]
    async fn a_failed_send_leaves_the_run_queued_and_a_retry_queues_it_once(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (submit, queue, run_id) = submit_while(dir.path(), Send::Fails).await?;
        // Still unreachable: another 503, nothing sent.
        let again = submit.handle(post(KEYED)).await;
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(messages(&submit).await?, 0);
        assert_retry_queues(&submit, &queue, &run_id).await;
        assert_eq!(messages(&submit).await?, 1, "one run, one message");
        Ok(())
    }

    #[tokio::test]
    async fn a_send_whose_answer_was_lost_is_sent_again_never_failed(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (submit, queue, run_id) = submit_while(dir.path(), Send::AnswerLost).await?;
        assert_retry_queues(&submit, &queue, &run_id).await;
        // The lost answer's message and the resend: a duplicate the runners run once.
        assert_eq!(messages(&submit).await?, 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_run_already_taken_from_the_queue_is_not_sent_again(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (submit, queue, run_id) = submit_while(dir.path(), Send::AnswerLost).await?;
        // A runner took the message that did go out and started the run.
        let run_id = RunId::parse(&run_id)?;
        let mut record = runs::load_run(submit.store.as_ref(), &run_id)
            .await?
            .ok_or("no run")?;
        record.start("runner-1", runs::now())?;
        runs::save_run(submit.store.as_ref(), &record).await?;
        queue.set(Send::Works);
        let again = submit.handle(post(KEYED)).await;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(messages(&submit).await?, 1, "no second message");
        Ok(())
    }

    #[tokio::test]
    async fn without_a_key_a_failed_send_withdraws_the_run(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (submit, queue) = flaky(dir.path());
        queue.set(Send::Fails);
        let request = r#"{"repository":"octo/hello","specify_text":"Add login"}"#;
        let refused = submit.handle(post(request)).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(the_run(&submit).await?.1, RunStatus::Failed);
        Ok(())
    }

    #[tokio::test]
    async fn a_request_may_lower_the_operators_budget() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        let response = submit
            .handle(post(
                r#"{"repository":"octo/hello","specify_text":"x","budget":{"run":{"max_usd":0.5},"phase":{"max_requests":20}}}"#,
            ))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        Ok(())
    }

    #[tokio::test]
    async fn bad_requests_are_400s_that_name_the_field_and_create_nothing(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let submit = submit(dir.path());
        for (body_text, field) in [
            ("{", "body"),
            (
                r#"{"repository":"file:///etc","specify_text":"x"}"#,
                "repository",
            ),
            (
                r#"{"repository":"https://evil.example/a/b","specify_text":"x"}"#,
                "repository",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","agent":"nope"}"#,
                "agent",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","agent_options":{"shell":"sh"}}"#,
                "agent_options",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","repository":"octo/evil"}"#,
                "body",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x\udb40\udc41"}"#,
                "specify_text",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","branch_name":"refs/heads/main"}"#,
                "branch_name",
            ),
            // Above the operator's maximum: a request may only lower a budget.
            (
                r#"{"repository":"octo/hello","specify_text":"x","budget":{"run":{"max_usd":50}}}"#,
                "budget",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","budget":{"run":{"max_tokens":2000000}}}"#,
                "budget",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","budget":{"run":{"max_usd":-1}}}"#,
                "budget",
            ),
        ] {
            let response = submit.handle(post(body_text)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body_text}");
            assert_eq!(body(&response)["error"]["field"], field, "{body_text}");
        }
        let huge = format!(
            r#"{{"repository":"octo/hello","specify_text":"{}"}}"#,
            "a".repeat(MAX_BODY)
        );
        assert_eq!(
            submit.handle(post(&huge)).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_nothing_created(&submit).await?;
        let get = http::Request::get("/runs").body(Bytes::new())?;
        assert_eq!(
            submit.handle(get).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        Ok(())
    }
}
