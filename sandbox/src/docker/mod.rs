//! The job environment on one Docker engine: a hardened container per run with the
//! workspace bind-mounted (the git directory read-only), each command an exec with its
//! own environment, the container frozen between commands, and for egress agents the
//! run's own network behind the allow-list proxy.

pub mod calls;
pub mod client;
pub mod exec_server;
pub mod freezer;

pub use client::{
    Access, ContainerSpec, Containers, DockerClient, DockerError, ImageInfo, Limits, Mount,
    Process, LABEL_MANAGED, LABEL_RUN, LABEL_RUNNER,
};

use crate::egress::{self, RunEgress};
use crate::port::{
    ExecEnd, ExecSpec, Job, JobFacts, JobRequest, OutputSink, Sandbox, SandboxError, Teardown,
};
use crate::workspace::{Workspace, AGENT_GID, AGENT_UID};
use async_trait::async_trait;
use exec_server::ExecSession;
use freezer::Freezer;
use specrun_core::agent::Network;
use specrun_core::redact::Redactor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const REPO_IN_CONTAINER: &str = "/workspace/repo";
const HOME_IN_CONTAINER: &str = "/workspace/home";

/// Where and how jobs are made on one engine.
#[derive(Debug, Clone)]
pub struct DockerSandbox {
    /// `DOCKER_HOST`-style address; `None` for the environment's default.
    pub docker_host: Option<String>,
    /// How long any one engine call may take.
    pub docker_timeout: Duration,
    /// Where run workspaces are created.
    pub work_root: PathBuf,
    /// Each workspace's disk quota (a tmpfs); `None` for none.
    pub workspace_quota_bytes: Option<u64>,
    pub limits: Limits,
}

impl DockerSandbox {
    pub async fn connect(&self) -> Result<DockerClient, DockerError> {
        DockerClient::connect(self.docker_host.as_deref(), self.docker_timeout).await
    }

    /// A fresh workspace for the run, made off the async threads.
    async fn make_workspace(&self, run_id: &str) -> Result<Workspace, SandboxError> {
        let (work_root, run_id, quota) = (
            self.work_root.clone(),
            run_id.to_owned(),
            self.workspace_quota_bytes,
        );
        tokio::task::spawn_blocking(move || Workspace::create(&work_root, &run_id, quota))
            .await
            .map_err(|e| SandboxError::HomeFiles(std::io::Error::other(e)))?
            .map_err(SandboxError::from)
    }

    /// Writes the agent's configuration files into the workspace's HOME.
    async fn write_home(
        &self,
        request: &JobRequest,
        workspace: &Workspace,
        service_url: Option<&str>,
    ) -> Result<(), SandboxError> {
        let home_files: BTreeMap<String, String> = request
            .home_files
            .iter()
            .map(|(path, text)| {
                let text = match service_url {
                    Some(url) => text.replace(specrun_core::agent::GATEWAY_URL, url),
                    None => text.clone(),
                };
                (path.clone(), text)
            })
            .collect();
        let home = workspace.home.clone();
        blocking_io(move || write_home_files(&home, &home_files))
            .await
            .map_err(SandboxError::HomeFiles)
    }

    async fn start(
        &self,
        docker: &DockerClient,
        request: &JobRequest,
        workspace: &Workspace,
        network: Network,
        exec_server: bool,
    ) -> Result<(String, Option<ExecSession>), DockerError> {
        let mount = |host: &Path, inside: &str, access| Mount {
            host: host.to_path_buf(),
            inside: inside.to_owned(),
            access,
        };
        let spec = ContainerSpec {
            name: format!("specrun-{}", request.run_id),
            image: request.image.clone(),
            run_id: request.run_id.clone(),
            runner_id: request.runner_id.clone(),
            mounts: vec![
                mount(&workspace.repo, REPO_IN_CONTAINER, Access::ReadWrite),
                mount(
                    &workspace.git,
                    &format!("{REPO_IN_CONTAINER}/.git"),
                    Access::ReadOnly,
                ),
                mount(&workspace.home, HOME_IN_CONTAINER, Access::ReadWrite),
            ],
            user: agent_user(),
            network,
            limits: self.limits,
            exec_server,
        };
        docker.start_job(&spec).await
    }
}

fn agent_user() -> String {
    format!("{AGENT_UID}:{AGENT_GID}")
}

