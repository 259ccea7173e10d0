//! Sweeping a host: removes the job containers (with their run's egress network and
//! firewall rules) that no runner will ever clean up — those of runs that are over, and
//! of runs whose lease ran out long ago (their runner died; a takeover starts afresh).
//! Only runs this store knows are touched: an engine shared with other deployments keeps
//! their containers.

use super::lease;
use crate::engine::Pipeline;
use specrun_core::keys::RunId;
use specrun_core::lease::Lease;
use specrun_core::state::RunRecord;
use specrun_sandbox::SandboxError;
use specrun_store::runs;
use std::time::Duration;
use time::OffsetDateTime;

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Runs whose containers were removed, with why.
    pub removed: Vec<(String, &'static str)>,
    /// Runs whose containers were left: still live, or unknown to this store.
    pub kept: Vec<String>,
}

/// Why a run's leftovers may go, or `None` while they may still be in use.
pub fn sweepable(
    record: Option<&RunRecord>,
    lease: Option<&Lease>,
    now: OffsetDateTime,
    stale_after: Duration,
) -> Option<&'static str> {
    let record = record?;
    if record.status.is_final() {
        return Some("the run is over");
    }
    let grace = time::Duration::try_from(stale_after).unwrap_or(time::Duration::hours(1));
    match lease {
        Some(lease) if lease.expires_at + grace > now => None,
        Some(_) => Some("its lease ran out long ago"),
        // `specrun run` works without a lease: an unfinished run without one may be live.
        None => None,
    }
}

/// Removes what [`sweepable`] allows on the engine the pipeline is configured for.
pub async fn sweep(pipeline: &Pipeline, stale_after: Duration) -> Result<Swept, SandboxError> {
    let store = pipeline.store.as_ref();
    let mut swept = Swept::default();
    for run in pipeline.sandbox.runs_with_jobs().await? {
        let Ok(id) = RunId::parse(&run) else {
            swept.kept.push(run);
            continue;
        };
        let record = runs::load_run(store, &id).await.ok().flatten();
        let current = lease::current(store, &id).await.ok().flatten();
        let lease = current.and_then(|(lease, _)| lease);
        match sweepable(
            record.as_ref(),
            lease.as_ref(),
            specrun_store::runs::now(),
            stale_after,
        ) {
            Some(why) => {
                pipeline.remove_orphans(&id).await;
                tracing::info!(run_id = %run, why, "swept the run's container, network and firewall rules");
                swept.removed.push((run, why));
            }
            None => swept.kept.push(run),
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn only_known_runs_that_are_over_or_long_dead_are_swept() {
        let now = datetime!(2026-12-02 12:00 UTC);
        let mut record = RunRecord::queued(
            "0193a1b2-0000-7000-8000-000000000000",
            "octo/x",
            Default::default(),
            Default::default(),
            now,
        );
        let hour = Duration::from_secs(3600);
        let lease = |until| Lease {
            run_id: "0193a1b2-0000-7000-8000-000000000000".into(),
            runner_id: "a".into(),
            token: "t".into(),
            attempt: 1,
            expires_at: until,
        };
        assert_eq!(sweepable(None, None, now, hour), None, "unknown runs stay");
        let _ = record.start("a", now);
        assert_eq!(
            sweepable(Some(&record), None, now, hour),
            None,
            "a local run has no lease"
        );
        let live = lease(datetime!(2026-12-02 12:01 UTC));
        assert_eq!(sweepable(Some(&record), Some(&live), now, hour), None);
        let lately = lease(datetime!(2026-12-02 11:30 UTC));
        assert_eq!(sweepable(Some(&record), Some(&lately), now, hour), None);
        let long_ago = lease(datetime!(2026-12-02 10:00 UTC));
        assert!(sweepable(Some(&record), Some(&long_ago), now, hour).is_some());
        let _ = record.finish(specrun_core::RunStatus::Succeeded, None, now);
        assert_eq!(
            sweepable(Some(&record), Some(&live), now, hour),
            Some("the run is over")
        );
    }
}
