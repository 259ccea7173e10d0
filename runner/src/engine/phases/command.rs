//! Running commands in the run's job: the output streamed into redacted, capped logs that
//! become the phase's artifacts; an agent's event stream summarised; an exit turned into
//! a failure with the log's last lines.

use super::watchdog::{stalled, Activity, Watched};
use super::{blocking, json_bytes, store_failure, Failure, Prepared};
use crate::engine::artifacts::{CommandLogs, WrittenLog};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::agent::{AgentProfile, OutputFormat};
use specrun_core::claude_events::ClaudeSummary;
use specrun_core::codex_events::CodexSummary;
use specrun_core::event_summary::EventSummary;
use specrun_core::live_log::phase_log_stem;
use specrun_core::state::{ArtifactRef, RunError};
use specrun_core::{ErrorCode, Phase};
use specrun_sandbox::{ExecEnd, ExecSpec, Job};
use std::collections::BTreeMap;
use std::time::Duration;

/// Less free space than this after an agent phase means the agent hit the quota.
const QUOTA_FULL_BELOW: u64 = 1024 * 1024;

/// One command's result: how it ended, its logs and their artifacts.
pub(super) struct CommandRun {
    pub end: ExecEnd,
    /// The stall watchdog ended the command: no output and no model call for this long.
    pub stalled: Option<Duration>,
    pub stdout: WrittenLog,
    pub stderr: WrittenLog,
    pub artifacts: Vec<ArtifactRef>,
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

/// A command to run, and what its logs are called.
pub(super) struct Command<'a> {
    pub phase: Phase,
    /// The logs are `<stem>.stdout.log` and `<stem>.stderr.log`.
    pub stem: &'a str,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limit: Duration,
    /// Ends the command when it prints nothing and calls no model for this long.
    pub stall_after: Option<Duration>,
}

/// Runs a command in the job, its output streamed into redacted logs that are stored as
/// the phase's artifacts. When it returns, the agent's processes are frozen.
pub(super) async fn run_command(
    run: &Run,
    job: &dyn Job,
    command: Command<'_>,
) -> Result<CommandRun, Failure> {
    let Command {
        phase,
        stem,
        argv,
        env,
        limit,
        stall_after,
    } = command;
    let mut logs = CommandLogs::create(
        &job.workspace().logs,
        &format!("{phase}-{stem}"),
        &run.redactor,
        run.config.log_cap_bytes,
    )
    .await
    .map_err(|e| failure::io(phase, "creating the phase logs", &e))?;
    // The phase's own log streams while the command runs; other commands' logs are
    // stored when they end.
    let live = match run.config.log_flush_interval {
        Some(interval) if phase_log_stem(phase) == Some(stem) => {
            Some(logs.stream_live(&run.artifacts, phase, stem, interval))
        }
        _ => None,
    };
    let spec = ExecSpec { argv, env };
    let (ended, stalled) = match stall_after {
        None => (job.exec(&spec, &mut logs, limit).await, None),
        Some(after) => {
            let activity = Activity::new();
            let mut watched = Watched {
                inner: &mut logs,
                activity: &activity,
            };
            tokio::select! {
                ended = job.exec(&spec, &mut watched, limit) => (ended, None),
                () = stalled(&activity, run.gateway.as_deref(), after) => {
                    // The exec is abandoned: end whatever the agent runs, for good.
                    if let Err(e) = job.stop_all().await {
                        tracing::warn!(error = %e, %phase, "could not stop the stalled agent");
                    }
                    (Ok(ExecEnd::TimedOut), Some(after))
                }
            }
        }
    };
    let finished = logs.finish().await;
    if let Some(live) = live {
        live.finish().await;
    }
    let (stdout, stderr) =
        finished.map_err(|e| failure::io(phase, "writing the phase logs", &e))?;
    for (stream, log) in [("stdout", &stdout), ("stderr", &stderr)] {
        if let Some(dropped) = log.truncated_bytes {
            tracing::warn!(%phase, stem, stream, dropped, "the command printed more than the log cap; the rest was counted, not stored");
        }
    }
    let mut artifacts = Vec::new();
    for (name, log) in [
        (format!("{stem}.stdout.log"), &stdout),
        (format!("{stem}.stderr.log"), &stderr),
    ] {
        artifacts.push(
            run.artifacts
                .put_log(Some(phase), &name, log)
                .await
                .map_err(store_failure(phase))?,
        );
    }
    match ended {
        Ok(end) => Ok(CommandRun {
            end,
            stalled,
            stdout,
            stderr,
            artifacts,
        }),
        Err(e) => Err(Failure {
            error: failure::sandbox(phase, &e, &run.record.agent.image),
            artifacts,
        }),
    }
}

