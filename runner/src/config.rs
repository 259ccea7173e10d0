//! The runner's configuration: where state and workspaces live, which image and agent to
//! use, the forge, limits and retention. Built from flags and `SPECRUN_*` variables by the
//! binary; everything here is plain data.

pub use specrun_sandbox::docker::Limits;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything a runner needs to execute runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where run workspaces are created (and removed after each run).
    pub work_root: PathBuf,
    /// The job image, e.g. `specrun-job:latest`.
    pub image: String,
    /// The agent used when a request names none and the agents file sets no default.
    pub default_agent: String,
    /// The agents file (FR-010), read at the start of every run: a path, or
    /// `store:<key>` for an object in the state store.
    pub agents_file: Option<String>,
    /// Values of agent secrets by variable name; a name missing here is read from the
    /// runner's own environment.
    pub agent_secrets: std::collections::BTreeMap<String, Secret>,
    /// The forge's git base URL, e.g. `https://github.com`, for `owner/name` requests.
    pub forge_git_base: String,
    /// Token for clone, push and the forge API; it never enters the job container.
    pub forge_token: Option<Secret>,
    /// The forge's REST API base (`https://api.github.com`, or `https://HOST/api/v3` for
    /// GitHub Enterprise); derived from `forge_git_base` when None.
    pub forge_api_url: Option<String>,
    /// Pull request title and body templates.
    pub pr_template: specrun_core::publish::PrTemplate,
    /// Labels every pull request gets, besides the request's own.
    pub pr_labels: Vec<String>,
    /// Where operators read a run's status, for links in pull requests (`{base}/runs/<id>`).
    pub status_base_url: Option<String>,
    /// Days run artifacts are kept (at least 7: SC-002).
    pub retention_days: u32,
    /// Longest time one agent phase may take.
    pub phase_timeout: Duration,
    /// Longest time a whole run may take, cleanup aside.
    pub run_timeout: Duration,
    /// Most bytes kept of each stdout/stderr log of a phase; the agent's output past it is
    /// counted, not stored.
    pub log_cap_bytes: u64,
    /// How often a running phase's log goes to the store as a live part (also sooner, at
    /// [`crate::engine::live_log::PART_THRESHOLD_BYTES`] new bytes); None: logs are stored
    /// only when their command ends.
    pub log_flush_interval: Option<Duration>,
    /// Size of the tmpfs holding a run's clone, git directory and agent HOME; None: no
    /// quota (the workspace shares the host's disk).
    pub workspace_quota_bytes: Option<u64>,
    /// Longest time clone, commit or push may take each.
    pub git_timeout: Duration,
    /// Bounds on what one commit may hold.
    pub commit_limits: specrun_core::commit_scope::CommitLimits,
    /// The Docker engine (`unix://...` or `tcp://...`); None: `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// How long to wait for the Docker engine to answer.
    pub docker_timeout: Duration,
    /// This runner's name in run.json and on container labels.
    pub runner_id: String,
    /// Resource limits of each job container.
    pub limits: Limits,
    /// Author and committer of the spec commit.
    pub commit_name: String,
    pub commit_email: String,
    /// Model prices for the gateway's cost accounting.
    pub model_prices: specrun_core::model_usage::PriceTable,
    /// The operator's model budget (maxima); profiles and requests may only lower it.
    pub model_budget: specrun_core::model_usage::Budget,
    /// An agent phase with no output and no model call for this long fails as stalled.
    pub stall_timeout: Duration,
    /// What a run does when another run holds the branch it is about to push.
    pub branch_busy: specrun_core::branch_lock::BranchBusy,
    /// How often a run waiting for its branch looks again.
    pub branch_poll: Duration,
    /// Where final statuses are sent, signed (see `crate::notify`).
    pub notify: NotifyConfig,
    /// Where metrics go (see `crate::metrics`).
    pub metrics: MetricsConfig,
}

