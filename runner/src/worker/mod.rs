//! The queue worker (`specrun runner`): long-polls the queue with bounded concurrency,
//! keeps each message hidden while its run is in progress, and deletes it only after the
//! run's final state is written. It accepts specrun's own messages, bare run requests and
//! Celery tasks ([`messages`]), works each run under its [`lease`] ([`execute`], one task
//! per run id in a process: [`run_locks`]), gives up on a run only on its last delivery
//! and only under its lease ([`last_delivery`]), and writes each Celery task's result
//! where the scheduler's Celery reads it ([`celery_results`]: its S3 or database
//! backend). [`sweep`] removes what dead runners left on this host.

mod answers;
mod celery_results;
mod dead_letters;
mod execute;
mod last_delivery;
pub mod lease;
mod messages;
pub mod run_locks;
pub mod sweep;

use crate::engine::Pipeline;
use crate::notify::Notifier;
use execute::Attempt;
use last_delivery::Holder;
use messages::QueuedRun;
use run_locks::RunLocks;
use specrun_core::celery::{self, CeleryState};
use specrun_core::ports::{BlobStore, CeleryResultBackend, Queue, Received, StoreError};
use specrun_core::repo::RepoPolicy;
use specrun_store::runs::now;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How the worker polls and what it accepts.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Runs in progress at once.
    pub concurrency: usize,
    /// How long a received message stays hidden; renewed every third of it while the run
    /// lives.
    pub visibility: Duration,
    /// Longest long-poll wait (SQS allows 20 s).
    pub poll_wait: Duration,
    /// Repositories queue messages may name.
    pub policy: RepoPolicy,
    /// The Celery task name runs arrive under.
    pub celery_task: String,
    /// Where Celery results go (Celery's `s3_base_path`).
    pub celery_result_prefix: String,
    /// How long in-flight runs get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// The queue's redrive `maxReceiveCount`: on the last delivery a run that still cannot
    /// finish is marked failed before its message moves to the dead-letter queue.
    pub max_receives: u32,
    /// How long a run's lease lasts without renewal: after a runner dies, its run can be
    /// taken over this long after the last renewal.
    pub lease_ttl: Duration,
    /// The longest one wait for a Celery `eta` (SQS delays a message at most 15 minutes):
    /// a task due later is re-sent as a new message this far ahead, again and again.
    pub eta_step: Duration,
}

/// SQS's longest `DelaySeconds`.
const MAX_ETA_STEP: Duration = Duration::from_secs(900);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 1,
            visibility: Duration::from_secs(120),
            poll_wait: Duration::from_secs(20),
            policy: RepoPolicy::default(),
            celery_task: celery::TASK_NAME.to_owned(),
            celery_result_prefix: "celery/".to_owned(),
            shutdown_grace: Duration::from_secs(600),
            max_receives: 3,
            lease_ttl: Duration::from_secs(60),
            eta_step: MAX_ETA_STEP,
        }
    }
}

/// Takes runs from a queue and executes them.
#[derive(Clone)]
pub struct Worker {
    pipeline: Pipeline,
    queue: Arc<dyn Queue>,
    config: Arc<WorkerConfig>,
    running: RunLocks,
    /// The run queue's dead-letter queue, watched for runs left unfinished.
    dead_letters: Option<Arc<dyn Queue>>,
    /// Where Celery task results go (the state bucket in Celery's S3 layout by default).
    celery_results: Arc<dyn CeleryResultBackend>,
    /// Sends final statuses to the webhook and callbacks, when a secret is configured.
    notifier: Option<Arc<Notifier>>,
}

/// What to do with a message once handled.
enum Disposition {
    /// Done (or never runnable): remove it from the queue.
    Delete,
    /// Leave it: it comes back after its visibility timeout (and, on SQS, reaches the
    /// dead-letter queue after too many tries).
    Retry,
    /// Wait this long for a Celery `eta`: send the body again as a new message delayed by
    /// it and delete this one (see [`Worker::defer`]).
    Defer(Duration),
}