#[async_trait]
impl Sandbox for DockerSandbox {
    async fn create(
        &self,
        request: JobRequest,
        on_workspace: &mut (dyn for<'w> FnMut(&'w Workspace) + Send),
    ) -> Result<Box<dyn Job>, SandboxError> {
        let docker = self.connect().await?;
        // Two independent questions, asked at once.
        let (image, engine_version) =
            tokio::join!(docker.image(&request.image), docker.engine_version());
        let image = image?;
        let engine_version = engine_version.unwrap_or_else(|e| format!("unknown ({e})"));
        let workspace = self.make_workspace(&request.run_id).await?;
        on_workspace(&workspace);
        let egress = match (&request.network, request.egress.clone()) {
            (Network::Egress, Some(policy)) => Some(
                RunEgress::set_up(
                    &docker,
                    &request.run_id,
                    &request.runner_id,
                    policy,
                    request.host_service.as_deref(),
                )
                .await?,
            ),
            _ => None,
        };
        let service_url = egress.as_ref().and_then(|e| e.service_url.clone());
        if let Err(e) = self
            .write_home(&request, &workspace, service_url.as_deref())
            .await
        {
            if let Some(mut egress) = egress {
                egress.tear_down(&docker).await;
            }
            return Err(e);
        }
        let network = match &egress {
            Some(egress) => Network::Named(egress.network.clone()),
            None => request.network.clone(),
        };
        let started = self
            .start(&docker, &request, &workspace, network, image.exec_server)
            .await;
        match started {
            Ok((container, session)) => Ok(Box::new(DockerJob {
                session: session.map(Mutex::new),
                freezer: match docker.init_pid(&container).await {
                    Ok(pid) => Freezer::find(&container, pid),
                    Err(e) => {
                        tracing::warn!(error = %e, "the job's init pid is unknown; the engine freezes it");
                        None
                    }
                },
                facts: JobFacts {
                    id: container.clone(),
                    engine_version,
                    image_id: image.id,
                    image_digest: image.digest,
                },
                proxy_url: egress.as_ref().map(|e| e.proxy.url()),
                service_host: egress
                    .as_ref()
                    .map(|e| e.proxy.address().ip().to_string())
                    .filter(|_| service_url.is_some()),
                egress: Mutex::new(egress),
                docker,
                workspace,
                container,
                frozen: AtomicU8::new(RUNNING),
            })),
            Err(e) => {
                if let Some(mut egress) = egress {
                    egress.tear_down(&docker).await;
                }
                Err(e.into())
            }
        }
    }

    async fn kill_jobs(&self, run_id: &str, started_by: Option<&str>) -> usize {
        let Ok(docker) = self.connect().await else {
            return 0;
        };
        let which = match started_by {
            Some(runner) => Containers::OfRunStartedBy {
                run: run_id,
                runner,
            },
            None => Containers::OfRun(run_id),
        };
        remove_containers(&docker, which).await
    }

    async fn remove_leftovers(&self, run_id: &str) -> usize {
        let Ok(docker) = self.connect().await else {
            return 0;
        };
        let removed = remove_containers(&docker, Containers::OfRun(run_id)).await;
        egress::remove_orphaned(&docker, run_id).await;
        removed
    }

    async fn runs_with_jobs(&self) -> Result<Vec<String>, SandboxError> {
        Ok(self.connect().await?.runs_with_containers().await?)
    }
}

/// Removes the job containers `which` names; returns how many went.
async fn remove_containers(docker: &DockerClient, which: Containers<'_>) -> usize {
    let mut removed = 0;
    for container in docker.containers(which).await.unwrap_or_default() {
        match docker.remove(&container).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(error = %e, %container, "could not remove a job container"),
        }
    }
    removed
}

