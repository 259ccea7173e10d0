//! The `specrun` command line: `run` executes one pipeline in-process against the
//! embedded store; `status`, `logs` and `cancel` work on the embedded store or, with
//! `--bucket`, on the serverless deployment's bucket. Output for people goes to stderr
//! while a run works and to stdout at the end; `--json` keeps stdout machine-readable.

use crate::config::{RunnerConfig, Secret, MIN_RETENTION_DAYS};
use crate::engine::{Execution, Pipeline};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use specrun_core::keys::{self, RunId};
use specrun_core::live_log::LogStream;
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::repo::RepoPolicy;
use specrun_core::request::{Publish, RunRequest};
use specrun_core::state::RunRecord;
use specrun_core::{Phase, RunStatus};
use specrun_store::{CountingStore, FsBlobStore};
use std::collections::BTreeMap;
use std::io::Write as _;

mod aws;
mod batch;
mod brokers;
mod follow;
mod observe;
mod report;
mod retry;
mod service;

pub use report::ConsoleProgress;
use report::{print_status, print_summary};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// specrun: Spec Kit automation. Runs an AI agent through specify, plan and tasks in an
/// ephemeral Docker container and pushes the result to a feature branch.
#[derive(Debug, Parser)]
#[command(name = "specrun", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares.
#[derive(Debug, Args)]
pub struct Global {
    /// Directory of the embedded state store (mirrors the bucket layout).
    #[arg(
        long,
        global = true,
        env = "SPECRUN_STATE_DIR",
        default_value = ".specrun/state"
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one pipeline now, in this process.
    Run(Box<RunArgs>),
    /// Show a run's status, phase by phase (or, given a batch id, the batch's counts and runs).
    Status {
        run_id: String,
        /// Print run.json instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve the submit and status API over HTTP, with a queue runner in the same process.
    Serve(Box<service::ServeArgs>),
    /// Take runs from the queue and execute them until SIGTERM.
    Runner(Box<service::WorkerCommandArgs>),
    /// Cancel a run: a queued run at once, a running one within seconds.
    Cancel {
        run_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove the job containers, egress networks and firewall rules of runs that are
    /// over, or whose lease ran out long ago, on this Docker engine (runners do this at
    /// start too). Runs the store does not know are left alone.
    Sweep {
        /// How long after its lease ran out a run's leftovers count as abandoned.
        #[arg(long, default_value_t = 600)]
        stale_secs: u64,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        runner: Box<RunnerArgs>,
    },
    /// Retry a failed or cancelled run from its last good phase: the phases that
    /// succeeded are restored, not run again. On the embedded store the new attempt runs
    /// in this process; with --bucket and --queue-url it is queued for the runners.
    Retry {
        run_id: String,
        /// Print the final run.json on stdout (embedded store) instead of the summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// The run queue, with --bucket: the retried run is sent there.
        #[arg(long, env = "SPECRUN_QUEUE_URL", requires = "bucket")]
        queue_url: Option<String>,
        #[command(flatten)]
        runner: Box<RunnerArgs>,
    },
    /// Answer the open questions of a run that ended needs_clarification and resume it
    /// on the same branch from the phase that asked (`specrun status` lists them).
    Answer {
        run_id: String,
        /// N=TEXT: the answer to question N (from 1, as clarifications.md numbers them);
        /// repeatable.
        #[arg(long = "answer", value_parser = parse_numbered, required = true)]
        answers: Vec<(usize, String)>,
        /// Print the final run.json on stdout (embedded store) instead of the summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// The run queue, with --bucket: the answered run is sent there.
        #[arg(long, env = "SPECRUN_QUEUE_URL", requires = "bucket")]
        queue_url: Option<String>,
        #[command(flatten)]
        runner: Box<RunnerArgs>,
    },
    /// Run one specification on many repositories: one run each, at most
    /// --max-in-flight at once. On the embedded store they run in this process; with
    /// --bucket and --queue-url they are queued for the runners. The same --batch-key
    /// again resubmits: only runs that did not succeed run again.
    Batch(Box<batch::BatchArgs>),
    /// Print a run's logs; with -f, follow them while the run works.
    Logs {
        run_id: String,
        /// Only this phase's logs.
        #[arg(long)]
        phase: Option<Phase>,
        /// Follow: print each phase's log as it is written (the running phase, then the
        /// next ones) until the run is over; Ctrl-C stops.
        #[arg(short = 'f', long)]
        follow: bool,
        /// With -f: which log of each phase, stdout (the default) or stderr.
        #[arg(long, default_value = "stdout", value_parser = parse_stream, requires = "follow")]
        stream: LogStream,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where `status`, `logs` and `cancel` find runs.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The serverless deployment's S3 bucket (endpoint, region and credentials from the
    /// standard AWS configuration, as for `specrun runner`); --state-dir when absent.
    #[arg(long, env = "SPECRUN_BUCKET")]
    pub bucket: Option<String>,
}

/// A state store, and how to name it in a message that says where to look.
struct StateStore {
    store: Arc<dyn BlobStore>,
    place: String,
}

impl StoreArgs {
    async fn open(&self, state_dir: &std::path::Path) -> anyhow::Result<StateStore> {
        Ok(match &self.bucket {
            Some(bucket) => StateStore {
                store: aws::bucket(bucket).await?,
                place: format!("bucket {bucket} (--bucket / SPECRUN_BUCKET)"),
            },
            None => StateStore {
                store: Arc::new(FsBlobStore::new(absolute(state_dir)?)),
                place: format!(
                    "the state store at {} (--state-dir / SPECRUN_STATE_DIR; --bucket / SPECRUN_BUCKET for the serverless deployment's)",
                    state_dir.display()
                ),
            },
        })
    }
}

/// The flags of a run request besides its repository (`specrun run`, `specrun batch`).
#[derive(Debug, Args)]
pub struct RequestFlags {
    /// The feature description for the specify phase ('-' reads standard input).
    #[arg(long, required_unless_present = "text_file")]
    pub text: Option<String>,
    /// Read the feature description from a file.
    #[arg(long, conflicts_with = "text")]
    pub text_file: Option<PathBuf>,
    #[arg(long)]
    pub base_branch: Option<String>,
    /// Branch to publish to (default: the feature directory's name, NNN-short-name).
    #[arg(long)]
    pub branch_name: Option<String>,
    /// Agent to run (default: SPECRUN_DEFAULT_AGENT).
    #[arg(long)]
    pub agent: Option<String>,
    /// An agent option, KEY=VALUE (repeatable), e.g. behaviour=clarify for `scripted`.
    #[arg(long = "agent-option", value_parser = parse_key_value)]
    pub agent_options: Vec<(String, String)>,
    /// pr (default), branch (push only) or none (dry run).
    #[arg(long, value_parser = parse_publish)]
    pub publish: Option<Publish>,
    /// Open the pull request as a draft.
    #[arg(long)]
    pub draft: bool,
    /// A label for the pull request (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
}

impl RequestFlags {
    /// The run request these flags make for `repository`.
    pub fn to_request(&self, repository: &str) -> anyhow::Result<RunRequest> {
        Ok(RunRequest {
            repository: repository.to_owned(),
            specify_text: self.read_text()?,
            base_branch: self.base_branch.clone(),
            branch_name: self.branch_name.clone(),
            agent: self.agent.clone(),
            agent_options: self
                .agent_options
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            publish: self.publish,
            draft: Some(self.draft),
            labels: self.labels.clone(),
            ..Default::default()
        })
    }

    fn read_text(&self) -> anyhow::Result<String> {
        match (&self.text, &self.text_file) {
            (Some(text), _) if text == "-" => std::io::read_to_string(std::io::stdin())
                .context("reading the text from standard input"),
            (Some(text), _) => Ok(text.clone()),
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            }
            (None, None) => bail!("give the feature description with --text or --text-file"),
        }
    }
}

/// `specrun run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Repository: a git URL, a local path, or owner/name on the forge.
    #[arg(long)]
    pub repo: String,
    #[command(flatten)]
    pub request: RequestFlags,
    /// Print the final run.json on stdout and nothing else there.
    #[arg(long)]
    pub json: bool,
    /// After the run, write the state store and Docker API requests it made, by kind, as
    /// JSON to this file (what `scripts/bench.sh` reports per run).
    #[arg(long)]
    pub counts_file: Option<PathBuf>,
    #[command(flatten)]
    pub runner: RunnerArgs,
}

/// How the runner executes: image, agent, forge, limits.
#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// Where run workspaces are made (each is removed after its run).
    #[arg(long, env = "SPECRUN_WORK_DIR", default_value = ".specrun/work")]
    pub work_dir: PathBuf,
    /// The job image.
    #[arg(long, env = "SPECRUN_IMAGE", default_value = "specrun-job:latest")]
    pub image: String,
    /// The agent for requests that name none.
    #[arg(long, env = "SPECRUN_DEFAULT_AGENT", default_value = "codex")]
    pub default_agent: String,
    /// The agents file (TOML), read at the start of every run: a path, or store:<key>.
    #[arg(long, env = "SPECRUN_AGENTS_FILE")]
    pub agents_file: Option<String>,
    /// The forge's git base URL, for owner/name repositories.
    #[arg(long, env = "SPECRUN_FORGE_URL", default_value = "https://github.com")]
    pub forge_url: String,
    /// Days artifacts are kept; at least 7.
    #[arg(long, env = "SPECRUN_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
    /// Time limit of a whole run, in seconds.
    #[arg(long, env = "SPECRUN_RUN_TIMEOUT_SECS", default_value_t = 3600)]
    pub run_timeout_secs: u64,
    /// Time limit of one agent phase, in seconds.
    #[arg(long, env = "SPECRUN_PHASE_TIMEOUT_SECS", default_value_t = 1200)]
    pub phase_timeout_secs: u64,
    /// Most bytes kept of each phase log (stdout, stderr); the rest is counted, not stored.
    #[arg(long, env = "SPECRUN_LOG_CAP_BYTES", default_value_t = crate::engine::artifacts::DEFAULT_LOG_CAP_BYTES)]
    pub log_cap_bytes: u64,
    /// How often a running phase's log goes to the store, in milliseconds, so that it can
    /// be tailed (`specrun logs -f`, `GET /runs/{id}/logs/{phase}`); 64 KiB of new output
    /// goes at once. 0: logs are stored only when the phase's command ends.
    #[arg(long, env = "SPECRUN_LOG_FLUSH_MS", default_value_t = 2000)]
    pub log_flush_ms: u64,
    /// Disk quota of each run's workspace (clone, git directory, agent HOME) in MiB, a
    /// tmpfs of that size; 0 turns the quota off. Needs root.
    #[arg(long, env = "SPECRUN_WORKSPACE_QUOTA_MIB", default_value_t = crate::config::DEFAULT_WORKSPACE_QUOTA_MIB)]
    pub workspace_quota_mib: u64,
    /// Time limit of each of clone, commit and push, in seconds.
    #[arg(long, env = "SPECRUN_GIT_TIMEOUT_SECS", default_value_t = 600)]
    pub git_timeout_secs: u64,
    /// This runner's name in run.json and on container labels.
    #[arg(long, env = "SPECRUN_RUNNER_ID")]
    pub runner_id: Option<String>,
    /// The forge's REST API (default: derived from --forge-url; GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, env = "SPECRUN_FORGE_API_URL")]
    pub forge_api_url: Option<String>,
    /// A label every pull request gets (repeatable; comma-separated in the variable).
    #[arg(long = "pr-label", env = "SPECRUN_PR_LABELS", value_delimiter = ',')]
    pub pr_labels: Vec<String>,
    /// Pull request title template ({feature}, {branch}, {run_id}, {agent}, ...).
    #[arg(long, env = "SPECRUN_PR_TITLE")]
    pub pr_title: Option<String>,
    /// File holding the pull request body template ({phases}, {status_url}, {logs_url}, ...).
    #[arg(long, env = "SPECRUN_PR_BODY_FILE")]
    pub pr_body_file: Option<PathBuf>,
    /// Public base URL of the status API, for links (`<base>/runs/<id>`).
    #[arg(long, env = "SPECRUN_STATUS_URL")]
    pub status_url: Option<String>,
    /// The Docker engine: unix:///path or tcp://host:port (default: the local socket).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Model prices over the built-in table, JSON: {"MODEL or PREFIX*": {"input": USD per
    /// million tokens, "cached_input": ..., "output": ...}}.
    #[arg(long, env = "SPECRUN_MODEL_PRICES")]
    pub model_prices: Option<String>,
    /// The operator's model budget, JSON: {"run": {"max_tokens": N, "max_usd": X,
    /// "max_requests": N}, "phase": {...}}; requests may only lower it.
    #[arg(long, env = "SPECRUN_MODEL_BUDGET")]
    pub model_budget: Option<String>,
    /// An agent phase whose agent prints nothing and calls no model for this long fails
    /// with phase_stalled, in seconds.
    #[arg(long, env = "SPECRUN_STALL_TIMEOUT_SECS", default_value_t = 600)]
    pub stall_timeout_secs: u64,
    /// When another run holds the branch a run is about to push: wait for it (recorded
    /// in run.json as waiting_for) or refuse (fail with branch_busy).
    #[arg(long, env = "SPECRUN_BRANCH_BUSY", default_value = "wait")]
    pub branch_busy: specrun_core::branch_lock::BranchBusy,
    #[command(flatten)]
    pub observe: observe::ObserveArgs,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_numbered(text: &str) -> Result<(usize, String), String> {
    let (number, answer) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not N=TEXT"))?;
    match number.parse::<usize>() {
        Ok(n) if n >= 1 => Ok((n, answer.to_owned())),
        _ => Err(format!("{number:?} is not a question number (1, 2, ...)")),
    }
}

fn parse_stream(text: &str) -> Result<LogStream, String> {
    LogStream::parse(text).ok_or_else(|| format!("{text:?} is not one of stdout, stderr"))
}

fn parse_publish(text: &str) -> Result<Publish, String> {
    match text {
        "pr" => Ok(Publish::Pr),
        "branch" => Ok(Publish::Branch),
        "none" => Ok(Publish::None),
        other => Err(format!("{other:?} is not one of pr, branch, none")),
    }
}

impl RunnerArgs {
    /// The configuration, with the forge token taken from the environment only: a flag
    /// would show in process listings.
    pub fn to_config(&self) -> anyhow::Result<RunnerConfig> {
        if self.retention_days < MIN_RETENTION_DAYS {
            bail!("--retention-days {} is below the minimum of {MIN_RETENTION_DAYS} days that run artifacts are promised to stay readable", self.retention_days);
        }
        let mut config = RunnerConfig::with_work_root(absolute(&self.work_dir)?);
        config.image = self.image.clone();
        config.default_agent = self.default_agent.clone();
        config.agents_file = self.agents_file.clone();
        config.forge_git_base = self.forge_url.clone();
        config.forge_token = std::env::var("SPECRUN_GIT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        config.retention_days = self.retention_days;
        config.phase_timeout = Duration::from_secs(self.phase_timeout_secs);
        config.run_timeout = Duration::from_secs(self.run_timeout_secs);
        config.log_cap_bytes = self.log_cap_bytes;
        config.log_flush_interval =
            (self.log_flush_ms > 0).then(|| Duration::from_millis(self.log_flush_ms));
        config.workspace_quota_bytes =
            (self.workspace_quota_mib > 0).then(|| self.workspace_quota_mib * 1024 * 1024);
        config.git_timeout = Duration::from_secs(self.git_timeout_secs);
        config.runner_id = self.runner_id.clone().unwrap_or_else(default_runner_id);
        config.docker_host = self.docker_host.clone();
        config.forge_api_url = self.forge_api_url.clone();
        config.pr_labels = self.pr_labels.clone();
        if let Some(title) = &self.pr_title {
            config.pr_template.title = title.clone();
        }
        if let Some(path) = &self.pr_body_file {
            config.pr_template.body = std::fs::read_to_string(path).with_context(|| {
                format!("reading the pull request body template {}", path.display())
            })?;
        }
        config.status_base_url = self.status_url.clone();
        if let Some(prices) = &self.model_prices {
            let prices = serde_json::from_str(prices).context(
                "SPECRUN_MODEL_PRICES must be JSON: {\"MODEL\": {\"input\": USD, \"output\": USD}} per million tokens",
            )?;
            config.model_prices = config.model_prices.clone().overridden_by(prices);
        }
        if let Some(budget) = &self.model_budget {
            config.model_budget = serde_json::from_str(budget).context(
                "SPECRUN_MODEL_BUDGET must be JSON: {\"run\": {\"max_tokens\": N, \"max_usd\": X, \"max_requests\": N}, \"phase\": {...}}",
            )?;
        }
        config.stall_timeout = Duration::from_secs(self.stall_timeout_secs.max(1));
        config.branch_busy = self.branch_busy;
        config.notify = self.observe.notify_config()?;
        config.metrics = self.observe.metrics_config()?;
        Ok(config)
    }
}

fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}

fn default_runner_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The requests this process made of the store and of Docker, as JSON.
fn write_counts(path: &std::path::Path, store: &CountingStore) -> anyhow::Result<()> {
    let store = store.counts();
    let counts = serde_json::json!({
        "store": store,
        "store_writes": store.writes(),
        "store_reads": store.reads(),
        "docker": specrun_sandbox::docker::calls::counts(),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&counts)?)
        .with_context(|| format!("writing the request counts to {}", path.display()))
}

/// Exit codes: 0 succeeded or no_changes, 1 failed, 3 needs_clarification, 4 cancelled.
pub fn exit_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Succeeded | RunStatus::NoChanges => 0,
        RunStatus::NeedsClarification => 3,
        RunStatus::Cancelled => 4,
        _ => 1,
    }
}

