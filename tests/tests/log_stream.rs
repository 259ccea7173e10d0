//! Logs that stream: while the specify phase runs, its redacted log is tailed through
//! `specrun logs -f` (on the embedded store and on the bucket) and through
//! `GET /runs/{id}/logs/{phase}` of `specrun serve`, before the phase ends; what is
//! served equals the final artifact; a secret the agent prints, whole or split across
//! writes, is in no live part and no answer.
//!
//! The agent prints, then waits until the test releases it (a file it creates in the job
//! container with `docker exec`), so "before the phase ends" is a fact the test
//! establishes, not a matter of timing.

use sha2::{Digest, Sha256};
use specrun_core::keys::RunId;
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_runner::config::Secret;
use specrun_tests::emulator::{aws_env, http_request, HttpResponse, SpecrunProcess};
use specrun_tests::harness::{files_under, specrun_bin, write_agents_file, Harness};
use specrun_tests::world::{eventually, run_request, submit, wait_final, World, BUCKET};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

type TestResult = anyhow::Result<()>;

/// The secret the agent gets (as `PROBE_SECRET`) and prints.
const SECRET: &str = "stream-canary/secret+value=42";

/// What must show in no live part and no answer: the secret and each half of it.
const LEAKS: [&str; 3] = [SECRET, "stream-canary", "secret+value"];

/// The file that releases the waiting agent.
const GO_FILE: &str = "/tmp/specrun-log-stream-go";

/// How long the test waits for anything (a generous bound, not a measurement).
const WAIT: Duration = Duration::from_secs(120);

/// The `streamer` agent: in specify it prints a line, the secret whole and split across
/// two writes, then waits for [`GO_FILE`] before doing the scripted agent's work.
fn streamer_agents() -> String {
    let script = format!(
        "echo 'first line from the agent'; printf 'secret %s\\n' \"$PROBE_SECRET\"; \
         printf 'split %s' \"${{PROBE_SECRET%%/*}}\"; sleep 0.3; printf '/%s\\n' \"${{PROBE_SECRET#*/}}\"; \
         echo 'waiting for the test'; while [ ! -e {GO_FILE} ]; do sleep 0.2; done; \
         echo 'released'; exec specrun-scripted-agent specify \"$1\""
    );
    let escaped = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[agents.streamer]\nextends = \"scripted\"\nsecret_env = [\"PROBE_SECRET\"]\n[agents.streamer.phases]\nspecify = [\"sh\", \"-c\", \"{escaped}\", \"streamer\", \"{{text}}\"]\n"
    )
}

const TEXT: &str = "Stream the agent's log while it works";

/// Lets the waiting agent of `run_id` go on: creates [`GO_FILE`] in its job container.
async fn release(run_id: &str) -> anyhow::Result<()> {
    let label = format!("label=io.specrun.run-id={run_id}");
    let listed = tokio::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &label])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let container = text
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no job container of run {run_id}"))?;
    let touched = tokio::process::Command::new("docker")
        .args(["exec", container, "touch", GO_FILE])
        .output()
        .await?;
    anyhow::ensure!(
        touched.status.success(),
        "docker exec touch: {}",
        String::from_utf8_lossy(&touched.stderr)
    );
    Ok(())
}

fn assert_no_leak(what: &str, text: &str) {
    for leaked in LEAKS {
        assert!(!text.contains(leaked), "{leaked:?} in {what}: {text}");
    }
}

/// A `specrun logs -f` process whose standard output is collected as it comes.
struct Follower {
    child: tokio::process::Child,
    output: Arc<Mutex<String>>,
}

