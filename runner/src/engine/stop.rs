//! Stopping a run from outside its phases: an operator's cancel request (a marker object
//! in the store), the per-run time limit, or the loss of the run's lease to another runner.
//! A watcher notices within a second or two and removes this run's job container, which
//! ends the phase in progress; the pipeline then records `cancelled`, or `failed` with
//! `run_timeout`, or (lease lost) walks away and records nothing: the run is another
//! runner's now.

use specrun_core::keys::{self, RunId};
use specrun_core::ports::BlobStore;
use specrun_sandbox::Sandbox;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a run was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    TimedOut(Duration),
    /// Another runner took the run over (this one could not renew its lease in time).
    LeaseLost,
}

/// Watches one run for a reason to stop it.
pub struct StopWatch {
    reason: Arc<Mutex<Option<StopReason>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where the watcher looks and what it may do.
pub struct StopWatchConfig {
    pub store: Arc<dyn BlobStore>,
    /// Where the run's job is, to remove it.
    pub sandbox: Arc<dyn Sandbox>,
    pub run_id: RunId,
    pub run_timeout: Option<Duration>,
    pub poll: Duration,
    /// This runner's id: with a lost lease only its own containers are removed.
    pub runner_id: String,
    /// Set when the run's lease has gone to another runner.
    pub lease_lost: Option<Arc<AtomicBool>>,
}

impl StopWatch {
    pub fn start(config: StopWatchConfig) -> Self {
        let reason = Arc::new(Mutex::new(None));
        let task = tokio::spawn(watch(config, reason.clone()));
        StopWatch { reason, task }
    }

    /// Set once the run must stop.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(config: StopWatchConfig, reason: Arc<Mutex<Option<StopReason>>>) {
    let started = Instant::now();
    let key = keys::cancel(&config.run_id);
    let found = loop {
        tokio::time::sleep(config.poll).await;
        if config
            .lease_lost
            .as_ref()
            .is_some_and(|lost| lost.load(Ordering::SeqCst))
        {
            break StopReason::LeaseLost;
        }
        if let Ok(marker) = config.store.get(&key).await {
            if specrun_store::runs::cancel_requested(&marker) {
                break StopReason::Cancelled;
            }
        }
        if let Some(limit) = config
            .run_timeout
            .filter(|limit| started.elapsed() > *limit)
        {
            break StopReason::TimedOut(limit);
        }
    };
    // The new holder's containers are not ours to remove.
    let only_ours = (found == StopReason::LeaseLost).then_some(config.runner_id.as_str());
    if let Ok(mut slot) = reason.lock() {
        *slot = Some(found);
    }
    // Removing the job ends whatever command runs in it.
    config
        .sandbox
        .kill_jobs(config.run_id.as_str(), only_ours)
        .await;
}
