//! Celery on the seed's own stack (FR-001): producers of Celery 5.4 and 5.7 send
//! `specrun.run` tasks over a real RabbitMQ and read the results from a real PostgreSQL
//! through Celery's database backend, unchanged. Runs survive a broker restart, land once
//! with two runners on one queue, and a message whose runner dies with it on its last
//! delivery reaches the dead-letter queue with its run failed.

use anyhow::{ensure, Context as _};
use serde_json::Value;
use specrun_core::RunStatus;
use specrun_tests::celery::{AmqpProducer, CELERY_RELEASES};
use specrun_tests::emulator::{SpecrunEnv, SpecrunProcess};
use specrun_tests::harness::{require_image, write_slow_agents_file};
use specrun_tests::postgres::Postgres;
use specrun_tests::rabbitmq::RabbitMq;
use specrun_tests::world::{eventually, pushes, run_request, World, RUN_TIMEOUT};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

const QUEUE: &str = "specrun";

/// The world (state bucket on moto, the forge) with a RabbitMQ and a PostgreSQL, and
/// runners pointed at them through the environment, as an operator would.
struct Stack {
    world: World,
    rabbit: RabbitMq,
    postgres: Postgres,
    env: SpecrunEnv,
}

impl Stack {
    async fn start() -> anyhow::Result<Self> {
        require_image().await?;
        let (rabbit, postgres, world) =
            tokio::try_join!(RabbitMq::start(), Postgres::start(), World::start(3))?;
        let mut env = world.env.clone();
        env.queue_url = String::new();
        env.extra.extend([
            ("SPECRUN_BROKER_URL".to_owned(), rabbit.url()),
            ("SPECRUN_BROKER_QUEUE".to_owned(), QUEUE.to_owned()),
            ("SPECRUN_RESULT_BACKEND".to_owned(), postgres.celery_url()),
        ]);
        Ok(Stack {
            world,
            rabbit,
            postgres,
            env,
        })
    }

    fn producer(&self, release: &str) -> AmqpProducer {
        AmqpProducer {
            release: release.to_owned(),
            broker_url: self.rabbit.url(),
            result_backend: self.postgres.celery_url(),
            queue: QUEUE.to_owned(),
        }
    }

    /// The processes with a `slow` agent that sleeps `seconds` in specify.
    fn slow_env(&self, dir: &std::path::Path, seconds: u32) -> anyhow::Result<SpecrunEnv> {
        let mut env = self.env.clone();
        env.extra.push((
            "SPECRUN_AGENTS_FILE".to_owned(),
            write_slow_agents_file(dir, "slow", seconds)?,
        ));
        Ok(env)
    }

