//! A pipeline on a real Docker engine with the real job image, an embedded state store in
//! a temporary directory, and a token-protected git server on loopback. Each test gets its
//! own harness, so tests run in parallel without sharing anything but the engine.

use crate::forge::ForgeServer;
use crate::git_http::GitHttpServer;
use specrun_core::keys::{self, RunId};
use specrun_core::ports::BlobStore;
use specrun_core::repo::RepoPolicy;
use specrun_core::request::{Publish, RunRequest};
use specrun_core::state::RunRecord;
use specrun_runner::config::Secret;
use specrun_runner::progress::TracingProgress;
use specrun_runner::{Execution, Pipeline, RunnerConfig};
use specrun_sandbox::docker::{Containers, DockerClient};
use specrun_store::FsBlobStore;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The job image the tests use; `scripts/build-image.sh` builds it.
pub fn job_image() -> String {
    std::env::var("SPECRUN_IMAGE").unwrap_or_else(|_| "specrun-job:latest".to_owned())
}

/// The demo's job image, the `scripted` target (`scripts/build-image.sh --target
/// scripted`; `scripts/setup.sh --tests` builds it beside the full one).
pub fn scripted_image() -> String {
    std::env::var("SPECRUN_SCRIPTED_IMAGE").unwrap_or_else(|_| "specrun-job:scripted".to_owned())
}

/// A token that must never show up anywhere but in the git server's checks.
pub const CANARY_TOKEN: &str = "specrun-canary-token-5f1d2c9e7a";

/// One test's world: a forge (REST API and git over HTTP) requiring [`CANARY_TOKEN`].
pub struct Harness {
    pub forge: ForgeServer,
    pub state: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub store: Arc<FsBlobStore>,
    pub config: RunnerConfig,
}

impl Harness {
    /// Starts a git server that requires [`CANARY_TOKEN`] and a runner configured with it.
    pub async fn start() -> anyhow::Result<Self> {
        require_image().await?;
        let forge = ForgeServer::start(CANARY_TOKEN)?;
        let state = tempfile::tempdir()?;
        let work = tempfile::tempdir()?;
        let store = Arc::new(FsBlobStore::new(state.path()));
        let mut config = RunnerConfig::with_work_root(work.path().to_path_buf());
        config.image = job_image();
        config.default_agent = "scripted".to_owned();
        config.forge_git_base = forge.git_base_url();
        config.forge_api_url = Some(forge.api_url());
        config.forge_token = Some(Secret::new(CANARY_TOKEN));
        // Unique per test, so a test finds its own job containers by label.
        let suffix = state
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        config.runner_id = format!("test-runner-{}", suffix.trim_start_matches('.'));
        config.phase_timeout = Duration::from_secs(120);
        Ok(Harness {
            forge,
            state,
            work,
            store,
            config,
        })
    }

    /// The git server behind the forge.
    pub fn git(&self) -> &GitHttpServer {
        self.forge.git()
    }

    /// A request for `repo_url` with the scripted agent, publishing the branch only.
    pub fn request(&self, repo_url: &str, text: &str) -> RunRequest {
        RunRequest {
            repository: repo_url.to_owned(),
            specify_text: text.to_owned(),
            agent: Some("scripted".to_owned()),
            publish: Some(Publish::Branch),
            ..Default::default()
        }
    }

    /// A request like [`Harness::request`]'s for the agent `agent` (of the agents file).
    pub fn request_for_agent(&self, repo_url: &str, text: &str, agent: &str) -> RunRequest {
        RunRequest {
            agent: Some(agent.to_owned()),
            ..self.request(repo_url, text)
        }
    }

    /// Validates the request as the operator's CLI would and runs it to its end.
    pub async fn run(&self, request: RunRequest) -> anyhow::Result<RunRecord> {
        self.run_with(self.config.clone(), request).await
    }

