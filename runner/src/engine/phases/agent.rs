//! Which agent a run uses: named by the request, or the agents file's default, or the
//! runner's; the environment its options set and the secrets it is given.

use super::Failure;
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::agent::AgentProfile;
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
    let mut secrets = BTreeMap::new();
    for secret in &profile.secret_env {
        let value = match run.config.agent_secrets.get(secret) {
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
                    ErrorCode::AgentSecretMissing,
                    format!("agent {name} needs the secret {secret}, which the runner's environment does not set"),
                    format!("Export {secret} for the runner, or run with the offline agent (--agent scripted)."),
                )
                .into())
            }
        }
    }
    Ok(ResolvedAgent {
        profile,
        options,
        secrets,
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
/// the secrets, and last the job's way out, which nothing overrides.
pub(super) fn environment(
    base: BTreeMap<String, String>,
    agent: &ResolvedAgent,
    network: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = base;
    env.extend(agent.profile.env.clone());
    env.extend(agent.options.clone());
    env.extend(agent.secrets.clone());
    env.extend(network);
    env
}
