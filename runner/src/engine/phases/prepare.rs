//! prepare: resolves the agent, makes the run's job (workspace, network, container),
//! asks the agent its version, and records the environment.

use super::agent::{self, ResolvedAgent};
use super::command::{run_command, Command};
use super::{json_bytes, short, store_failure, Agent, Failure, Prepared, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::agent::Network;
use specrun_core::egress::EgressPolicy;
use specrun_core::redact::Redactor;
use specrun_core::state::{ArtifactRef, PhaseOutcome};
use specrun_core::{ErrorCode, Phase};
use specrun_sandbox::{ExecEnd, Job, JobRequest, Sandbox};
use std::time::Duration;

const PHASE: Phase = Phase::Prepare;

/// Runs prepare. The job goes into `slot` as soon as it exists, so that cleanup removes
/// it whatever happens next; the returned [`Prepared`] borrows it from there.
pub(crate) async fn run<'j>(
    run: &mut Run,
    sandbox: &dyn Sandbox,
    slot: &'j mut Option<Box<dyn Job>>,
) -> StepResult<Prepared<'j>> {
    let resolved = agent::resolve(run).await?;
    let mut secrets: Vec<String> = resolved.secrets.values().cloned().collect();
    secrets.extend(run.config.forge_token.iter().map(|t| t.expose().to_owned()));
    run.redactor = Redactor::new(&secrets);

    let image = resolved
        .profile
        .image
        .clone()
        .unwrap_or_else(|| run.config.image.clone());
    run.record.agent.image = image.clone();
    let request = job_request(run, &resolved, image)?;
    let job: &'j dyn Job = &**slot.insert(
        sandbox
            .create(request)
            .await
            .map_err(|e| failure::sandbox(PHASE, &e, &run.record.agent.image))?,
    );
    let env = agent::environment(job.base_env(), &resolved, job.network_env());
    let agent = Agent {
        profile: resolved.profile,
        env,
    };
    let (version, mut artifacts) = agent_version(run, job, &agent).await?;
    let facts = job.facts();
    run.record.agent.version = version.clone();
    run.record.agent.integration = agent.profile.integration.clone();
    run.record.agent.image_digest = facts
        .image_digest
        .clone()
        .or_else(|| Some(facts.image_id.clone()));
    artifacts.extend(store_environment(run, job, &agent, version).await?);
    let message = format!(
        "container {} started from {}",
        short(&facts.id),
        run.record.agent.image
    );
    Ok(Step::Continue(
        PhaseOutcome {
            message: Some(message),
            artifacts,
            ..Default::default()
        },
        Prepared { job, agent },
    ))
}

/// What the sandbox is asked to make for the run.
fn job_request(run: &Run, agent: &ResolvedAgent, image: String) -> Result<JobRequest, Failure> {
    let egress = match agent.profile.network {
        Network::Egress => Some(EgressPolicy::new(&agent.profile.egress).map_err(|e| {
            failure::error(
                PHASE,
                ErrorCode::AgentMisconfigured,
                e.to_string(),
                "Fix the agent's egress list in the agents file.",
            )
        })?),
        _ => None,
    };
    Ok(JobRequest {
        run_id: run.run_id.to_string(),
        runner_id: run.config.runner_id.clone(),
        image,
        network: agent.profile.network.clone(),
        egress,
        home_files: {
            let mut files = agent.profile.home_files.clone();
            // A retried run's checkpoint, written into the clone after clone.
            files.extend(run.restore.iter().flat_map(|r| r.home_files()));
            files
        },
    })
}

async fn agent_version(
    run: &Run,
    job: &dyn Job,
    agent: &Agent,
) -> Result<(Option<String>, Vec<ArtifactRef>), Failure> {
    let command = Command {
        phase: PHASE,
        stem: "agent-version",
        argv: agent.profile.version_command.clone(),
        env: agent.env.clone(),
        limit: Duration::from_secs(60),
    };
    let done = run_command(run, job, command).await?;
    let version = match done.end {
        ExecEnd::Exited(0) => tokio::fs::read_to_string(&done.stdout.path)
            .await
            .ok()
            .and_then(|out| out.lines().next().map(|l| l.trim().to_owned())),
        _ => None,
    };
    Ok((version, done.artifacts))
}

/// environment.json (what ran where, with which limits) and request.json, redacted.
async fn store_environment(
    run: &Run,
    job: &dyn Job,
    agent: &Agent,
    version: Option<String>,
) -> Result<Vec<ArtifactRef>, Failure> {
    let facts = job.facts();
    let profile = &agent.profile;
    let limits = &run.config.limits;
    let environment = serde_json::json!({
        "runner_id": run.config.runner_id,
        "docker_engine": facts.engine_version,
        "image": run.record.agent.image,
        "image_id": facts.image_id,
        "image_digest": facts.image_digest,
        "container": facts.id,
        "agent": {
            "name": profile.name,
            "version": version,
            "integration": profile.integration,
            "network": format!("{:?}", profile.network).to_lowercase(),
            "egress": profile.egress,
            "secrets_passed": profile.secret_env,
        },
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "pids": limits.pids,
            "nano_cpus": limits.nano_cpus,
            "phase_timeout_seconds": run.config.phase_timeout.as_secs(),
        },
    });
    let request = serde_json::to_value(run.request.to_wire()).unwrap_or_default();
    let mut artifacts = Vec::new();
    for (phase, name, value) in [
        (Some(PHASE), "environment.json", environment),
        (None, "request.json", request),
    ] {
        let redacted = run.redactor.redact_bytes(&json_bytes(&value));
        artifacts.push(
            run.artifacts
                .put_bytes(phase, name, redacted, "application/json")
                .await
                .map_err(store_failure(PHASE))?,
        );
    }
    Ok(artifacts)
}
