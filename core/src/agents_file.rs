//! The agents file (FR-010): agent profiles as configuration, read at the start of every
//! run, so that a platform team swaps or tunes agents without a rebuild or a restart.
//!
//! ```toml
//! default = "codex"                  # the agent of requests that name none
//!
//! [agents.codex-internal]
//! extends = "codex"                  # start from a built-in profile
//! network = "egress"                # none | egress | bridge | network:<docker network>
//! egress = ["llm-proxy.example:443"] # with egress: the only destinations reachable
//! secret_env = ["CODEX_API_KEY"]     # runner variables passed per exec
//! image = "registry.example/specrun-job:2"
//! [agents.codex-internal.home_files]
//! ".codex/config.toml" = "model = \"gpt-5\"\n"
//! [agents.codex-internal.phases]
//! specify = ["codex", "exec", "--json", "...", "$speckit-specify {text}"]
//! ```

use crate::agent::{
    AgentError, AgentProfile, GatewayProfile, Network, OutputFormat, UnknownNetwork,
};
use crate::commit_scope::{self, ScopeError, Unexpected};
use crate::egress::InvalidEntry;
use crate::phase::{Phase, UnknownPhase};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A parsed agents file: profiles by name and the default agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRegistry {
    profiles: BTreeMap<String, AgentProfile>,
    default: Option<String>,
}

/// The agents file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentsFileError {
    #[error("the agents file is not valid TOML for specrun: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("agent {agent:?}: {reason}")]
    Profile { agent: String, reason: ProfileError },
    #[error("the default agent {0:?} is not defined")]
    UnknownDefault(String),
}

