//! prepare: resolves the agent, makes the run's job (workspace, network, container),
//! starts the clone's transfer (it needs only the workspace: see `clone`), asks the agent
//! its version meanwhile (once per image: `agent_versions`), and records the environment.

use super::agent::{self, ResolvedAgent};
use super::clone::Fetch;
use super::command::{run_command, Command};
use super::{
    blocking, json_bytes, short, store_failure, Agent, Failure, Prepared, Step, StepResult,
};
use crate::engine::agent_versions::AgentVersions;
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::agent::Network;
use specrun_core::egress::EgressPolicy;
use specrun_core::redact::Redactor;
use specrun_core::state::{ArtifactRef, PhaseOutcome};
use specrun_core::{ErrorCode, Phase};
use specrun_gateway::{GatewayConfig, ModelGateway};
use specrun_sandbox::{ExecEnd, HostService, Job, JobRequest, Sandbox};
use std::sync::Arc;
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
    let gateway = start_gateway(run, &resolved)?;
    let mut secrets: Vec<String> = resolved.secrets.values().cloned().collect();
    secrets.extend(run.config.forge_token.iter().map(|t| t.expose().to_owned()));
    if let (Some((_, key)), Some(gateway)) = (&resolved.gateway, &gateway) {
        secrets.push(key.clone());
        secrets.push(gateway.token().to_owned());
    }
    run.redactor = Redactor::new(&secrets);
    run.gateway = gateway.clone();

    let image = resolved
        .profile
        .image
        .clone()
        .unwrap_or_else(|| run.config.image.clone());
    run.record.agent.image = image.clone();
    let mut request = job_request(run, &resolved, image)?;
    if let Some(gateway) = &gateway {
        request.host_service = Some(Arc::new(GatewayService(gateway.clone())));
    }
    // The clone's transfer needs only the workspace: it runs while the job is made.
    let mut fetch = None;
    let created = sandbox
        .create(request, &mut |workspace| {
            fetch = Some((Fetch::start(run, workspace), workspace.clone()));
        })
        .await;
    let job = match created {
        Ok(job) => job,
        Err(e) => {
            // The job's error is the run's; a workspace left behind is only logged.
            if let Some((fetch, workspace)) = fetch {
                fetch.settle().await;
                match blocking(PHASE, move || workspace.remove()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(removing)) => {
                        tracing::warn!(error = %removing, "the run's workspace was not removed")
                    }
                    Err(removing) => {
                        tracing::warn!(error = %removing.message, "the run's workspace was not removed")
                    }
                }
            }
            return Err(failure::sandbox(PHASE, &e, &run.record.agent.image).into());
        }
    };
    let job: &'j dyn Job = &**slot.insert(job);
    run.fetch = fetch.map(|(fetch, _)| fetch);
    let gateway_url = gateway.as_ref().and_then(|g| g.url());
    let token = gateway.as_ref().map(|g| g.token());
    let env = agent::environment(
        job.base_env(),
        &resolved,
        gateway_url.as_deref().zip(token),
        job.network_env(),
    );
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
    let mut home_files = agent
        .gateway
        .as_ref()
        .map(|(gateway, _)| gateway.home_files.clone())
        .unwrap_or_default();
    home_files.extend(agent.profile.home_files.clone());
    // A retried run's checkpoint, written into the clone after clone.
    home_files.extend(run.restore.iter().flat_map(|r| r.home_files()));
    Ok(JobRequest {
        run_id: run.run_id.to_string(),
        runner_id: run.config.runner_id.clone(),
        image,
        network: agent.profile.network.clone(),
        egress,
        home_files,
        host_service: None,
    })
}

/// The run's model gateway, for an agent that calls its model through one: the real key,
/// the upstream, the prices and the tightest of the runner's and the profile's budgets.
/// A request that asks for more budget than the operator allows fails here whatever the
/// agent (the submit API refuses it with 400 before; a queue message may not have been
/// through it).
fn start_gateway(run: &Run, agent: &ResolvedAgent) -> Result<Option<Arc<ModelGateway>>, Failure> {
    // The request may lower the operator's budget, never raise it; the profile's caps
    // whatever the two allow.
    let operator = &run.config.model_budget;
    let budget = match &run.request.budget {
        Some(asked) => operator.lowered_by(asked).map_err(|e| {
            failure::error(
                PHASE,
                ErrorCode::InvalidRequest,
                e.to_string(),
                "Ask for a budget at or below the operator's (SPECRUN_MODEL_BUDGET), or none.",
            )
        })?,
        None => *operator,
    };
    let Some((profile, key)) = &agent.gateway else {
        return Ok(None);
    };
    let config = GatewayConfig {
        api: profile.api,
        upstream: profile.upstream.clone(),
        api_key: key.clone(),
        prices: run.config.model_prices.clone(),
        budget: budget.tighter(&profile.budget),
    };
    let gateway = ModelGateway::new(config).map_err(|e| {
        failure::error(
            PHASE,
            ErrorCode::AgentMisconfigured,
            e.to_string(),
            "Fix the agent's gateway settings in the agents file.",
        )
    })?;
    Ok(Some(Arc::new(gateway)))
}

/// The gateway as the sandbox starts it: on the run network's host address.
struct GatewayService(Arc<ModelGateway>);

#[async_trait::async_trait]
impl HostService for GatewayService {
    async fn listen(&self, bind: std::net::IpAddr) -> std::io::Result<std::net::SocketAddr> {
        self.0.listen(bind).await.map_err(std::io::Error::other)
    }
}

/// The agent's version: remembered for the job's image by an earlier run, or else asked
/// (its version command's first line) and remembered.
async fn agent_version(
    run: &Run,
    job: &dyn Job,
    agent: &Agent,
) -> Result<(Option<String>, Vec<ArtifactRef>), Failure> {
    let versions = AgentVersions::under(&run.config.work_root);
    let (image_id, argv) = (&job.facts().image_id, &agent.profile.version_command);
    if let Some(version) = versions.get(image_id, argv).await {
        return Ok((Some(version), Vec::new()));
    }
    let command = Command {
        phase: PHASE,
        stem: "agent-version",
        argv: agent.profile.version_command.clone(),
        env: agent.env.clone(),
        limit: Duration::from_secs(60),
        stall_after: None,
    };
    let done = run_command(run, job, command).await?;
    let version = match done.end {
        ExecEnd::Exited(0) => tokio::fs::read_to_string(&done.stdout.path)
            .await
            .ok()
            .and_then(|out| out.lines().next().map(|l| l.trim().to_owned())),
        _ => None,
    };
    if let Some(version) = &version {
        versions.put(image_id, argv, version).await;
    }
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
            "secrets_passed": agent.env.keys().filter(|k| profile.secret_env.contains(k)).collect::<Vec<_>>(),
            "model_gateway": run.gateway.as_ref().map(|g| serde_json::json!({
                "api": g.api().as_str(),
                "url": g.url(),
            })),
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
