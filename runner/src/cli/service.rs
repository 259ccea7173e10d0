//! `specrun serve` and `specrun runner`: the serverless path run as long-lived processes,
//! on the embedded store and queue or on S3 and SQS.

use super::{absolute, aws, brokers, RunnerArgs};
use crate::config::RunnerConfig;
use crate::engine::Pipeline;
use crate::progress::TracingProgress;
use crate::serve::{serve, Api};
use crate::worker::{Worker, WorkerConfig};
use anyhow::Context;
use clap::Args;
use specrun_core::backoff::Backoff;
use specrun_core::ports::{BlobStore, Queue};
use specrun_core::repo::RepoPolicy;
use specrun_status::Status;
use specrun_store::{FsBlobStore, FsQueue, RetryingQueue, RetryingStore};
use specrun_submit::Submit;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where state and the queue live.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("queue_source").args(["queue_url", "broker"])))]
pub struct BackendArgs {
    /// S3 bucket for run state (with --queue-url or --broker); the embedded store when absent.
    #[arg(long, env = "SPECRUN_BUCKET", requires = "queue_source")]
    pub bucket: Option<String>,
    /// SQS queue URL for run requests (with --bucket).
    #[arg(long, env = "SPECRUN_QUEUE_URL", requires = "bucket")]
    pub queue_url: Option<String>,
    /// RabbitMQ broker for run requests and Celery tasks, as Celery's broker_url
    /// (amqp://user:password@host:5672/vhost); instead of --queue-url. A URL with a
    /// password is taken from SPECRUN_BROKER_URL only.
    #[arg(long, env = "SPECRUN_BROKER_URL", conflicts_with = "queue_url")]
    pub broker: Option<String>,
    /// The broker queue runs are taken from (the producers' task_default_queue); failed
    /// messages go to <queue>.dead-letter.
    #[arg(long, env = "SPECRUN_BROKER_QUEUE", default_value = "specrun")]
    pub broker_queue: String,
    /// Celery result backend for task results, as Celery's result_backend
    /// (db+postgresql://user:password@host:5432/db); Celery's S3 layout in the state
    /// store when absent. A URL with a password is taken from SPECRUN_RESULT_BACKEND only.
    #[arg(long, env = "SPECRUN_RESULT_BACKEND")]
    pub result_backend: Option<String>,
    /// The run queue's dead-letter queue URL (with --queue-url): runners give up the
    /// runs whose messages reach it unfinished (a runner died on the last delivery).
    #[arg(long, env = "SPECRUN_DEAD_LETTER_QUEUE_URL", requires = "queue_url")]
    pub dead_letter_queue_url: Option<String>,
    /// Put specrun's lifecycle rules on the bucket (retention of --retention-days) at start.
    #[arg(long, env = "SPECRUN_ENSURE_RETENTION")]
    pub ensure_retention: bool,
    /// A host repository URLs may name (repeatable; comma-separated in the variable).
    #[arg(
        long = "allow-repo-host",
        env = "SPECRUN_ALLOW_REPO_HOSTS",
        value_delimiter = ','
    )]
    pub allow_repo_hosts: Vec<String>,
}

/// How the queue worker runs.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Runs in progress at once.
    #[arg(long, env = "SPECRUN_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds a received message stays hidden; renewed while its run lives.
    #[arg(long, env = "SPECRUN_VISIBILITY_SECS", default_value_t = 120)]
    pub visibility_secs: u64,
    /// The Celery task name runs arrive under.
    #[arg(long, env = "SPECRUN_CELERY_TASK", default_value = "specrun.run")]
    pub celery_task: String,
    /// Where Celery results are written (Celery's s3_base_path).
    #[arg(long, env = "SPECRUN_CELERY_RESULT_PREFIX", default_value = "celery/")]
    pub celery_result_prefix: String,
    /// The queue's maxReceiveCount: the last delivery of a run that cannot finish marks it
    /// failed before the message moves to the dead-letter queue.
    #[arg(long, env = "SPECRUN_MAX_RECEIVES", default_value_t = 3)]
    pub max_receives: u32,
    /// Seconds a run's lease lasts without renewal; a dead runner's run is taken over after it.
    #[arg(long, env = "SPECRUN_LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// Longest single wait for a Celery task's eta, in seconds (at most 900, SQS's
    /// longest message delay): a task due later is re-sent this far ahead, again and again.
    #[arg(long, env = "SPECRUN_ETA_STEP_SECS", default_value_t = 900)]
    pub eta_step_secs: u64,
    /// Seconds in-flight runs get to finish after SIGTERM.
    #[arg(long, env = "SPECRUN_SHUTDOWN_GRACE_SECS", default_value_t = 600)]
    pub shutdown_grace_secs: u64,
    /// Seconds the runner keeps retrying (with backoff) when the store or queue is
    /// unreachable or busy, before it gives up on the operation.
    #[arg(long, env = "SPECRUN_STORE_RETRY_SECS", default_value_t = 300)]
    pub store_retry_secs: u64,
}