/// Notifications of final statuses.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The deployment's webhook (`SPECRUN_WEBHOOK_URL`), sent every final status.
    pub webhook: Option<specrun_core::notify::NotifyUrl>,
    /// The HMAC key of `Specrun-Signature` (`SPECRUN_WEBHOOK_SECRET`); nothing is sent
    /// without it.
    pub secret: Option<Secret>,
    /// Where a request's `callback_url` may point (checked again before sending).
    pub callbacks: specrun_core::notify::CallbackPolicy,
    /// Attempts per target and event, across runners.
    pub max_attempts: u32,
    /// Waits between attempts (its budget bounds how long one runner keeps trying).
    pub backoff: specrun_core::backoff::Backoff,
    /// Longest wait for one receiver's answer.
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            secret: None,
            callbacks: Default::default(),
            max_attempts: 5,
            backoff: specrun_core::backoff::Backoff {
                first: Duration::from_secs(1),
                max_wait: Duration::from_secs(8),
                budget: Duration::from_secs(30),
            },
            timeout: Duration::from_secs(10),
        }
    }
}

/// Metrics sinks; all off by default.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `host:port` of a StatsD server (UDP).
    pub statsd: Option<String>,
    pub tags: specrun_core::metrics::TagStyle,
    /// Put before specrun's own metric names.
    pub prefix: String,
    /// EMF lines to stdout or to a file.
    pub emf: Option<EmfTarget>,
    /// The CloudWatch namespace of EMF lines.
    pub namespace: String,
}

/// Where EMF lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmfTarget {
    Stdout,
    File(PathBuf),
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            statsd: None,
            tags: Default::default(),
            prefix: "specrun.".to_owned(),
            emf: None,
            namespace: "specrun".to_owned(),
        }
    }
}

impl RunnerConfig {
    /// The forge API base URL: configured, or derived from the git base URL.
    pub fn forge_api(&self) -> String {
        match &self.forge_api_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.forge_git_base.trim_end_matches('/') == "https://github.com" => {
                "https://api.github.com".to_owned()
            }
            None => format!("{}/api/v3", self.forge_git_base.trim_end_matches('/')),
        }
    }
}

/// The default disk quota of a run's workspace, in MiB.
pub const DEFAULT_WORKSPACE_QUOTA_MIB: u64 = 4096;

/// The shortest retention the platform promises.
pub const MIN_RETENTION_DAYS: u32 = 7;

impl RunnerConfig {
    /// Defaults for everything but the paths.
    pub fn with_work_root(work_root: PathBuf) -> Self {
        RunnerConfig {
            work_root,
            image: "specrun-job:latest".to_owned(),
            default_agent: "codex".to_owned(),
            agents_file: None,
            agent_secrets: std::collections::BTreeMap::new(),
            forge_git_base: "https://github.com".to_owned(),
            forge_token: None,
            forge_api_url: None,
            pr_template: specrun_core::publish::PrTemplate::default(),
            pr_labels: Vec::new(),
            status_base_url: None,
            retention_days: 30,
            phase_timeout: Duration::from_secs(20 * 60),
            run_timeout: Duration::from_secs(60 * 60),
            log_cap_bytes: crate::engine::artifacts::DEFAULT_LOG_CAP_BYTES,
            log_flush_interval: Some(crate::engine::live_log::DEFAULT_FLUSH_INTERVAL),
            workspace_quota_bytes: Some(DEFAULT_WORKSPACE_QUOTA_MIB * 1024 * 1024),
            git_timeout: Duration::from_secs(600),
            commit_limits: specrun_core::commit_scope::CommitLimits::default(),
            docker_host: None,
            docker_timeout: Duration::from_secs(10),
            runner_id: "specrun-local".to_owned(),
            limits: Limits::default(),
            commit_name: "specrun".to_owned(),
            commit_email: "specrun@users.noreply.localhost".to_owned(),
            model_prices: specrun_core::model_usage::PriceTable::builtin(),
            model_budget: specrun_core::model_usage::Budget::default(),
            stall_timeout: Duration::from_secs(10 * 60),
            branch_busy: specrun_core::branch_lock::BranchBusy::Wait,
            branch_poll: Duration::from_secs(2),
            notify: NotifyConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}
