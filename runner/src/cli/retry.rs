//! `specrun retry <id>`: a failed or cancelled run again, from its last good phase. With
//! the bucket and queue it does what the submit API's `POST /runs/{id}/retry` does (the
//! same handler answers); on the embedded store the new attempt runs in this process.

use super::execute_here;
use crate::engine::Pipeline;
use anyhow::{bail, Context};
use specrun_core::keys::RunId;
use specrun_core::ports::BlobStore;
use specrun_core::repo::RepoPolicy;
use specrun_store::runs::{self, Retried};
use specrun_store::{aws_config, sqs_client, SqsQueue};
use specrun_submit::Submit;
use std::sync::Arc;

/// Queues the retry for the runners, through the submit function's own handler.
pub(super) async fn queued(
    run_id: &str,
    store: Arc<dyn BlobStore>,
    queue_url: &str,
) -> anyhow::Result<i32> {
    let submit = Submit {
        store,
        queue: Arc::new(SqsQueue::new(
            sqs_client(&aws_config().await),
            queue_url.to_owned(),
        )),
        policy: RepoPolicy::default(),
        status_base: String::new(),
        default_agent: String::new(),
        image: String::new(),
        agents: None,
    };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/runs/{run_id}/retry"))
        .body(bytes::Bytes::new())
        .context("building the retry request")?;
    let answer = submit.handle(request).await;
    let body = String::from_utf8_lossy(answer.body()).into_owned();
    if answer.status() != http::StatusCode::ACCEPTED {
        bail!("run {run_id} was not retried ({}): {body}", answer.status());
    }
    println!("{body}");
    Ok(0)
}

/// Retries the run and executes its new attempt in this process.
pub(super) async fn here(
    run_id: &str,
    pipeline: &Pipeline,
    state_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<i32> {
    let id = RunId::parse(run_id).with_context(|| format!("{run_id:?} is not a run id"))?;
    let store = pipeline.store.as_ref();
    let Some(stored) = runs::load_request(store, &id).await? else {
        bail!("run {run_id} has no stored request (no runs/{run_id}/request.json in {}): it was made before runs kept their request; start it again with `specrun run`", state_dir.display());
    };
    let policy = RepoPolicy {
        allowed_hosts: Vec::new(),
        trusted: true,
    };
    let request = stored
        .validate(&policy)
        .map_err(|e| anyhow::anyhow!("the stored request of run {run_id} is invalid: {e}"))?;
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
