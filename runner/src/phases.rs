//! What each phase does. Each function takes the run's context, does its one job, and
//! says whether the run goes on, stops with an outcome, or failed and why.

// A failure carries its artifacts and a full error report; it is the cold path, so its
// size does not matter.
#![allow(clippy::result_large_err)]

use crate::artifacts::{CommandLogs, WrittenLog};
use crate::changes;
use crate::docker::{DockerClient, ExecEnd, ExecSpec, JobSpec};
use crate::egress::{EgressError, RunEgress};
use crate::failure;
use crate::git;
use crate::pipeline::{Failure, RunContext, Step, StepResult};
use crate::workspace::{Workspace, AGENT_GID, AGENT_UID};
use specrun_core::agent::{AgentProfile, Network, OutputFormat};
use specrun_core::agents_file::AgentRegistry;
use specrun_core::clarify;
use specrun_core::claude_events::ClaudeSummary;
use specrun_core::codex_events::CodexSummary;
use specrun_core::commit_scope::{CommitScope, Unexpected};
use specrun_core::egress::EgressPolicy;
use specrun_core::event_summary::EventSummary;
use specrun_core::feature::FeatureDir;
use specrun_core::keys::RunId;
use specrun_core::quote::quote_path;
use specrun_core::redact::Redactor;
use specrun_core::state::{ArtifactRef, PhaseOutcome};
use specrun_core::{Phase, RunStatus};
use std::collections::BTreeMap;
use std::time::Duration;

const REPO_IN_CONTAINER: &str = "/workspace/repo";
const HOME_IN_CONTAINER: &str = "/workspace/home";
/// Spec Kit files larger than this are not read back.
const MAX_SPEC_FILE: u64 = 4 * 1024 * 1024;

/// Less free space than this after an agent phase means the agent hit the quota.
const QUOTA_FULL_BELOW: u64 = 1024 * 1024;

fn message(text: impl Into<String>) -> PhaseOutcome {
    PhaseOutcome {
        message: Some(text.into()),
        ..Default::default()
    }
}

fn store_failure(phase: Phase) -> impl Fn(specrun_core::ports::StoreError) -> Failure {
    move |e| failure::store(phase, &e).into()
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// Checks Docker and the image, makes the workspace, starts the container, records the
/// environment.
pub(crate) async fn prepare(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::Prepare;
    let (profile, option_env, secrets) = resolve_agent(ctx).await?;
    let mut all_secrets: Vec<String> = secrets.values().cloned().collect();
    all_secrets.extend(ctx.config.forge_token.iter().map(|t| t.expose().to_owned()));
    ctx.redactor = Redactor::new(&all_secrets);

    let image = profile
        .image
        .clone()
        .unwrap_or_else(|| ctx.config.image.clone());
    ctx.record.agent.image = image.clone();
    let docker =
        DockerClient::connect(ctx.config.docker_host.as_deref(), ctx.config.docker_timeout)
            .await
            .map_err(|e| failure::docker(phase, &e, &image))?;
    let image_info = docker
        .image(&image)
        .await
        .map_err(|e| failure::docker(phase, &e, &image))?;
    let engine = docker
        .engine_version()
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    ctx.docker = Some(docker.clone());

    let work_root = ctx.config.work_root.clone();
    let run_id = ctx.run_id.to_string();
    let quota = ctx.config.workspace_quota_bytes;
    let workspace =
        tokio::task::spawn_blocking(move || Workspace::create(&work_root, &run_id, quota))
            .await
            .map_err(|e| failure::error(phase, "workspace_error", e.to_string(), "Retry the run."))?
            .map_err(|e| failure::workspace(phase, &e))?;
    ctx.workspace = Some(workspace.clone());
    write_home_files(&workspace, &profile)
        .map_err(|e| failure::io(phase, "writing the agent's configuration files", &e))?;
    let network = agent_network(ctx, &docker, &profile).await?;

    let spec = JobSpec {
        name: format!("specrun-{}", ctx.run_id),
        image: image.clone(),
        run_id: ctx.run_id.to_string(),
        runner_id: ctx.config.runner_id.clone(),
        mounts: vec![
            (workspace.repo.clone(), REPO_IN_CONTAINER.to_owned(), false),
            (
                workspace.git.clone(),
                format!("{REPO_IN_CONTAINER}/.git"),
                true,
            ),
            (workspace.home.clone(), HOME_IN_CONTAINER.to_owned(), false),
        ],
        user: format!("{AGENT_UID}:{AGENT_GID}"),
        network,
        memory_bytes: ctx.config.limits.memory_bytes,
        pids_limit: ctx.config.limits.pids,
        nano_cpus: ctx.config.limits.nano_cpus,
    };
    let container = docker
        .start_job(&spec)
        .await
        .map_err(|e| failure::docker(phase, &e, &image))?;
    ctx.container = Some(container.clone());

    ctx.agent_env = agent_env(&profile, option_env, secrets);
    if let Some(egress) = &ctx.egress {
        let proxy = egress.proxy.url();
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            ctx.agent_env.insert(name.to_owned(), proxy.clone());
        }
        // Nothing bypasses the proxy; there is no other way out anyway.
        for name in ["NO_PROXY", "no_proxy"] {
            ctx.agent_env.insert(name.to_owned(), String::new());
        }
    }
    let (version, mut artifacts) = agent_version(ctx, &profile).await?;
    ctx.record.agent.version = version.clone();
    ctx.record.agent.integration = profile.integration.clone();
    ctx.record.agent.image_digest = image_info
        .digest
        .clone()
        .or_else(|| Some(image_info.id.clone()));

    let environment = serde_json::json!({
        "runner_id": ctx.config.runner_id,
        "docker_engine": engine,
        "image": image,
        "image_id": image_info.id,
        "image_digest": image_info.digest,
        "container": container,
        "agent": {
            "name": profile.name,
            "version": version,
            "integration": profile.integration,
            "network": format!("{:?}", profile.network).to_lowercase(),
            "egress": profile.egress,
            "secrets_passed": profile.secret_env,
        },
        "limits": {
            "memory_bytes": ctx.config.limits.memory_bytes,
            "pids": ctx.config.limits.pids,
            "nano_cpus": ctx.config.limits.nano_cpus,
            "phase_timeout_seconds": ctx.config.phase_timeout.as_secs(),
        },
    });
    let redacted = ctx.redactor.redact_bytes(&json_bytes(&environment));
    artifacts.push(
        ctx.artifacts
            .put_bytes(
                Some(phase),
                "environment.json",
                redacted,
                "application/json",
            )
            .await
            .map_err(store_failure(phase))?,
    );
    let request = serde_json::to_value(ctx.request.to_wire()).unwrap_or_default();
    let redacted = ctx.redactor.redact_bytes(&json_bytes(&request));
    artifacts.push(
        ctx.artifacts
            .put_bytes(None, "request.json", redacted, "application/json")
            .await
            .map_err(store_failure(phase))?,
    );
    ctx.profile = Some(profile);
    Ok(Step::Continue(PhaseOutcome {
        message: Some(format!(
            "container {} started from {image}",
            short(&container)
        )),
        artifacts,
        ..Default::default()
    }))
}

