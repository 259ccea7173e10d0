//! Branch locks on any [`BlobStore`] (see [`specrun_core::branch_lock`]): taken with
//! `put_new`, or by compare-and-swap over a lock whose holder finished or died, so that
//! two runners never both believe they hold one branch.

use crate::runs::{self, to_json};
use sha2::{Digest, Sha256};
use specrun_core::branch_lock::{BranchLock, HolderRun};
use specrun_core::keys::{self, RunId};
use specrun_core::lease::Lease;
use specrun_core::ports::{BlobStore, StoreError};

const JSON: &str = "application/json";

/// How many times a lock changed under us is read again before giving up for now.
const CONFLICTS: usize = 5;

/// The outcome of [`acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lock names this run now.
    Held,
    /// Another run holds the branch, as this lock says.
    Busy(Box<BranchLock>),
}

/// The lock's key for a repository's branch.
pub fn lock_key(repository: &str, branch: &str) -> String {
    let digest = Sha256::new()
        .chain_update(repository.as_bytes())
        .chain_update([0])
        .chain_update(branch.as_bytes())
        .finalize();
    keys::branch_lock(&format!("{digest:x}"))
}

/// Takes the lock `wanted` describes (its repository, branch, run) unless another
/// unfinished, live run holds it. A lock already naming the same run (a later attempt of
/// it, on another runner) is taken again.
pub async fn acquire(
    store: &dyn BlobStore,
    wanted: &BranchLock,
    now: time::OffsetDateTime,
) -> Result<Acquired, StoreError> {
    let key = lock_key(&wanted.repository, &wanted.branch);
    let body = to_json(wanted);
    for _ in 0..CONFLICTS {
        let written = match store.get_versioned(&key).await {
            Err(StoreError::NotFound(_)) => store.put_new(&key, body.clone(), JSON).await,
            Err(e) => return Err(e),
            Ok((bytes, version)) => {
                // An unreadable lock keeps nobody out: it is replaced.
                if let Ok(current) = serde_json::from_slice::<BranchLock>(&bytes) {
                    if current.run_id != wanted.run_id && held(store, &current, now).await? {
                        return Ok(Acquired::Busy(Box::new(current)));
                    }
                }
                store
                    .put_if_version(&key, body.clone(), JSON, &version)
                    .await
            }
        };
        match written {
            Ok(()) => return Ok(Acquired::Held),
            // Someone wrote the lock between our read and our write: read it again.
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::unavailable(
        &key,
        "the branch lock kept changing while it was being taken",
    ))
}

/// Whether `lock`'s run still holds the branch.
async fn held(
    store: &dyn BlobStore,
    lock: &BranchLock,
    now: time::OffsetDateTime,
) -> Result<bool, StoreError> {
    // A lock naming something that is not a run id holds nothing.
    let Ok(holder) = RunId::parse(&lock.run_id) else {
        return Ok(false);
    };
    let run = match runs::load_run(store, &holder).await? {
        None => HolderRun::Missing,
        Some(record) if record.status.is_final() => HolderRun::Finished,
        Some(_) => HolderRun::Unfinished,
    };
    let lease = match store.get(&keys::lease(&holder)).await {
        Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).ok(),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(lock.is_held(run, lease.as_ref(), now))
}