/// Writes the agent's own configuration files into its HOME.
fn write_home_files(home: &Path, files: &BTreeMap<String, String>) -> std::io::Result<()> {
    for (relative, content) in files {
        let path = home.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    Ok(())
}

/// Removes a workspace off the async threads.
async fn remove_workspace(workspace: Workspace) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || workspace.remove()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// One run's container, workspace and way out.
struct DockerJob {
    docker: DockerClient,
    facts: JobFacts,
    workspace: Workspace,
    egress: Mutex<Option<RunEgress>>,
    proxy_url: Option<String>,
    /// The host's address on the run's network when the runner's host service (the
    /// model gateway) listens there: reached directly, not through the proxy.
    service_host: Option<String>,
    container: String,
    /// The container's own freezer, when the runner can write it (else the engine
    /// pauses the container).
    freezer: Option<Freezer>,
    /// The image's command server, attached; `None` runs each command as an exec.
    session: Option<Mutex<ExecSession>>,
    /// Whether, and by whom, the container's processes are frozen (the runner may read
    /// the worktree): [`RUNNING`], [`FROZEN_HERE`] or [`PAUSED_BY_ENGINE`]; [`STOPPED`]
    /// once none is left.
    frozen: AtomicU8,
}

const RUNNING: u8 = 0;
const FROZEN_HERE: u8 = 1;
const PAUSED_BY_ENGINE: u8 = 2;
/// After `stop_all`: no process of the container is left.
const STOPPED: u8 = 3;

impl DockerJob {
    /// Lets the container's processes run again, the way they were frozen.
    async fn thaw(&self) -> Result<(), SandboxError> {
        match self.frozen.load(Ordering::SeqCst) {
            FROZEN_HERE => {
                if let Some(freezer) = self.freezer.clone() {
                    blocking_io(move || freezer.thaw()).await.map_err(|e| {
                        DockerError::ContainerGone(format!("thawing {}: {e}", self.container))
                    })?;
                }
            }
            PAUSED_BY_ENGINE => self.docker.thaw(&self.container).await?,
            _ => {}
        }
        self.frozen.store(RUNNING, Ordering::SeqCst);
        Ok(())
    }

    /// Freezes the container's processes: with its own freezer, else (or when that
    /// freeze does not take) by the engine.
    async fn freeze(&self) -> Result<(), DockerError> {
        if let Some(freezer) = self.freezer.clone() {
            match blocking_io(move || freezer.freeze()).await {
                Ok(()) => {
                    self.frozen.store(FROZEN_HERE, Ordering::SeqCst);
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(error = %e, container = %self.container, "the freezer did not take; the engine pauses the container")
                }
            }
        }
        let paused = self.docker.freeze(&self.container).await;
        if paused.is_ok() {
            self.frozen.store(PAUSED_BY_ENGINE, Ordering::SeqCst);
        }
        paused
    }

    /// Removes the container, then the run's network; keeps the egress proxy's log.
    async fn remove_container_and_network(&self, redactor: &Redactor) -> Teardown {
        let mut teardown = Teardown::default();
        match self.docker.remove(&self.container).await {
            Ok(()) => teardown.done.push("container removed"),
            Err(e) => teardown
                .problems
                .push(format!("container {} not removed: {e}", self.container)),
        }
        if let Some(mut egress) = self.egress.lock().await.take() {
            match egress.tear_down(&self.docker).await[..] {
                [] => teardown.done.push("network removed"),
                ref failed => teardown
                    .problems
                    .push(format!("network not removed: {}", failed.join("; "))),
            }
            teardown.egress_log = Some(egress.proxy.log(redactor));
        }
        teardown
    }
}

/// Runs a short blocking file operation (the freezer's files) off the async threads.
async fn blocking_io<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[async_trait]
impl Job for DockerJob {
    fn facts(&self) -> &JobFacts {
        &self.facts
    }

    fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    fn base_env(&self) -> BTreeMap<String, String> {
        [
            ("HOME", HOME_IN_CONTAINER),
            // The git directory belongs to the runner; let tools inside read it.
            ("GIT_CONFIG_COUNT", "1"),
            ("GIT_CONFIG_KEY_0", "safe.directory"),
            ("GIT_CONFIG_VALUE_0", "*"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn network_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(proxy) = &self.proxy_url {
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.insert(name.to_owned(), proxy.clone());
            }
            // Nothing bypasses the proxy but the runner's own service on the run's
            // network (the model gateway); there is no other way out anyway.
            let direct = self.service_host.clone().unwrap_or_default();
            for name in ["NO_PROXY", "no_proxy"] {
                env.insert(name.to_owned(), direct.clone());
            }
        }
        env
    }

    async fn exec(
        &self,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
        limit: Duration,
    ) -> Result<ExecEnd, SandboxError> {
        let container = &self.container;
        self.thaw().await?;
        let process = Process {
            user: agent_user(),
            workdir: REPO_IN_CONTAINER.to_owned(),
        };
        let ended = match &self.session {
            Some(session) => {
                let mut session = session.lock().await;
                session.exec(spec, &process.workdir, sink, limit).await
            }
            None => {
                self.docker
                    .exec(container, &process, spec, sink, limit)
                    .await
            }
        };
        // Whatever the command left running (a background process waiting for the runner
        // to read or commit) stays frozen until the next command, and is killed at the
        // commit (`stop_all`).
        let frozen = self.freeze().await;
        Ok(ended.and_then(|end| frozen.map(|()| end))?)
    }

    async fn stop_all(&self) -> Result<(), SandboxError> {
        // The kernel delivers the engine's SIGKILL to frozen tasks too.
        self.docker.stop_all(&self.container).await?;
        self.frozen.store(STOPPED, Ordering::SeqCst);
        Ok(())
    }

    async fn tear_down(self: Box<Self>, redactor: &Redactor) -> Teardown {
        // With every process gone, nothing holds the workspace: it goes meanwhile.
        let (mut teardown, removed) = match self.frozen.load(Ordering::SeqCst) {
            STOPPED => tokio::join!(
                self.remove_container_and_network(redactor),
                remove_workspace(self.workspace.clone())
            ),
            _ => {
                let teardown = self.remove_container_and_network(redactor).await;
                (teardown, remove_workspace(self.workspace.clone()).await)
            }
        };
        match removed {
            Ok(()) => teardown.done.push("workspace removed"),
            Err(e) => teardown
                .problems
                .push(format!("workspace not removed: {e}")),
        }
        teardown
    }
}
