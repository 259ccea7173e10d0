//! `specrun batch --repo A --repo B --text ...`: one specification on many repositories,
//! through the submit function's own `POST /batches` handler. With --bucket and
//! --queue-url the batch is queued for the runners; on the embedded store its runs
//! execute in this process, at most `max_in_flight` at once, until every one is final.
//! `specrun status <batch-id>` shows the counts and each run.

use super::service::{self, WorkerCommandArgs};
use super::RequestFlags;
use anyhow::{bail, Context};
use clap::Args;
use specrun_core::batch::{BatchId, BatchRecord};
use specrun_core::ports::BlobStore;
use specrun_core::repo::RepoPolicy;
use specrun_store::batches;
use specrun_submit::Submit;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// A repository to run the specification on (repeatable, at least one).
    #[arg(long = "repo", required = true)]
    pub repos: Vec<String>,
    #[command(flatten)]
    pub request: RequestFlags,
    /// Names the batch: the same key again resubmits it (runs that succeeded are skipped,
    /// failed ones retried).
    #[arg(long)]
    pub batch_key: Option<String>,
    /// Most runs of the batch in flight at once (capped by SPECRUN_BATCH_MAX_IN_FLIGHT).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Print batch.json instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub service: WorkerCommandArgs,
}

impl BatchArgs {
    /// The `POST /batches` body: the shared request fields, the repositories, the key.
    fn body(&self) -> anyhow::Result<serde_json::Value> {
        let mut body = serde_json::to_value(self.request.to_request("")?)?;
        body["repositories"] = self.repos.clone().into();
        if let Some(object) = body.as_object_mut() {
            object.remove("repository");
        }
        if let Some(key) = &self.batch_key {
            body["batch_key"] = key.as_str().into();
        }
        if let Some(n) = self.max_in_flight {
            body["max_in_flight"] = n.into();
        }
        Ok(body)
    }
}

pub(super) async fn batch(args: BatchArgs, state_dir: &std::path::Path) -> anyhow::Result<i32> {
    let queued = args.service.backend.bucket.is_some();
    if queued != args.service.backend.queue_url.is_some() {
        bail!("a batch for the serverless deployment needs both --bucket and --queue-url (SPECRUN_BUCKET, SPECRUN_QUEUE_URL); give neither to run it here on the embedded store");
    }
    let (store, queue) = service::backend(
        &args.service.backend,
        state_dir,
        args.service.runner.retention_days,
        &args.service.worker,
    )
    .await?;
    let runner = args.service.runner.to_config()?;
    let submit = Submit {
        store: store.clone(),
        queue: queue.clone(),
        // The operator's own command: any repository host they can reach.
        policy: RepoPolicy {
            allowed_hosts: args.service.backend.allow_repo_hosts.clone(),
            trusted: true,
            callbacks: Default::default(),
        },
        status_base: String::new(),
        default_agent: runner.default_agent.clone(),
        image: runner.image.clone(),
        agents: None,
        model_budget: runner.model_budget,
        batch_limits: specrun_submit::batch_limits_from_env(),
    };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/batches")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes::Bytes::from(serde_json::to_vec(&args.body()?)?))
        .context("building the request")?;
    let answer = submit.handle(request).await;
    if !answer.status().is_success() {
        bail!(
            "the batch was not accepted ({}): {}",
            answer.status(),
            String::from_utf8_lossy(answer.body())
        );
    }
    let record: BatchRecord = serde_json::from_slice(answer.body())
        .context("reading the batch record the submit handler answered")?;
    eprintln!(
        "specrun: batch {} ({} runs, at most {} at once)",
        record.batch_id,
        record.runs.len(),
        record.max_in_flight
    );
    if queued {
        print_batch(&record, args.json)?;
        return Ok(0);
    }
    // Embedded: a worker in this process takes the released runs until all are final.
    let mut worker_args = args.service.worker;
    worker_args.concurrency = record.max_in_flight.max(1);
    let worker = service::worker(
        true,
        &worker_args,
        &args.service.backend,
        runner,
        store.clone(),
        queue,
    )?;
    let batch_id = record.batch_id.clone();
    let finished = {
        let store = store.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Some(now)) = batches::current(store.as_ref(), &batch_id).await {
                    if now.counts.finished {
                        return;
                    }
                }
            }
        }
    };
    worker.run(finished).await;
    let done = batches::current(store.as_ref(), &record.batch_id)
        .await?
        .context("the batch record disappeared")?;
    print_batch(&done, args.json)?;
    let all_good = done.counts.succeeded + done.counts.no_changes == done.counts.total;
    Ok(if all_good { 0 } else { 1 })
}

/// `specrun status <batch-id>`: the batch's counts and runs as they stand now.
pub(super) async fn status(id: &str, json: bool, store: &dyn BlobStore) -> anyhow::Result<i32> {
    let batch_id = BatchId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let record = batches::current(store, &batch_id)
        .await?
        .with_context(|| format!("no batch {id} in this state store"))?;
    print_batch(&record, json)?;
    Ok(0)
}

fn print_batch(record: &BatchRecord, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(record)?)?;
        return Ok(());
    }
    let c = &record.counts;
    writeln!(
        out,
        "batch {}  {} runs: {} succeeded, {} no changes, {} failed, {} cancelled, {} needs clarification, {} running, {} queued ({} held){}",
        record.batch_id,
        c.total,
        c.succeeded,
        c.no_changes,
        c.failed,
        c.cancelled,
        c.needs_clarification,
        c.running,
        c.queued,
        c.held,
        if c.finished { "  finished" } else { "" }
    )?;
    for run in &record.runs {
        let status = run
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        writeln!(
            out,
            "  {:<22} {:<8} attempt {}  {}  {}",
            status,
            if run.released { "" } else { "held" },
            run.attempt,
            run.run_id,
            run.repository
        )?;
    }
    Ok(())
}