    /// The task's row as Celery's database backend keeps it.
    async fn task_row(
        &self,
        task_id: &str,
    ) -> anyhow::Result<Option<(String, bool, Option<String>)>> {
        let client = self.postgres.client().await?;
        let row = client
            .query_opt(
                "SELECT status, date_done IS NOT NULL, traceback FROM celery_taskmeta WHERE task_id = $1",
                &[&task_id],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Neither password shows in what the runner printed.
    fn assert_no_secrets(&self, runner: &SpecrunProcess) {
        let log = runner.stderr_tail(100_000);
        for secret in [self.rabbit.password(), self.postgres.password()] {
            assert!(
                !log.contains(secret),
                "a password leaked into the runner's log"
            );
        }
    }
}

/// What `get()` answered for a task whose run should have succeeded.
fn assert_succeeded(release: &str, (returned, answer): &(bool, Value), runner: &SpecrunProcess) {
    assert!(
        *returned && answer["status"] == "SUCCESS" && answer["result"]["status"] == "succeeded",
        "Celery {release}: {answer:#}\nrunner:\n{}",
        runner.stderr_tail(60)
    );
    assert_eq!(answer["celery"], release);
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_5_4_and_5_7_producers_get_results_over_rabbitmq_and_postgresql() -> TestResult {
    let stack = Stack::start().await?;
    let runner = SpecrunProcess::runner(&stack.env, &["--concurrency", "2"]).await?;
    for release in CELERY_RELEASES {
        let producer = stack.producer(release);
        let name = format!("ok-{}", release.replace('.', ""));
        let url = stack.world.git().create_repo(&name, "# Tickets\n")?;
        let missing = url.replace(&name, &format!("{name}-missing"));
        let good = producer
            .send(&run_request(
                &url,
                "Archive resolved support tickets every night",
            ))
            .await?;
        let bad = producer
            .send(&run_request(&missing, "Export invoices as CSV files"))
            .await?;

        let done = producer.wait(&good, RUN_TIMEOUT).await?;
        assert_succeeded(release, &done, &runner);
        let run_id = done.1["result"]["run_id"].as_str().context("no run_id")?;
        assert_eq!(run_id, good, "a Celery task's run id is its task id");
        let stored = stack.world.stored_run(run_id).await?;
        assert_eq!(stored.status, RunStatus::Succeeded);
        assert_eq!(pushes(stack.world.git(), &name), 1);
        let (status, has_date, _) = stack.task_row(&good).await?.context("no result row")?;
        assert_eq!((status.as_str(), has_date), ("SUCCESS", true));

        // The failed run raises in get(), with the run's own account of the failure.
        let (returned, failed) = producer.wait(&bad, RUN_TIMEOUT).await?;
        assert!(
            !returned,
            "Celery {release}: get() returned for a failed run: {failed:#}"
        );
        assert_eq!(failed["status"], "FAILURE", "{failed:#}");
        assert_eq!(failed["exception"], "SpecrunRunFailed", "{failed:#}");
        let message = failed["message"].as_str().unwrap_or_default();
        assert!(message.contains(&bad), "the error names the run: {message}");
        let stored = stack.world.stored_run(&bad).await?;
        assert_eq!(stored.status, RunStatus::Failed);
        let reason = stored.status_reason.context("no status_reason")?;
        assert!(message.contains(&reason), "{message:?} lacks {reason:?}");
        let traceback = failed["traceback"].as_str().unwrap_or_default();
        assert!(
            traceback.contains(&format!("specrun run {bad} failed")),
            "{traceback:?}"
        );
    }
    ensure!(
        stack.rabbit.queue_depth(QUEUE)? == 0,
        "messages left on the queue:\n{}",
        runner.stderr_tail(40)
    );
    stack.assert_no_secrets(&runner);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_lands_the_run_once() -> TestResult {
    let mut stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    let env = stack.slow_env(dir.path(), 15)?;
    let runner = SpecrunProcess::runner(&env, &["--visibility-secs", "20"]).await?;
    let url = stack.world.git().create_repo("restart", "# Restart\n")?;
    let producer = stack.producer("5.7.0");
    let mut request = run_request(&url, "Send a weekly digest of open pull requests");
    request["agent"] = "slow".into();
    let task_id = producer.send(&request).await?;

    // STARTED in the result table: the runner holds the run.
    eventually("the task STARTED", RUN_TIMEOUT, || async {
        let row = stack.task_row(&task_id).await?;
        Ok(row.filter(|(status, _, _)| status == "STARTED").map(|_| ()))
    })
    .await
    .with_context(|| runner.stderr_tail(40))?;
    stack.rabbit.restart().await?;

    let done = producer.wait(&task_id, RUN_TIMEOUT).await?;
    assert_succeeded("5.7.0", &done, &runner);
    let stored = stack.world.stored_run(&task_id).await?;
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.attempt, 1, "the run was started again: {stored:#?}");
    assert_eq!(pushes(stack.world.git(), "restart"), 1);
    // The delivery of the lost connection came back and was settled on the new one.
    eventually("the queue to drain", Duration::from_secs(60), || async {
        Ok((stack.rabbit.queue_depth(QUEUE)? == 0).then_some(()))
    })
    .await
    .with_context(|| runner.stderr_tail(60))?;
    assert!(
        runner.stderr_tail(100_000).contains("reconnecting"),
        "the runner never saw the broker go: {}",
        runner.stderr_tail(40)
    );
    stack.assert_no_secrets(&runner);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_whose_runner_dies_with_it_reaches_the_dead_letter_queue_with_its_run_failed(
) -> TestResult {
    let stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    let env = stack.slow_env(dir.path(), 30)?;
    let args = [
        "--max-receives",
        "1",
        "--lease-secs",
        "6",
        "--visibility-secs",
        "10",
    ];
    let mut a = SpecrunProcess::runner(&env.with_runner_id("runner-a"), &args).await?;
    let url = stack.world.git().create_repo("poison", "# Poison\n")?;
    let producer = stack.producer("5.4.0");
    let mut request = run_request(&url, "Rotate the API keys of every tenant");
    request["agent"] = "slow".into();
    let task_id = producer.send(&request).await?;
    eventually("runner-a running the task", RUN_TIMEOUT, || async {
        let row = stack.task_row(&task_id).await?;
        Ok(row.filter(|(status, _, _)| status == "STARTED").map(|_| ()))
    })
    .await
    .with_context(|| a.stderr_tail(40))?;
    // The task's only allowed delivery dies with its runner; the broker hands the message
    // to the next consumer, which moves it to the dead-letter queue unrun and, watching
    // that queue, gives the run up once runner-a's lease has run out.
    a.kill();
    let b = SpecrunProcess::runner(&env.with_runner_id("runner-b"), &args).await?;

    let (returned, failed) = producer.wait(&task_id, RUN_TIMEOUT).await?;
    assert!(
        !returned,
        "get() returned: {failed:#}\n{}",
        b.stderr_tail(60)
    );
    assert_eq!(failed["exception"], "SpecrunRunFailed", "{failed:#}");
    let stored = stack.world.stored_run(&task_id).await?;
    assert_eq!(stored.status, RunStatus::Failed, "{stored:#?}");
    let error = stored.error.context("no error recorded")?;
    assert_eq!(error.code, "retries_exhausted", "{error:#?}");
    assert!(error.message.contains("dead-letter queue"), "{error:#?}");
    let dead = stack.rabbit.queue_depth(&format!("{QUEUE}.dead-letter"))?;
    assert_eq!(dead, 1, "{}", b.stderr_tail(60));
    assert_eq!(stack.rabbit.queue_depth(QUEUE)?, 0);
    let (status, _, traceback) = stack.task_row(&task_id).await?.context("no result row")?;
    assert_eq!(status, "FAILURE");
    assert!(traceback.is_some_and(|t| t.contains("retries_exhausted")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runners_on_one_queue_run_each_task_once() -> TestResult {
    let stack = Stack::start().await?;
    let a = SpecrunProcess::runner(&stack.env.with_runner_id("runner-a"), &[]).await?;
    let b = SpecrunProcess::runner(&stack.env.with_runner_id("runner-b"), &[]).await?;
    let producer = stack.producer("5.7.0");
    let mut tasks = Vec::new();
    for n in 0..4 {
        let name = format!("shared-{n}");
        let url = stack.world.git().create_repo(&name, "# Shared\n")?;
        let request = run_request(&url, &format!("Nightly report number {n}"));
        tasks.push((name, producer.send(&request).await?));
    }
    let mut runners = Vec::new();
    for (name, task_id) in &tasks {
        let done = producer.wait(task_id, RUN_TIMEOUT * 2).await?;
        assert_succeeded("5.7.0", &done, &a);
        let stored = stack.world.stored_run(task_id).await?;
        assert_eq!((stored.status, stored.attempt), (RunStatus::Succeeded, 1));
        assert_eq!(pushes(stack.world.git(), name), 1, "{name} pushed twice");
        runners.push(stored.runner_id.unwrap_or_default());
    }
    // A prefetch of one per runner: the broker hands the second task to the other runner.
    for id in ["runner-a", "runner-b"] {
        assert!(
            runners.iter().any(|r| r == id),
            "{id} ran nothing: {runners:?}\n{}",
            b.stderr_tail(30)
        );
    }
    assert_eq!(stack.rabbit.queue_depth(QUEUE)?, 0);
    Ok(())
}

/// `specrun runner` with the given broker settings, expected to fail at start: its stderr.
async fn runner_refusal(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let state = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(specrun_tests::harness::specrun_bin()?);
    command
        .arg("runner")
        .args(args)
        .env_remove("SPECRUN_BROKER_URL")
        .env_remove("SPECRUN_RESULT_BACKEND")
        .envs(env.iter().copied())
        .env("SPECRUN_STATE_DIR", state.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("the runner neither failed nor stopped")??;
    ensure!(!output.status.success(), "the runner started");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_and_backend_passwords_come_from_the_environment_and_are_never_shown() -> TestResult
{
    const SECRET: &str = "hunter2-never-shown";
    // On the command line a password is refused, with the variable to use instead.
    let url = format!("amqp://specrun:{SECRET}@127.0.0.1:1//");
    let stderr = runner_refusal(&["--broker", &url], &[]).await?;
    assert!(stderr.contains("SPECRUN_BROKER_URL"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    let backend = format!("db+postgresql://celery:{SECRET}@127.0.0.1:1/celery");
    let stderr = runner_refusal(&["--result-backend", &backend], &[]).await?;
    assert!(stderr.contains("SPECRUN_RESULT_BACKEND"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");

    // From the environment, a wrong password is reported with the URL masked.
    let rabbit = RabbitMq::start().await?;
    let wrong = format!("amqp://specrun:{SECRET}@127.0.0.1:{}//", rabbit.port());
    let stderr = runner_refusal(&[], &[("SPECRUN_BROKER_URL", &wrong)]).await?;
    assert!(stderr.contains("specrun:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    let postgres = Postgres::start().await?;
    let wrong = postgres.celery_url().replace(postgres.password(), SECRET);
    let stderr = runner_refusal(
        &[],
        &[
            ("SPECRUN_BROKER_URL", &rabbit.url()),
            ("SPECRUN_RESULT_BACKEND", &wrong),
        ],
    )
    .await?;
    assert!(stderr.contains("celery:***@127.0.0.1"), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(rabbit.password()),
        "{stderr}"
    );
    Ok(())
}

/// A task sent with `countdown` waits in a delay queue (a TTL queue dead-lettering back into
/// the run queue), several times when its eta is further than one wait, then runs once.
#[tokio::test(flavor = "multi_thread")]
async fn a_celery_countdown_waits_on_rabbitmq_then_runs_once() -> TestResult {
    let mut stack = Stack::start().await?;
    stack
        .env
        .extra
        .push(("SPECRUN_ETA_STEP_SECS".to_owned(), "4".to_owned()));
    let runner = SpecrunProcess::runner(&stack.env, &["--max-receives", "1"]).await?;
    let url = stack.world.git().create_repo("later", "# Later\n")?;
    let producer = stack.producer("5.7.0");
    let sent_at = time::OffsetDateTime::now_utc();
    let task_id = producer
        .send_with(
            &run_request(&url, "Close stale issues weekly"),
            &["--countdown", "10"],
        )
        .await?;
    let done = producer.wait(&task_id, RUN_TIMEOUT).await?;
    assert_succeeded("5.7.0", &done, &runner);
    let stored = stack.world.stored_run(&task_id).await?;
    assert_eq!((stored.status, stored.attempt), (RunStatus::Succeeded, 1));
    let started = stored.started_at.context("never started")?;
    assert!(
        started >= sent_at + time::Duration::seconds(10),
        "started at {started}, before its eta"
    );
    let log = runner.stderr_tail(100_000);
    assert!(log.matches("sent it again delayed").count() >= 2, "{log}");
    assert_eq!(
        stack.rabbit.queue_depth(&format!("{QUEUE}.dead-letter"))?,
        0
    );
    assert_eq!(stack.rabbit.queue_depth(QUEUE)?, 0);
    Ok(())
}