/// What is wrong with one agent's profile in the agents file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("names are 1-32 of a-z, 0-9, '-'")]
    InvalidName,
    #[error(transparent)]
    Extends(#[from] AgentError),
    #[error(transparent)]
    Network(#[from] UnknownNetwork),
    #[error(transparent)]
    Egress(#[from] InvalidEntry),
    #[error("network \"egress\" needs an egress list of host:port destinations (the model API)")]
    EgressWithoutList,
    #[error(transparent)]
    Phase(#[from] UnknownPhase),
    #[error("phases may set specify, plan and tasks to a non-empty command, not {0}")]
    NotAnAgentPhase(Phase),
    #[error("output {0:?} must be text, codex-json or claude-stream-json")]
    Output(String),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("needs an integration (the `specify init --integration` value)")]
    NoIntegration,
    #[error("has no command for the {0} phase")]
    MissingPhase(Phase),
    #[error("{0:?} is not an environment variable name (A-Z, 0-9, _)")]
    NotAnEnvName(String),
    #[error("secret_env may not name {0:?}: SPECRUN_GIT_TOKEN, AWS_* and DOCKER_* are the runner's own credentials")]
    RunnerCredential(String),
    #[error("home file {0:?} must be a relative path inside HOME")]
    HomePath(String),
    #[error(transparent)]
    ModelApi(#[from] crate::model_api::UnknownApi),
    #[error("gateway: {0}")]
    Gateway(&'static str),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    default: Option<String>,
    #[serde(default)]
    agents: BTreeMap<String, ProfileToml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    extends: Option<String>,
    integration: Option<String>,
    image: Option<String>,
    network: Option<String>,
    egress: Option<Vec<String>>,
    version_command: Option<Vec<String>>,
    phases: Option<BTreeMap<String, Vec<String>>>,
    env: Option<BTreeMap<String, String>>,
    secret_env: Option<Vec<String>>,
    options: Option<BTreeMap<String, String>>,
    home_files: Option<BTreeMap<String, String>>,
    output: Option<String>,
    commit_paths: Option<Vec<String>>,
    unexpected_changes: Option<String>,
    gateway: Option<GatewayToml>,
}

/// `[agents.NAME.gateway]`: the model gateway's settings, over the base profile's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayToml {
    /// `false` turns the gateway off (the agent then needs its own key and egress list).
    enabled: Option<bool>,
    api: Option<String>,
    upstream: Option<String>,
    key_env: Option<String>,
    token_env: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    home_files: Option<BTreeMap<String, String>>,
    budget: Option<crate::model_usage::Budget>,
}

impl GatewayToml {
    fn apply(self, base: Option<GatewayProfile>) -> Result<Option<GatewayProfile>, ProfileError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let mut gateway = match (base, &self.api) {
            (Some(base), None) => base,
            (_, Some(api)) => GatewayProfile {
                api: crate::model_api::ModelApi::parse(api)?,
                upstream: String::new(),
                key_env: String::new(),
                token_env: Vec::new(),
                env: BTreeMap::new(),
                home_files: BTreeMap::new(),
                budget: Default::default(),
            },
            (None, None) => {
                return Err(ProfileError::Gateway(
                    "needs an api (openai, anthropic or gemini)",
                ))
            }
        };
        if let Some(upstream) = self.upstream {
            gateway.upstream = upstream;
        }
        if let Some(key_env) = self.key_env {
            gateway.key_env = key_env;
        }
        if let Some(token_env) = self.token_env {
            gateway.token_env = token_env;
        }
        if let Some(env) = self.env {
            gateway.env.extend(env);
        }
        if let Some(files) = self.home_files {
            gateway.home_files.extend(files);
        }
        if let Some(budget) = self.budget {
            gateway.budget = budget;
        }
        if !(gateway.upstream.starts_with("https://") || gateway.upstream.starts_with("http://")) {
            return Err(ProfileError::Gateway(
                "upstream must be an http:// or https:// URL",
            ));
        }
        if gateway.key_env.is_empty() || gateway.token_env.is_empty() {
            return Err(ProfileError::Gateway("needs key_env (the runner's variable with the real key) and token_env (the agent's variables for the run's token)"));
        }
        Ok(Some(gateway))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_runner_credential(name: &str) -> bool {
    name == "SPECRUN_GIT_TOKEN" || name.starts_with("AWS_") || name.starts_with("DOCKER_")
}

fn valid_home_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

impl ProfileToml {
    fn into_profile(self, name: &str) -> Result<AgentProfile, ProfileError> {
        let mut profile = match &self.extends {
            Some(base) => AgentProfile::builtin(base)?,
            None => AgentProfile {
                name: String::new(),
                integration: String::new(),
                version_command: Vec::new(),
                phase_commands: BTreeMap::new(),
                env: BTreeMap::new(),
                secret_env: Vec::new(),
                options: BTreeMap::new(),
                network: Network::None,
                egress: Vec::new(),
                image: None,
                home_files: BTreeMap::new(),
                output: OutputFormat::Text,
                commit_paths: crate::agent::default_commit_paths(),
                unexpected_changes: Unexpected::LeaveOut,
                gateway: None,
            },
        };
        profile.name = name.to_owned();
        if let Some(integration) = self.integration {
            profile.integration = integration;
        }
        if let Some(image) = self.image {
            profile.image = Some(image);
        }
        if let Some(network) = self.network {
            profile.network = Network::parse(&network)?;
        }
        if let Some(egress) = self.egress {
            crate::egress::EgressPolicy::new(&egress)?;
            profile.egress = egress;
        }
        if let Some(gateway) = self.gateway {
            profile.gateway = gateway.apply(profile.gateway.take())?;
        }
        if profile.network == Network::Egress
            && profile.egress.is_empty()
            && profile.gateway.is_none()
        {
            return Err(ProfileError::EgressWithoutList);
        }
        if let Some(command) = self.version_command {
            profile.version_command = command;
        }
        if let Some(phases) = self.phases {
            for (phase, argv) in phases {
                let phase: Phase = phase.parse()?;
                if !phase.is_agent_phase() || argv.is_empty() {
                    return Err(ProfileError::NotAnAgentPhase(phase));
                }
                profile.phase_commands.insert(phase, argv);
            }
        }
        if let Some(env) = self.env {
            profile.env.extend(env);
        }
        if let Some(secret_env) = self.secret_env {
            profile.secret_env = secret_env;
        }
        if let Some(options) = self.options {
            profile.options = options;
        }
        if let Some(files) = self.home_files {
            profile.home_files.extend(files);
        }
        if let Some(output) = self.output {
            profile.output = match output.as_str() {
                "text" => OutputFormat::Text,
                "codex-json" => OutputFormat::CodexJson,
                "claude-stream-json" => OutputFormat::ClaudeStreamJson,
                _ => return Err(ProfileError::Output(output)),
            };
        }
        if let Some(paths) = self.commit_paths {
            for path in &paths {
                commit_scope::check_pattern(path)?;
            }
            profile.commit_paths = paths;
        }
        if let Some(unexpected) = self.unexpected_changes {
            profile.unexpected_changes = Unexpected::parse(&unexpected)?;
        }
        check(&profile)?;
        Ok(profile)
    }
}

fn check(profile: &AgentProfile) -> Result<(), ProfileError> {
    if profile.integration.is_empty() {
        return Err(ProfileError::NoIntegration);
    }
    for phase in [Phase::Specify, Phase::Plan, Phase::Tasks] {
        if !profile.phase_commands.contains_key(&phase) {
            return Err(ProfileError::MissingPhase(phase));
        }
    }
    let gateway_names: Vec<&String> = profile
        .gateway
        .iter()
        .flat_map(|g| g.env.keys().chain(g.token_env.iter()).chain([&g.key_env]))
        .collect();
    let names = profile
        .env
        .keys()
        .chain(profile.secret_env.iter())
        .chain(profile.options.values())
        .chain(gateway_names);
    if let Some(bad) = names.into_iter().find(|n| !valid_env_name(n)) {
        return Err(ProfileError::NotAnEnvName(bad.clone()));
    }
    // The runner's own credentials (forge token, cloud keys) must never reach the agent.
    let handed_over = profile
        .secret_env
        .iter()
        .chain(profile.gateway.iter().map(|g| &g.key_env));
    if let Some(bad) = handed_over.into_iter().find(|n| is_runner_credential(n)) {
        return Err(ProfileError::RunnerCredential(bad.clone()));
    }
    let home_paths = profile
        .home_files
        .keys()
        .chain(profile.gateway.iter().flat_map(|g| g.home_files.keys()));
    if let Some(bad) = home_paths.into_iter().find(|p| !valid_home_path(p)) {
        return Err(ProfileError::HomePath(bad.clone()));
    }
    Ok(())
}

impl AgentRegistry {
    /// The built-in profiles only.
    pub fn builtins() -> Self {
        AgentRegistry {
            profiles: AgentProfile::builtins()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            default: None,
        }
    }

    /// The built-ins plus (and overridden by) the profiles of an agents file.
    pub fn from_toml(text: &str) -> Result<Self, AgentsFileError> {
        let file: FileToml = toml::from_str(text)?;
        let mut registry = AgentRegistry::builtins();
        for (name, profile) in file.agents {
            if !valid_name(&name) {
                return Err(AgentsFileError::Profile {
                    agent: name,
                    reason: ProfileError::InvalidName,
                });
            }
            let profile =
                profile
                    .into_profile(&name)
                    .map_err(|reason| AgentsFileError::Profile {
                        agent: name.clone(),
                        reason,
                    })?;
            registry.profiles.insert(name, profile);
        }
        if let Some(default) = &file.default {
            if !registry.profiles.contains_key(default) {
                return Err(AgentsFileError::UnknownDefault(default.clone()));
            }
        }
        registry.default = file.default;
        Ok(registry)
    }

    /// The agents file's default, if it names one.
    pub fn default_agent(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn get(&self, name: &str) -> Result<&AgentProfile, AgentError> {
        self.profiles.get(name).ok_or_else(|| AgentError::Unknown {
            name: name.to_owned(),
            known: self.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_extends_and_adds_agents() -> Result<(), AgentsFileError> {
        let registry = AgentRegistry::from_toml(
            r#"
            default = "codex-local"
            [agents.codex-local]
            extends = "codex"
            network = "network:specrun-test-1"
            secret_env = ["SPECRUN_MODEL_KEY"]
            [agents.codex-local.home_files]
            ".codex/config.toml" = "model = 'x'"
            [agents.echo]
            integration = "none"
            version_command = ["echo", "1"]
            [agents.echo.phases]
            specify = ["echo", "{text}"]
            plan = ["echo", "plan"]
            tasks = ["echo", "tasks"]
            "#,
        )?;
        assert_eq!(registry.default_agent(), Some("codex-local"));
        let local = registry
            .get("codex-local")
            .map_err(|e| AgentsFileError::UnknownDefault(e.to_string()))?;
        assert_eq!(local.network, Network::Named("specrun-test-1".to_owned()));
        assert_eq!(local.integration, "codex");
        assert_eq!(local.output, OutputFormat::CodexJson);
        assert!(local.home_files.contains_key(".codex/config.toml"));
        assert!(registry.get("scripted").is_ok(), "built-ins stay");
        assert!(registry.get("echo").is_ok());
        Ok(())
    }

    #[test]
    fn a_profile_sets_its_commit_paths() -> Result<(), AgentsFileError> {
        let registry = AgentRegistry::from_toml(
            "[agents.x]\nextends = \"scripted\"\ncommit_paths = [\"{feature}/\", \"docs/\"]\nunexpected_changes = \"fail\"",
        )?;
        let x = registry.get("x").ok();
        assert_eq!(
            x.map(|p| p.commit_paths.clone()),
            Some(vec!["{feature}/".to_owned(), "docs/".to_owned()])
        );
        assert_eq!(x.map(|p| p.unexpected_changes), Some(Unexpected::Fail));
        Ok(())
    }

    #[test]
    fn profile_mistakes_read_as_they_always_have() {
        let cases = [
            (
                "[agents.Bad]\nextends = \"codex\"",
                "agent \"Bad\": names are 1-32 of a-z, 0-9, '-'",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nnetwork = \"host\"",
                "agent \"x\": network \"host\" must be none, egress, bridge or network:<docker network name>",
            ),
            (
                "[agents.x]\nextends = \"scripted\"\nnetwork = \"egress\"",
                "agent \"x\": network \"egress\" needs an egress list of host:port destinations (the model API)",
            ),
            (
                "[agents.x]\nextends = \"scripted\"\n[agents.x.phases]\nclone = [\"x\"]",
                "agent \"x\": phases may set specify, plan and tasks to a non-empty command, not clone",
            ),
            (
                "[agents.x]\nextends = \"scripted\"\noutput = \"yaml\"",
                "agent \"x\": output \"yaml\" must be text, codex-json or claude-stream-json",
            ),
            (
                "[agents.x]\nversion_command = [\"x\"]",
                "agent \"x\": needs an integration (the `specify init --integration` value)",
            ),
            (
                "[agents.x]\nintegration = \"none\"",
                "agent \"x\": has no command for the specify phase",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nsecret_env = [\"lower\"]",
                "agent \"x\": \"lower\" is not an environment variable name (A-Z, 0-9, _)",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nsecret_env = [\"DOCKER_HOST\"]",
                "agent \"x\": secret_env may not name \"DOCKER_HOST\": SPECRUN_GIT_TOKEN, AWS_* and DOCKER_* are the runner's own credentials",
            ),
            (
                "[agents.x]\nextends = \"codex\"\n[agents.x.home_files]\n\"/etc/x\" = \"k\"",
                "agent \"x\": home file \"/etc/x\" must be a relative path inside HOME",
            ),
        ];
        for (text, expected) in cases {
            let err = AgentRegistry::from_toml(text).err().map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("default = \"ghost\"", "ghost"),
            (
                "[agents.x]\nextends = \"codex\"\nnetwork = \"host\"",
                "network",
            ),
            (
                "[agents.x]\nextends = \"scripted\"\nnetwork = \"egress\"",
                "egress list",
            ),
            (
                "[agents.x]\nextends = \"codex\"\negress = [\"not a host\"]",
                "not a host",
            ),
            (
                "[agents.x]\nextends = \"codex\"\n[agents.x.home_files]\n\"../.ssh/id\" = \"k\"",
                "home file",
            ),
            ("[agents.x]\nintegration = \"none\"", "no command"),
            (
                "[agents.x]\nextends = \"codex\"\nsecret_env = [\"lower\"]",
                "environment variable",
            ),
            (
                "[agents.x]\nextends = \"codex\"\ncolour = 1",
                "unknown field",
            ),
            ("[agents.Bad]\nextends = \"codex\"", "names are"),
            (
                "[agents.x]\nextends = \"codex\"\nnetwork = \"network:host\"",
                "network",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nsecret_env = [\"SPECRUN_GIT_TOKEN\"]",
                "runner's own credentials",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nsecret_env = [\"AWS_SECRET_ACCESS_KEY\"]",
                "runner's own credentials",
            ),
            (
                "[agents.x]\nextends = \"codex\"\ncommit_paths = [\"../etc/\"]",
                "commit path",
            ),
            (
                "[agents.x]\nextends = \"codex\"\nunexpected_changes = \"ignore\"",
                "leave_out or fail",
            ),
        ];
        for (text, expected) in cases {
            let err = AgentRegistry::from_toml(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