/// Runs the agent's command for `phase`; returns its artifacts and a one-line summary of
/// what it did, or the failure with its logs when it did not succeed.
pub(super) async fn run_agent(
    run: &Run,
    prepared: &Prepared<'_>,
    phase: Phase,
    extra_env: BTreeMap<String, String>,
) -> Result<(Vec<ArtifactRef>, Option<String>), Failure> {
    let profile = &prepared.agent.profile;
    let argv = profile
        .phase_argv(phase, &run.request.specify_text)
        .map_err(|e| {
            failure::error(
                phase,
                ErrorCode::AgentMisconfigured,
                e.to_string(),
                "Fix the agent profile.",
            )
        })?;
    let mut env = prepared.agent.env.clone();
    env.extend(extra_env);
    let command = Command {
        phase,
        stem: "agent",
        argv,
        env,
        limit: run.config.phase_timeout,
        stall_after: Some(run.config.stall_timeout),
    };
    if let Some(gateway) = &run.gateway {
        gateway.begin_phase(phase);
    }
    let mut done = run_command(run, prepared.job, command).await?;
    let headline = summarise(run, phase, profile, &mut done).await;
    if let Some(spent) = run.gateway.as_ref().and_then(|g| g.spent()) {
        return Err(Failure {
            error: RunError {
                log_excerpt: Some(done.excerpt()),
                ..failure::error(
                    phase,
                    ErrorCode::BudgetExceeded,
                    format!("{spent}; the model gateway refused the agent's further calls in the {phase} phase"),
                    "Raise the budget (SPECRUN_MODEL_BUDGET, the agent profile's gateway.budget, or the request's) if the run really needs more, or make the specification smaller.",
                )
            },
            artifacts: done.artifacts,
        });
    }
    if let Some(after) = done.stalled {
        return Err(Failure {
            error: RunError {
                log_excerpt: Some(done.excerpt()),
                ..failure::error(
                    phase,
                    ErrorCode::PhaseStalled,
                    format!("the agent printed nothing and called no model for {after:?} in the {phase} phase; it was stopped"),
                    "Check the phase's logs for where the agent stopped; raise SPECRUN_STALL_TIMEOUT_SECS if the agent legitimately works silently for longer.",
                )
            },
            artifacts: done.artifacts,
        });
    }
    if let Some(left) = prepared.job.workspace().space_left() {
        if left < QUOTA_FULL_BELOW {
            return Err(Failure {
                error: failure::error(
                    phase,
                    ErrorCode::DiskQuotaExceeded,
                    format!("the agent filled the run's workspace ({left} bytes left of its quota) in the {phase} phase"),
                    "Check the phase's logs for what filled it; raise SPECRUN_WORKSPACE_QUOTA_MIB if the repository really needs more room.",
                ),
                artifacts: done.artifacts,
            });
        }
    }
    let artifacts = require_success(run, phase, done, ErrorCode::AgentPhaseFailed)?;
    Ok((artifacts, headline))
}

/// Turns a command's end into a failure with `code` unless it exited 0.
pub(super) fn require_success(
    run: &Run,
    phase: Phase,
    done: CommandRun,
    code: ErrorCode,
) -> Result<Vec<ArtifactRef>, Failure> {
    match done.end {
        ExecEnd::Exited(0) => Ok(done.artifacts),
        ExecEnd::Exited(exit) => {
            let error = RunError {
                code,
                ..failure::agent_exit(phase, &run.record.agent.name, exit, done.excerpt())
            };
            Err(Failure { error, artifacts: done.artifacts })
        }
        ExecEnd::TimedOut => Err(Failure {
            error: RunError {
                log_excerpt: Some(done.excerpt()),
                ..failure::error(
                    phase,
                    ErrorCode::PhaseTimeout,
                    format!("the {phase} phase did not finish within {:?}", run.config.phase_timeout),
                    "Raise the phase time limit (SPECRUN_PHASE_TIMEOUT_SECS) or make the specification smaller.",
                )
            },
            artifacts: done.artifacts,
        }),
    }
}

/// For agents with a structured event stream, stores a summary of what the agent did
/// as the phase's `agent-summary.json` and returns its one-line headline.
async fn summarise(
    run: &Run,
    phase: Phase,
    profile: &AgentProfile,
    done: &mut CommandRun,
) -> Option<String> {
    if profile.output == OutputFormat::Text {
        return None;
    }
    // The log is the agent's output, up to the log cap: read a line at a time.
    let (log, output) = (done.stdout.path.clone(), profile.output);
    let summary = tokio::task::spawn_blocking(move || match output {
        OutputFormat::Text => None,
        OutputFormat::CodexJson => summary_of::<CodexSummary>(&log).ok(),
        OutputFormat::ClaudeStreamJson => summary_of::<ClaudeSummary>(&log).ok(),
    });
    let (json, headline) = summary.await.ok()??;
    let bytes = run.redactor.redact_bytes(&json_bytes(&json));
    match run
        .artifacts
        .put_bytes(Some(phase), "agent-summary.json", bytes, "application/json")
        .await
    {
        Ok(artifact) => done.artifacts.push(artifact),
        Err(e) => tracing::warn!(error = %e, "could not store the agent summary"),
    }
    Some(headline)
}

/// The summary of an event log file as JSON, and its headline; lines longer than
/// `MAX_LINE_BYTES` are passed over and counted. Blocking.
fn summary_of<S: EventSummary>(
    log: &std::path::Path,
) -> std::io::Result<(serde_json::Value, String)> {
    use crate::engine::artifacts::{for_each_line, MAX_LINE_BYTES};
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

/// Runs blocking git work off the async threads (see [`blocking`]), failing the phase
/// past the git time limit.
pub(super) async fn bounded_git<T: Send + 'static>(
    phase: Phase,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, blocking(phase, work)).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(failure::error(
            phase,
            ErrorCode::GitTimeout,
            format!("the {phase} phase did not finish within {limit:?}"),
            "The remote is slow or unreachable, or the repository is very large: check it, or raise SPECRUN_GIT_TIMEOUT_SECS.",
        )
        .into()),
    }
}
