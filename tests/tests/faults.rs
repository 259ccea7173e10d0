//! Faults and operator actions during a run: cancellation, the per-run time limit, a
//! runner killed mid-run (taken over by another after its lease lapses), a duplicated
//! message with two runners, and a graceful SIGTERM.

use specrun_core::keys::RunId;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::harness::{failed_with, write_slow_agents_file, Harness};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// An agents file whose `slow` agent sleeps in the specify phase before writing the spec.
fn slow_agent(h: &mut Harness, seconds: u32) -> anyhow::Result<()> {
    h.config.agents_file = Some(write_slow_agents_file(h.work.path(), "slow", seconds)?);
    Ok(())
}

fn slow_request(h: &Harness, url: &str) -> specrun_core::request::RunRequest {
    let mut request = h.request(url, "Archive old reports every night");
    request.agent = Some("slow".to_owned());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_stops_within_seconds_and_says_so() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("cancel", "# Cancel\n")?;
    slow_agent(&mut h, 120)?;
    let probe = Probe {
        store: h.store.clone(),
    };
    let canceller = tokio::spawn({
        async move {
            let id = probe.wait_for_specify().await?;
            // Past Spec Kit's initialisation, into the agent's own command.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let outcome =
                specrun_store::runs::cancel_run(probe.store.as_ref(), &id, "a test").await?;
            anyhow::ensure!(
                outcome == Some(specrun_store::runs::Cancelled::Requested),
                "{outcome:?}"
            );
            anyhow::Ok(std::time::Instant::now())
        }
    });
    let record = h.run(slow_request(&h, &url)).await?;
    let asked = canceller.await??;
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "stopped long after the request"
    );
    assert_eq!(record.status, RunStatus::Cancelled, "{:#?}", record.error);
    assert_eq!(
        record.status_reason.as_deref(),
        Some("cancelled by an operator")
    );
    assert_eq!(record.phase(Phase::Specify).status, PhaseStatus::Failed);
    assert_eq!(record.phase(Phase::Commit).status, PhaseStatus::Skipped);
    let cleanup = record.phase(Phase::Cleanup);
    assert_eq!(
        cleanup.status,
        PhaseStatus::Succeeded,
        "{:?}",
        cleanup.message
    );
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(
        log.contains("sleeping"),
        "the interrupted phase keeps its logs: {log}"
    );
    assert_eq!(h.git().branches("cancel")?, vec!["main".to_owned()]);
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_its_time_limit_fails_with_run_timeout() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("slow", "# Slow\n")?;
    slow_agent(&mut h, 120)?;
    h.config.run_timeout = Duration::from_secs(4);
    let record = h.run(slow_request(&h, &url)).await?;
    let error = failed_with(&record, "run_timeout", Phase::Specify)?;
    assert!(error.remediation.contains("SPECRUN_RUN_TIMEOUT_SECS"));
    h.assert_clean(&record).await
}

/// Reads a harness's store from another task.
struct Probe {
    store: std::sync::Arc<specrun_store::FsBlobStore>,
}

impl Probe {
    async fn wait_for_specify(&self) -> anyhow::Result<RunId> {
        for _ in 0..600 {
            let (ids, _) = specrun_store::runs::list_runs(self.store.as_ref(), None, 10).await?;
            if let Some(id) = ids.first() {
                if let Some(record) = specrun_store::runs::load_run(self.store.as_ref(), id).await?
                {
                    if record.phase(Phase::Specify).status == PhaseStatus::Running {
                        return Ok(id.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the specify phase never started")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_over_its_time_limit_fails_with_phase_timeout_and_keeps_its_logs() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("stalled", "# Stalled\n")?;
    slow_agent(&mut h, 120)?;
    // Spec Kit's initialisation takes about a second; the agent then sleeps past the limit.
    h.config.phase_timeout = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let record = h.run(slow_request(&h, &url)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the phase was not stopped at its limit"
    );
    let error = failed_with(&record, "phase_timeout", Phase::Specify)?;
    assert!(
        error.remediation.contains("SPECRUN_PHASE_TIMEOUT_SECS"),
        "{}",
        error.remediation
    );
    assert_eq!(record.phase(Phase::Specify).status, PhaseStatus::Failed);
    assert_eq!(record.phase(Phase::Plan).status, PhaseStatus::Skipped);
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(
        log.contains("sleeping"),
        "the stopped phase keeps its logs: {log}"
    );
    assert_eq!(h.git().branches("stalled")?, vec!["main".to_owned()]);
    h.assert_clean(&record).await
}
