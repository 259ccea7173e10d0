//! The queue worker (`specrun runner`): long-polls the queue with bounded concurrency,
//! keeps each message hidden while its run is in progress, and deletes it only after the
//! run's final state is written. It accepts specrun's own messages, bare run requests and
//! Celery tasks, and writes each Celery task's result where Celery's S3 backend reads it.

use crate::lease::{self, Claim};
use crate::pipeline::Pipeline;
use crate::run_locks::RunLocks;
use sha2::{Digest, Sha256};
use specrun_core::celery::{self, CeleryState, CeleryTask};
use specrun_core::keys::RunId;
use specrun_core::message::Incoming;
use specrun_core::ports::{BlobStore, Queue, Received, StoreError};
use specrun_core::repo::RepoPolicy;
use specrun_core::request::RunRequest;
use specrun_core::state::{RunError, RunRecord};
use specrun_core::RunStatus;
use specrun_store::runs;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
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

/// Who, on a run's last delivery, is still working on it.
enum Holder {
    /// Its holder finished it, with this status.
    Finished(RunStatus),
    /// Nobody: no live lease, or this stale one (to take over, compare-and-swap).
    None(Option<(Option<specrun_core::lease::Lease>, String)>),
}

/// A message sorted into a run to execute.
struct Job {
    run_id: RunId,
    request: RunRequest,
    celery: Option<CeleryTask>,
}

