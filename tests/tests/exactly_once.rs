//! Exactly once, where the lease and the queue meet (issue 14): a runner on its last
//! delivery of a run another runner holds leaves the run to that runner instead of
//! marking it failed underneath it; two processes under one `--runner-id` never both
//! work a run; a runner whose run.json was written by another stops writing.

use anyhow::Context as _;
use specrun_core::message::RunMessage;
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_tests::emulator::{SpecrunEnv, SpecrunProcess};
use specrun_tests::harness::{require_image, write_slow_agents_file};
use specrun_tests::world::{eventually, pushes, run_request, submit, World, BUCKET};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// The world's processes with a `slow` agent that sleeps `seconds` in specify.
fn slow_env(world: &World, dir: &std::path::Path, seconds: u32) -> anyhow::Result<SpecrunEnv> {
    let mut env = world.env.clone();
    env.extra.push((
        "SPECRUN_AGENTS_FILE".to_owned(),
        write_slow_agents_file(dir, "slow", seconds)?,
    ));
    Ok(env)
}

/// Submits a run of the slow agent; returns its id.
async fn submit_slow(world: &World, env: &SpecrunEnv, repo: &str) -> anyhow::Result<String> {
    let url = world.git().create_repo(repo, "# Held\n")?;
    let serve = SpecrunProcess::serve(env, &["--no-runner"]).await?;
    let mut body = run_request(&url, "Export invoices as CSV files");
    body["agent"] = "slow".into();
    Ok(submit(serve.base_url()?, &body).await?.0)
}

/// Puts one more copy of the run's message on the queue: what SQS delivers again when a
/// visibility extension was missed.
async fn duplicate_message(world: &World, run_id: &str) -> anyhow::Result<()> {
    let request = world
        .moto
        .get_object(BUCKET, &format!("runs/{run_id}/request.json"))
        .await?;
    let message = RunMessage::new(run_id, serde_json::from_slice(&request)?);
    world.send_to_run_queue(message.to_json()).await
}

async fn wait_status(
    world: &World,
    run_id: &str,
    wanted: impl Fn(&RunRecord) -> bool,
    what: &str,
) -> anyhow::Result<RunRecord> {
    eventually(what, Duration::from_secs(150), || async {
        Ok(world
            .stored_run(run_id)
            .await
            .ok()
            .filter(|record| wanted(record)))
    })
    .await
}