/// `specrun serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "SPECRUN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Only serve the API; runners elsewhere take the queue.
    #[arg(long)]
    pub no_runner: bool,
    /// Seconds presigned artifact URLs stay valid.
    #[arg(long, env = "SPECRUN_PRESIGN_EXPIRY_SECS", default_value_t = 3600)]
    pub presign_expiry_secs: u64,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub runner: RunnerArgs,
}

/// `specrun runner` flags.
#[derive(Debug, Args)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub runner: RunnerArgs,
}

type Backend = (Arc<dyn BlobStore>, Arc<dyn Queue>);

pub(super) async fn backend(
    args: &BackendArgs,
    state_dir: &Path,
    retention_days: u32,
    worker: &WorkerArgs,
) -> anyhow::Result<Backend> {
    let max_receives = worker.max_receives;
    if let Some(queue) = brokers::broker_queue(args, worker.concurrency, max_receives).await? {
        let store: Arc<dyn BlobStore> = match &args.bucket {
            Some(bucket) => {
                aws::runner_bucket(bucket, args.ensure_retention, retention_days).await?
            }
            None => Arc::new(FsBlobStore::new(&absolute(state_dir)?)),
        };
        return Ok((store, queue));
    }
    match (&args.bucket, &args.queue_url) {
        (Some(bucket), Some(queue_url)) => {
            aws::runner_bucket_and_queue(bucket, queue_url, args.ensure_retention, retention_days)
                .await
        }
        _ => {
            let root = absolute(state_dir)?;
            Ok((
                Arc::new(FsBlobStore::new(&root)),
                // Like SQS's redrive: past the last delivery a message moves to the
                // spool's dead-letter directory instead of coming back for ever.
                Arc::new(FsQueue::new(root.join(".queue")).with_max_receives(max_receives.max(1))),
            ))
        }
    }
}

/// A queue worker on `store` and `queue`; `trusted` takes any repository a run names (the
/// operator's own `specrun batch`), otherwise only the allowed hosts.
pub(super) fn worker(
    trusted: bool,
    args: &WorkerArgs,
    backend: &BackendArgs,
    runner: RunnerConfig,
    store: Arc<dyn BlobStore>,
    queue: Arc<dyn Queue>,
) -> anyhow::Result<Worker> {
    // A run rides out a store or queue outage rather than failing halfway through.
    let retry = retry_policy(args);
    let store = Arc::new(RetryingStore::new(store, retry));
    let queue = Arc::new(RetryingQueue::new(queue, retry));
    let pipeline = Pipeline::new(runner, store, Arc::new(TracingProgress));
    let config = WorkerConfig {
        concurrency: args.concurrency.max(1),
        visibility: Duration::from_secs(args.visibility_secs.max(10)),
        policy: RepoPolicy {
            allowed_hosts: backend.allow_repo_hosts.clone(),
            trusted,
            callbacks: specrun_submit::callback_policy_from_env(),
        },
        celery_task: args.celery_task.clone(),
        celery_result_prefix: args.celery_result_prefix.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        max_receives: args.max_receives.max(1),
        lease_ttl: Duration::from_secs(args.lease_secs.max(3)),
        eta_step: Duration::from_secs(args.eta_step_secs.clamp(1, 900)),
        ..WorkerConfig::default()
    };
    Ok(Worker::new(pipeline, queue, config))
}

/// The retry policy of the runner's store, queue and result backend.
fn retry_policy(args: &WorkerArgs) -> Backoff {
    Backoff {
        budget: Duration::from_secs(args.store_retry_secs),
        ..Backoff::default()
    }
}