/// Runs the command line and returns the process's exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    let state_dir = &cli.global.state_dir;
    match cli.command {
        Command::Run(args) => {
            let store = CountingStore::new(Arc::new(FsBlobStore::new(absolute(state_dir)?)));
            let counts_file = args.counts_file.clone();
            let code = run(*args, Arc::new(store.clone()), state_dir).await?;
            if let Some(path) = counts_file {
                write_counts(&path, &store)?;
            }
            Ok(code)
        }
        Command::Status {
            run_id,
            json,
            store,
        } if run_id.starts_with("b-") => {
            batch::status(&run_id, json, store.open(state_dir).await?.store.as_ref()).await
        }
        Command::Status {
            run_id,
            json,
            store,
        } => status(&run_id, json, &store.open(state_dir).await?).await,
        Command::Batch(args) => batch::batch(*args, state_dir).await,
        Command::Logs {
            run_id,
            phase,
            follow: true,
            stream,
            store,
        } => follow::follow(&run_id, phase, stream, &store.open(state_dir).await?).await,
        Command::Logs {
            run_id,
            phase,
            store,
            ..
        } => logs(&run_id, phase, &store.open(state_dir).await?).await,
        Command::Cancel { run_id, store } => cancel(&run_id, &store.open(state_dir).await?).await,
        Command::Answer {
            run_id,
            answers,
            json,
            store,
            queue_url,
            runner,
        } => {
            let state = store.open(state_dir).await?;
            let answers = retry::numbered_answers(&run_id, state.store.as_ref(), &answers).await?;
            match queue_url {
                Some(queue_url) => {
                    retry::answer_queued(&run_id, state.store, &queue_url, answers).await
                }
                None if store.bucket.is_some() => {
                    bail!("answering a run of the bucket needs the run queue too: give --queue-url (SPECRUN_QUEUE_URL)")
                }
                None => {
                    let pipeline = Pipeline::new(
                        runner.to_config()?,
                        state.store.clone(),
                        Arc::new(ConsoleProgress::new()),
                    );
                    retry::answer_here(&run_id, &pipeline, state_dir, json, answers).await
                }
            }
        }
        Command::Retry {
            run_id,
            json,
            store,
            queue_url,
            runner,
        } => {
            let state = store.open(state_dir).await?;
            match queue_url {
                Some(queue_url) => retry::queued(&run_id, state.store, &queue_url).await,
                None if store.bucket.is_some() => {
                    bail!("retrying a run of the bucket needs the run queue too: give --queue-url (SPECRUN_QUEUE_URL)")
                }
                None => {
                    let pipeline = Pipeline::new(
                        runner.to_config()?,
                        state.store.clone(),
                        Arc::new(ConsoleProgress::new()),
                    );
                    retry::here(&run_id, &pipeline, state_dir, json).await
                }
            }
        }
        Command::Sweep {
            stale_secs,
            store,
            runner,
        } => {
            let state = store.open(state_dir).await?;
            let pipeline = Pipeline::new(
                runner.to_config()?,
                state.store,
                Arc::new(crate::progress::TracingProgress),
            );
            sweep(&pipeline, Duration::from_secs(stale_secs)).await
        }
        Command::Serve(args) => service::serve_command(*args, state_dir).await,
        Command::Runner(args) => service::runner(*args, state_dir).await,
    }
}

