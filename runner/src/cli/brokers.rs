//! The Celery-side services a runner can be pointed at with the URLs Celery users already
//! have: `--broker amqp://...` (RabbitMQ, instead of SQS) and `--result-backend
//! db+postgresql://...` (Celery's database backend, instead of the bucket). Passwords in
//! those URLs come from the environment only, and every message shows the URL masked.

use super::service::BackendArgs;
use crate::worker::Worker;
use anyhow::{bail, Context as _};
use specrun_core::backoff::Backoff;
use specrun_core::ports::Queue;
use specrun_core::service_url::{self, redact_url};
use specrun_store::amqp::dead_letter_queue;
use specrun_store::{AmqpQueue, PostgresCeleryResults};
use std::sync::Arc;

/// The prefetch of the dead-letter queue's watcher: it looks at a few at a time.
const DEAD_LETTER_PREFETCH: u16 = 10;

/// A URL with a password must come from its environment variable, never from a
/// command-line argument, which every process listing shows.
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
pub(super) async fn broker_queue(
    args: &BackendArgs,
    prefetch: usize,
    max_receives: u32,
) -> anyhow::Result<Option<AmqpQueue>> {
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
    Ok(Some(queue))
}

/// The worker with the broker's dead-letter queue watched and Celery results written to
/// `--result-backend`, as far as those are set.
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
