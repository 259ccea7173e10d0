//! Holding a run's lease in the store: claimed with a conditional write (`put_new`, or a
//! compare-and-swap over an expired lease), renewed in the background while the run lives,
//! released when it ends.

use specrun_core::keys::{self, RunId};
use specrun_core::lease::{Lease, LeaseDecision};
use specrun_core::ports::{BlobStore, Bytes, StoreError};
use specrun_store::runs::now;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The outcome of a claim.
pub enum Claim {
    /// This runner holds the run now.
    Held(HeldLease),
    /// Another runner holds a live lease.
    Busy { runner_id: String },
}

/// A lease this runner holds; renewing stops when it is released or dropped.
pub struct HeldLease {
    renewer: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<(Lease, String)>>,
    store: Arc<dyn BlobStore>,
    key: String,
    lost: Arc<AtomicBool>,
}

fn json(lease: &Lease) -> Bytes {
    serde_json::to_vec_pretty(lease).unwrap_or_default().into()
}

/// The run's lease object as stored, and its version; `None` when there is none.
pub async fn current(
    store: &dyn BlobStore,
    run: &RunId,
) -> Result<Option<(Option<Lease>, String)>, StoreError> {
    match store.get_versioned(&keys::lease(run)).await {
        Ok((bytes, version)) => Ok(Some((
            serde_json::from_slice::<Lease>(&bytes).ok(),
            version,
        ))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Claims `run` for `runner_id` for `ttl`, renewed every third of it.
pub async fn claim(
    store: Arc<dyn BlobStore>,
    run: &RunId,
    runner_id: &str,
    ttl: Duration,
) -> Result<Claim, StoreError> {
    let current = current(store.as_ref(), run).await?;
    let existing = current.as_ref().and_then(|(lease, _)| lease.clone());
    if let LeaseDecision::HeldBy { runner_id, .. } = Lease::decide(existing.as_ref(), now()) {
        return Ok(Claim::Busy { runner_id });
    }
    take(store, run, runner_id, ttl, current).await
}

/// Takes the lease over whatever it says, but only if it is still at `version`: for a
/// holder that has stopped renewing (its lease object has not changed for longer than
/// a lease lasts), whose clock may claim it is live far into the future.
pub async fn take_over_stale(
    store: Arc<dyn BlobStore>,
    run: &RunId,
    runner_id: &str,
    ttl: Duration,
    stale: (Option<Lease>, String),
) -> Result<Claim, StoreError> {
    take(store, run, runner_id, ttl, Some(stale)).await
}

async fn take(
    store: Arc<dyn BlobStore>,
    run: &RunId,
    runner_id: &str,
    ttl: Duration,
    current: Option<(Option<Lease>, String)>,
) -> Result<Claim, StoreError> {
    let key = keys::lease(run);
    let ttl_time = time::Duration::try_from(ttl).unwrap_or(time::Duration::minutes(5));
    let existing = current.as_ref().and_then(|(lease, _)| lease.clone());
    let lease = Lease {
        run_id: run.to_string(),
        runner_id: runner_id.to_owned(),
        token: uuid::Uuid::now_v7().simple().to_string(),
        attempt: existing.map(|l| l.attempt + 1).unwrap_or(1),
        expires_at: now() + ttl_time,
    };
    let written = match &current {
        None => store.put_new(&key, json(&lease), "application/json").await,
        Some((_, version)) => {
            store
                .put_if_version(&key, json(&lease), "application/json", version)
                .await
        }
    };
    match written {
        Ok(()) => {}
        // Another runner claimed it between our read and our write.
        Err(StoreError::PreconditionFailed(_)) => {
            return Ok(Claim::Busy {
                runner_id: "another runner".to_owned(),
            })
        }
        Err(e) => return Err(e),
    }
    let Some(version) = version_if_ours(store.as_ref(), &key, &json(&lease)).await? else {
        return Ok(Claim::Busy {
            runner_id: "another runner".to_owned(),
        });
    };
    let state = Arc::new(Mutex::new((lease, version)));
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = tokio::spawn(renew(
        store.clone(),
        key.clone(),
        state.clone(),
        ttl,
        lost.clone(),
    ));
    Ok(Claim::Held(HeldLease {
        renewer,
        state,
        store,
        key,
        lost,
    }))
}

/// Whether the lease object holds exactly `body` (our write) and, if so, its version.
async fn version_if_ours(
    store: &dyn BlobStore,
    key: &str,
    body: &[u8],
) -> Result<Option<String>, StoreError> {
    let (current, version) = store.get_versioned(key).await?;
    Ok((current == body).then_some(version))
}

/// Extends the lease every third of its life. When the lease turns out to belong to
/// another runner (it lapsed, say during a storage outage, and was taken over), `lost` is
/// set and renewing stops: the run is no longer this runner's to finish.
async fn renew(
    store: Arc<dyn BlobStore>,
    key: String,
    state: Arc<Mutex<(Lease, String)>>,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let ttl_time = time::Duration::try_from(ttl).unwrap_or(time::Duration::minutes(5));
    let mut renewed_at = std::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        // Two renewals missed: the lease runs out within a third of its life, after which
        // another runner may take the run, whether or not this one can see the store.
        // Stop before that could happen.
        if renewed_at.elapsed() >= ttl * 2 / 3 {
            tracing::error!(%key, "the run's lease expired without being renewed; stopping this attempt");
            lost.store(true, Ordering::SeqCst);
            return;
        }
        let (mut lease, version) = match state.lock() {
            Ok(guard) => guard.clone(),
            Err(_) => return,
        };
        lease.expires_at = now() + ttl_time;
        let body = json(&lease);
        // A store that retries for minutes must not hold the clock above.
        let attempt = async {
            match store
                .put_if_version(&key, body.clone(), "application/json", &version)
                .await
            {
                Ok(()) => version_if_ours(store.as_ref(), &key, &body).await,
                Err(StoreError::PreconditionFailed(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let renewed = tokio::time::timeout(ttl / 3, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::unavailable(
                    &key,
                    "the renewal took longer than a third of the lease",
                ))
            });
        match renewed {
            Ok(Some(version)) => {
                if let Ok(mut guard) = state.lock() {
                    *guard = (lease, version);
                }
                renewed_at = std::time::Instant::now();
            }
            Ok(None) => {
                tracing::error!(%key, "the run's lease was taken over by another runner; stopping this attempt");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(error = %e, %key, "could not renew the run's lease"),
        }
    }
}

impl HeldLease {
    /// Set once another runner has taken the run over.
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Stops renewing and lets the lease lapse now.
    pub async fn release(self) {
        self.renewer.abort();
        let (mut lease, version) = match self.state.lock() {
            Ok(guard) => guard.clone(),
            Err(_) => return,
        };
        lease.expires_at = now();
        if let Err(e) = self
            .store
            .put_if_version(&self.key, json(&lease), "application/json", &version)
            .await
        {
            tracing::debug!(error = %e, "the lease was not released; it lapses by itself");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