/// The run's agent: named by the request, or the agents file's default, or the
/// runner's; with the environment its options set and the secrets it is given.
async fn resolve_agent(
    ctx: &mut RunContext,
) -> Result<
    (
        AgentProfile,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
    ),
    Failure,
> {
    let phase = Phase::Prepare;
    let registry = load_agents(ctx).await?;
    let name = ctx
        .request
        .agent
        .clone()
        .or_else(|| registry.default_agent().map(str::to_owned))
        .unwrap_or_else(|| ctx.config.default_agent.clone());
    ctx.record.agent.name = name.clone();
    let profile = registry.get(&name).cloned().map_err(|e| {
        failure::error(
            phase,
            "unknown_agent",
            e.to_string(),
            "Name one of the known agents in `agent` (--agent), or add it to the agents file.",
        )
    })?;
    let option_env = profile
        .option_env(&ctx.request.agent_options)
        .map_err(|e| {
            failure::error(
                phase,
                "unknown_agent_option",
                e.to_string(),
                "Remove the option or choose an agent that has it.",
            )
        })?;
    let mut secrets = BTreeMap::new();
    for secret in &profile.secret_env {
        let value = match ctx.config.agent_secrets.get(secret) {
            Some(value) => Some(value.expose().to_owned()),
            None => std::env::var(secret).ok(),
        };
        match value.filter(|v| !v.is_empty()) {
            Some(value) => {
                secrets.insert(secret.clone(), value);
            }
            None => {
                return Err(failure::error(
                    phase,
                    "agent_secret_missing",
                    format!("agent {name} needs the secret {secret}, which the runner's environment does not set"),
                    format!("Export {secret} for the runner, or run with the offline agent (--agent scripted)."),
                )
                .into())
            }
        }
    }
    Ok((profile, option_env, secrets))
}

/// Reads the agents file afresh, so a change takes effect with the next run.
async fn load_agents(ctx: &RunContext) -> Result<AgentRegistry, Failure> {
    let phase = Phase::Prepare;
    let Some(source) = &ctx.config.agents_file else {
        return Ok(AgentRegistry::builtins());
    };
    let unreadable = |e: String| {
        failure::error(
            phase,
            "agents_file_unreadable",
            format!("the agents file {source} could not be read: {e}"),
            "Check SPECRUN_AGENTS_FILE and that the runner can read it.",
        )
    };
    let text = match source.strip_prefix("store:") {
        Some(key) => ctx
            .store
            .get(key)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| unreadable(e.to_string()))?,
        None => tokio::fs::read_to_string(source)
            .await
            .map_err(|e| unreadable(e.to_string()))?,
    };
    AgentRegistry::from_toml(&text).map_err(|e| {
        failure::error(
            phase,
            "agents_file_invalid",
            format!("the agents file {source} is invalid: {e}"),
            "Fix the agents file; the README's Agents section describes its format.",
        )
        .into()
    })
}