/// Starts runner `id` with `args` and waits until it runs `run_id`.
async fn start_running(
    world: &World,
    env: &SpecrunEnv,
    id: &str,
    args: &[&str],
    run_id: &str,
) -> anyhow::Result<SpecrunProcess> {
    let runner = SpecrunProcess::runner(&env.with_runner_id(id), args).await?;
    wait_status(
        world,
        run_id,
        |r| r.status == RunStatus::Running,
        &format!("{id} running the run"),
    )
    .await
    .with_context(|| runner.stderr_tail(30))?;
    Ok(runner)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_delivery_leaves_the_run_to_the_runner_holding_it() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let dir = tempfile::tempdir()?;
    let env = slow_env(&world, dir.path(), 12)?;
    let run_id = submit_slow(&world, &env, "held").await?;
    let _a = start_running(&world, &env, "runner-a", &["--lease-secs", "6"], &run_id).await?;
    duplicate_message(&world, &run_id).await?;
    // Runner-b's first delivery of the copy is its last.
    let b = SpecrunProcess::runner(
        &env.with_runner_id("runner-b"),
        &["--max-receives", "1", "--lease-secs", "6"],
    )
    .await?;
    let record = wait_status(&world, &run_id, |r| r.status.is_final(), "the run finished")
        .await
        .with_context(|| b.stderr_tail(30))?;
    assert_eq!(
        record.status,
        RunStatus::Succeeded,
        "{:#?}\n{}",
        record.error,
        b.stderr_tail(30)
    );
    let statuses: Vec<RunStatus> = record.status_timeline.iter().map(|t| t.status).collect();
    assert!(
        !statuses.contains(&RunStatus::Failed),
        "the run was marked failed under its holder: {statuses:?}"
    );
    assert_eq!(record.attempt, 1);
    world
        .wait_queue_empty()
        .await
        .with_context(|| b.stderr_tail(30))?;
    let dlq = world.moto.queue_depth(&world.queues.dlq_url).await?;
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(pushes(world.git(), "held"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_with_one_runner_id_never_both_work_a_run() -> TestResult {
    require_image().await?;
    let world = World::start(5).await?;
    let dir = tempfile::tempdir()?;
    let env = slow_env(&world, dir.path(), 8)?;
    let run_id = submit_slow(&world, &env, "twins").await?;
    let same = env.with_runner_id("runner-twin");
    let first = SpecrunProcess::runner(&same, &["--visibility-secs", "30"]).await?;
    wait_status(
        &world,
        &run_id,
        |r| r.status == RunStatus::Running,
        "the first twin running it",
    )
    .await
    .with_context(|| first.stderr_tail(30))?;
    duplicate_message(&world, &run_id).await?;
    let second = SpecrunProcess::runner(&same, &["--visibility-secs", "30"]).await?;
    let record = wait_status(&world, &run_id, |r| r.status.is_final(), "the run finished")
        .await
        .with_context(|| second.stderr_tail(30))?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(
        record.attempt, 1,
        "a second process took the run: {record:#?}"
    );
    world.wait_queue_empty().await?;
    assert_eq!(pushes(world.git(), "twins"), 1);
    Ok(())
}

/// A run whose last delivery dies with its runner is not lost. The queue gives a message
/// `--max-receives` deliveries; a runner that took the run over on the last one and then
/// died took the run's last chance with it: the message went to the dead-letter queue and
/// the run stayed `running` for ever (found by the soak with the default
/// `--max-receives`). Runners watching the dead-letter queue
/// (`SPECRUN_DEAD_LETTER_QUEUE_URL`) give such a run up under its lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_last_delivery_dies_with_its_runner_is_not_lost() -> TestResult {
    require_image().await?;
    let world = World::start(2).await?;
    let dir = tempfile::tempdir()?;
    let mut env = slow_env(&world, dir.path(), 20)?;
    env.extra.push((
        "SPECRUN_DEAD_LETTER_QUEUE_URL".to_owned(),
        world.queues.dlq_url.clone(),
    ));
    let run_id = submit_slow(&world, &env, "doomed").await?;
    let args = [
        "--max-receives",
        "2",
        "--lease-secs",
        "6",
        "--visibility-secs",
        "10",
    ];
    let mut a = start_running(&world, &env, "runner-a", &args, &run_id).await?;
    a.kill();
    // The second delivery is the last: runner-b takes the run over on it, and dies too.
    let mut b = SpecrunProcess::runner(&env.with_runner_id("runner-b"), &args).await?;
    wait_status(
        &world,
        &run_id,
        |r| r.attempt >= 2,
        "runner-b taking the run over",
    )
    .await
    .with_context(|| b.stderr_tail(30))?;
    b.kill();
    let c = SpecrunProcess::runner(&env.with_runner_id("runner-c"), &args).await?;
    let record = wait_status(
        &world,
        &run_id,
        |r| r.status.is_final(),
        "the run to reach a final state",
    )
    .await
    .with_context(|| {
        format!(
            "runner-b:\n{}\nrunner-c:\n{}",
            b.stderr_tail(30),
            c.stderr_tail(30)
        )
    })?;
    assert_eq!(record.status, RunStatus::Failed, "{record:#?}");
    assert_eq!(record.attempt, 2, "{record:#?}");
    let error = record.error.context("no error recorded")?;
    assert_eq!(error.code, "retries_exhausted", "{error:#?}");
    assert!(error.message.contains("dead-letter queue"), "{error:#?}");
    Ok(())
}

/// A run taken over from a holder that is still working (its lease looks expired to the
/// taker: here the holder's clock is 40 s behind, through libfaketime) ends as the taker
/// runs it. The taker used to remove the holder's job container before fencing run.json
/// with its new attempt, so the holder, seeing its container gone, recorded the run
/// `failed` (`container_crashed`) in between, and the taker's attempt was refused (found
/// by the soak's skewed clocks). The taker now writes its attempt first: the holder's next
/// write is refused and it records nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_taken_from_a_working_holder_is_not_failed_by_it() -> TestResult {
    require_image().await?;
    let world = World::start(5).await?;
    let dir = tempfile::tempdir()?;
    let env = slow_env(&world, dir.path(), 15)?;
    let run_id = submit_slow(&world, &env, "skewed").await?;
    let mut behind = env.with_runner_id("runner-behind");
    behind.extra.extend([
        (
            "LD_PRELOAD".to_owned(),
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1".to_owned(),
        ),
        ("FAKETIME".to_owned(), "-40s".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]);
    let args = ["--lease-secs", "10"];
    let a = SpecrunProcess::runner(&behind, &args).await?;
    wait_status(
        &world,
        &run_id,
        |r| r.phase(specrun_core::Phase::Specify).status == specrun_core::PhaseStatus::Running,
        "runner-behind in specify",
    )
    .await
    .with_context(|| a.stderr_tail(30))?;
    duplicate_message(&world, &run_id).await?;
    let b = SpecrunProcess::runner(&env.with_runner_id("runner-b"), &args).await?;
    let record = wait_status(&world, &run_id, |r| r.status.is_final(), "the run finished")
        .await
        .with_context(|| b.stderr_tail(30))?;
    let statuses: Vec<RunStatus> = record.status_timeline.iter().map(|t| t.status).collect();
    assert_eq!(
        record.status,
        RunStatus::Succeeded,
        "{statuses:?} {:#?}\nrunner-behind:\n{}\nrunner-b:\n{}",
        record.error,
        a.stderr_tail(30),
        b.stderr_tail(30)
    );
    assert_eq!(record.attempt, 2, "runner-b did not take the run over");
    assert_eq!(record.runner_id.as_deref(), Some("runner-b"));
    assert_eq!(pushes(world.git(), "skewed"), 1);
    Ok(())
}