/// The worker watching the dead-letter queue too, when one is named.
async fn with_dead_letters(worker: Worker, backend: &BackendArgs) -> anyhow::Result<Worker> {
    Ok(match &backend.dead_letter_queue_url {
        Some(url) => worker.with_dead_letters(aws::queue(url).await?),
        None => worker,
    })
}

/// Leftovers of runs that are over or long abandoned on this host (a runner killed
/// before its cleanup) are removed before taking new runs; failing that is not fatal.
async fn sweep_at_start(config: &RunnerConfig, store: Arc<dyn BlobStore>) {
    // An engine that is down must not hold the runner's start for long.
    let mut config = config.clone();
    config.docker_timeout = config.docker_timeout.min(Duration::from_secs(2));
    let pipeline = Pipeline::new(config, store, Arc::new(TracingProgress));
    match crate::worker::sweep::sweep(&pipeline, Duration::from_secs(600)).await {
        Ok(swept) if !swept.removed.is_empty() => eprintln!(
            "specrun: swept the leftovers of {} finished or abandoned run(s) on this host",
            swept.removed.len()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep this host's leftover job containers"),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    eprintln!("specrun: shutting down: no new runs are taken; in-flight runs get the grace period");
}

pub(super) async fn runner(args: WorkerCommandArgs, state_dir: &Path) -> anyhow::Result<i32> {
    let (store, queue) = backend(
        &args.backend,
        state_dir,
        args.runner.retention_days,
        &args.worker,
    )
    .await?;
    sweep_at_start(&args.runner.to_config()?, store.clone()).await;
    let worker = worker(
        false,
        &args.worker,
        &args.backend,
        args.runner.to_config()?,
        store,
        queue,
    )?;
    let worker = with_dead_letters(worker, &args.backend).await?;
    let worker =
        brokers::with_celery_services(worker, &args.backend, retry_policy(&args.worker)).await?;
    eprintln!(
        "specrun: runner taking runs ({} at a time)",
        args.worker.concurrency.max(1)
    );
    worker.run(shutdown_signal()).await;
    Ok(0)
}

pub(super) async fn serve_command(args: ServeArgs, state_dir: &Path) -> anyhow::Result<i32> {
    let (store, queue) = backend(
        &args.backend,
        state_dir,
        args.runner.retention_days,
        &args.worker,
    )
    .await?;
    let console = specrun_console::Console::from_env().with_context(|| {
        format!(
            "{} is not a usable console token; set it to a long random secret, or unset it to turn the console off",
            specrun_console::TOKEN_ENV
        )
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let status_base = args
        .runner
        .status_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let mut config = args.runner.to_config()?;
    config.status_base_url = Some(status_base.clone());
    let api = Api {
        submit: Arc::new(Submit {
            store: store.clone(),
            queue: queue.clone(),
            policy: RepoPolicy {
                allowed_hosts: args.backend.allow_repo_hosts.clone(),
                trusted: false,
                callbacks: specrun_submit::callback_policy_from_env(),
            },
            status_base: status_base.clone(),
            default_agent: config.default_agent.clone(),
            image: config.image.clone(),
            agents: match config.agents_file {
                Some(_) => None,
                None => Some(specrun_core::agents_file::AgentRegistry::builtins()),
            },
            model_budget: config.model_budget,
            batch_limits: specrun_submit::batch_limits_from_env(),
        }),
        status: Arc::new(Status {
            store: store.clone(),
            presign_expiry: Duration::from_secs(args.presign_expiry_secs),
            public_base: status_base,
        }),
        console: Arc::new(console.clone()),
    };
    eprintln!("specrun: serving POST /runs and GET /runs on http://{address}");
    if console.is_enabled() {
        eprintln!(
            "specrun: web console on http://{address}/ (log in with {}; the API wants it too)",
            specrun_console::TOKEN_ENV
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = serve(listener, api, wait(stopped.clone()));
    if args.no_runner {
        server.await;
    } else {
        let worker = worker(false, &args.worker, &args.backend, config, store, queue)?;
        let worker = with_dead_letters(worker, &args.backend).await?;
        let worker =
            brokers::with_celery_services(worker, &args.backend, retry_policy(&args.worker))
                .await?;
        tokio::join!(server, worker.run(wait(stopped)));
    }
    signal.abort();
    Ok(0)
}
