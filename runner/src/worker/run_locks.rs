//! One run at a time per run id inside this process. The lease keeps two runners apart,
//! but a runner holding a lease takes its own lease again (that is how it resumes after a
//! restart under the same id); so when the queue hands this runner a second copy of a
//! message whose run it is still working on (a visibility timeout that lapsed during an
//! outage, a duplicated send), the copy waits here for the first to finish, then finds
//! the run final and is only acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Per-run-id locks, dropped once nobody holds or waits for them.
#[derive(Default, Clone)]
pub struct RunLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while this process works on a run.
pub struct RunGuard {
    run_id: String,
    locks: RunLocks,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RunLocks {
    /// Waits until no other task of this process works on `run_id`.
    pub async fn lock(&self, run_id: &str) -> RunGuard {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(run_id.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        RunGuard {
            run_id: run_id.to_owned(),
            locks: self.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map's own reference left: nobody holds or waits for this run.
        if locks
            .get(&self.run_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.run_id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    impl RunLocks {
        fn len(&self) -> usize {
            self.locks.lock().map(|l| l.len()).unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn a_second_worker_on_the_same_run_waits_for_the_first() {
        let locks = RunLocks::default();
        let first = locks.lock("r-1").await;
        let other_run = locks.lock("r-2").await;
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.lock("r-1").await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the copy must wait for the first");
        drop(first);
        waiting.await.unwrap();
        drop(other_run);
        assert_eq!(locks.len(), 0, "locks nobody needs are dropped");
    }
}