async fn run(
    args: RunArgs,
    store: Arc<dyn BlobStore>,
    state_dir: &std::path::Path,
) -> anyhow::Result<i32> {
    let config = args.runner.to_config()?;
    let request = args.request.to_request(&args.repo)?;
    let policy = RepoPolicy {
        allowed_hosts: Vec::new(),
        trusted: true,
        callbacks: Default::default(),
    };
    let request = request
        .validate(&policy)
        .map_err(|e| anyhow::anyhow!("invalid request: {e}"))?;
    let progress = Arc::new(ConsoleProgress::new());
    let pipeline = Pipeline::new(config, store.clone(), progress);
    let run_id = specrun_store::runs::new_run_id();
    // Stored like the submit function's, so that `specrun retry` runs the same request.
    specrun_store::runs::pin_request(store.as_ref(), &run_id, &request.to_wire())
        .await
        .with_context(|| {
            format!(
                "writing the run's request to the state store at {}",
                state_dir.display()
            )
        })?;
    let record = pipeline
        .enqueue_record(&run_id, &request)
        .await
        .with_context(|| {
            format!(
                "writing the run to the state store at {}",
                state_dir.display()
            )
        })?;
    eprintln!(
        "specrun: run {run_id} for {} (agent {}, publish {})",
        record.repository,
        record.agent.name,
        request.publish.as_str()
    );
    execute_here(&pipeline, record, request, state_dir, args.json).await
}

