//! The Celery-side services a runner can be pointed at with the URLs Celery users already
//! have: `--broker amqp://...` (RabbitMQ, instead of SQS) and `--result-backend
//! db+postgresql://...` (Celery's database backend, instead of the bucket). Passwords in
//! those URLs come from the environment only, and every message shows the URL masked.
//! A specrun built without the `brokers` feature (the demo's build: no AMQP or PostgreSQL
//! client to compile) refuses both flags, saying how to get them.

use super::service::BackendArgs;
use crate::worker::Worker;
use specrun_core::backoff::Backoff;
use specrun_core::ports::Queue;
use std::sync::Arc;
#[cfg(feature = "brokers")]
use {
    anyhow::{bail, Context as _},
    specrun_core::service_url::{self, redact_url},
    specrun_store::amqp::dead_letter_queue,
    specrun_store::{AmqpQueue, PostgresCeleryResults},
};

/// The prefetch of the dead-letter queue's watcher: it looks at a few at a time.
#[cfg(feature = "brokers")]
const DEAD_LETTER_PREFETCH: u16 = 10;

/// A URL with a password must come from its environment variable, never from a
/// command-line argument, which every process listing shows.
#[cfg(feature = "brokers")]
fn from_environment(value: &str, flag: &str, variable: &str) -> anyhow::Result<()> {
    if service_url::has_password(value) && std::env::var(variable).ok().as_deref() != Some(value) {
        bail!(
            "{flag} {} carries a password on the command line, where process listings show \
             it: set {variable} to the URL instead and leave {flag} out",
            redact_url(value)
        );
    }
    Ok(())
}

/// The run queue on the broker named by `--broker`, when one is: connected and its queues
/// declared, so that a wrong address or password stops the runner at start.
#[cfg(feature = "brokers")]
pub(super) async fn broker_queue(
    args: &BackendArgs,
    prefetch: usize,
    max_receives: u32,
) -> anyhow::Result<Option<Arc<dyn Queue>>> {
    let Some(broker) = &args.broker else {
        return Ok(None);
    };
    from_environment(broker, "--broker", "SPECRUN_BROKER_URL")?;
    let url = service_url::parse_amqp(broker).context("reading --broker")?;
    let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
    let queue = AmqpQueue::new(url, &args.broker_queue, prefetch).with_dead_letters(max_receives);
    queue.check().await.with_context(|| {
        format!(
            "connecting to the broker {} (is RabbitMQ running there, and are the user, \
             password and virtual host right?)",
            redact_url(broker)
        )
    })?;
    Ok(Some(Arc::new(queue)))
}

/// The worker with the broker's dead-letter queue watched and Celery results written to
/// `--result-backend`, as far as those are set.
#[cfg(feature = "brokers")]
pub(super) async fn with_celery_services(
    mut worker: Worker,
    args: &BackendArgs,
    retry: Backoff,
) -> anyhow::Result<Worker> {
    if let Some(broker) = &args.broker {
        let url = service_url::parse_amqp(broker).context("reading --broker")?;
        let dead = AmqpQueue::new(
            url,
            dead_letter_queue(&args.broker_queue),
            DEAD_LETTER_PREFETCH,
        );
        worker = worker.with_dead_letters(Arc::new(dead) as Arc<dyn Queue>);
    }
    if let Some(backend) = &args.result_backend {
        from_environment(backend, "--result-backend", "SPECRUN_RESULT_BACKEND")?;
        let url =
            service_url::parse_postgres_backend(backend).context("reading --result-backend")?;
        let results = PostgresCeleryResults::new(&url, retry)
            .with_context(|| format!("reading --result-backend {}", redact_url(backend)))?;
        results.check().await.with_context(|| {
            format!(
                "connecting to the result backend {} (is PostgreSQL running there, and are \
                 the user, password and database right?)",
                redact_url(backend)
            )
        })?;
        worker = worker.with_celery_results(Arc::new(results));
    }
    Ok(worker)
}

/// Why a runner given `--broker` or `--result-backend` cannot start, and the remedy.
#[cfg(not(feature = "brokers"))]
fn built_without_brokers() -> anyhow::Error {
    anyhow::anyhow!(
        "this specrun was built without RabbitMQ/PostgreSQL support (--broker, \
         --result-backend): build it with --features brokers (a default feature), \
         e.g. cargo build -p specrun-runner"
    )
}

#[cfg(not(feature = "brokers"))]
pub(super) async fn broker_queue(
    args: &BackendArgs,
    _prefetch: usize,
    _max_receives: u32,
) -> anyhow::Result<Option<Arc<dyn Queue>>> {
    match args.broker {
        Some(_) => Err(built_without_brokers()),
        None => Ok(None),
    }
}

#[cfg(not(feature = "brokers"))]
pub(super) async fn with_celery_services(
    worker: Worker,
    args: &BackendArgs,
    _retry: Backoff,
) -> anyhow::Result<Worker> {
    if args.broker.is_some() || args.result_backend.is_some() {
        return Err(built_without_brokers());
    }
    Ok(worker)
}
