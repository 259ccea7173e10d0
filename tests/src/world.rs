//! One serverless test's world: moto with the state bucket and run queues, a
//! token-protected git server, and what the specrun processes are pointed at; with the
//! small steps tests take in it (submit over HTTP, wait for the final status, count
//! pushes).

use crate::emulator::{http_request, HttpResponse, Moto, Queues, SpecrunEnv, SpecrunProcess};
use crate::forge::ForgeServer;
use crate::git_http::GitHttpServer;
use crate::harness::CANARY_TOKEN;
use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};
use specrun_core::state::RunRecord;
use std::future::Future;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "specrun-state";

/// How long one run may take from submission to its final status.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One test's world: an emulator with the bucket and queues, and a forge (a token-guarded
/// git server with the fake GitHub API in front) that the specrun processes publish to.
pub struct World {
    pub moto: Moto,
    pub queues: Queues,
    pub forge: ForgeServer,
    pub env: SpecrunEnv,
}

impl World {
    /// Starts moto and the git server; the run queue redrives to its DLQ after
    /// `max_receive_count` receives.
    pub async fn start(max_receive_count: u32) -> anyhow::Result<Self> {
        let moto = Moto::start().await?;
        moto.create_bucket(BUCKET).await?;
        let queues = moto
            .create_queues("specrun-runs", max_receive_count, 30)
            .await?;
        let forge = ForgeServer::start(CANARY_TOKEN)?;
        let git_host = forge
            .git()
            .base_url()
            .trim_start_matches("http://")
            .to_owned();
        let mut env = SpecrunEnv::new(&moto, BUCKET, &queues.url, &git_host);
        env.extra.extend([
            ("SPECRUN_FORGE_URL".to_owned(), forge.git_base_url()),
            ("SPECRUN_FORGE_API_URL".to_owned(), forge.api_url()),
        ]);
        Ok(World {
            moto,
            queues,
            forge,
            env,
        })
    }

    /// The git server behind the forge.
    pub fn git(&self) -> &GitHttpServer {
        self.forge.git()
    }

    /// What a runner reaching the emulator through `relay` is pointed at: it retries a
    /// store or queue outage for up to two minutes.
    pub fn env_via(&self, relay: &crate::outage::OutageRelay) -> SpecrunEnv {
        let mut env = self.env.clone();
        env.endpoint = relay.endpoint();
        env.extra
            .push(("SPECRUN_STORE_RETRY_SECS".to_owned(), "120".to_owned()));
        env
    }

    /// run.json as stored in the bucket.
    pub async fn stored_run(&self, run_id: &str) -> anyhow::Result<RunRecord> {
        let bytes = self
            .moto
            .get_object(BUCKET, &format!("runs/{run_id}/run.json"))
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// run.json once the run is final (polled until `within`).
    pub async fn final_run(&self, run_id: &str, within: Duration) -> anyhow::Result<RunRecord> {
        eventually(&format!("run {run_id} to finish"), within, || async {
            Ok(self
                .stored_run(run_id)
                .await
                .ok()
                .filter(|r| r.status.is_final()))
        })
        .await
    }

    /// Asserts that nothing is in the bucket and nothing on the run queue (`after` says
    /// what was just done).
    pub async fn assert_nothing_stored(&self, after: &str) -> anyhow::Result<()> {
        let keys = self.moto.keys(BUCKET, "").await?;
        ensure!(keys.is_empty(), "{after}: objects in the bucket: {keys:?}");
        let depth = self.moto.queue_depth(&self.queues.url).await?;
        ensure!(
            depth.is_empty(),
            "{after}: messages on the queue: {depth:?}"
        );
        Ok(())
    }

    /// Puts `body` on the run queue as a scheduler would.
    pub async fn send_to_run_queue(&self, body: Vec<u8>) -> anyhow::Result<()> {
        self.moto
            .sqs()
            .send_message()
            .queue_url(&self.queues.url)
            .message_body(String::from_utf8(body)?)
            .send()
            .await?;
        Ok(())
    }

    /// Waits until the run queue holds no message, visible or in flight.
    pub async fn wait_queue_empty(&self) -> anyhow::Result<()> {
        eventually(
            "the run queue to empty",
            Duration::from_secs(20),
            || async {
                Ok(self
                    .moto
                    .queue_depth(&self.queues.url)
                    .await?
                    .is_empty()
                    .then_some(()))
            },
        )
        .await
    }
}

/// Polls `check` every half second until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A run request for `repo_url` with the scripted agent, publishing the branch only.
pub fn run_request(repo_url: &str, text: &str) -> Value {
    json!({
        "repository": repo_url,
        "specify_text": text,
        "publish": "branch",
        "agent": "scripted",
    })
}

pub async fn post_runs(base: &str, body: &Value) -> anyhow::Result<HttpResponse> {
    http_request(
        "POST",
        &format!("{base}/runs"),
        Some(serde_json::to_vec(body)?),
    )
    .await
}

/// Submits and expects 202; returns the run id and status URL.
pub async fn submit(base: &str, body: &Value) -> anyhow::Result<(String, String)> {
    let response = post_runs(base, body).await?;
    let answer = response.json()?;
    ensure!(response.status == 202, "submit answered {answer}");
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name} in {answer}"))
    };
    Ok((field("run_id")?, field("status_url")?))
}

/// Polls the status URL until the run is final; returns the status document.
pub async fn wait_final(status_url: &str, service: &SpecrunProcess) -> anyhow::Result<Value> {
    let waited = eventually("the run to finish", RUN_TIMEOUT, || async {
        let response = http_request("GET", status_url, None).await?;
        ensure!(
            response.status == 200,
            "GET {status_url}: {}",
            response.status
        );
        let document = response.json()?;
        let record: RunRecord = serde_json::from_value(document.clone())?;
        Ok(record.status.is_final().then_some(document))
    })
    .await;
    waited.with_context(|| format!("specrun's stderr:\n{}", service.stderr_tail(60)))
}

/// How many pushes (`POST .../git-receive-pack`) reached repository `name`.
pub fn pushes(git: &GitHttpServer, name: &str) -> usize {
    let path = format!("/{name}.git/git-receive-pack");
    git.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path_and_query == path)
        .count()
}
