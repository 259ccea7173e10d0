//! The serverless path on loopback: a [`Moto`] S3/SQS emulator started per test, the
//! bucket and queues specrun needs on it, [`SpecrunProcess`] for `specrun serve` and
//! `specrun runner` pointed at it, and a small HTTP client for the API and presigned URLs.
//!
//! Everything here talks to 127.0.0.1 only: the emulator binds loopback, the clients are
//! built with its endpoint explicitly (nothing is read from the test process's AWS
//! configuration), and [`http_request`] refuses any other host.

use crate::harness::{job_image, specrun_bin, CANARY_TOKEN};
use anyhow::{bail, ensure, Context as _};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region every client and child process uses.
pub const REGION: &str = "us-east-1";

/// The emulator's access key id and secret (emulators accept any).
const ACCESS_KEY: &str = "test";

/// How long moto gets to answer after it was started.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a specrun process gets to print its ready line.
const SPECRUN_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped specrun process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The environment that points the AWS SDKs, the AWS CLI and boto3 at `endpoint` with the
/// emulator's credentials, and keeps them off instance metadata, profiles and proxies.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.to_owned()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_DEFAULT_REGION", REGION.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("AWS_CONFIG_FILE", "/dev/null".to_owned()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_owned()),
        ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
        ("no_proxy", "127.0.0.1,localhost".to_owned()),
    ]
}