/// Executes a queued run in this process (Ctrl-C cancels it), prints the summary (or
/// run.json with `json`), and returns the exit code.
async fn execute_here(
    pipeline: &Pipeline,
    record: RunRecord,
    request: specrun_core::ValidatedRequest,
    state_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<i32> {
    let run_id = specrun_store::runs::run_id(&record)?;
    let interrupts = cancel_on_interrupt(pipeline.store.clone(), run_id.clone());
    let record = match pipeline
        .execute(record, request)
        .await
        .context("recording the run's final state")?
    {
        Execution::Finished(record) => *record,
        Execution::Abandoned => anyhow::bail!(
            "run {run_id}: another process wrote the run while this one worked on it, so this one stopped; `specrun status {run_id}` shows what it recorded"
        ),
    };
    interrupts.abort();
    if json {
        print_summary(&mut std::io::stderr(), &record, state_dir);
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_summary(&mut std::io::stdout(), &record, state_dir);
    }
    Ok(exit_code(record.status))
}

/// Ctrl-C or SIGTERM during `specrun run` cancels the run the way `specrun cancel`
/// does: the pipeline stops within a second, removes the container, its network and
/// firewall rules and the workspace, and records `cancelled` with the interrupted
/// phase's logs. A second signal ends the process at once.
fn cancel_on_interrupt(store: Arc<dyn BlobStore>, run_id: RunId) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        let mut interrupted = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if interrupted {
                eprintln!("specrun: interrupted again; exiting without cleaning up (remove the job container by hand: docker rm -f specrun-{run_id})");
                std::process::exit(130);
            }
            interrupted = true;
            eprintln!("specrun: interrupted; cancelling run {run_id} and cleaning up (interrupt again to exit at once)");
            if let Err(e) = specrun_store::runs::cancel_run(
                store.as_ref(),
                &run_id,
                "an interrupt (Ctrl-C or SIGTERM)",
            )
            .await
            {
                eprintln!("specrun: could not record the cancellation: {e}");
            }
        }
    })
}

