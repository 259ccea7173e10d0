//! Runners as separate processes on one queue (the embedded spool queue): a runner killed
//! mid-run is taken over by another once its lease lapses, a duplicated message runs once
//! with two runners, and SIGTERM lets the run in flight finish.

use specrun_core::keys::RunId;
use specrun_core::message::RunMessage;
use specrun_core::ports::{BlobStore, Queue};
use specrun_core::repo::RepoPolicy;
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_store::{runs, FsQueue};
use specrun_tests::harness::{
    job_image, specrun_bin, write_slow_agents_file, Harness, CANARY_TOKEN,
};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// Writes the agents file: `slow` sleeps `seconds` before writing the spec.
fn slow_agent(h: &Harness, seconds: u32) -> anyhow::Result<String> {
    write_slow_agents_file(h.work.path(), "slow", seconds)
}

/// Starts `specrun runner` on the harness's embedded store and queue.
fn runner(h: &Harness, id: &str, agents: &str) -> anyhow::Result<Child> {
    let git_host = h.git().base_url().trim_start_matches("http://").to_owned();
    let log = std::fs::File::create(h.work.path().join(format!("{id}.log")))?;
    Ok(Command::new(specrun_bin()?)
        .args([
            "runner",
            "--visibility-secs",
            "10",
            "--lease-secs",
            "6",
            "--shutdown-grace-secs",
            "60",
        ])
        .args(["--runner-id", id, "--allow-repo-host", &git_host])
        .env("SPECRUN_STATE_DIR", h.state.path())
        .env("SPECRUN_WORK_DIR", h.work.path().join("runs"))
        .env("SPECRUN_IMAGE", job_image())
        .env("SPECRUN_AGENTS_FILE", agents)
        .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
        .env("SPECRUN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Records a queued run and puts its message on the queue `copies` times.
async fn enqueue(h: &Harness, repo: &str, copies: usize) -> anyhow::Result<RunId> {
    let url = h.git().create_repo(repo, "# Repo\n")?;
    let mut request = h.request(&url, "Send a weekly summary of saved reports");
    request.agent = Some("slow".to_owned());
    let policy = RepoPolicy {
        allowed_hosts: Vec::new(),
        trusted: true,
        callbacks: Default::default(),
    };
    let validated = request.validate(&policy)?;
    let run_id = RunId::parse(&uuid_like())?;
    let record = RunRecord::for_request(
        run_id.as_str(),
        &validated,
        Default::default(),
        time::OffsetDateTime::now_utc(),
    );
    runs::create_run(h.store.as_ref(), &record).await?;
    let queue = FsQueue::new(h.state.path().join(".queue"));
    for _ in 0..copies {
        queue
            .send(
                RunMessage::new(run_id.as_str(), request.clone())
                    .to_json()
                    .into(),
            )
            .await?;
    }
    Ok(run_id)
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("run-{nanos:x}")
}

async fn load(h: &Harness, id: &RunId) -> anyhow::Result<RunRecord> {
    runs::load_run(h.store.as_ref(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {id}"))
}

async fn wait_until(
    h: &Harness,
    id: &RunId,
    what: &str,
    done: impl Fn(&RunRecord) -> bool,
) -> anyhow::Result<RunRecord> {
    for _ in 0..1200 {
        let record = load(h, id).await?;
        if done(&record) {
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("run {id} never reached: {what}")
}

fn containers_of(run: &RunId) -> anyhow::Result<Vec<String>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.specrun.run-id={run}"),
        ])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn pushes(h: &Harness) -> usize {
    h.git()
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path_and_query.contains("git-receive-pack"))
        .count()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_run_is_taken_over_and_both_attempts_are_recorded() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 120)?;
    let run_id = enqueue(&h, "killed", 1).await?;
    let first = runner(&h, "runner-a", &agents)?;
    wait_until(&h, &run_id, "specify running", |r| {
        r.phase(Phase::Specify).status == PhaseStatus::Running
    })
    .await?;
    stop(first); // SIGKILL: no cleanup, the container stays behind
    assert_eq!(
        containers_of(&run_id)?.len(),
        1,
        "the killed runner's container is orphaned"
    );

    std::fs::write(
        &agents,
        std::fs::read_to_string(&agents)?.replace("sleep 120", "sleep 0"),
    )?;
    let second = runner(&h, "runner-b", &agents)?;
    let record = wait_until(&h, &run_id, "a final status", |r| r.status.is_final()).await;
    stop(second);
    let record = record?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(record.attempt, 2);
    assert_eq!(record.runner_id.as_deref(), Some("runner-b"));
    assert_eq!(record.previous_attempts.len(), 1);
    let abandoned = &record.previous_attempts[0];
    assert_eq!(
        (abandoned.attempt, abandoned.runner_id.as_deref()),
        (1, Some("runner-a"))
    );
    assert_eq!(
        abandoned.phases[2].status,
        PhaseStatus::Running,
        "the first attempt died in specify"
    );
    let statuses: Vec<_> = record.status_timeline.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Running,
            RunStatus::Succeeded
        ]
    );
    assert!(
        containers_of(&run_id)?.is_empty(),
        "the orphaned container was removed"
    );
    assert_eq!(pushes(&h), 1, "one push");
    // The first attempt's artifacts are still what its record says: the second attempt
    // wrote its own under another key.
    let first_artifacts: Vec<_> = abandoned
        .phases
        .iter()
        .flat_map(|p| p.artifacts.iter())
        .collect();
    assert!(!first_artifacts.is_empty(), "{abandoned:#?}");
    for artifact in first_artifacts {
        let bytes = h.store.get(&artifact.key).await?;
        let sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(sha, artifact.sha256, "{} was overwritten", artifact.key);
        assert!(
            record.artifacts.iter().all(|a| a.key != artifact.key),
            "attempt 2 reused {}",
            artifact.key
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicated_message_runs_once_with_two_runners() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 4)?;
    let run_id = enqueue(&h, "twice", 2).await?;
    let a = runner(&h, "runner-a", &agents)?;
    let b = runner(&h, "runner-b", &agents)?;
    let record = wait_until(&h, &run_id, "a final status", |r| r.status.is_final()).await;
    // Let the other copy come back, find the run finished, and be deleted.
    let queue_dir = h.state.path().join(".queue");
    let mut empty = false;
    for _ in 0..300 {
        let count = |d: &str| {
            std::fs::read_dir(queue_dir.join(d))
                .map(|e| e.count())
                .unwrap_or(0)
        };
        if count("pending") + count("inflight") == 0 {
            empty = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(a);
    stop(b);
    let record = record?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(record.attempt, 1, "never run twice");
    assert!(record.previous_attempts.is_empty());
    assert_eq!(pushes(&h), 1, "one push");
    assert!(empty, "both copies of the message were deleted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_run_in_flight_finish() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 4)?;
    let run_id = enqueue(&h, "graceful", 1).await?;
    let mut child = runner(&h, "runner-a", &agents)?;
    wait_until(&h, &run_id, "specify running", |r| {
        r.phase(Phase::Specify).status == PhaseStatus::Running
    })
    .await?;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(term.success(), "kill -TERM failed");
    let mut exited = None;
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = match exited {
        Some(status) => status,
        None => {
            stop(child);
            anyhow::bail!("the runner did not exit after SIGTERM");
        }
    };
    assert!(status.success(), "{status}");
    let record = load(&h, &run_id).await?;
    assert_eq!(
        record.status,
        RunStatus::Succeeded,
        "the run in flight finished: {:#?}",
        record.error
    );
    let log = std::fs::read_to_string(h.work.path().join("runner-a.log"))?;
    assert!(log.contains("shutting down"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_runner_died_after_pushing_is_not_pushed_again() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 0)?;
    let run_id = enqueue(&h, "pushed", 1).await?;
    let first = runner(&h, "runner-a", &agents)?;
    let done = wait_until(&h, &run_id, "a final status", |r| r.status.is_final()).await;
    stop(first);
    let done = done?;
    assert_eq!(done.status, RunStatus::Succeeded, "{:#?}", done.error);
    assert_eq!(pushes(&h), 1);

    // What runner-a leaves behind when it dies right after the push: run.json still
    // running, cleanup under way, the message back on the queue.
    let mut died = done.clone();
    died.status = RunStatus::Running;
    died.finished_at = None;
    died.status_timeline.pop();
    let cleanup = died
        .phases
        .iter_mut()
        .find(|p| p.phase == Phase::Cleanup)
        .ok_or_else(|| anyhow::anyhow!("no cleanup phase"))?;
    cleanup.status = PhaseStatus::Running;
    cleanup.finished_at = None;
    runs::save_run(h.store.as_ref(), &died).await?;
    let url = h.git().repo_url("pushed");
    let mut request = h.request(&url, "Send a weekly summary of saved reports");
    request.agent = Some("slow".to_owned());
    FsQueue::new(h.state.path().join(".queue"))
        .send(RunMessage::new(run_id.as_str(), request).to_json().into())
        .await?;

    let second = runner(&h, "runner-b", &agents)?;
    let record = wait_until(&h, &run_id, "the second attempt's final status", |r| {
        r.attempt == 2 && r.status.is_final()
    })
    .await;
    stop(second);
    let record = record?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(pushes(&h), 1, "the branch the first attempt pushed is kept");
    assert_eq!(
        record.commit_sha, done.commit_sha,
        "the pushed commit is the run's"
    );
    let push = record
        .phase(Phase::Push)
        .message
        .clone()
        .unwrap_or_default();
    assert!(push.contains("already pushed"), "{push}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_lost_its_lease_stops_and_records_nothing_more() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 120)?;
    let run_id = enqueue(&h, "fenced", 1).await?;
    let a = runner(&h, "runner-a", &agents)?;
    wait_until(&h, &run_id, "specify running", |r| {
        r.phase(Phase::Specify).status == PhaseStatus::Running
    })
    .await?;
    // Another runner took the run over (runner-a's lease lapsed during an outage, say).
    let lease = specrun_core::lease::Lease {
        run_id: run_id.to_string(),
        runner_id: "runner-z".to_owned(),
        token: "runner-z-token".to_owned(),
        attempt: 2,
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::minutes(10),
    };
    h.store
        .put(
            &specrun_core::keys::lease(&run_id),
            serde_json::to_vec(&lease)?.into(),
            "application/json",
        )
        .await?;
    let mut stopped = false;
    for _ in 0..200 {
        if containers_of(&run_id)?.is_empty() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(a);
    assert!(stopped, "runner-a stopped its job container");
    let record = load(&h, &run_id).await?;
    assert_eq!(
        record.status,
        RunStatus::Running,
        "runner-a wrote no final state"
    );
    assert_eq!(record.phase(Phase::Specify).status, PhaseStatus::Running);
    assert_eq!(pushes(&h), 0);
    let log = std::fs::read_to_string(h.work.path().join("runner-a.log"))?;
    assert!(log.contains("taken over by another runner"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_whose_run_was_written_by_another_stops_writing_it() -> TestResult {
    let h = Harness::start().await?;
    let agents = slow_agent(&h, 6)?;
    let run_id = enqueue(&h, "overwritten", 1).await?;
    let a = runner(&h, "runner-a", &agents)?;
    wait_until(&h, &run_id, "specify running", |r| {
        r.phase(Phase::Specify).status == PhaseStatus::Running
    })
    .await?;
    // Another runner took the run over and recorded its own attempt, while runner-a was
    // cut off (its lease object untouched here, so only the run.json fence can tell).
    let mut theirs = load(&h, &run_id).await?;
    theirs.runner_id = Some("runner-z".to_owned());
    theirs.attempt = 2;
    theirs.status_reason = Some("taken over by runner-z".to_owned());
    let key = specrun_core::keys::run_json(&run_id);
    h.store
        .put(
            &key,
            specrun_store::runs::to_json(&theirs),
            "application/json",
        )
        .await?;
    let written = h.store.get(&key).await?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop(a);
    assert_eq!(
        h.store.get(&key).await?,
        written,
        "runner-a wrote over the run another runner holds"
    );
    assert_eq!(pushes(&h), 0, "runner-a pushed a run that is no longer its");
    let log = std::fs::read_to_string(h.work.path().join("runner-a.log"))?;
    assert!(log.contains("written by another runner"), "{log}");
    Ok(())
}