/// Writes the agent's own configuration files into its HOME.
fn write_home_files(workspace: &Workspace, profile: &AgentProfile) -> std::io::Result<()> {
    for (relative, content) in &profile.home_files {
        let path = workspace.home.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The network the job container joins; for `egress`, the run's own network behind the
/// proxy, set up here.
async fn agent_network(
    ctx: &mut RunContext,
    docker: &DockerClient,
    profile: &AgentProfile,
) -> Result<Network, Failure> {
    if profile.network != Network::Egress {
        return Ok(profile.network.clone());
    }
    let phase = Phase::Prepare;
    let policy = EgressPolicy::new(&profile.egress).map_err(|e| {
        failure::error(
            phase,
            "agent_misconfigured",
            e,
            "Fix the agent's egress list in the agents file.",
        )
    })?;
    let egress = RunEgress::set_up(docker, ctx.run_id.as_str(), &ctx.config.runner_id, policy)
        .await
        .map_err(|e| {
            failure::error(
                phase,
                "egress_setup_failed",
                e.to_string(),
                egress_remediation(&e),
            )
        })?;
    let network = Network::Named(egress.network.clone());
    ctx.egress = Some(egress);
    Ok(network)
}

fn egress_remediation(e: &EgressError) -> &'static str {
    match e {
        EgressError::Docker(_) => "Docker could not create the run's network. Each run of an egress agent in flight takes one network from Docker's default-address-pools: look for leftovers with `docker network ls --filter label=io.specrun.managed`, or widen the pools in daemon.json. Or give the agent network = \"bridge\" to opt out of egress control.",
        EgressError::Proxy { .. } => "The runner serves the egress proxy on the run network's gateway, so it must run on the Docker engine's host (not against a remote DOCKER_HOST). Or give the agent network = \"bridge\" to opt out of egress control.",
        EgressError::Firewall { .. } => "The runner sets host firewall rules with iptables: run it as root (or with CAP_NET_ADMIN) and install iptables. Or give the agent network = \"bridge\" to opt out of egress control.",
    }
}

fn agent_env(
    profile: &AgentProfile,
    options: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("HOME", HOME_IN_CONTAINER),
        // The git directory belongs to the runner; let tools inside read it.
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "safe.directory"),
        ("GIT_CONFIG_VALUE_0", "*"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(profile.env.clone());
    env.extend(options);
    env.extend(secrets);
    env
}

async fn agent_version(
    ctx: &mut RunContext,
    profile: &AgentProfile,
) -> Result<(Option<String>, Vec<ArtifactRef>), Failure> {
    let run = run_command(
        ctx,
        Phase::Prepare,
        "agent-version",
        profile.version_command.clone(),
        BTreeMap::new(),
        Duration::from_secs(60),
    )
    .await?;
    let version = match run.end {
        ExecEnd::Exited(0) => std::fs::read_to_string(&run.stdout.path)
            .ok()
            .and_then(|out| out.lines().next().map(|l| l.trim().to_owned())),
        _ => None,
    };
    Ok((version, run.artifacts))
}

/// One command's result: how it ended, its logs and their artifacts.
struct CommandRun {
    end: ExecEnd,
    stdout: WrittenLog,
    stderr: WrittenLog,
    artifacts: Vec<ArtifactRef>,
}

impl CommandRun {
    fn excerpt(&self) -> String {
        let pick = if self.stderr.tail.trim().is_empty() {
            &self.stdout.tail
        } else {
            &self.stderr.tail
        };
        let lines: Vec<&str> = pick.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Runs a command in the job container, its output streamed into redacted logs that are
/// stored as the phase's artifacts.
async fn run_command(
    ctx: &mut RunContext,
    phase: Phase,
    stem: &str,
    argv: Vec<String>,
    extra_env: BTreeMap<String, String>,
    limit: Duration,
) -> Result<CommandRun, Failure> {
    let (Some(docker), Some(container), Some(workspace)) =
        (&ctx.docker, &ctx.container, &ctx.workspace)
    else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no job container",
            "Report this as a bug.",
        )
        .into());
    };
    let mut env = ctx.agent_env.clone();
    env.extend(extra_env);
    let spec = ExecSpec {
        argv,
        env,
        workdir: REPO_IN_CONTAINER.to_owned(),
        user: format!("{AGENT_UID}:{AGENT_GID}"),
    };
    let mut logs = CommandLogs::create_capped(
        &workspace.logs,
        &format!("{phase}-{stem}"),
        &ctx.redactor,
        ctx.config.log_cap_bytes,
    )
    .await
    .map_err(|e| failure::io(phase, "creating the phase logs", &e))?;
    let image = ctx.config.image.clone();
    if ctx.frozen {
        docker
            .thaw(container)
            .await
            .map_err(|e| failure::docker(phase, &e, &image))?;
        ctx.frozen = false;
    }
    let ended = docker.exec(container, &spec, &mut logs, limit).await;
    // Whatever the command left running (a background process waiting for the runner
    // to read or commit) stays frozen until the next command, and is killed before the
    // commit (`stop_agent`).
    let frozen = docker.freeze(container).await;
    ctx.frozen = frozen.is_ok();
    let (stdout, stderr) = logs
        .finish()
        .await
        .map_err(|e| failure::io(phase, "writing the phase logs", &e))?;
    let mut artifacts = Vec::new();
    for (name, log) in [
        (format!("{stem}.stdout.log"), &stdout),
        (format!("{stem}.stderr.log"), &stderr),
    ] {
        artifacts.push(
            ctx.artifacts
                .put_log(Some(phase), &name, log)
                .await
                .map_err(store_failure(phase))?,
        );
    }
    let ended = ended.and_then(|end| frozen.map(|()| end));
    match ended {
        Ok(end) => Ok(CommandRun {
            end,
            stdout,
            stderr,
            artifacts,
        }),
        Err(e) => Err(Failure {
            error: failure::docker(phase, &e, &image),
            artifacts,
        }),
    }
}

/// For agents with a structured event stream, stores a summary of what the agent did
/// as the phase's `agent-summary.json` and returns its one-line headline.
async fn summarise(
    ctx: &RunContext,
    phase: Phase,
    profile: &AgentProfile,
    run: &mut CommandRun,
) -> Option<String> {
    if profile.output == OutputFormat::Text {
        return None;
    }
    // The log is the agent's output, up to the log cap: read a line at a time.
    let (log, output) = (run.stdout.path.clone(), profile.output);
    let summary = tokio::task::spawn_blocking(move || match output {
        OutputFormat::Text => None,
        OutputFormat::CodexJson => summary_of::<CodexSummary>(&log).ok(),
        OutputFormat::ClaudeStreamJson => summary_of::<ClaudeSummary>(&log).ok(),
    });
    let (json, headline) = summary.await.ok()??;
    let bytes = ctx.redactor.redact_bytes(&json_bytes(&json));
    match ctx
        .artifacts
        .put_bytes(Some(phase), "agent-summary.json", bytes, "application/json")
        .await
    {
        Ok(artifact) => run.artifacts.push(artifact),
        Err(e) => tracing::warn!(error = %e, "could not store the agent summary"),
    }
    Some(headline)
}

/// The summary of an event log file as JSON, and its headline; lines longer than
/// `MAX_LINE_BYTES` are passed over and counted. Blocking.
fn summary_of<S: EventSummary>(
    log: &std::path::Path,
) -> std::io::Result<(serde_json::Value, String)> {
    use crate::artifacts::{for_each_line, MAX_LINE_BYTES};
    let mut summary = S::default();
    let reader = std::io::BufReader::new(std::fs::File::open(log)?);
    let passed_over = for_each_line(reader, MAX_LINE_BYTES, |line| summary.add_line(line))?;
    let mut json = serde_json::to_value(&summary).unwrap_or_default();
    let mut headline = summary.headline();
    if passed_over > 0 {
        if let Some(fields) = json.as_object_mut() {
            fields.insert("long_lines_passed_over".to_owned(), passed_over.into());
        }
        headline.push_str(&format!(
            " ({passed_over} line(s) over {MAX_LINE_BYTES} bytes passed over)"
        ));
    }
    Ok((json, headline))
}