/// What a failed store operation tells the operator: a missing bucket is a setting to fix.
fn explain(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::NoSuchBucket(bucket) => anyhow::anyhow!(
            "bucket {bucket} does not exist: set --bucket / SPECRUN_BUCKET to the serverless deployment's state bucket (and AWS_REGION / AWS_ENDPOINT_URL to where it lives)"
        ),
        e => e.into(),
    }
}

async fn load(run_id: &str, state: &StateStore) -> anyhow::Result<RunRecord> {
    let id = RunId::parse(run_id)?;
    let bytes = match state.store.get(&keys::run_json(&id)).await {
        Err(StoreError::NotFound(_)) => bail!("no run {run_id} in {}", state.place),
        other => other.map_err(explain)?,
    };
    serde_json::from_slice(&bytes)
        .with_context(|| format!("run.json of {run_id} is not a valid run record"))
}

async fn status(run_id: &str, json: bool, state: &StateStore) -> anyhow::Result<i32> {
    let record = load(run_id, state).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_status(&mut std::io::stdout(), &record);
    }
    Ok(0)
}

/// The same as the submit API's `POST /runs/{id}/cancel`: both call `cancel_run`.
async fn sweep(pipeline: &Pipeline, stale_after: Duration) -> anyhow::Result<i32> {
    let swept = crate::worker::sweep::sweep(pipeline, stale_after)
        .await
        .context("sweeping the Docker engine (is it running? DOCKER_HOST)")?;
    for (run, why) in &swept.removed {
        println!("removed the leftovers of run {run}: {why}");
    }
    println!(
        "swept {} run(s); left {} run(s) that may still be live or that this store does not know",
        swept.removed.len(),
        swept.kept.len()
    );
    Ok(0)
}

