//! `specrun retry <id>` (a failed or cancelled run again, from its last good phase) and
//! `specrun answer <id>` (a run's open questions answered, the run resumed). With the
//! bucket and queue they do what the submit API's `POST /runs/{id}/retry` and
//! `/answers` do (the same handler answers); on the embedded store the new attempt runs
//! in this process.

use super::{aws, execute_here};
use crate::engine::Pipeline;
use anyhow::{bail, Context};
use specrun_core::clarify::Answer;
use specrun_core::keys::RunId;
use specrun_core::ports::BlobStore;
use specrun_core::repo::RepoPolicy;
use specrun_store::runs::{self, Answered, Retried};
use specrun_submit::Submit;
use std::sync::Arc;

/// Queues the retry for the runners, through the submit function's own handler.
pub(super) async fn queued(
    run_id: &str,
    store: Arc<dyn BlobStore>,
    queue_url: &str,
) -> anyhow::Result<i32> {
    through_submit(run_id, "retry", store, queue_url, bytes::Bytes::new()).await
}

/// Queues the answered run for the runners, through the submit function's own handler.
pub(super) async fn answer_queued(
    run_id: &str,
    store: Arc<dyn BlobStore>,
    queue_url: &str,
    answers: Vec<Answer>,
) -> anyhow::Result<i32> {
    let body = serde_json::to_vec(&serde_json::json!({ "answers": answers }))?;
    through_submit(run_id, "answers", store, queue_url, body.into()).await
}

async fn through_submit(
    run_id: &str,
    route: &str,
    store: Arc<dyn BlobStore>,
    queue_url: &str,
    body: bytes::Bytes,
) -> anyhow::Result<i32> {
    let submit = Submit {
        store,
        queue: aws::queue(queue_url).await?,
        policy: RepoPolicy::default(),
        status_base: String::new(),
        default_agent: String::new(),
        image: String::new(),
        agents: None,
        // Only POST /runs reads the operator's budget; retry and answers take none.
        model_budget: Default::default(),
        batch_limits: specrun_submit::batch_limits_from_env(),
    };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/runs/{run_id}/{route}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .context("building the request")?;
    let answer = submit.handle(request).await;
    let body = String::from_utf8_lossy(answer.body()).into_owned();
    if answer.status() != http::StatusCode::ACCEPTED {
        bail!(
            "run {run_id} was not queued again ({}): {body}",
            answer.status()
        );
    }
    println!("{body}");
    Ok(0)
}

/// The answers `--answer N=TEXT` give, with question N of the run's saved questions.
pub(super) async fn numbered_answers(
    run_id: &str,
    store: &dyn BlobStore,
    numbered: &[(usize, String)],
) -> anyhow::Result<Vec<Answer>> {
    let id = RunId::parse(run_id).with_context(|| format!("{run_id:?} is not a run id"))?;
    let record = runs::load_run(store, &id)
        .await?
        .with_context(|| format!("no run {run_id}"))?;
    let key = record
        .artifacts
        .iter()
        .find(|a| a.name == "clarifications.json")
        .map(|a| a.key.clone())
        .with_context(|| {
            format!(
                "run {run_id} is {} and has no open questions",
                record.status
            )
        })?;
    let saved: serde_json::Value = serde_json::from_slice(&store.get(&key).await?)?;
    let questions: Vec<String> = saved["questions"]
        .as_array()
        .map(|qs| {
            qs.iter()
                .filter_map(|q| q.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    numbered
        .iter()
        .map(|(n, answer)| {
            let question = questions.get(n - 1).with_context(|| {
                format!("run {run_id} has {} question(s), not {n}", questions.len())
            })?;
            Ok(Answer {
                question: question.clone(),
                answer: answer.clone(),
            })
        })
        .collect()
}

/// Records the answers and executes the resumed attempt in this process.
pub(super) async fn answer_here(
    run_id: &str,
    pipeline: &Pipeline,
    state_dir: &std::path::Path,
    json: bool,
    answers: Vec<Answer>,
) -> anyhow::Result<i32> {
    let (id, request) = stored_request(run_id, pipeline, state_dir).await?;
    let record = match runs::answer_run(pipeline.store.as_ref(), &id, answers).await? {
        None => bail!(
            "no run {run_id} in the state store at {}",
            state_dir.display()
        ),
        Some(Answered::Refused(status)) => bail!(
            "run {run_id} is {status}: only a run that ended needs_clarification takes answers"
        ),
        Some(Answered::Invalid { field, reason }) => bail!("{field}: {reason}"),
        Some(Answered::Queued(record)) => *record,
    };
    eprintln!(
        "specrun: resuming run {run_id} (attempt {}) with {} answer(s)",
        record.attempt.saturating_add(1),
        record.answers.len()
    );
    execute_here(pipeline, record, request, state_dir, json).await
}

/// The run's id and the request stored for it, validated as `specrun run` validates.
async fn stored_request(
    run_id: &str,
    pipeline: &Pipeline,
    state_dir: &std::path::Path,
) -> anyhow::Result<(RunId, specrun_core::ValidatedRequest)> {
    let id = RunId::parse(run_id).with_context(|| format!("{run_id:?} is not a run id"))?;
    let Some(stored) = runs::load_request(pipeline.store.as_ref(), &id).await? else {
        bail!("run {run_id} has no stored request (no runs/{run_id}/request.json in {}): it was made before runs kept their request; start it again with `specrun run`", state_dir.display());
    };
    let policy = RepoPolicy {
        allowed_hosts: Vec::new(),
        trusted: true,
        callbacks: Default::default(),
    };
    let request = stored
        .validate(&policy)
        .map_err(|e| anyhow::anyhow!("the stored request of run {run_id} is invalid: {e}"))?;
    Ok((id, request))
}

/// Retries the run and executes its new attempt in this process.
pub(super) async fn here(
    run_id: &str,
    pipeline: &Pipeline,
    state_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<i32> {
    let (id, request) = stored_request(run_id, pipeline, state_dir).await?;
    let store = pipeline.store.as_ref();
    let record = match runs::retry_run(store, &id).await? {
        None => bail!(
            "no run {run_id} in the state store at {}",
            state_dir.display()
        ),
        Some(Retried::Refused(status)) => {
            bail!("run {run_id} is {status}: only a failed or cancelled run can be retried")
        }
        Some(Retried::Queued(record)) => *record,
    };
    eprintln!(
        "specrun: retrying run {run_id} (attempt {}){}",
        record.attempt.saturating_add(1),
        match &record.resume {
            Some(resume) => format!(
                "; {} and the phases before it are restored from attempt {}",
                resume.after, resume.from_attempt
            ),
            None => "; every phase runs again".to_owned(),
        }
    );
    execute_here(pipeline, record, request, state_dir, json).await
}
