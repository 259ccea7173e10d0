//! How runs wait on the queue: a Celery task sent with an `eta` (or `countdown`) waits on
//! SQS (moto) without using up its message's deliveries, then runs once, with its result
//! where Celery reads it.

use anyhow::{bail, ensure, Context as _};
use specrun_core::RunStatus;
use specrun_tests::celery::{celery_producer, require_celery, succeeded};
use specrun_tests::emulator::SpecrunProcess;
use specrun_tests::harness::{remove_job_containers, require_image, write_slow_agents_file};
use specrun_tests::world::{eventually, run_request, World, BUCKET, RUN_TIMEOUT};
use std::time::Duration;
use time::OffsetDateTime;

type TestResult = anyhow::Result<()>;

/// How far ahead the task is due, and the longest single wait the runner takes for it:
/// about four waits.
const COUNTDOWN_SECS: u64 = 18;
const ETA_STEP_SECS: &str = "5";

#[tokio::test(flavor = "multi_thread")]
async fn a_celery_eta_several_waits_ahead_runs_after_it_and_never_reaches_the_dead_letter_queue(
) -> TestResult {
    require_celery().await?;
    require_image().await?;
    // One receive per message: a second delivery of the same message goes to the DLQ.
    let mut world = World::start(1).await?;
    world
        .env
        .extra
        .push(("SPECRUN_ETA_STEP_SECS".to_owned(), ETA_STEP_SECS.to_owned()));
    let url = world.git().create_repo("later", "# Later\n")?;
    let runner = SpecrunProcess::runner(&world.env, &["--max-receives", "1"]).await?;

    let kwargs = run_request(&url, "Archive resolved support tickets every night");
    let sent_at = OffsetDateTime::now_utc();
    let countdown = COUNTDOWN_SECS.to_string();
    let (_, sent) = celery_producer(
        &world,
        &[
            "send",
            "--countdown",
            &countdown,
            "--kwargs",
            &kwargs.to_string(),
        ],
    )
    .await?;
    let task_id = sent.trim().to_owned();
    ensure!(!task_id.is_empty(), "send printed no task id");

    let timeout = RUN_TIMEOUT + Duration::from_secs(COUNTDOWN_SECS);
    let timeout_arg = timeout.as_secs().to_string();
    let wait_args = ["wait", &task_id, "--timeout", &timeout_arg];
    let waiting = celery_producer(&world, &wait_args);
    let dead_lettered = eventually("a message in the DLQ", timeout, || async {
        let depth = world.moto.queue_depth(&world.queues.dlq_url).await?;
        Ok((!depth.is_empty()).then_some(()))
    });
    let waited = tokio::select! {
        waited = waiting => waited?,
        Ok(()) = dead_lettered => bail!(
            "the task reached the dead-letter queue before it ran; runner stderr:\n{}",
            runner.stderr_tail(60)
        ),
    };
    let answer = succeeded(waited, &runner)?;

    // It ran after its eta, once, having waited in several steps.
    let run_id = answer["result"]["run_id"].as_str().context("no run_id")?;
    let stored = world.stored_run(run_id).await?;
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.attempt, 1, "{stored:#?}");
    let started = stored.started_at.context("never started")?;
    let eta = sent_at + time::Duration::seconds(COUNTDOWN_SECS as i64);
    assert!(started >= eta, "started at {started}, before its eta {eta}");
    let log = runner.stderr_tail(5000);
    let waits = log.matches("sent it again delayed").count();
    assert!(waits >= 3, "{waits} waits for the eta:\n{log}");

    assert!(
        world
            .moto
            .queue_depth(&world.queues.dlq_url)
            .await?
            .is_empty(),
        "a message in the dead-letter queue"
    );
    world.wait_queue_empty().await?;
    Ok(())
}

/// A second delivery of a Celery task whose run another runner holds writes no task state:
/// the STARTED result is written only under the run's lease, on a run not finished, so a
/// duplicate never overwrites SUCCESS (or the holder's state) with STARTED.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_celery_delivery_writes_no_task_state_without_the_lease() -> TestResult {
    require_celery().await?;
    require_image().await?;
    let mut world = World::start(5).await?;
    let dir = tempfile::tempdir()?;
    world.env.extra.push((
        "SPECRUN_AGENTS_FILE".to_owned(),
        write_slow_agents_file(dir.path(), "slow", 30)?,
    ));
    let url = world.git().create_repo("twice", "# Twice\n")?;
    let mut kwargs = run_request(&url, "Send a weekly digest of open issues");
    kwargs["agent"] = "slow".into();
    let (_, sent) = celery_producer(&world, &["send", "--kwargs", &kwargs.to_string()]).await?;
    let task_id = sent.trim().to_owned();
    // The same task twice on the queue, as a crash between a deferral's send and delete
    // leaves it: read the message (it stays visible) and send its body again.
    let received = world
        .moto
        .sqs()
        .receive_message()
        .queue_url(&world.queues.url)
        .visibility_timeout(0)
        .wait_time_seconds(5)
        .send()
        .await?;
    let body = received
        .messages()
        .first()
        .and_then(|m| m.body())
        .context("the task's message")?
        .to_owned();
    world
        .moto
        .sqs()
        .send_message()
        .queue_url(&world.queues.url)
        .message_body(body)
        .send()
        .await?;

    let args = ["--max-receives", "5", "--lease-secs", "30"];
    let a = SpecrunProcess::runner(&world.env.with_runner_id("runner-a"), &args).await?;
    let key = specrun_core::celery::result_key(&task_id, "celery/");
    eventually("runner-a's STARTED result", RUN_TIMEOUT, || async {
        Ok(world.moto.get_object(BUCKET, &key).await.ok())
    })
    .await?;
    // What a task's result holds once its run finished (a STARTED document has no date to
    // tell two writes apart): no delivery without the lease may write over it.
    let started = br#"{"status":"SUCCESS","result":{"note":"written by the test"},"traceback":null,"children":[],"date_done":"2026-01-01T00:00:00Z","task_id":"t"}"#.to_vec();
    world
        .moto
        .put_object(BUCKET, &key, started.clone(), "application/json")
        .await?;
    let b = SpecrunProcess::runner(&world.env.with_runner_id("runner-b"), &args).await?;
    eventually("runner-b to find the run held", RUN_TIMEOUT, || async {
        Ok(b.stderr_tail(200)
            .contains("another runner holds the run; waiting for it")
            .then_some(()))
    })
    .await?;
    let now = world.moto.get_object(BUCKET, &key).await?;
    ensure!(
        now == started,
        "runner-b rewrote the task's result without the run's lease:\nbefore {}\nafter {}\nrunner-b:\n{}",
        String::from_utf8_lossy(&started),
        String::from_utf8_lossy(&now),
        b.stderr_tail(40)
    );
    drop(a);
    remove_job_containers(&task_id)?;
    Ok(())
}
