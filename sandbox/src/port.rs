//! The port the engine runs agents through: a [`Sandbox`] makes one [`Job`] per run (a
//! workspace on the host, a place for the agent's processes, and the way out it may
//! use), runs commands in it, and removes it. The Docker implementation is
//! [`crate::docker::DockerSandbox`]; another (a Kubernetes Job, say) is one new module
//! implementing these two traits, with no change to the phases.
//!
//! Contract every implementation keeps (the agent is hostile):
//! - secrets reach a command only through [`ExecSpec::env`], never the job's own
//!   configuration, so nothing that inspects the job shows them;
//! - when [`Job::exec`] returns, none of the agent's processes runs until the next
//!   `exec` (they are frozen), so the runner may read the workspace;
//! - after [`Job::stop_all`] no process of the agent runs again;
//! - the git directory is read-only to the agent, and nothing else of the host is
//!   reachable from the job.

use crate::docker::DockerError;
use crate::egress::EgressError;
use crate::workspace::{Workspace, WorkspaceError};
use async_trait::async_trait;
use specrun_core::agent::Network;
use specrun_core::egress::EgressPolicy;
use specrun_core::redact::Redactor;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A service of the runner the job reaches on its own network, beside the egress proxy:
/// the model gateway. The sandbox starts it on the host's address on the run's network
/// and opens the firewall for its port only.
#[async_trait]
pub trait HostService: Send + Sync {
    /// Starts serving on `bind`; returns the address it listens on.
    async fn listen(&self, bind: IpAddr) -> std::io::Result<SocketAddr>;
}

/// What a run's job needs.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub run_id: String,
    /// The runner creating it: a runner that lost a run's lease removes only its own jobs.
    pub runner_id: String,
    pub image: String,
    pub network: Network,
    /// Where an agent with [`Network::Egress`] may go.
    pub egress: Option<EgressPolicy>,
    /// Files written into the agent's HOME before it starts (its own configuration);
    /// [`specrun_core::agent::GATEWAY_URL`] in them becomes the host service's URL.
    pub home_files: BTreeMap<String, String>,
    /// With [`Network::Egress`], the runner's service the job may reach (the model
    /// gateway).
    pub host_service: Option<Arc<dyn HostService>>,
}

impl std::fmt::Debug for dyn HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostService")
    }
}

/// What the engine and the job are, for the run's environment report.
#[derive(Debug, Clone, Default)]
pub struct JobFacts {
    /// The job's id where it runs (a container id).
    pub id: String,
    pub engine_version: String,
    pub image_id: String,
    pub image_digest: Option<String>,
}

/// One command to run in the job, as the agent's user in the worktree.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where an exec's output goes as it arrives.
#[async_trait]
pub trait OutputSink: Send {
    async fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()>;
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    Exited(i64),
    TimedOut,
}

/// What removing a job did.
#[derive(Debug, Default)]
pub struct Teardown {
    /// What was removed, e.g. "container removed".
    pub done: Vec<&'static str>,
    /// What could not be, with why.
    pub problems: Vec<String>,
    /// The egress proxy's log of the run, redacted, for jobs that had one.
    pub egress_log: Option<String>,
}

/// The job environment could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Engine(#[from] DockerError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("writing the agent's configuration files: {0}")]
    HomeFiles(#[source] std::io::Error),
}

/// Where runs' jobs are made.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Checks the engine and the image, makes the run's workspace and hands it to
    /// `on_workspace` (work that needs nothing else, the clone's transfer, may start there
    /// while the job is made around it), then makes the run's network and job. On an
    /// error nothing of the job is left behind; a workspace already handed over is the
    /// caller's to remove ([`Workspace::remove`]) once nothing writes into it.
    async fn create(
        &self,
        request: JobRequest,
        on_workspace: &mut (dyn for<'w> FnMut(&'w Workspace) + Send),
    ) -> Result<Box<dyn Job>, SandboxError>;

    /// Removes the jobs of `run_id`, which ends whatever command runs in them: all of
    /// them, or only those `started_by` made (a runner that lost the run's lease leaves
    /// the new holder's alone). Their network and workspace stay for the run's own
    /// cleanup. Returns how many jobs were removed.
    async fn kill_jobs(&self, run_id: &str, started_by: Option<&str>) -> usize;

    /// Removes everything earlier jobs of `run_id` left on this host (a dead runner's):
    /// jobs, network, firewall rules. Returns how many jobs were removed.
    async fn remove_leftovers(&self, run_id: &str) -> usize;

    /// The run ids that have a job on this host, each once.
    async fn runs_with_jobs(&self) -> Result<Vec<String>, SandboxError>;
}

/// One run's job.
#[async_trait]
pub trait Job: Send + Sync {
    fn facts(&self) -> &JobFacts;

    /// The run's workspace as the runner sees it on the host.
    fn workspace(&self) -> &Workspace;

    /// Variables every command starts from (HOME, ...); the agent's profile may override
    /// them.
    fn base_env(&self) -> BTreeMap<String, String>;

    /// Variables every command of the agent needs to reach the way out (proxy settings);
    /// nothing overrides them.
    fn network_env(&self) -> BTreeMap<String, String>;

    /// Runs a command to its end (or `limit`), its output streamed into `sink`. When it
    /// returns, the agent's processes are frozen until the next `exec`.
    async fn exec(
        &self,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
        limit: Duration,
    ) -> Result<ExecEnd, SandboxError>;

    /// Kills every process of the agent for good and waits until none is left.
    async fn stop_all(&self) -> Result<(), SandboxError>;

    /// Removes the job, its network and its workspace; says what it did.
    async fn tear_down(self: Box<Self>, redactor: &Redactor) -> Teardown;
}