/// Variables a child must not inherit from the test process: they would point it at
/// another account, endpoint or proxy.
const AWS_ENV_REMOVED: [&str; 7] = [
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SQS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// Applies [`aws_env`] to a command and removes what would override it.
pub fn with_aws_env(command: &mut tokio::process::Command, endpoint: &str) {
    for name in AWS_ENV_REMOVED {
        command.env_remove(name);
        command.env_remove(name.to_ascii_lowercase());
    }
    command.envs(aws_env(endpoint));
}

fn with_aws_env_std(command: &mut Command, endpoint: &str) {
    for name in AWS_ENV_REMOVED {
        command.env_remove(name);
        command.env_remove(name.to_ascii_lowercase());
    }
    command.envs(aws_env(endpoint));
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of a text file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A run queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct Queues {
    pub url: String,
    pub name: String,
    pub dlq_url: String,
}

/// Message counts of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

impl QueueDepth {
    pub fn is_empty(&self) -> bool {
        self.visible == 0 && self.in_flight == 0
    }
}

/// The Python of LocalStack's virtual environment when the tests are to run against
/// LocalStack instead of moto: `SPECRUN_TEST_EMULATOR=localstack`, with
/// `SPECRUN_LOCALSTACK_PYTHON` (default: the venv localstack/install-localstack.sh makes).
fn localstack_python() -> Option<PathBuf> {
    if std::env::var("SPECRUN_TEST_EMULATOR").ok()? != "localstack" {
        return None;
    }
    Some(match std::env::var_os("SPECRUN_LOCALSTACK_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/specrun/localstack-venv/bin/python"),
    })
}

/// LocalStack's runtime in host mode on `port`, serving S3 and SQS only, with its files
/// under `root` and nothing that reaches beyond loopback (no DNS server, no certificate
/// download, no analytics events).
fn localstack_command(python: &Path, port: u16, root: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .args(["-m", "localstack.runtime.main"])
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SERVICES", "s3,sqs")
        .env("GATEWAY_SERVER", "hypercorn")
        .env("OVERRIDE_IN_DOCKER", "0")
        .env("FILESYSTEM_ROOT", root.join("localstack"))
        .env("DNS_ADDRESS", "0")
        .env("SKIP_SSL_CERT_DOWNLOAD", "1")
        .env("DISABLE_EVENTS", "1")
        .current_dir(root);
    command
}

/// An S3/SQS emulator on a free loopback port, killed when dropped: `moto_server`, or
/// LocalStack when `SPECRUN_TEST_EMULATOR=localstack`.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto and waits until it answers; tries another port when the one picked
    /// was taken in the meantime.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once().await {
                Ok(moto) => return Ok(moto),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    async fn start_once() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("specrun-moto-").tempdir()?;
        let log = dir.path().join("moto.log");
        let port = free_port()?;
        let mut command = match localstack_python() {
            Some(python) => localstack_command(&python, port, dir.path()),
            None => {
                let mut command = Command::new("moto_server");
                command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?);
        with_aws_env_std(&mut command, &format!("http://127.0.0.1:{port}"));
        let child = command.spawn().context(
            "starting the emulator (scripts/setup.sh installs moto from tests/requirements.txt; \
             localstack/install-localstack.sh installs LocalStack)",
        )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut moto = Moto {
            child,
            port,
            log,
            s3: s3_client(&endpoint),
            sqs: sqs_client(&endpoint),
            _dir: dir,
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/", self.endpoint());
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto_server exited ({status}) before answering; its log:\n{}",
                    tail(&self.log, 30)
                );
            }
            if http_request("GET", &url, None).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > MOTO_START_TIMEOUT {
                bail!(
                    "moto_server did not answer at {url} within {MOTO_START_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An S3 client on this emulator (path-style addressing).
    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// An SQS client on this emulator.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.s3
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        Ok(())
    }

    /// Creates queue `name` and its dead-letter queue `name-dlq`, redriving after
    /// `max_receive_count` receives, with a `visibility_secs` visibility timeout.
    pub async fn create_queues(
        &self,
        name: &str,
        max_receive_count: u32,
        visibility_secs: u32,
    ) -> anyhow::Result<Queues> {
        let dlq_name = format!("{name}-dlq");
        let dlq_url = self.create_queue(&dlq_name, Vec::new()).await?;
        let dlq_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .context("reading the dead-letter queue's ARN")?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("the dead-letter queue has no ARN")?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receive_count,
        });
        let url = self
            .create_queue(
                name,
                vec![
                    (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                    (
                        QueueAttributeName::VisibilityTimeout,
                        visibility_secs.to_string(),
                    ),
                ],
            )
            .await?;
        Ok(Queues {
            url,
            name: name.to_owned(),
            dlq_url,
        })
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> anyhow::Result<String> {
        let mut request = self.sqs.create_queue().queue_name(name);
        for (attribute, value) in attributes {
            request = request.attributes(attribute, value);
        }
        let created = request
            .send()
            .await
            .with_context(|| format!("creating queue {name}"))?;
        created
            .queue_url()
            .map(str::to_owned)
            .context("create-queue answered without a URL")
    }

    /// How many messages the queue holds, visible and in flight.
    pub async fn queue_depth(&self, url: &str) -> anyhow::Result<QueueDepth> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .with_context(|| format!("reading the attributes of {url}"))?;
        let count = |name: &QueueAttributeName| -> u64 {
            attributes
                .attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(&QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }

    /// Every key in `bucket` under `prefix`, sorted.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// An object's bytes.
    pub async fn get_object(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let object = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("reading s3://{bucket}/{key}"))?;
        Ok(object.body.collect().await?.into_bytes().to_vec())
    }

    /// Writes an object.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<()> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .with_context(|| format!("writing s3://{bucket}/{key}"))?;
        Ok(())
    }

    /// Runs the AWS CLI against this emulator (`aws --endpoint-url E --region R ARGS`) and
    /// returns its stdout; fails with its stderr when it exits non-zero.
    pub async fn aws(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::new("aws");
        command
            .args(["--endpoint-url", &self.endpoint(), "--region", REGION])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        with_aws_env(&mut command, &self.endpoint());
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .with_context(|| format!("aws {} timed out", args.join(" ")))?
            .context(
                "running the AWS CLI (scripts/setup.sh installs it from tests/requirements.txt)",
            )?;
        ensure!(
            output.status.success(),
            "aws {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8(output.stdout)?)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, ACCESS_KEY, None, None, "specrun-tests")
}

/// An S3 client on `endpoint` with the emulator's credentials and path-style addressing.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(specrun_store::https_client())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(credentials())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An SQS client on `endpoint` with the emulator's credentials.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .http_client(specrun_store::https_client())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            ACCESS_KEY,
            ACCESS_KEY,
            None,
            None,
            "specrun-tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// What a `specrun serve` or `specrun runner` process is pointed at.
#[derive(Debug, Clone)]
pub struct SpecrunEnv {
    /// The emulator's endpoint.
    pub endpoint: String,
    pub bucket: String,
    pub queue_url: String,
    /// `SPECRUN_ALLOW_REPO_HOSTS`, e.g. `127.0.0.1:PORT` of the git server.
    pub allow_repo_hosts: String,
    /// `SPECRUN_RUNNER_ID`; the process's default when `None`.
    pub runner_id: Option<String>,
    /// More variables, set last.
    pub extra: Vec<(String, String)>,
}

impl SpecrunEnv {
    /// A process on `moto`'s `bucket` and `queue_url` allowing repositories on `git_host`,
    /// with the scripted agent as the default and [`CANARY_TOKEN`] as the forge token.
    pub fn new(moto: &Moto, bucket: &str, queue_url: &str, git_host: &str) -> Self {
        SpecrunEnv {
            endpoint: moto.endpoint(),
            bucket: bucket.to_owned(),
            queue_url: queue_url.to_owned(),
            allow_repo_hosts: git_host.to_owned(),
            runner_id: None,
            extra: Vec::new(),
        }
    }

    /// The same with another runner id.
    pub fn with_runner_id(&self, runner_id: &str) -> Self {
        SpecrunEnv {
            runner_id: Some(runner_id.to_owned()),
            ..self.clone()
        }
    }
}

/// A `specrun serve` or `specrun runner` child process with its own state and work
/// directories. Stopped on drop (SIGTERM, then SIGKILL after [`STOP_GRACE`]); its stderr
/// is kept in a file, and its tail is printed on drop so a failing test shows it.
pub struct SpecrunProcess {
    child: Child,
    what: String,
    stderr: PathBuf,
    base_url: Option<String>,
    /// Holds the state and work directories and the output files; removed on drop.
    _dir: tempfile::TempDir,
}

impl SpecrunProcess {
    /// `specrun serve --listen 127.0.0.1:0 ARGS`, once it listens.
    pub async fn serve(env: &SpecrunEnv, args: &[&str]) -> anyhow::Result<Self> {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = Self::spawn(env, &all)?;
        let line = process
            .wait_for_line("serving POST /runs and GET /runs on ")
            .await?;
        let url = line
            .split_once(" on ")
            .map(|(_, url)| url.trim().to_owned())
            .with_context(|| format!("no address in {line:?}"))?;
        process.base_url = Some(url);
        Ok(process)
    }

    /// `specrun runner ARGS`, once it takes runs.
    pub async fn runner(env: &SpecrunEnv, args: &[&str]) -> anyhow::Result<Self> {
        let mut all = vec!["runner"];
        all.extend_from_slice(args);
        let mut process = Self::spawn(env, &all)?;
        process.wait_for_line("runner taking runs").await?;
        Ok(process)
    }

    fn spawn(env: &SpecrunEnv, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("specrun-proc-").tempdir()?;
        let (state, work) = (dir.path().join("state"), dir.path().join("work"));
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(&work)?;
        let stderr = dir.path().join("stderr.log");
        let mut command = Command::new(specrun_bin()?);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout.log"))?)
            .stderr(File::create(&stderr)?)
            .env("SPECRUN_BUCKET", &env.bucket)
            .env("SPECRUN_ALLOW_REPO_HOSTS", &env.allow_repo_hosts)
            .env("SPECRUN_DEFAULT_AGENT", "scripted")
            .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
            .env("SPECRUN_IMAGE", job_image())
            .env("SPECRUN_STATE_DIR", &state)
            .env("SPECRUN_WORK_DIR", &work)
            .env("SPECRUN_PHASE_TIMEOUT_SECS", "120")
            .env("SPECRUN_SHUTDOWN_GRACE_SECS", "5")
            .env("SPECRUN_LOG", "info")
            .env_remove("SPECRUN_RUNNER_ID");
        with_aws_env_std(&mut command, &env.endpoint);
        // An empty queue URL: the process takes its queue from elsewhere (a broker).
        match env.queue_url.as_str() {
            "" => command.env_remove("SPECRUN_QUEUE_URL"),
            url => command.env("SPECRUN_QUEUE_URL", url),
        };
        if let Some(id) = &env.runner_id {
            command.env("SPECRUN_RUNNER_ID", id);
        }
        command.envs(env.extra.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("starting specrun {}", args.join(" ")))?;
        Ok(SpecrunProcess {
            child,
            what: format!("specrun {}", args.join(" ")),
            stderr,
            base_url: None,
            _dir: dir,
        })
    }

    /// Waits until stderr has a line containing `needle`; returns that line.
    async fn wait_for_line(&mut self, needle: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}; its stderr:\n{}",
                    self.what,
                    self.stderr_tail(60)
                );
            }
            if started.elapsed() > SPECRUN_START_TIMEOUT {
                bail!(
                    "{} did not print {needle:?} within {SPECRUN_START_TIMEOUT:?}; its stderr:\n{}",
                    self.what,
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of a `serve` process.
    pub fn base_url(&self) -> anyhow::Result<&str> {
        self.base_url
            .as_deref()
            .with_context(|| format!("{} serves no HTTP", self.what))
    }

    /// The last `lines` lines of its stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the process dies mid-work, as on a lost machine.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL when it has not exited after [`STOP_GRACE`].
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        // The `kill` command sends the signal to this one child, by its pid.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpecrunProcess {
    fn drop(&mut self) {
        self.stop();
        eprintln!(
            "--- {} stderr (last 40 lines) ---\n{}\n--- end ---",
            self.what,
            self.stderr_tail(40)
        );
    }
}

/// An HTTP response: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: hyper::HeaderMap,
}

impl HttpResponse {
    /// The value of header `name`, if it has one and it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics, showing the body, unless the answer has `status`.
    pub fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "answered {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request to a loopback URL (anything else is refused), with a JSON body
/// when `body` is given; 30 s at most.
pub async fn http_request(
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<HttpResponse> {
    let content_type = body.as_ref().map(|_| "application/json");
    http_request_as(method, url, body, content_type).await
}

/// The same with the body declared as `content_type`, or with no `Content-Type` at all.
pub async fn http_request_as(
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    content_type: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(
        Duration::from_secs(30),
        send(method, url, body, content_type),
    )
    .await
    .with_context(|| format!("{method} {url} timed out"))?
}

async fn send(
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    content_type: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let parsed = url::Url::parse(url).with_context(|| format!("parsing {url}"))?;
    let host = parsed.host_str().unwrap_or_default();
    ensure!(
        parsed.scheme() == "http" && matches!(host, "127.0.0.1" | "localhost"),
        "{url}: the tests only talk to http://127.0.0.1"
    );
    let port = parsed.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {url}"))?;
    tokio::spawn(connection);
    let target = &parsed[url::Position::BeforePath..];
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(content_type) = content_type {
        request = request.header(hyper::header::CONTENT_TYPE, content_type);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {method} {url}"))?
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        body,
        headers,
    })
}