    pub async fn run_with(
        &self,
        config: RunnerConfig,
        request: RunRequest,
    ) -> anyhow::Result<RunRecord> {
        let policy = RepoPolicy {
            allowed_hosts: Vec::new(),
            trusted: true,
            callbacks: Default::default(),
        };
        let request = request.validate(&policy)?;
        let pipeline = Pipeline::new(config, self.store.clone(), Arc::new(TracingProgress));
        let run_id = specrun_store::runs::new_run_id();
        let record = pipeline.enqueue_record(&run_id, &request).await?;
        match pipeline.execute(record, request).await? {
            Execution::Finished(record) => Ok(*record),
            Execution::Abandoned => {
                anyhow::bail!("run {run_id} was abandoned: another process wrote it")
            }
        }
    }

    /// run.json as a client would read it from the store.
    pub async fn stored_run(&self, run_id: &str) -> anyhow::Result<RunRecord> {
        let bytes = self
            .store
            .get(&keys::run_json(&RunId::parse(run_id)?))
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// An artifact's text by name (`clarifications.md`, `agent.stderr.log` of a phase...).
    pub async fn artifact(
        &self,
        record: &RunRecord,
        phase: Option<specrun_core::Phase>,
        name: &str,
    ) -> anyhow::Result<String> {
        let artifact = record
            .artifacts
            .iter()
            .find(|a| a.name == name && a.phase == phase)
            .ok_or_else(|| anyhow::anyhow!("run has no artifact {name} for {phase:?}"))?;
        Ok(String::from_utf8(self.store.get(&artifact.key).await?)?)
    }

    /// Asserts the run left no container and no workspace behind.
    pub async fn assert_clean(&self, record: &RunRecord) -> anyhow::Result<()> {
        let docker = DockerClient::connect(None, Duration::from_secs(10)).await?;
        let left = docker.containers(Containers::OfRun(&record.run_id)).await?;
        anyhow::ensure!(
            left.is_empty(),
            "containers left behind for run {}: {left:?}",
            record.run_id
        );
        let workspace = self.work.path().join(&record.run_id);
        anyhow::ensure!(
            !workspace.exists(),
            "workspace left behind: {}",
            workspace.display()
        );
        Ok(())
    }

    /// Every file of the state store, for leak checks.
    pub fn state_files(&self) -> Vec<PathBuf> {
        files_under(self.state.path())
    }
}

/// Every file under `dir`, recursively (links not followed into).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `docker inspect` on every job container that appears until stopped; returns what
/// it saw, so the test can prove no secret shows there.
pub fn watch_inspections(
    runner: String,
    stop: Arc<Mutex<bool>>,
) -> std::thread::JoinHandle<Vec<String>> {
    let label = format!("label=io.specrun.runner-id={runner}");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !*stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            let ids = std::process::Command::new("docker")
                .args(["ps", "-q", "--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                if let Ok(out) = std::process::Command::new("docker")
                    .args(["inspect", id])
                    .output()
                {
                    if out.status.success() {
                        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
}

/// Fails with the command that fixes it when the engine or the image is missing.
pub async fn require_image() -> anyhow::Result<()> {
    let docker = DockerClient::connect(None, Duration::from_secs(10))
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}: run scripts/ensure-docker.sh (the README's test command does)")
        })?;
    docker.image(&job_image()).await.map_err(|e| {
        anyhow::anyhow!("{e}: run scripts/build-image.sh (the README's test command does)")
    })?;
    Ok(())
}

/// The `specrun` binary, built once per test process (cargo's lock serialises builds
/// across processes).
pub fn specrun_bin() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = clean_cargo()
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "specrun-runner",
                    "--bin",
                    "specrun",
                ])
                .status()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of specrun failed: {status}"));
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            Ok(target.join("debug/specrun"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `cargo` with the same environment as a shell's, run from the workspace: the variables
/// cargo and nextest set for tests would count as a changed build environment and rebuild
/// much of the dependency graph, twice.
pub fn clean_cargo() -> std::process::Command {
    let keep = [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "CARGO_TARGET_DIR",
        "TMPDIR",
    ];
    let mut command = std::process::Command::new("cargo");
    command
        .env_clear()
        .envs(
            keep.iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    command
}

/// Writes `text` to `<dir>/agents.toml`; returns its path for `SPECRUN_AGENTS_FILE`.
pub fn write_agents_file(dir: &Path, text: &str) -> anyhow::Result<String> {
    let path = dir.join("agents.toml");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// Writes `<dir>/agents.toml` with one agent, `name`, the scripted agent that prints
/// `sleeping` and sleeps `seconds` in the specify phase (so a test can act mid-run);
/// returns the file's path for `SPECRUN_AGENTS_FILE`.
pub fn write_slow_agents_file(dir: &Path, name: &str, seconds: u32) -> anyhow::Result<String> {
    let text = format!(
        "[agents.{name}]\nextends = \"scripted\"\n[agents.{name}.phases]\nspecify = [\"sh\", \"-c\", \"echo sleeping; sleep {seconds}; exec specrun-scripted-agent specify \\\"$1\\\"\", \"{name}\", \"{{text}}\"]\n"
    );
    write_agents_file(dir, &text)
}

/// `HOST:PORT` of an `http://HOST:PORT/...` URL: what an egress allow-list names.
pub fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the run failed with `code` in `phase`; returns the recorded error.
pub fn failed_with(
    record: &RunRecord,
    code: &str,
    phase: specrun_core::Phase,
) -> anyhow::Result<specrun_core::state::RunError> {
    anyhow::ensure!(
        record.status == specrun_core::RunStatus::Failed,
        "status {} (error {:?})",
        record.status,
        record.error
    );
    let error = record
        .error
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no error recorded"))?;
    anyhow::ensure!(
        (error.code.to_string().as_str(), error.phase) == (code, Some(phase)),
        "expected {code} in {phase}, got {} in {:?}: {}",
        error.code,
        error.phase,
        error.message
    );
    Ok(error)
}

impl Harness {
    /// An agents file with one agent, `name`, extending `scripted`, whose phases run the
    /// given `sh` scripts (the text is `$1`); `extra` is more TOML for the profile.
    /// Phases not given run the scripted agent as usual.
    pub fn use_shell_agent(
        &mut self,
        name: &str,
        phases: &[(&str, &str)],
        extra: &str,
    ) -> anyhow::Result<()> {
        let mut text =
            format!("[agents.{name}]\nextends = \"scripted\"\n{extra}\n[agents.{name}.phases]\n");
        for (phase, script) in phases {
            let escaped = script.replace('\\', "\\\\").replace('"', "\\\"");
            text.push_str(&format!(
                "{phase} = [\"sh\", \"-c\", \"{escaped}\", \"{name}\", \"{{text}}\"]\n"
            ));
        }
        self.use_agents_file(&text)
    }

    /// Writes the agents file every later run of this harness reads.
    pub fn use_agents_file(&mut self, text: &str) -> anyhow::Result<()> {
        self.config.agents_file = Some(write_agents_file(self.work.path(), text)?);
        Ok(())
    }

    /// Asserts the run succeeded and its egress.log shows calls to `host` (`HOST:PORT`)
    /// allowed through the proxy and nothing refused.
    pub async fn assert_model_reached_through_proxy(
        &self,
        record: &RunRecord,
        host: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            record.status == specrun_core::RunStatus::Succeeded,
            "{:#?}",
            record.error
        );
        let log = self.artifact(record, None, "egress.log").await?;
        anyhow::ensure!(
            log.contains(&format!("allowed POST {host}")),
            "the model calls did not go through the proxy:\n{log}"
        );
        anyhow::ensure!(!log.contains("refused"), "{log}");
        Ok(())
    }
}

/// Removes the job containers of `run_id` that a runner killed mid-run left behind (a
/// Celery task's run id is its task id), so a test leaves no agent running.
pub fn remove_job_containers(run_id: &str) -> anyhow::Result<()> {
    let label = format!("label=io.specrun.run-id={run_id}");
    let listed = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()?;
    }
    Ok(())
}