/// Turns an agent command's end into a failure unless it exited 0.
fn require_success(
    ctx: &RunContext,
    phase: Phase,
    run: CommandRun,
    code: &str,
) -> Result<Vec<ArtifactRef>, Failure> {
    let agent = ctx.record.agent.name.clone();
    match run.end {
        ExecEnd::Exited(0) => Ok(run.artifacts),
        ExecEnd::Exited(exit) => {
            let mut error = failure::agent_exit(phase, &agent, exit, run.excerpt());
            error.code = code.to_owned();
            Err(Failure { error, artifacts: run.artifacts })
        }
        ExecEnd::TimedOut => Err(Failure {
            error: specrun_core::state::RunError {
                log_excerpt: Some(run.excerpt()),
                ..failure::error(
                    phase,
                    "phase_timeout",
                    format!("the {phase} phase did not finish within {:?}", ctx.config.phase_timeout),
                    "Raise the phase time limit (SPECRUN_PHASE_TIMEOUT_SECS) or make the specification smaller.",
                )
            },
            artifacts: run.artifacts,
        }),
    }
}

/// Clones the base branch into the workspace with the runner's credentials, then hands
/// the worktree to the agent's user.
pub(crate) async fn clone(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::Clone;
    let Some(workspace) = ctx.workspace.clone() else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no workspace",
            "Report this as a bug.",
        )
        .into());
    };
    let url = ctx.clone_url.clone();
    let base = ctx.request.base_branch.as_ref().map(ToString::to_string);
    let token = ctx
        .config
        .forge_token
        .as_ref()
        .map(|t| t.expose().to_owned());
    let ws = workspace.clone();
    let bounds = git::Bounds {
        max_fetch_bytes: ctx.config.workspace_quota_bytes,
        ..git::Bounds::within(ctx.config.git_timeout)
    };
    let cloning = tokio::task::spawn_blocking(move || {
        let cloned = git::clone(
            &url,
            base.as_deref(),
            &ws.git,
            &ws.repo,
            token.as_deref(),
            bounds,
        )?;
        Ok::<_, git::GitError>((cloned, list_specs(&ws)))
    });
    let cloned = bounded_git(phase, ctx.config.git_timeout, cloning).await?;
    let repository = ctx.record.repository.clone();
    let (cloned, specs_before) = match cloned {
        Ok(done) => done,
        Err(e) => {
            let mut error = failure::git(phase, &e, &repository);
            error.message = ctx.redactor.redact_str(&error.message);
            return Err(error.into());
        }
    };
    ctx.specs_before = specs_before;
    ctx.default_branch = cloned.default_branch.clone();
    ctx.record.base_branch = Some(cloned.base_branch.clone());
    let ws = workspace.clone();
    tokio::task::spawn_blocking(move || ws.hand_to_agent())
        .await
        .map_err(|e| failure::error(phase, "internal_error", e.to_string(), "Retry the run."))?
        .map_err(|e| {
            failure::error(
                phase,
                "workspace_error",
                format!("handing the workspace to the agent user: {e}"),
                "The runner needs root to give the worktree to the agent's user; run it as root.",
            )
        })?;
    Ok(Step::Continue(message(format!(
        "cloned {} at {} ({})",
        ctx.record.repository,
        cloned.base_branch,
        short(&cloned.base_commit)
    ))))
}

/// Names of the directories under `specs/` (a symlinked `specs` has none).
fn list_specs(workspace: &Workspace) -> Vec<String> {
    let mut names = crate::safe_fs::subdirectories(&workspace.repo, "specs").unwrap_or_default();
    names.sort();
    names
}

