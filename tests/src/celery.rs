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

/// The AMQP producer (`tests/celery_amqp_producer.py`).
const CELERY_AMQP_PRODUCER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/celery_amqp_producer.py");

/// The Celery releases the RabbitMQ/PostgreSQL tests run producers of: the oldest the
/// seed's operators run and the newest on the package index.
pub const CELERY_RELEASES: [&str; 2] = ["5.4.0", "5.7.0"];

/// Where scripts/setup.sh installs Celery `release` with SQLAlchemy and psycopg2
/// (`pip install --target`): `$SPECRUN_CACHE_DIR` or `~/.cache/specrun`, then
/// `celery-<release>`.
pub fn celery_release_dir(release: &str) -> std::path::PathBuf {
    let cache = std::env::var_os("SPECRUN_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/specrun")
        });
    cache.join(format!("celery-{release}"))
}

/// A scheduler's Celery of one release, pointed at a broker and a result backend.
#[derive(Debug, Clone)]
pub struct AmqpProducer {
    pub release: String,
    pub broker_url: String,
    pub result_backend: String,
    pub queue: String,
}

impl AmqpProducer {
    /// Runs `celery_amqp_producer.py ARGS` with this release first on the path; returns
    /// its exit code (0 done, 1 the task failed, 2 timed out) and stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let dir = celery_release_dir(&self.release);
        ensure!(
            dir.join("celery").is_dir(),
            "Celery {} is not installed in {}: run scripts/setup.sh",
            self.release,
            dir.display()
        );
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(CELERY_AMQP_PRODUCER)
            .args(args)
            .env("PYTHONPATH", &dir)
            .env("CELERY_BROKER_URL", &self.broker_url)
            .env("CELERY_RESULT_BACKEND", &self.result_backend)
            .env("SPECRUN_CELERY_QUEUE", &self.queue)
            .kill_on_drop(true);
        let output = tokio::time::timeout(RUN_TIMEOUT + Duration::from_secs(60), command.output())
            .await
            .context("celery_amqp_producer.py did not finish")??;
        let code = output.status.code().unwrap_or(-1);
        ensure!(
            (0..=2).contains(&code),
            "celery_amqp_producer.py {} (Celery {}) failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            self.release,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((code, String::from_utf8(output.stdout)?))
    }

    /// Sends one `specrun.run` task; its id.
    pub async fn send(&self, kwargs: &Value) -> anyhow::Result<String> {
        self.send_with(kwargs, &[]).await
    }

    /// Sends one `specrun.run` task with more `send` options (`--countdown S`); its id.
    pub async fn send_with(&self, kwargs: &Value, options: &[&str]) -> anyhow::Result<String> {
        let kwargs = kwargs.to_string();
        let mut args = vec!["send", "--kwargs", &kwargs];
        args.extend_from_slice(options);
        let (_, out) = self.run(&args).await?;
        let id = out.trim().to_owned();
        ensure!(!id.is_empty(), "send printed no task id");
        Ok(id)
    }

    /// `AsyncResult(task_id).get()`: whether it returned (not raised), and what the
    /// script printed.
    pub async fn wait(&self, task_id: &str, timeout: Duration) -> anyhow::Result<(bool, Value)> {
        let timeout = timeout.as_secs().to_string();
        let (code, out) = self.run(&["wait", task_id, "--timeout", &timeout]).await?;
        ensure!(code != 2, "AsyncResult({task_id}).get() timed out: {out}");
        let answer =
            serde_json::from_str(out.trim()).with_context(|| format!("wait printed {out:?}"))?;
        Ok((code == 0, answer))
    }
}
