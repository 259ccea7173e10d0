//! The Python Celery producer (`tests/celery_producer.py`) run against one test's world,
//! as a scheduler runs it: it sends `specrun.run` tasks over SQS and reads their results
//! from the bucket.

use crate::emulator::{aws_env, SpecrunProcess};
use crate::world::{World, BUCKET, RUN_TIMEOUT};
use anyhow::{ensure, Context as _};
use serde_json::Value;
use std::time::Duration;

/// The Python producer.
const CELERY_PRODUCER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/celery_producer.py");

/// Runs `python3 celery_producer.py ARGS` against the world's emulator; returns stdout
/// and whether it exited 0.
pub async fn celery_producer(world: &World, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(CELERY_PRODUCER)
        .args(args)
        .envs(aws_env(&world.moto.endpoint()))
        .env("SPECRUN_CELERY_QUEUE", &world.queues.name)
        .env("SPECRUN_CELERY_QUEUE_URL", &world.queues.url)
        .env("SPECRUN_CELERY_S3_BUCKET", BUCKET)
        .env("SPECRUN_CELERY_S3_BASE_PATH", "celery/")
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT + Duration::from_secs(30), command.output())
        .await
        .context("celery_producer.py did not finish")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code().is_some_and(|c| c <= 1),
        "celery_producer.py {} failed ({}): {stderr}",
        args.join(" "),
        output.status
    );
    Ok((output.status.success(), String::from_utf8(output.stdout)?))
}

/// Fails with the set-up command when the Python `celery` package is missing.
pub async fn require_celery() -> anyhow::Result<()> {
    let found = tokio::process::Command::new("python3")
        .args(["-c", "import celery, kombu, boto3"])
        .output()
        .await
        .context("running python3")?;
    ensure!(
        found.status.success(),
        "the Python celery package is missing ({}): run scripts/setup.sh \
         (python3 -m pip install -r tests/requirements.txt)",
        String::from_utf8_lossy(&found.stderr).trim()
    );
    Ok(())
}

/// What `celery_producer.py wait` answered, checked to be a SUCCESS whose run succeeded
/// (with `runner`'s stderr when it is not).
pub fn succeeded((ok, waited): (bool, String), runner: &SpecrunProcess) -> anyhow::Result<Value> {
    let answer: Value =
        serde_json::from_str(waited.trim()).with_context(|| format!("wait printed {waited:?}"))?;
    ensure!(
        ok && answer["status"] == "SUCCESS" && answer["result"]["status"] == "succeeded",
        "the task did not succeed: {answer:#}\nrunner stderr:\n{}",
        runner.stderr_tail(60)
    );
    Ok(answer)
}
