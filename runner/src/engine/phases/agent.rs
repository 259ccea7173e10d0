//! Which agent a run uses: named by the request, or the agents file's default, or the
//! runner's; the environment its options set and the secrets it is given.

use super::Failure;
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::agent::{AgentProfile, GatewayProfile, Network};
use specrun_core::agents_file::AgentRegistry;
use specrun_core::{ErrorCode, Phase};
use std::collections::BTreeMap;

/// The resolved agent, before its job exists.
pub(super) struct ResolvedAgent {
    pub profile: AgentProfile,
    /// Variables the request's agent options set.
    pub options: BTreeMap<String, String>,
    /// The secrets the profile asks for, by variable name.
    pub secrets: BTreeMap<String, String>,
    /// The model gateway the agent calls, with the real key it holds for the run.
    pub gateway: Option<(GatewayProfile, String)>,
}

pub(super) async fn resolve(run: &mut Run) -> Result<ResolvedAgent, Failure> {
    let phase = Phase::Prepare;
    let registry = load_agents(run).await?;
    let name = run
        .request
        .agent
        .clone()
        .or_else(|| registry.default_agent().map(str::to_owned))
        .unwrap_or_else(|| run.config.default_agent.clone());
    run.record.agent.name = name.clone();
    let profile = registry.get(&name).cloned().map_err(|e| {
        failure::error(
            phase,
            ErrorCode::UnknownAgent,
            e.to_string(),
            "Name one of the known agents in `agent` (--agent), or add it to the agents file.",
        )
    })?;
    let options = profile
        .option_env(&run.request.agent_options)
        .map_err(|e| {
            failure::error(
                phase,
                ErrorCode::UnknownAgentOption,
                e.to_string(),
                "Remove the option or choose an agent that has it.",
            )
        })?;
    // With the gateway, the agent's key variables get the run's token: the real key
    // stays in the runner.
    let gateway = profile
        .gateway
        .clone()
        .filter(|_| profile.network == Network::Egress);
    let mut secrets = BTreeMap::new();
    for secret in &profile.secret_env {
        if gateway
            .as_ref()
            .is_some_and(|g| g.token_env.contains(secret))
        {
            continue;
        }
        secrets.insert(secret.clone(), runner_secret(run, &name, secret)?);
    }
    let gateway = match gateway {
        Some(gateway) => {
            let key = runner_secret(run, &name, &gateway.key_env)?;
            Some((gateway, key))
        }
        None => None,
    };
    Ok(ResolvedAgent {
        profile,
        options,
        secrets,
        gateway,
    })
}

/// A secret from the runner's configuration or environment, by variable name.
fn runner_secret(run: &Run, agent: &str, secret: &str) -> Result<String, Failure> {
    let value = match run.config.agent_secrets.get(secret) {
        Some(value) => Some(value.expose().to_owned()),
        None => std::env::var(secret).ok(),
    };
    value.filter(|v| !v.is_empty()).ok_or_else(|| {
        failure::error(
            Phase::Prepare,
            ErrorCode::AgentSecretMissing,
            format!("agent {agent} needs the secret {secret}, which the runner's environment does not set"),
            format!("Export {secret} for the runner, or run with the offline agent (--agent scripted)."),
        )
        .into()
    })
}

/// Reads the agents file afresh, so a change takes effect with the next run.
async fn load_agents(run: &Run) -> Result<AgentRegistry, Failure> {
    let phase = Phase::Prepare;
    let Some(source) = &run.config.agents_file else {
        return Ok(AgentRegistry::builtins());
    };
    let unreadable = |e: String| {
        failure::error(
            phase,
            ErrorCode::AgentsFileUnreadable,
            format!("the agents file {source} could not be read: {e}"),
            "Check SPECRUN_AGENTS_FILE and that the runner can read it.",
        )
    };
    let text = match source.strip_prefix("store:") {
        Some(key) => run
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
            ErrorCode::AgentsFileInvalid,
            format!("the agents file {source} is invalid: {e}"),
            "Fix the agents file; the README's Agents section describes its format.",
        )
        .into()
    })
}

/// Every command's environment: the job's base, the profile's variables, the options,
/// the secrets, the gateway's variables and token, and last the job's way out, which
/// nothing overrides.
pub(super) fn environment(
    base: BTreeMap<String, String>,
    agent: &ResolvedAgent,
    gateway: Option<(&str, &str)>,
    network: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = base;
    env.extend(agent.profile.env.clone());
    env.extend(agent.options.clone());
    env.extend(agent.secrets.clone());
    if let (Some((profile, _)), Some((url, token))) = (&agent.gateway, gateway) {
        for (name, value) in &profile.env {
            let value = value.replace(specrun_core::agent::GATEWAY_URL, url);
            env.insert(name.clone(), value);
        }
        for name in &profile.token_env {
            env.insert(name.clone(), token.to_owned());
        }
    }
    env.extend(network);
    env
}