/// Initialises Spec Kit when the repository lacks it, runs the agent's specify command,
/// then finds the feature directory and any open questions.
pub(crate) async fn specify(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::Specify;
    let Some(profile) = ctx.profile.clone() else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no agent profile",
            "Report this as a bug.",
        )
        .into());
    };
    let mut artifacts = Vec::new();
    let mut notes = Vec::new();
    if !is_real_dir(ctx, ".specify") {
        let argv = [
            "specify",
            "init",
            "--here",
            "--force",
            "--integration",
            &profile.integration,
            "--script",
            "sh",
            "--non-interactive",
            "--ignore-agent-tools",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let run = run_command(
            ctx,
            phase,
            "speckit-init",
            argv,
            BTreeMap::new(),
            ctx.config.phase_timeout,
        )
        .await?;
        artifacts.extend(require_success(ctx, phase, run, "speckit_init_failed")?);
        ctx.init_files = files_created_by_init(ctx).await.map_err(|error| Failure {
            error,
            artifacts: artifacts.clone(),
        })?;
        notes.push(format!(
            "initialised Spec Kit ({} integration, {} file(s))",
            profile.integration,
            ctx.init_files.len()
        ));
    }
    let (agent_artifacts, headline) = run_agent(ctx, phase, &profile, BTreeMap::new())
        .await
        .map_err(|mut f| {
            f.artifacts.splice(0..0, artifacts.clone());
            f
        })?;
    artifacts.extend(agent_artifacts);
    notes.extend(headline);

    let feature = match find_feature(ctx) {
        Ok(Some(feature)) => feature,
        Ok(None) => {
            return Ok(Step::Stop {
                outcome: PhaseOutcome { artifacts, message: Some("the agent wrote no specification".to_owned()), ..Default::default() },
                status: RunStatus::NoChanges,
                reason: "the specify phase wrote no specification (no .specify/feature.json and no new directory under specs/), so there is nothing to publish".to_owned(),
            })
        }
        Err(error) => return Err(Failure { error, artifacts }),
    };
    let spec_path = feature.file("spec.md");
    let Some(spec) = read_output(ctx, phase, &spec_path, &mut artifacts)? else {
        return Err(output_missing(phase, &spec_path, artifacts));
    };
    let branch = match &ctx.request.branch_name {
        Some(branch) => branch.clone(),
        None => feature.branch_name().map_err(|e| Failure {
            error: failure::error(
                phase,
                "invalid_branch_name",
                e.to_string(),
                "Give a branch_name (--branch-name) in the request.",
            ),
            artifacts: artifacts.clone(),
        })?,
    };
    if let Some(protected) = [
        ctx.record.base_branch.as_deref(),
        ctx.default_branch.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find(|b| *b == branch.as_str())
    {
        return Err(Failure {
            error: failure::error(
                phase,
                "invalid_branch_name",
                format!("the run would publish to {protected:?}, the repository's base or default branch; a run only ever pushes a feature branch of its own"),
                "Give a branch_name (--branch-name) other than the base and default branch.",
            ),
            artifacts,
        });
    }
    ctx.record.branch_name = Some(branch.to_string());
    ctx.branch = Some(branch);
    ctx.feature = Some(feature.clone());
    if let Some(stop) = clarification_stop(ctx, phase, &spec_path, &spec, &mut artifacts).await? {
        return Ok(stop);
    }
    notes.push(format!("wrote {spec_path}"));
    Ok(Step::Continue(PhaseOutcome {
        artifacts,
        message: Some(notes.join("; ")),
        ..Default::default()
    }))
}

/// True when `relative` is a directory reached without any symlink on the way.
fn is_real_dir(ctx: &RunContext, relative: &str) -> bool {
    ctx.workspace
        .as_ref()
        .is_some_and(|ws| crate::safe_fs::is_dir(&ws.repo, relative))
}

/// The files `specify init` wrote (the integration's commands and skills, `.specify/`),
/// read while the container is frozen: they may be committed with the feature.
async fn files_created_by_init(
    ctx: &RunContext,
) -> Result<Vec<String>, specrun_core::state::RunError> {
    let phase = Phase::Specify;
    let Some(workspace) = ctx.workspace.clone() else {
        return Ok(Vec::new());
    };
    let repository = ctx.record.repository.clone();
    tokio::task::spawn_blocking(move || {
        let repo = git::open(&workspace.git, &workspace.repo)
            .map_err(|e| failure::git(phase, &e, &repository))?;
        changes::created_files(&repo, &workspace.repo)
            .map_err(|e| failure::changes(phase, &e, &repository))
    })
    .await
    .map_err(|e| failure::error(phase, "internal_error", e.to_string(), "Retry the run."))?
}

/// The feature directory from `.specify/feature.json`, or else the one new directory
/// under `specs/`.
fn find_feature(ctx: &RunContext) -> Result<Option<FeatureDir>, specrun_core::state::RunError> {
    let phase = Phase::Specify;
    let Some(workspace) = &ctx.workspace else {
        return Ok(None);
    };
    let invalid = |reason: String| {
        failure::error(
            phase,
            "invalid_feature_directory",
            reason,
            "Read the specify phase's logs; the agent wrote an unusable .specify/feature.json.",
        )
    };
    let made_in_this_run = |feature: FeatureDir| {
        feature
            .require_spec_kit_layout()
            .map_err(|e| invalid(e.to_string()))?;
        if ctx.specs_before.iter().any(|d| d == feature.name()) {
            return Err(invalid(format!(
                "{} existed before this run; the specify phase must create its own feature directory",
                feature.as_str()
            )));
        }
        if !is_real_dir(ctx, feature.as_str()) {
            return Err(invalid(format!(
                "{} is not a directory the agent created",
                feature.as_str()
            )));
        }
        Ok(Some(feature))
    };
    match workspace.read_repo_file(".specify/feature.json", 64 * 1024) {
        Ok(Some(bytes)) => {
            return FeatureDir::from_feature_json(&bytes)
                .map_err(|e| invalid(e.to_string()))
                .and_then(made_in_this_run)
        }
        Ok(None) => {}
        Err(e) => return Err(invalid(e.to_string())),
    }
    let new: Vec<String> = list_specs(workspace)
        .into_iter()
        .filter(|d| !ctx.specs_before.contains(d))
        .collect();
    match new.as_slice() {
        [] => Ok(None),
        [one] => FeatureDir::parse(&format!("specs/{one}"))
            .map_err(|e| invalid(e.to_string()))
            .and_then(made_in_this_run),
        many => Err(invalid(format!(
            "the agent created several feature directories ({}) and no .specify/feature.json",
            many.join(", ")
        ))),
    }
}

/// Reads a file the agent wrote, as text, refusing symlinks.
fn read_output(
    ctx: &RunContext,
    phase: Phase,
    relative: &str,
    artifacts: &mut Vec<ArtifactRef>,
) -> Result<Option<String>, Failure> {
    let Some(workspace) = &ctx.workspace else {
        return Ok(None);
    };
    match workspace.read_repo_file(relative, MAX_SPEC_FILE) {
        Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(Failure {
            error: failure::error(
                phase,
                "unsafe_output",
                format!("{relative} could not be read safely: {e}"),
                "The agent wrote a symbolic link or an oversized file; check the phase's logs.",
            ),
            artifacts: std::mem::take(artifacts),
        }),
    }
}

/// When `text` holds `[NEEDS CLARIFICATION]` markers, stores the questions and stops.
async fn clarification_stop(
    ctx: &RunContext,
    phase: Phase,
    file: &str,
    text: &str,
    artifacts: &mut Vec<ArtifactRef>,
) -> Result<Option<Step>, Failure> {
    let questions = clarify::find_questions(text);
    if questions.is_empty() {
        return Ok(None);
    }
    let markdown = ctx
        .redactor
        .redact_bytes(clarify::questions_markdown(file, &questions).as_bytes());
    artifacts.push(
        ctx.artifacts
            .put_bytes(
                None,
                "clarifications.md",
                markdown,
                "text/markdown; charset=utf-8",
            )
            .await
            .map_err(store_failure(phase))?,
    );
    let json = ctx.redactor.redact_bytes(&json_bytes(
        &serde_json::json!({ "file": file, "questions": questions }),
    ));
    artifacts.push(
        ctx.artifacts
            .put_bytes(None, "clarifications.json", json, "application/json")
            .await
            .map_err(store_failure(phase))?,
    );
    let reason = format!("{file} has {} open question(s) marked [NEEDS CLARIFICATION]; answer them in the specification text and submit again (see artifacts/clarifications.md)", questions.len());
    Ok(Some(Step::Stop {
        outcome: PhaseOutcome {
            artifacts: std::mem::take(artifacts),
            message: Some(format!("{} open question(s) in {file}", questions.len())),
            ..Default::default()
        },
        status: RunStatus::NeedsClarification,
        reason,
    }))
}

/// Runs the agent's plan or tasks command for the feature and checks its output file.
pub(crate) async fn plan_or_tasks(ctx: &mut RunContext, phase: Phase) -> StepResult {
    let (Some(profile), Some(feature)) = (ctx.profile.clone(), ctx.feature.clone()) else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no agent or feature",
            "Report this as a bug.",
        )
        .into());
    };
    let env = BTreeMap::from([(
        "SPECIFY_FEATURE_DIRECTORY".to_owned(),
        feature.as_str().to_owned(),
    )]);
    let (mut artifacts, headline) = run_agent(ctx, phase, &profile, env).await?;
    let file = feature.file(&format!("{phase}.md"));
    let Some(text) = read_output(ctx, phase, &file, &mut artifacts)? else {
        return Err(output_missing(phase, &file, artifacts));
    };
    if let Some(stop) = clarification_stop(ctx, phase, &file, &text, &mut artifacts).await? {
        return Ok(stop);
    }
    Ok(Step::Continue(PhaseOutcome {
        artifacts,
        message: Some(match headline {
            Some(headline) => format!("wrote {file}; {headline}"),
            None => format!("wrote {file}"),
        }),
        ..Default::default()
    }))
}