/// A background task that ends with its owner, also when the owner panics or its
/// future is dropped (a keep-alive must never outlive the message it keeps hidden).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Worker {
    pub fn new(pipeline: Pipeline, queue: Arc<dyn Queue>, config: WorkerConfig) -> Self {
        let celery_results = Arc::new(celery_results::BlobCeleryResults {
            store: pipeline.store.clone(),
            prefix: config.celery_result_prefix.clone(),
        });
        let notifier =
            Notifier::from_config(&pipeline.config().notify, &pipeline.config().runner_id)
                .map(Arc::new);
        Worker {
            celery_results,
            notifier,
            pipeline,
            queue,
            config: Arc::new(config),
            running: RunLocks::default(),
            dead_letters: None,
        }
    }

    /// Watches the run queue's dead-letter queue too (see `dead_letters`).
    pub fn with_dead_letters(mut self, queue: Arc<dyn Queue>) -> Self {
        self.dead_letters = Some(queue);
        self
    }

    /// Writes Celery task results to `backend` instead of the state bucket (the only
    /// other backend is PostgreSQL's: `--result-backend`, feature `brokers`).
    #[cfg(feature = "brokers")]
    pub fn with_celery_results(mut self, backend: Arc<dyn CeleryResultBackend>) -> Self {
        self.celery_results = backend;
        self
    }

    fn store(&self) -> &dyn BlobStore {
        self.pipeline.store.as_ref()
    }

    /// Polls until `shutdown` completes, then stops taking messages and gives in-flight
    /// runs the grace period to finish (an unfinished one's message returns to the queue).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut running = JoinSet::new();
        let _watching = self.dead_letters.clone().map(|dead| {
            let worker = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                worker.watch_dead_letters(dead).await
            }))
        });
        tokio::pin!(shutdown);
        loop {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = running.join_next() => continue,
                }
            }
            let received = tokio::select! {
                _ = &mut shutdown => break,
                received = self.queue.receive(free, self.config.poll_wait, self.config.visibility) => received,
            };
            let messages = match received {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the queue failed; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            for message in messages {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                running.spawn(async move {
                    worker.process(message, permit).await;
                });
            }
            while running.try_join_next().is_some() {}
        }
        tracing::info!(
            in_flight = running.len(),
            "shutting down: no new messages are taken"
        );
        let drain = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!("runs still in progress at the end of the grace period; their messages return to the queue");
        }
    }

    /// Handles one message to its disposition, keeping it hidden meanwhile.
    ///
    /// It holds one of the worker's run slots, given back as soon as the run is over:
    /// notifying its end keeps the message hidden (so a runner dying meanwhile leaves the
    /// delivery to the next), not a slot another run could use.
    async fn process(&self, message: Received, slot: OwnedSemaphorePermit) {
        let keepalive = self.keep_hidden(message.receipt.clone());
        let disposition = self.handle(&message, slot).await;
        drop(keepalive);
        let done = match disposition {
            Disposition::Delete => self.queue.delete(&message.receipt).await,
            Disposition::Retry => Ok(()),
            Disposition::Defer(delay) => self.defer(&message, delay).await,
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not settle the queue message; it will be delivered again");
        }
    }

    /// Waits for a Celery `eta` without using up the message's deliveries: every receive
    /// counts towards the queue's `maxReceiveCount`, so hiding the same message again would
    /// send a task due later than a few waits to the dead-letter queue unrun. A new copy of
    /// the body, delayed by `delay`, starts at no receives; then this one is deleted.
    ///
    /// Sent first, deleted second: a crash between the two leaves two copies of the task,
    /// never none. Both name the same run (a Celery task's run id is its task id), so the
    /// later one finds the run leased or finished and runs nothing, and the task keeps its
    /// one result object. A queue that cannot delay a message gets the old way: the same
    /// message hidden until then.
    async fn defer(&self, message: &Received, delay: Duration) -> Result<(), StoreError> {
        match self
            .queue
            .send_delayed(message.body.clone().into(), delay)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    message_id = %message.message_id,
                    wait_secs = delay.as_secs(),
                    "the Celery task's eta is ahead; sent it again delayed and deleting this delivery"
                );
                self.queue.delete(&message.receipt).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-send the task delayed; hiding this delivery until its eta instead");
                self.queue.extend(&message.receipt, delay).await
            }
        }
    }

    fn keep_hidden(&self, receipt: String) -> AbortOnDrop {
        let queue = self.queue.clone();
        let visibility = self.config.visibility;
        AbortOnDrop(tokio::spawn(async move {
            let every = (visibility / 3).max(Duration::from_secs(1));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = queue.extend(&receipt, visibility).await {
                    tracing::warn!(error = %e, "could not extend the message's visibility");
                }
            }
        }))
    }

    async fn handle(&self, message: &Received, slot: OwnedSemaphorePermit) -> Disposition {
        let queued = match self.queued_run(message).await {
            Ok(queued) => queued,
            Err(disposition) => return disposition,
        };
        match self.handle_run(message, &queued).await {
            Disposition::Delete => match self.release_batch(&queued.run_id).await {
                Disposition::Delete => {
                    drop(slot);
                    self.notify(&queued).await;
                    Disposition::Delete
                }
                other => other,
            },
            other => other,
        }
    }

    /// Sends the run's final status to its webhook and callback if not sent yet (every
    /// delivery of a finished run's message comes here: the one that finished it, a
    /// duplicate, the next one after a runner died mid-delivery, and the one of a queued
    /// run cancelled through the submit function, which no runner ran).
    async fn notify(&self, queued: &QueuedRun) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let targets = notifier.targets(&queued.run_id, queued.request.callback_url.as_deref());
        if !targets.is_empty() {
            notifier
                .deliver(self.store(), &queued.run_id, &targets)
                .await;
        }
    }

    /// A run that ended and belongs to a batch releases the batch's next held runs
    /// before its message goes: if this runner dies first, the message comes back and
    /// the next delivery (which finds the run final) releases them.
    async fn release_batch(&self, run_id: &specrun_core::keys::RunId) -> Disposition {
        let store = self.store();
        let batch = match specrun_store::runs::load_run(store, run_id).await {
            Ok(Some(record)) if record.status.is_final() => record.batch_id,
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "could not read the run to release its batch's next runs; the message will be retried");
                return Disposition::Retry;
            }
        };
        let Some(batch_id) = batch.and_then(|b| specrun_core::batch::BatchId::parse(&b).ok())
        else {
            return Disposition::Delete;
        };
        match specrun_store::batches::refresh(store, self.queue.as_ref(), &batch_id).await {
            Ok(_) => Disposition::Delete,
            Err(e) => {
                tracing::warn!(%run_id, %batch_id, error = %e, "could not release the batch's next runs; the message will be retried");
                Disposition::Retry
            }
        }
    }

    async fn handle_run(&self, message: &Received, queued: &QueuedRun) -> Disposition {
        if let Some(task) = &queued.celery {
            if task.is_expired(now()) {
                self.celery_result(
                    task,
                    CeleryState::Revoked,
                    celery::revoked_result("the task expired before a runner took it"),
                )
                .await;
                return Disposition::Delete;
            }
            if let Some(wait) = task.wait_for_eta(now(), self.config.eta_step) {
                return Disposition::Defer(wait);
            }
        }
        let (unfinished, holder) = match self.execute(queued).await {
            Ok(Attempt::Finished(record)) => {
                if let Some(task) = &queued.celery {
                    self.celery_outcome(task, &record).await;
                }
                return Disposition::Delete;
            }
            Ok(Attempt::Busy { runner_id }) => {
                // Another runner works the run: wait for it with this message hidden,
                // instead of letting the message come back again and again, each time
                // using up one of its receives while the holder is alive.
                tracing::info!(run_id = %queued.run_id, %runner_id, "another runner holds the run; waiting for it with this message hidden");
                let holder = self.wait_for_holder(queued).await;
                if let Holder::Finished(status) = holder {
                    tracing::info!(run_id = %queued.run_id, %status, %runner_id, "the runner holding the run finished it; this delivery is done");
                    return Disposition::Delete;
                }
                let why = format!(
                    "run {} was held by {runner_id}, which stopped renewing its lease",
                    queued.run_id
                );
                (why, Some(holder))
            }
            Ok(Attempt::Abandoned) => (
                format!("run {}: the lease went to another runner", queued.run_id),
                None,
            ),
            Err(e) => (e.to_string(), None),
        };
        if message.receive_count < self.config.max_receives {
            tracing::warn!(why = %unfinished, run_id = %queued.run_id, "the run could not be completed now; the message will be retried");
            return Disposition::Retry;
        }
        // Waited for already when the run was found held: not a second time.
        let holder = match holder {
            Some(holder) => holder,
            None => self.wait_for_holder(queued).await,
        };
        self.settle_last(queued, message.receive_count, &unfinished, holder)
            .await
    }
}