async fn cancel(run_id: &str, state: &StateStore) -> anyhow::Result<i32> {
    let id = RunId::parse(run_id)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "an operator".to_owned());
    let by = format!("{user} (specrun cancel)");
    let cancelled = specrun_store::runs::cancel_run(state.store.as_ref(), &id, &by).await;
    match cancelled.map_err(explain)? {
        None => bail!("no run {run_id} in {}", state.place),
        Some(specrun_store::runs::Cancelled::BeforeStart) => {
            println!("run {run_id} cancelled before it started")
        }
        Some(specrun_store::runs::Cancelled::Requested) => {
            println!("run {run_id}: cancel requested; its runner stops it within seconds")
        }
        Some(specrun_store::runs::Cancelled::AlreadyFinished(status)) => {
            println!("run {run_id} had already finished: {status}");
            return Ok(1);
        }
    }
    Ok(0)
}

async fn logs(run_id: &str, phase: Option<Phase>, state: &StateStore) -> anyhow::Result<i32> {
    let record = load(run_id, state).await?;
    let logs: Vec<_> = record
        .artifacts
        .iter()
        .filter(|a| a.name.ends_with(".log") && (phase.is_none() || a.phase == phase))
        .collect();
    if logs.is_empty() {
        eprintln!(
            "no logs{} for run {run_id}",
            phase.map(|p| format!(" for phase {p}")).unwrap_or_default()
        );
        return Ok(1);
    }
    let mut out = std::io::stdout().lock();
    for artifact in logs {
        writeln!(out, "==> {} ({} bytes) <==", artifact.key, artifact.size)?;
        out.write_all(&state.store.get(&artifact.key).await.map_err(explain)?)?;
        writeln!(out)?;
    }
    Ok(0)
}