/// Runs the agent's command for `phase`; returns its artifacts and a one-line summary of
/// what it did, or the failure with its logs when it did not succeed.
async fn run_agent(
    ctx: &mut RunContext,
    phase: Phase,
    profile: &AgentProfile,
    env: BTreeMap<String, String>,
) -> Result<(Vec<ArtifactRef>, Option<String>), Failure> {
    let argv = profile
        .phase_argv(phase, &ctx.request.specify_text)
        .map_err(|e| {
            failure::error(
                phase,
                "agent_misconfigured",
                e.to_string(),
                "Fix the agent profile.",
            )
        })?;
    let mut run = run_command(ctx, phase, "agent", argv, env, ctx.config.phase_timeout).await?;
    let headline = summarise(ctx, phase, profile, &mut run).await;
    if let Some(left) = ctx.workspace.as_ref().and_then(Workspace::space_left) {
        if left < QUOTA_FULL_BELOW {
            return Err(Failure {
                error: failure::error(
                    phase,
                    "disk_quota_exceeded",
                    format!("the agent filled the run's workspace ({left} bytes left of its quota) in the {phase} phase"),
                    "Check the phase's logs for what filled it; raise SPECRUN_WORKSPACE_QUOTA_MIB if the repository really needs more room.",
                ),
                artifacts: run.artifacts,
            });
        }
    }
    let artifacts = require_success(ctx, phase, run, "agent_phase_failed")?;
    Ok((artifacts, headline))
}

/// The agent succeeded but did not write the phase's file.
fn output_missing(phase: Phase, file: &str, artifacts: Vec<ArtifactRef>) -> Failure {
    Failure {
        error: failure::error(
            phase,
            "phase_output_missing",
            format!("the {phase} phase did not write {file}"),
            format!("Read the {phase} phase's logs for the agent's reason."),
        ),
        artifacts,
    }
}

/// Stops the agent for good, then commits what it changed inside the run's commit
/// paths on the feature branch, or stops with no_changes.
pub(crate) async fn commit(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::Commit;
    let (Some(workspace), Some(branch), Some(feature), Some(profile)) = (
        ctx.workspace.clone(),
        ctx.branch.clone(),
        ctx.feature.clone(),
        ctx.profile.clone(),
    ) else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no workspace, branch or feature",
            "Report this as a bug.",
        )
        .into());
    };
    stop_agent(ctx, phase).await?;
    let scope = CommitScope::new(
        profile.commit_paths.iter().map(String::as_str),
        feature.as_str(),
        ctx.init_files.clone(),
    );
    let limits = ctx.config.commit_limits;
    let message = commit_message(ctx);
    let (name, email) = (
        ctx.config.commit_name.clone(),
        ctx.config.commit_email.clone(),
    );
    let repository = ctx.record.repository.clone();
    let fail_on_unexpected = profile.unexpected_changes == Unexpected::Fail;
    let work = tokio::task::spawn_blocking(move || {
        workspace
            .take_back()
            .map_err(|e| failure::changes(phase, &e.into(), &repository))?;
        let repo = git::open(&workspace.git, &workspace.repo)
            .map_err(|e| failure::git(phase, &e, &repository))?;
        let changes = changes::collect(&repo, &workspace.repo, &scope, limits)
            .map_err(|e| failure::changes(phase, &e, &repository))?;
        if changes.staged.is_empty() || (fail_on_unexpected && changes.left_out().next().is_some())
        {
            return Ok((changes, None));
        }
        let author = git2::Signature::now(&name, &email).map_err(|e| {
            failure::error(
                phase,
                "commit_failed",
                e.to_string(),
                "Check SPECRUN_COMMIT_NAME and SPECRUN_COMMIT_EMAIL.",
            )
        })?;
        let sha = git::commit_staged(&repo, branch.as_str(), &message, &author, &changes.staged)
            .map_err(|e| failure::git(phase, &e, &repository))?;
        let summary =
            git::diff_summary(&repo, &sha).map_err(|e| failure::git(phase, &e, &repository))?;
        Ok::<_, specrun_core::state::RunError>((changes, Some((sha, summary))))
    });
    let (changes, committed) = bounded_git(phase, ctx.config.git_timeout, work).await??;
    let mut artifacts =
        vec![store_commit_json(ctx, &changes, committed.as_ref().map(|c| c.0.as_str())).await?];
    let left_out = changes.left_out().count();
    if fail_on_unexpected && left_out > 0 {
        return Err(Failure {
            error: failure::error(
                phase,
                "unexpected_changes",
                format!(
                    "the agent changed {left_out} path(s) outside the commit paths, e.g. {}; nothing was committed",
                    changes.left_out().take(5).map(|c| quote_path(&c.path)).collect::<Vec<_>>().join(", ")
                ),
                "Read the commit phase's commit.json for every path and reason; add the paths the agent may write to the profile's commit_paths, or set unexpected_changes = \"leave_out\".",
            ),
            artifacts,
        });
    }
    let noted = match left_out {
        0 => String::new(),
        n => format!("; left out {n} change(s) outside the commit paths (see commit.json)"),
    };
    let Some((sha, summary)) = committed else {
        return Ok(Step::Stop {
            outcome: PhaseOutcome { artifacts, message: Some(format!("no repository changes{noted}")), ..Default::default() },
            status: RunStatus::NoChanges,
            reason: format!("the phases produced no repository changes to commit{noted}; no branch was pushed and no pull request was opened"),
        });
    };
    let summary = ctx.redactor.redact_bytes(summary.as_bytes());
    artifacts.push(
        ctx.artifacts
            .put_bytes(
                Some(phase),
                "diff-summary.txt",
                summary,
                "text/plain; charset=utf-8",
            )
            .await
            .map_err(store_failure(phase))?,
    );
    ctx.record.commit_sha = Some(sha.clone());
    Ok(Step::Continue(PhaseOutcome {
        artifacts,
        message: Some(format!(
            "committed {} file(s) as {} on {}{noted}",
            changes.committed().count(),
            short(&sha),
            ctx.record.branch_name.clone().unwrap_or_default()
        )),
        ..Default::default()
    }))
}