fn derived_run_id(prefix: &str, source: &str) -> RunId {
    let digest = format!("{:x}", Sha256::digest(source.as_bytes()));
    // Prefix and 32 hex digits always make a valid run id.
    RunId::parse(&format!("{prefix}-{}", &digest[..32])).unwrap_or_else(|_| unreachable!())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Worker {
    pub fn new(pipeline: Pipeline, queue: Arc<dyn Queue>, config: WorkerConfig) -> Self {
        Worker {
            pipeline,
            queue,
            config: Arc::new(config),
            running: RunLocks::default(),
            dead_letters: None,
        }
    }

    /// Watches the run queue's dead-letter queue too (see [`Worker::watch_dead_letters`]).
    pub fn with_dead_letters(mut self, queue: Arc<dyn Queue>) -> Self {
        self.dead_letters = Some(queue);
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
                    worker.process(message).await;
                    drop(permit);
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
    pub async fn process(&self, message: Received) {
        let keepalive = self.keep_hidden(message.receipt.clone());
        let disposition = self.handle(&message).await;
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
        match self.queue.send_delayed(message.body.clone(), delay).await {
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

    /// A message reaches the dead-letter queue after its last delivery, also when the
    /// runner holding that delivery died with it (SIGKILL, a lost host): then nothing
    /// else would ever finish its run, which would stay `running` (or `queued`) for ever.
    /// So every runner looks at the dead letters, never deleting one (they are for
    /// operators): a run left unfinished is waited for while a live holder renews its
    /// lease, and otherwise given up (`retries_exhausted`) under its lease. A runner that
    /// dies while doing so leaves the message to come back, here, to another.
    async fn watch_dead_letters(&self, dead: Arc<dyn Queue>) {
        // A dead letter of a finished run is looked at again only this much later.
        const SETTLED: Duration = Duration::from_secs(12 * 3600);
        loop {
            match dead
                .receive(10, Duration::ZERO, self.config.visibility)
                .await
            {
                Ok(messages) => {
                    for message in messages {
                        if self.settle_dead_letter(&message).await {
                            let _ = dead.extend(&message.receipt, SETTLED).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the dead-letter queue")
                }
            }
            tokio::time::sleep(self.config.lease_ttl / 2).await;
        }
    }

    /// Finishes the run of a dead letter if it is not; whether its run is final now.
    async fn settle_dead_letter(&self, message: &Received) -> bool {
        let Ok(job) = self.sort(message).await else {
            return true;
        };
        match runs::load_run(self.store(), &job.run_id).await {
            Ok(Some(record)) if record.status.is_final() => return true,
            Ok(Some(_)) => {}
            // A run never recorded, or a store that cannot be read: look again later.
            _ => return false,
        }
        let cause = StoreError::backend(
            job.run_id.as_str(),
            "its message reached the dead-letter queue with the run unfinished",
        );
        tracing::warn!(run_id = %job.run_id, "a dead-lettered message's run is unfinished");
        self.settle_last(&job, message.receive_count, &cause).await;
        matches!(
            runs::load_run(self.store(), &job.run_id).await,
            Ok(Some(record)) if record.status.is_final()
        )
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

    async fn handle(&self, message: &Received) -> Disposition {
        let job = match self.job(message).await {
            Ok(job) => job,
            Err(disposition) => return disposition,
        };
        if let Some(task) = &job.celery {
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
        match self.execute(&job).await {
            Ok(record) => {
                if let Some(task) = &job.celery {
                    self.celery_outcome(task, &record).await;
                }
                Disposition::Delete
            }
            Err(e) if message.receive_count >= self.config.max_receives => {
                self.settle_last(&job, message.receive_count, &e).await
            }
            Err(e) => {
                tracing::warn!(error = %e, run_id = %job.run_id, "the run could not be completed now; the message will be retried");
                Disposition::Retry
            }
        }
    }

    /// The last delivery of a run that cannot be run now: done once a live holder
    /// finishes the run; with no live holder the run is given up and the message goes on
    /// to the dead-letter queue.
    async fn settle_last(&self, job: &Job, deliveries: u32, cause: &StoreError) -> Disposition {
        match self.wait_for_holder(job).await {
            Holder::Finished(status) => {
                tracing::info!(run_id = %job.run_id, %status, "the runner holding the run finished it; this last delivery is done");
                Disposition::Delete
            }
            Holder::None(stale) => {
                tracing::error!(error = %cause, run_id = %job.run_id, "giving up on the run; its message goes to the dead-letter queue");
                self.give_up(job, deliveries, cause, stale).await;
                Disposition::Retry
            }
        }
    }

    /// On a run's last delivery: while another runner holds it and keeps renewing its
    /// lease, wait (the message stays hidden) until that runner finishes it. Only a run
    /// with no live holder, or one whose lease has not been renewed for two lease
    /// lifetimes (its holder died, whatever time its lease names), is given up.
    async fn wait_for_holder(&self, job: &Job) -> Holder {
        let ttl = self.config.lease_ttl;
        let mut seen: Option<(String, std::time::Instant)> = None;
        loop {
            match runs::load_run(self.store(), &job.run_id).await {
                Ok(Some(record)) if record.status.is_final() => {
                    return Holder::Finished(record.status)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the run while waiting for its holder")
                }
            }
            let current = match lease::current(self.store(), &job.run_id).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the run's lease");
                    tokio::time::sleep(ttl / 3).await;
                    continue;
                }
            };
            let Some((lease, version)) = current else {
                return Holder::None(None);
            };
            if !lease.as_ref().is_some_and(|l| l.is_live(now())) {
                return Holder::None(None);
            }
            match &seen {
                Some((same, since)) if *same == version => {
                    if since.elapsed() >= ttl * 2 {
                        tracing::warn!(run_id = %job.run_id, "the run's lease has not been renewed for two lease lifetimes; its holder is gone");
                        return Holder::None(Some((lease, version)));
                    }
                }
                _ => seen = Some((version, std::time::Instant::now())),
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }

    /// Marks a run failed after its last delivery, whatever state it was left in, but
    /// only under its lease: taken normally, or over a `stale` one whose holder stopped
    /// renewing. A run someone else holds by now is left to them.
    async fn give_up(
        &self,
        job: &Job,
        deliveries: u32,
        cause: &StoreError,
        stale: Option<(Option<specrun_core::lease::Lease>, String)>,
    ) {
        let store = self.pipeline.store.clone();
        let runner_id = self.pipeline.config().runner_id.clone();
        let ttl = self.config.lease_ttl;
        let claimed = match stale {
            Some(stale) => lease::take_over_stale(store, &job.run_id, &runner_id, ttl, stale).await,
            None => lease::claim(store, &job.run_id, &runner_id, ttl).await,
        };
        let held = match claimed {
            Ok(Claim::Held(held)) => held,
            Ok(Claim::Busy { runner_id }) => {
                tracing::warn!(run_id = %job.run_id, %runner_id, "another runner took the run while this one gave up on it; leaving it to them");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the run's lease to record it failed");
                return;
            }
        };
        if let Some(record) = self.record_given_up(job, deliveries, cause).await {
            if let Some(task) = &job.celery {
                self.celery_outcome(task, &record).await;
            }
        }
        held.release().await;
    }

    /// Writes the run failed/retries_exhausted, fenced on the version it read.
    async fn record_given_up(
        &self,
        job: &Job,
        deliveries: u32,
        cause: &StoreError,
    ) -> Option<RunRecord> {
        let Ok(Some((mut record, version))) =
            runs::load_run_versioned(self.store(), &job.run_id).await
        else {
            return None;
        };
        if record.status.is_final() {
            return None;
        }
        record.error = Some(RunError {
            code: "retries_exhausted".to_owned(),
            message: format!("the run could not be completed after {deliveries} deliveries: {cause}"),
            remediation: "Look at the runner's logs and the dead-letter queue's message; submit the run again once the cause is fixed.".to_owned(),
            phase: None,
            exit_code: None,
            log_excerpt: None,
        });
        let reason = Some(format!(
            "gave up after {deliveries} deliveries; the message is in the dead-letter queue"
        ));
        if record.status == RunStatus::Queued {
            let _ = record.start(&self.pipeline.config().runner_id, now());
        }
        record.finish(RunStatus::Failed, reason, now()).ok()?;
        match runs::save_run_fenced(self.store(), &record, &version).await {
            Ok(_) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "could not record the failed run");
                None
            }
        }
    }

    /// Sorts a message into a job that executes its run's stored request (see
    /// [`Worker::pin`]).
    async fn job(&self, message: &Received) -> Result<Job, Disposition> {
        let job = self.sort(message).await?;
        self.pin(job).await
    }

    /// A run executes the request it was created with, stored before its run.json; the
    /// first message for a run the submit function did not create stores its own. A
    /// message naming an existing run with another request (anyone who may write to the
    /// queue could send one, to point a queued run at their repository or text) is refused:
    /// deleted, nothing run, nothing about the run changed, no Celery result written (the
    /// task id is the run's).
    async fn pin(&self, mut job: Job) -> Result<Job, Disposition> {
        // Compared in canonical form, as the submit function stored it.
        let canonical = job
            .request
            .validate(&self.config.policy)
            .map(|request| request.to_wire())
            .unwrap_or_else(|_| job.request.clone());
        let refuse = |why: &str| {
            tracing::warn!(
                run_id = %job.run_id,
                "refused a queue message naming run {} with {why}; the message is deleted and the run left as it is",
                job.run_id
            );
            Err(Disposition::Delete)
        };
        match runs::pin_request(self.store(), &job.run_id, &canonical).await {
            Ok(runs::Pinned::Same) => {
                job.request = canonical;
                Ok(job)
            }
            Ok(runs::Pinned::Different(_)) => {
                refuse("another request than the one it was created for")
            }
            Ok(runs::Pinned::Unrecorded(record)) if record.records_request(&canonical) => Ok(job),
            Ok(runs::Pinned::Unrecorded(_)) => refuse("a request that disagrees with its run.json"),
            Err(e) => {
                tracing::warn!(error = %e, run_id = %job.run_id, "could not read the run's stored request; the message will be retried");
                Err(Disposition::Retry)
            }
        }
    }

    /// Sorts a message into a job; a message that can never run is answered (a failed run,
    /// a Celery FAILURE) and deleted, or left for the dead-letter queue when nothing can
    /// be recorded about it.
    async fn sort(&self, message: &Received) -> Result<Job, Disposition> {
        match celery::parse_task_message(&message.body, &self.config.celery_task) {
            Ok(Some(task)) => {
                let run_id = RunId::parse(&task.task_id)
                    .unwrap_or_else(|_| derived_run_id("c", &task.task_id));
                return match serde_json::from_value::<RunRequest>(task.kwargs.clone()) {
                    Ok(request) => Ok(Job {
                        run_id,
                        request,
                        celery: Some(task),
                    }),
                    Err(e) => {
                        let result = celery::failure_result(
                            "InvalidRunRequest",
                            &format!("the task's kwargs are not a run request: {e}"),
                        );
                        self.celery_result(&task, CeleryState::Failure, result)
                            .await;
                        Err(Disposition::Delete)
                    }
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "refused a Celery message");
                return match e.task_id.clone() {
                    Some(task_id) => {
                        let result = celery::failure_result("RefusedTask", &e.to_string());
                        self.write_celery_result(&task_id, CeleryState::Failure, result)
                            .await;
                        Err(Disposition::Delete)
                    }
                    None => Err(Disposition::Retry),
                };
            }
        }
        match Incoming::parse(&message.body) {
            Ok(Incoming::Run(run)) => match RunId::parse(&run.run_id) {
                Ok(run_id) => Ok(Job {
                    run_id,
                    request: run.request,
                    celery: None,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "a run message with an unusable run id; leaving it for the dead-letter queue");
                    Err(Disposition::Retry)
                }
            },
            Ok(Incoming::Bare(request)) => Ok(Job {
                run_id: derived_run_id("q", &message.message_id),
                request,
                celery: None,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable message; leaving it for the dead-letter queue");
                Err(Disposition::Retry)
            }
        }
    }

    /// Runs the job unless an earlier delivery already finished it.
    async fn execute(&self, job: &Job) -> Result<RunRecord, StoreError> {
        let _working = self.running.lock(job.run_id.as_str()).await;
        let validated = job.request.validate(&self.config.policy);
        let existing = runs::load_run(self.store(), &job.run_id).await?;
        let record = match existing {
            Some(record) if record.status.is_final() => {
                tracing::info!(run_id = %job.run_id, status = %record.status, "duplicate delivery of a finished run; not running it again");
                return Ok(record);
            }
            Some(record) => record,
            None => {
                let agent = match &validated {
                    Ok(request) => self.pipeline.agent_for(request),
                    Err(_) => Default::default(),
                };
                let record = match &validated {
                    Ok(request) => {
                        RunRecord::for_request(job.run_id.as_str(), request, agent, now())
                    }
                    Err(_) => RunRecord::queued(
                        job.run_id.as_str(),
                        &job.request.repository,
                        job.request.publish.unwrap_or_default(),
                        agent,
                        now(),
                    ),
                };
                match runs::create_run(self.store(), &record).await {
                    Ok(()) => record,
                    Err(StoreError::PreconditionFailed(_)) => {
                        runs::load_run(self.store(), &job.run_id)
                            .await?
                            .unwrap_or(record)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let request = match validated {
            Ok(request) => request,
            Err(e) => return self.refuse(record, &e.field, &e.reason).await,
        };
        self.run_under_lease(record, request, job.celery.as_ref())
            .await
    }

    /// Runs the job while holding its lease. A run another runner holds is left alone (the
    /// message comes back later); a run whose runner died (still `running`, lease run out)
    /// is taken over: its orphaned container is removed and a new attempt starts.
    async fn run_under_lease(
        &self,
        record: RunRecord,
        request: specrun_core::ValidatedRequest,
        celery: Option<&CeleryTask>,
    ) -> Result<RunRecord, StoreError> {
        let run_id = runs::run_id(&record)?;
        let runner_id = self.pipeline.config().runner_id.clone();
        let held = match lease::claim(
            self.pipeline.store.clone(),
            &run_id,
            &runner_id,
            self.config.lease_ttl,
        )
        .await?
        {
            Claim::Held(held) => held,
            Claim::Busy { runner_id } => {
                return Err(StoreError::PreconditionFailed(format!(
                    "run {run_id} is being worked on by {runner_id}"
                )));
            }
        };
        let result = self
            .run_held(&held, &run_id, request, &runner_id, celery)
            .await;
        held.release().await;
        result
    }

    /// The run under a lease this runner just took: re-read (an earlier delivery may have
    /// finished it between our first read and the claim), restarted when another runner
    /// left it running, then executed with every run.json write fenced.
    async fn run_held(
        &self,
        held: &lease::HeldLease,
        run_id: &RunId,
        request: specrun_core::ValidatedRequest,
        runner_id: &str,
        celery: Option<&CeleryTask>,
    ) -> Result<RunRecord, StoreError> {
        let (mut record, mut version) = runs::load_run_versioned(self.store(), run_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run_id} has no run.json")))?;
        if record.status.is_final() {
            tracing::info!(%run_id, status = %record.status, "finished while this runner claimed it; not running it again");
            return Ok(record);
        }
        // Only under the lease, on a run not finished: a duplicate delivery never
        // overwrites a task's SUCCESS (or another holder's state) with STARTED.
        if let Some(task) = celery {
            let started = serde_json::json!({ "run_id": run_id.as_str() });
            self.celery_result(task, CeleryState::Started, started)
                .await;
        }
        if record.status == RunStatus::Running {
            // The new attempt is written before the old one's container goes: a holder
            // still working (its lease only looked expired, e.g. to a skewed clock) then
            // finds its next write refused and records nothing, instead of recording the
            // run failed because its container vanished.
            if record.restart(runner_id, now()).is_ok() {
                version = runs::save_run_fenced(self.store(), &record, &version).await?;
            }
            let removed = self.pipeline.remove_orphans(run_id).await;
            tracing::warn!(%run_id, removed, "taking over a run whose runner stopped; starting a new attempt");
        }
        self.pipeline
            .execute_leased(record, request, Some(held.lost()), Some(version))
            .await
    }

    /// Records a request the queue delivered but validation refused, on the run as it is
    /// stored now, and fenced like every other write of a run (never over another's).
    async fn refuse(
        &self,
        record: RunRecord,
        field: &str,
        reason: &str,
    ) -> Result<RunRecord, StoreError> {
        let run_id = runs::run_id(&record)?;
        let Some((stored, version)) = runs::load_run_versioned(self.store(), &run_id).await? else {
            return Ok(refused(record, field, reason).0);
        };
        if stored.status.is_final() {
            return Ok(stored);
        }
        let (record, finished) = refused(stored, field, reason);
        if finished {
            runs::save_run_fenced(self.store(), &record, &version).await?;
        }
        Ok(record)
    }

    async fn celery_outcome(&self, task: &CeleryTask, record: &RunRecord) {
        let summary = serde_json::json!({
            "run_id": record.run_id,
            "status": record.status,
            "status_reason": record.status_reason,
            "repository": record.repository,
            "branch_name": record.branch_name,
            "commit_sha": record.commit_sha,
            "pull_request_url": record.pull_request_url,
            "error": record.error,
        });
        if matches!(record.status, RunStatus::Failed | RunStatus::Cancelled) {
            let message = format!(
                "run {}: {}",
                record.run_id,
                record
                    .status_reason
                    .clone()
                    .unwrap_or_else(|| record.status.to_string())
            );
            self.celery_result(
                task,
                CeleryState::Failure,
                celery::failure_result("SpecrunRunFailed", &message),
            )
            .await;
        } else {
            self.celery_result(task, CeleryState::Success, summary)
                .await;
        }
    }

    async fn celery_result(
        &self,
        task: &CeleryTask,
        state: CeleryState,
        result: serde_json::Value,
    ) {
        self.write_celery_result(&task.task_id, state, result).await;
    }

    /// Writes a task's result where Celery's S3 backend reads it.
    async fn write_celery_result(
        &self,
        task_id: &str,
        state: CeleryState,
        result: serde_json::Value,
    ) {
        let key = celery::result_key(task_id, &self.config.celery_result_prefix);
        let document = celery::result_document(task_id, state, result, &rfc3339(now()), None);
        if let Err(e) = self.store().put(&key, document, "application/json").await {
            tracing::warn!(error = %e, %task_id, "could not write the Celery result");
        }
    }
}

/// `record` failed with `invalid_request`, and whether that transition was allowed.
fn refused(mut record: RunRecord, field: &str, reason: &str) -> (RunRecord, bool) {
    record.error = Some(RunError {
        code: "invalid_request".to_owned(),
        message: format!("{field}: {reason}"),
        remediation: "Fix the request and submit it again.".to_owned(),
        phase: None,
        exit_code: None,
        log_excerpt: None,
    });
    let reason = Some(format!("invalid request: {field}: {reason}"));
    let finished = record.finish(RunStatus::Failed, reason, now()).is_ok();
    (record, finished)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