impl Follower {
    fn start(args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(specrun_bin()?)
            .args(["logs", "-f"])
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let collected = output.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            while let Ok(read) = stdout.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                if let Ok(mut text) = collected.lock() {
                    text.push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            }
        });
        Ok(Follower { child, output })
    }

    fn output(&self) -> String {
        self.output.lock().map(|t| t.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, text: &str) -> anyhow::Result<()> {
        eventually(&format!("{text:?} from specrun logs -f"), WAIT, || async {
            Ok(self.output().contains(text).then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; it printed: {}", self.output()))
    }

    /// Ctrl-C, as a terminal sends it.
    fn interrupt(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the follower has exited"))?;
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -INT {pid}");
        Ok(())
    }

    async fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(WAIT, self.child.wait()).await??;
        // Let the reader take the last bytes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(status.code())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_prints_a_running_phase_before_it_ends_on_the_embedded_store() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("follow", "# Follow\n")?;
    h.config
        .agent_secrets
        .insert("PROBE_SECRET".to_owned(), Secret::new(SECRET));
    h.use_agents_file(&streamer_agents())?;
    let mut request = h.request(&url, TEXT);
    request.agent = Some("streamer".to_owned());
    let store = h.store.clone();
    let state_dir = h.state.path().to_owned();
    let watcher = tokio::spawn(async move {
        let run_id = eventually("the run to be created", WAIT, || async {
            let (ids, _) = specrun_store::runs::list_runs(store.as_ref(), None, 1).await?;
            Ok(ids.first().map(RunId::to_string))
        })
        .await?;
        let watched = follow_while_running(&store, &state_dir, &run_id).await;
        // Whatever happened, the agent is let go so the run ends.
        let released = release(&run_id).await;
        let mut follower = watched?;
        released?;
        let code = follower.exit_code().await?;
        anyhow::Ok((code, follower.output()))
    });
    let record = h.run(request).await?;
    let (code, followed) = watcher.await??;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(code, Some(0), "logs -f ends by itself when the run is over");
    let specify = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(specify.contains("released") && specify.contains("split ***"));
    assert!(
        followed.contains(&format!("==> specify: agent.stdout.log <==\n{specify}")),
        "logs -f printed the whole specify log: {followed}"
    );
    assert_no_leak("the followed output", &followed);
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert_no_leak(&file.display().to_string(), &text);
    }
    h.assert_clean(&record).await
}

/// Starts `specrun logs -f` on the run, checks it prints the agent's first lines while
/// the phase still runs (redacted), that a second follower ends cleanly on Ctrl-C, and
/// that no live part holds the secret. Returns the first follower, still following.
async fn follow_while_running(
    store: &specrun_store::FsBlobStore,
    state_dir: &std::path::Path,
    run_id: &str,
) -> anyhow::Result<Follower> {
    let envs = [("SPECRUN_STATE_DIR", state_dir.display().to_string())];
    let follower = Follower::start(&[run_id], &envs)?;
    let mut interrupted = Follower::start(&[run_id, "--phase", "specify"], &envs)?;
    follower.wait_for("split ***").await?;
    let record = specrun_store::runs::load_run(store, &RunId::parse(run_id)?)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    assert_eq!(
        record.phase(Phase::Specify).status,
        PhaseStatus::Running,
        "printed while the phase runs"
    );
    let output = follower.output();
    assert!(
        output.contains("first line from the agent\nsecret ***\n") && !output.contains("released"),
        "{output}"
    );
    assert_no_leak("the followed output", &output);
    interrupted.wait_for("first line from the agent").await?;
    interrupted.interrupt()?;
    assert_eq!(interrupted.exit_code().await?, Some(130), "Ctrl-C ends it");
    let live = state_dir.join(format!("runs/{run_id}/live"));
    let parts = files_under(&live);
    assert!(!parts.is_empty(), "no live parts under {}", live.display());
    for part in parts {
        let text = String::from_utf8_lossy(&std::fs::read(&part)?).into_owned();
        assert_no_leak(&part.display().to_string(), &text);
    }
    Ok(follower)
}

fn next_offset(response: &HttpResponse) -> anyhow::Result<u64> {
    Ok(response
        .header("specrun-log-next-offset")
        .ok_or_else(|| anyhow::anyhow!("no Specrun-Log-Next-Offset"))?
        .parse()?)
}

fn writing(response: &HttpResponse) -> Option<&str> {
    response.header("specrun-log-writing")
}

/// The whole log through the endpoint, read from offset 0 in `max`-byte reads until the
/// phase writes no more.
async fn read_to_end(logs_url: &str, query: &str, max: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let url = format!("{logs_url}?offset={}&max={max}{query}", bytes.len());
        let response = http_request("GET", &url, None).await?;
        response.assert_status(200);
        let ended = writing(&response) == Some("false");
        assert_eq!(
            next_offset(&response)?,
            (bytes.len() + response.body.len()) as u64
        );
        if response.body.is_empty() && ended {
            return Ok(bytes);
        }
        anyhow::ensure!(
            !response.body.is_empty(),
            "the run is over, yet {url} says more may come"
        );
        bytes.extend_from_slice(&response.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_endpoint_and_logs_follow_tail_a_running_phase_on_moto() -> TestResult {
    let mut world = World::start(3).await?;
    let agents_dir = tempfile::tempdir()?;
    let agents = write_agents_file(agents_dir.path(), &streamer_agents())?;
    world.env.extra.extend([
        ("SPECRUN_AGENTS_FILE".to_owned(), agents),
        ("PROBE_SECRET".to_owned(), SECRET.to_owned()),
    ]);
    let serve = SpecrunProcess::serve(&world.env, &[]).await?;
    let base = serve.base_url()?.to_owned();
    let url = world.git().create_repo("tail", "# Tail\n")?;
    let mut body = run_request(&url, TEXT);
    body["agent"] = "streamer".into();
    let (run_id, status_url) = submit(&base, &body).await?;
    let mut envs = aws_env(&world.moto.endpoint());
    envs.push(("SPECRUN_BUCKET", BUCKET.to_owned()));
    let mut follower = Follower::start(&[&run_id], &envs)?;
    let logs_url = format!("{base}/runs/{run_id}/logs/specify");

    let checked = check_while_running(&world, &logs_url, &run_id, &follower).await;
    let released = release(&run_id).await;
    checked?;
    released?;

    let document = wait_final(&status_url, &serve).await?;
    let record: RunRecord = serde_json::from_value(document)?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(follower.exit_code().await?, Some(0));
    for (name, query) in [
        ("agent.stdout.log", ""),
        ("agent.stderr.log", "&stream=stderr"),
    ] {
        let artifact = record
            .phase(Phase::Specify)
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        // Small reads, so that the final artifact is read by ranges.
        let served = read_to_end(&logs_url, query, 7).await?;
        assert_eq!(
            format!("{:x}", Sha256::digest(&served)),
            artifact.sha256,
            "{name}: served bytes equal the artifact"
        );
        assert_no_leak(name, &String::from_utf8_lossy(&served));
    }
    let followed = follower.output();
    assert!(followed.contains("released"), "{followed}");
    assert_no_leak("the followed output", &followed);
    let live = world
        .moto
        .keys(BUCKET, &format!("runs/{run_id}/live/"))
        .await?;
    assert!(
        live.iter()
            .any(|k| k.contains("/specify/agent.stdout.log/part-")),
        "{live:?}"
    );
    for key in live {
        let text =
            String::from_utf8_lossy(&world.moto.get_object(BUCKET, &key).await?).into_owned();
        assert_no_leak(&key, &text);
    }
    // A phase that ran no command: empty and final.
    let push = http_request("GET", &format!("{base}/runs/{run_id}/logs/push"), None).await?;
    push.assert_status(200);
    assert!(push.body.is_empty());
    assert_eq!(writing(&push), Some("false"));
    Ok(())
}

/// The endpoint's answers while the specify phase runs, and `logs -f` on the bucket
/// printing its first lines before it ends.
async fn check_while_running(
    world: &World,
    logs_url: &str,
    run_id: &str,
    follower: &Follower,
) -> anyhow::Result<()> {
    let live = eventually("the agent's lines through the endpoint", WAIT, || async {
        let response = http_request("GET", logs_url, None).await?;
        Ok((response.status == 200
            && String::from_utf8_lossy(&response.body).contains("split ***"))
        .then_some(response))
    })
    .await?;
    assert_eq!(
        world.stored_run(run_id).await?.phase(Phase::Specify).status,
        PhaseStatus::Running,
        "served while the phase runs"
    );
    let text = String::from_utf8_lossy(&live.body).into_owned();
    assert!(
        text.starts_with("first line from the agent\nsecret ***\n") && !text.contains("released"),
        "{text}"
    );
    assert_no_leak("a live answer", &text);
    assert_eq!(writing(&live), Some("true"));
    assert_eq!(
        live.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(live.header("cache-control"), Some("no-store"));
    let size = next_offset(&live)?;
    assert_eq!(size, live.body.len() as u64);

    let head = http_request("GET", &format!("{logs_url}?offset=6&max=4"), None).await?;
    head.assert_status(200);
    assert_eq!(head.body, b"line");
    assert_eq!(next_offset(&head)?, 10);

    let past = http_request("GET", &format!("{logs_url}?offset={}", size + 4096), None).await?;
    past.assert_status(416);
    let stored = past.json()?["error"]["size"].as_u64().unwrap_or_default();
    assert!(stored >= size, "416 gives the size stored so far: {stored}");

    for (path, status) in [
        (format!("{logs_url}?offset=ten"), 400),
        (format!("{logs_url}?max=-1"), 400),
        (format!("{logs_url}?stream=stdin"), 400),
        (logs_url.replace("/logs/specify", "/logs/deploy"), 404),
        (logs_url.replace(run_id, "run-none-00000001"), 404),
    ] {
        let response = http_request("GET", &path, None).await?;
        response.assert_status(status);
        assert!(response.json()?["error"]["message"].is_string(), "{path}");
    }
    follower.wait_for("split ***").await?;
    assert_eq!(
        world.stored_run(run_id).await?.phase(Phase::Specify).status,
        PhaseStatus::Running,
        "logs -f printed the lines while the phase runs"
    );
    assert_no_leak("the followed output", &follower.output());
    Ok(())
}