/// Kills every process in the job container and waits until none is left: from here
/// on nothing of the agent's can change the worktree the runner reads.
async fn stop_agent(ctx: &mut RunContext, phase: Phase) -> Result<(), Failure> {
    let (Some(docker), Some(container)) = (&ctx.docker, &ctx.container) else {
        return Ok(());
    };
    docker
        .stop_all(container)
        .await
        .map_err(|e| failure::docker(phase, &e, &ctx.config.image))?;
    ctx.frozen = false;
    Ok(())
}

/// Waits for blocking git work, failing the phase past the git time limit.
async fn bounded_git<T: Send + 'static>(
    phase: Phase,
    limit: Duration,
    work: tokio::task::JoinHandle<T>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(failure::error(phase, "internal_error", e.to_string(), "Retry the run.").into()),
        Err(_) => Err(failure::error(
            phase,
            "git_timeout",
            format!("the {phase} phase did not finish within {limit:?}"),
            "The remote is slow or unreachable, or the repository is very large: check it, or raise SPECRUN_GIT_TIMEOUT_SECS.",
        )
        .into()),
    }
}

/// commit.json: the commit, and every changed path with what became of it.
async fn store_commit_json(
    ctx: &RunContext,
    changes: &changes::Changes,
    sha: Option<&str>,
) -> Result<ArtifactRef, Failure> {
    let phase = Phase::Commit;
    let status = serde_json::json!({
        "commit": sha,
        "branch": ctx.branch.as_ref().map(ToString::to_string),
        "base_branch": ctx.record.base_branch,
        "files": changes.committed().map(|c| serde_json::json!({"path": c.path, "change": c.kind})).collect::<Vec<_>>(),
        "left_out": changes.left_out().map(|c| serde_json::json!({
            "path": c.path,
            "change": c.kind,
            "reason": c.left_out.map(|r| r.as_str()),
        })).collect::<Vec<_>>(),
        "pushed": false,
    });
    let status = ctx.redactor.redact_bytes(&json_bytes(&status));
    ctx.artifacts
        .put_bytes(Some(phase), "commit.json", status, "application/json")
        .await
        .map_err(store_failure(phase))
}

fn commit_message(ctx: &RunContext) -> String {
    let feature = ctx
        .feature
        .as_ref()
        .map(|f| f.as_str().to_owned())
        .unwrap_or_default();
    format!(
        "docs(spec): add Spec Kit specification, plan and tasks for {feature}\n\n\
         Generated by specrun with the {agent} agent: Spec Kit specify, plan and tasks.\n\n\
         {trailer}: {run}\n",
        trailer = specrun_core::trailer::RUN_TRAILER,
        agent = ctx.record.agent.name,
        run = ctx.run_id,
    )
}

/// Pushes the feature branch to the run's own remote URL. An existing branch is
/// replaced only when its tip's trailer names a run this store knows for the same
/// repository and branch, and only if it has not moved since it was looked at.
pub(crate) async fn push(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::Push;
    let (Some(workspace), Some(branch)) = (ctx.workspace.clone(), ctx.branch.clone()) else {
        return Err(failure::error(
            phase,
            "internal_error",
            "no workspace or branch",
            "Report this as a bug.",
        )
        .into());
    };
    let url = ctx.clone_url.clone();
    let token = ctx
        .config
        .forge_token
        .as_ref()
        .map(|t| t.expose().to_owned());
    let repository = ctx.record.repository.clone();
    let branch_name = branch.to_string();
    let limit = ctx.config.git_timeout;
    let git_failure = |ctx: &RunContext, e: git::GitError| {
        let mut error = failure::git(phase, &e, &repository);
        error.message = ctx.redactor.redact_str(&error.message);
        Failure::from(error)
    };
    let (ws, u, b, t) = (
        workspace.clone(),
        url.clone(),
        branch_name.clone(),
        token.clone(),
    );
    let looked = tokio::task::spawn_blocking(move || {
        let repo = git::open(&ws.git, &ws.repo)?;
        git::remote_branch(&repo, &u, &b, t.as_deref(), git::Bounds::within(limit))
    });
    let remote = bounded_git(phase, limit, looked)
        .await?
        .map_err(|e| git_failure(ctx, e))?;
    let expected = match remote {
        git::RemoteBranch::Missing => None,
        git::RemoteBranch::Tip {
            commit,
            run: Some(run),
        } if run == ctx.run_id.as_str() => {
            let text = format!(
                "an earlier attempt of this run already pushed {branch} at {}; not pushing again",
                short(&commit.to_string())
            );
            ctx.record.commit_sha = Some(commit.to_string());
            return Ok(Step::Continue(message(text)));
        }
        git::RemoteBranch::Tip { commit, run } => {
            if let Err(reason) = owned_by_specrun(ctx, run.as_deref(), &branch_name).await {
                return Err(git_failure(ctx, git::GitError::PushRejected {
                    branch: branch_name,
                    reason: format!("the branch already exists on the remote at {}; {reason}; specrun only replaces branches its own runs created", short(&commit.to_string())),
                }));
            }
            Some(commit)
        }
    };
    let pushing = tokio::task::spawn_blocking(move || {
        let repo = git::open(&workspace.git, &workspace.repo)?;
        git::push(&repo, &url, &branch_name, expected, token.as_deref())
    });
    bounded_git(phase, limit, pushing)
        .await?
        .map_err(|e| git_failure(ctx, e))?;
    let how = match expected {
        Some(previous) => format!(
            " (replaced specrun's earlier commit {})",
            short(&previous.to_string())
        ),
        None => String::new(),
    };
    Ok(Step::Continue(message(format!(
        "pushed {branch} to {}{how}",
        ctx.record.repository
    ))))
}

/// Whether a remote tip naming `run` is specrun's to replace: that run must be one this
/// store knows, for the same repository and branch.
async fn owned_by_specrun(ctx: &RunContext, run: Option<&str>, branch: &str) -> Result<(), String> {
    let Some(run) = run else {
        return Err(
            "its tip is a commit specrun did not make (no Specrun-Run-Id trailer)".to_owned(),
        );
    };
    let id =
        RunId::parse(run).map_err(|_| format!("its tip names {run:?}, which is not a run id"))?;
    let record = specrun_store::runs::load_run(ctx.store.as_ref(), &id)
        .await
        .map_err(|e| format!("the run its tip names ({run}) could not be read: {e}"))?
        .ok_or_else(|| format!("its tip names run {run}, which this specrun does not know"))?;
    if record.repository == ctx.record.repository && record.branch_name.as_deref() == Some(branch) {
        Ok(())
    } else {
        Err(format!(
            "its tip names run {run}, which published {:?} on {}, not this branch",
            record.branch_name.unwrap_or_default(),
            record.repository
        ))
    }
}

/// Opens the run's pull request, or updates the open one for the same branch.
pub(crate) async fn pull_request(ctx: &mut RunContext) -> StepResult {
    let phase = Phase::PullRequest;
    let Some((owner, repo)) = ctx
        .request
        .repository
        .forge_slug()
        .map(|(o, r)| (o.to_owned(), r.to_owned()))
    else {
        return Ok(Step::Skip(format!(
            "{} is not an owner/name repository on the configured forge, so no pull request can be opened; the branch was pushed",
            ctx.record.repository
        )));
    };
    let Some(token) = ctx.config.forge_token.clone() else {
        return Err(failure::error(
            phase,
            "forge_token_missing",
            "opening a pull request needs the forge token, and none is configured",
            "Set SPECRUN_GIT_TOKEN to a token that may open pull requests, or submit with publish: branch.",
        )
        .into());
    };
    let spec = pull_request_spec(ctx, owner, repo);
    let forge = crate::forge::Forge::new(&ctx.config.forge_api(), token.expose())
        .map_err(|e| failure::forge(phase, &e, &ctx.record.repository))?;
    let (pr, created) = forge.open_or_update(&spec).await.map_err(|e| {
        let mut error = failure::forge(phase, &e, &ctx.record.repository);
        error.message = ctx.redactor.redact_str(&error.message);
        error
    })?;
    ctx.record.pull_request_url = Some(pr.url.clone());
    let verb = if created { "opened" } else { "updated" };
    Ok(Step::Continue(message(format!(
        "{verb} pull request #{} {}",
        pr.number, pr.url
    ))))
}

fn pull_request_spec(
    ctx: &RunContext,
    owner: String,
    repo: String,
) -> crate::forge::PullRequestSpec {
    let status_url = ctx
        .config
        .status_base_url
        .as_ref()
        .map(|base| format!("{}/runs/{}", base.trim_end_matches('/'), ctx.run_id))
        .unwrap_or_else(|| format!("`specrun status {}`", ctx.run_id));
    let logs_url = ctx
        .config
        .status_base_url
        .as_ref()
        .map(|base| {
            format!(
                "{}/runs/{}/artifacts/",
                base.trim_end_matches('/'),
                ctx.run_id
            )
        })
        .unwrap_or_else(|| format!("`specrun logs {}`", ctx.run_id));
    let vars: BTreeMap<&str, String> = [
        (
            "feature",
            ctx.feature
                .as_ref()
                .map(|f| f.name().to_owned())
                .unwrap_or_default(),
        ),
        ("branch", ctx.record.branch_name.clone().unwrap_or_default()),
        (
            "base_branch",
            ctx.record.base_branch.clone().unwrap_or_default(),
        ),
        ("run_id", ctx.run_id.to_string()),
        ("agent", ctx.record.agent.name.clone()),
        ("commit", ctx.record.commit_sha.clone().unwrap_or_default()),
        ("repository", ctx.record.repository.clone()),
        ("status_url", status_url),
        ("logs_url", logs_url),
        ("phases", specrun_core::publish::phase_table(&ctx.record)),
    ]
    .into_iter()
    .collect();
    let template = &ctx.config.pr_template;
    let mut labels = ctx.config.pr_labels.clone();
    labels.extend(
        ctx.request
            .labels
            .iter()
            .filter(|l| !ctx.config.pr_labels.contains(l))
            .cloned(),
    );
    crate::forge::PullRequestSpec {
        owner,
        repo,
        head: ctx.record.branch_name.clone().unwrap_or_default(),
        base: ctx.record.base_branch.clone().unwrap_or_default(),
        title: ctx
            .redactor
            .redact_str(&specrun_core::publish::render(&template.title, &vars)),
        body: ctx
            .redactor
            .redact_str(&specrun_core::publish::render(&template.body, &vars)),
        draft: ctx.request.draft,
        labels,
    }
}
