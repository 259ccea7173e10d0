//! Agent profiles as data: which Spec Kit integration an agent uses, the command line of
//! each phase, the environment and secret names it gets, and the network it needs. The
//! pipeline only ever reads a profile, so swapping agents needs no code change (FR-010).

use crate::commit_scope::{Unexpected, DEFAULT_PATTERNS};
use crate::model_api::ModelApi;
use crate::model_usage::Budget;
use crate::phase::Phase;
use std::collections::BTreeMap;

/// Stands for the run's model gateway (`http://HOST:PORT`) in a profile's gateway
/// variables and home files.
pub const GATEWAY_URL: &str = "{gateway_url}";

/// How an agent reaches its model through the runner's per-run model gateway: the agent
/// gets a run-scoped token instead of the key, and talks plain HTTP to the gateway, which
/// holds the real key. Used with [`Network::Egress`] (the gateway listens on the run's
/// own network).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayProfile {
    pub api: ModelApi,
    /// The model API's base URL the gateway forwards to (`https://api.openai.com`).
    pub upstream: String,
    /// The runner's variable (or configured secret) holding the real key.
    pub key_env: String,
    /// The agent's variables that get the run's token in place of a key.
    pub token_env: Vec<String>,
    /// Variables pointing the agent at the gateway ([`GATEWAY_URL`] is filled in).
    pub env: BTreeMap<String, String>,
    /// Files written into HOME only when the gateway is used ([`GATEWAY_URL`] filled in).
    pub home_files: BTreeMap<String, String>,
    /// This agent's maxima; the runner's and the request's may be tighter.
    pub budget: Budget,
}

/// The network a job container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network at all: for agents that need no model API.
    None,
    /// Docker's default bridge: everything the host can reach. Opt-in only.
    Bridge,
    /// No route out; HTTP(S) only through the runner's egress proxy, to the profile's
    /// `egress` allow-list (the model API). The default for agents that call a model.
    Egress,
    /// A Docker network the platform prepared (for example one whose only way out is the
    /// model API's proxy).
    Named(String),
}

/// A `network` setting that names none of the networks a job container may get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network {0:?} must be none, egress, bridge or network:<docker network name>")]
pub struct UnknownNetwork(pub String);

impl Network {
    /// `none`, `egress`, `bridge`, or `network:<name>`.
    pub fn parse(text: &str) -> Result<Network, UnknownNetwork> {
        match text {
            "none" => Ok(Network::None),
            "egress" => Ok(Network::Egress),
            "bridge" => Ok(Network::Bridge),
            other => match other.strip_prefix("network:") {
                // `host` would share the runner's own network namespace.
                Some(name)
                    if !name.is_empty()
                        && name != "host"
                        && name != "none"
                        && name != "bridge"
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
                {
                    Ok(Network::Named(name.to_owned()))
                }
                _ => Err(UnknownNetwork(other.to_owned())),
            },
        }
    }

    /// The Docker `NetworkMode` (an `Egress` run's own network is made per run).
    pub fn docker_mode(&self) -> &str {
        match self {
            Network::None | Network::Egress => "none",
            Network::Bridge => "bridge",
            Network::Named(name) => name,
        }
    }
}

/// Gemini CLI's settings for a headless run (see [`AgentProfile::gemini`]).
const GEMINI_SETTINGS: &str = r#"{
  "security": { "auth": { "selectedType": "gemini-api-key" } },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false },
  "tools": { "shell": { "enableInteractiveShell": false } }
}
"#;

impl GatewayProfile {
    fn new(api: ModelApi, upstream: &str, key_env: &str, token_env: &str) -> Self {
        GatewayProfile {
            api,
            upstream: upstream.to_owned(),
            key_env: key_env.to_owned(),
            token_env: vec![token_env.to_owned()],
            env: BTreeMap::new(),
            home_files: BTreeMap::new(),
            budget: Budget::default(),
        }
    }

    /// Codex through a custom provider at the gateway (Responses API), its token in
    /// `CODEX_API_KEY`; the runner's own `CODEX_API_KEY` is the real key.
    pub fn codex() -> Self {
        let config = format!(
            "# Written by specrun: the run's model gateway is the only provider.\n\
             model_provider = \"specrun-gateway\"\n\n\
             [model_providers.specrun-gateway]\n\
             name = \"specrun model gateway\"\n\
             base_url = \"{GATEWAY_URL}/v1\"\n\
             wire_api = \"responses\"\n\
             env_key = \"CODEX_API_KEY\"\n"
        );
        let mut gateway = Self::new(
            ModelApi::OpenAi,
            "https://api.openai.com",
            "CODEX_API_KEY",
            "CODEX_API_KEY",
        );
        gateway
            .home_files
            .insert(".codex/config.toml".to_owned(), config);
        gateway
    }

    /// Claude Code at `ANTHROPIC_BASE_URL`, its token in `ANTHROPIC_API_KEY`.
    pub fn claude() -> Self {
        let mut gateway = Self::new(
            ModelApi::Anthropic,
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_API_KEY",
        );
        gateway
            .env
            .insert("ANTHROPIC_BASE_URL".to_owned(), GATEWAY_URL.to_owned());
        gateway
    }

    /// Gemini CLI at `GOOGLE_GEMINI_BASE_URL`, its token in `GEMINI_API_KEY`.
    pub fn gemini() -> Self {
        let mut gateway = Self::new(
            ModelApi::Gemini,
            "https://generativelanguage.googleapis.com",
            "GEMINI_API_KEY",
            "GEMINI_API_KEY",
        );
        gateway
            .env
            .insert("GOOGLE_GEMINI_BASE_URL".to_owned(), GATEWAY_URL.to_owned());
        gateway
    }
}

/// How an agent's standard output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Plain text, kept as the log.
    Text,
    /// Codex's `--json` event stream: kept as the log and summarised (commands, tokens).
    CodexJson,
    /// Claude Code's `--output-format stream-json --verbose` stream: kept as the log and
    /// summarised (tool calls, tokens, how the session ended).
    ClaudeStreamJson,
}

/// How to run one agent through the Spec Kit phases.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentProfile {
    pub name: String,
    /// The `specify init --integration` value.
    pub integration: String,
    /// Prints the agent's version; its first line is recorded.
    pub version_command: Vec<String>,
    /// The argv of each agent phase. `{text}` is replaced by the specification text,
    /// `{phase}` by the phase name; each stays one argument, so no shell ever parses it.
    pub phase_commands: BTreeMap<Phase, Vec<String>>,
    /// Fixed environment for every exec.
    pub env: BTreeMap<String, String>,
    /// Names of the runner's environment variables passed to the agent as secrets, per
    /// exec only (never in the container's configuration).
    pub secret_env: Vec<String>,
    /// Request options this agent understands, each mapped to the variable it sets.
    pub options: BTreeMap<String, String>,
    pub network: Network,
    /// With [`Network::Egress`], the `host:port` destinations the agent may reach.
    pub egress: Vec<String>,
    /// The job image, when this agent needs another than the runner's default.
    pub image: Option<String>,
    /// Files written into the agent's HOME before the container starts (its own
    /// configuration, e.g. `.codex/config.toml`); never secrets.
    pub home_files: BTreeMap<String, String>,
    pub output: OutputFormat,
    /// What of the agent's changes is committed ([`crate::commit_scope`] patterns).
    pub commit_paths: Vec<String>,
    /// What happens to a change outside `commit_paths`.
    pub unexpected_changes: Unexpected,
    /// The model gateway, for agents that call a model API it speaks.
    pub gateway: Option<GatewayProfile>,
}

/// A profile could not be applied to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("unknown agent {name:?}; known agents: {known}")]
    Unknown { name: String, known: String },
    #[error("agent {agent} has no command for phase {phase}")]
    NoCommand { agent: String, phase: Phase },
    #[error("agent {agent} has no option {option:?}; it understands: {known}")]
    UnknownOption {
        agent: String,
        option: String,
        known: String,
    },
}

/// The commit paths of a profile that sets none: the feature directory and `.specify/`.
pub fn default_commit_paths() -> Vec<String> {
    DEFAULT_PATTERNS.iter().map(|p| (*p).to_owned()).collect()
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

impl AgentProfile {
    /// The command line for `phase`, with the text filled in.
    pub fn phase_argv(&self, phase: Phase, text: &str) -> Result<Vec<String>, AgentError> {
        let template = self
            .phase_commands
            .get(&phase)
            .ok_or_else(|| AgentError::NoCommand {
                agent: self.name.clone(),
                phase,
            })?;
        Ok(template
            .iter()
            .map(|arg| {
                arg.replace("{text}", text)
                    .replace("{phase}", phase.as_str())
            })
            .collect())
    }

    /// The environment a request's agent options set, refusing options the agent lacks.
    pub fn option_env(
        &self,
        options: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        options
            .iter()
            .map(|(option, value)| match self.options.get(option) {
                Some(var) => Ok((var.clone(), value.clone())),
                None => Err(AgentError::UnknownOption {
                    agent: self.name.clone(),
                    option: option.clone(),
                    known: self.options.keys().cloned().collect::<Vec<_>>().join(", "),
                }),
            })
            .collect()
    }

    /// The offline, deterministic agent baked into the job image. It writes Spec Kit's
    /// files from Spec Kit's own templates; it is never reported as a real agent.
    pub fn scripted() -> Self {
        let phase = |p: Phase| {
            let mut cmd = argv(&["specrun-scripted-agent", p.as_str()]);
            if p == Phase::Specify {
                cmd.push("{text}".to_owned());
            }
            (p, cmd)
        };
        AgentProfile {
            name: "scripted".to_owned(),
            integration: "none".to_owned(),
            version_command: argv(&["specrun-scripted-agent", "--version"]),
            phase_commands: [Phase::Specify, Phase::Plan, Phase::Tasks]
                .into_iter()
                .map(phase)
                .collect(),
            env: BTreeMap::new(),
            secret_env: Vec::new(),
            options: [(
                "behaviour".to_owned(),
                "SPECRUN_SCRIPTED_BEHAVIOUR".to_owned(),
            )]
            .into_iter()
            .collect(),
            network: Network::None,
            egress: Vec::new(),
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::Text,
            commit_paths: default_commit_paths(),
            unexpected_changes: Unexpected::LeaveOut,
            gateway: None,
        }
    }

    /// OpenAI's Codex CLI, invoking Spec Kit's skills (`$speckit-specify ...`).
    pub fn codex() -> Self {
        let exec = |prompt: &str| {
            argv(&[
                "codex",
                "exec",
                "--json",
                "--dangerously-bypass-approvals-and-sandbox",
                "--ephemeral",
                "--skip-git-repo-check",
                "-o",
                "/workspace/home/last-message-{phase}.txt",
                prompt,
            ])
        };
        AgentProfile {
            name: "codex".to_owned(),
            integration: "codex".to_owned(),
            version_command: argv(&["codex", "--version"]),
            phase_commands: [
                (Phase::Specify, exec("$speckit-specify {text}")),
                (Phase::Plan, exec("$speckit-plan")),
                (Phase::Tasks, exec("$speckit-tasks")),
            ]
            .into_iter()
            .collect(),
            env: [("CODEX_HOME".to_owned(), "/workspace/home/.codex".to_owned())]
                .into_iter()
                .collect(),
            secret_env: vec!["CODEX_API_KEY".to_owned()],
            options: BTreeMap::new(),
            network: Network::Egress,
            egress: Vec::new(),
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::CodexJson,
            commit_paths: default_commit_paths(),
            unexpected_changes: Unexpected::LeaveOut,
            gateway: Some(GatewayProfile::codex()),
        }
    }

    /// Anthropic's Claude Code (`claude -p '/speckit-specify ...'`), invoking the skills
    /// Spec Kit's `claude` integration writes to `.claude/skills/speckit-*/SKILL.md`.
    ///
    /// Non-interactive and allowed to write without prompts through
    /// `--dangerously-skip-permissions`, which Claude Code refuses as root (the job
    /// container runs as uid 1000). `--no-session-persistence` keeps no transcript in HOME.
    /// `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC` (with the narrower switches it implies)
    /// leaves the model API as the only host it contacts: without it, it also resolves
    /// other hosts and probes `HEAD <base URL>/api/hello`. The API key is a secret per
    /// exec; `ANTHROPIC_BASE_URL` (e.g. a proxy) can be set in an agents file's `env`.
    pub fn claude() -> Self {
        let print = |prompt: &str| {
            argv(&[
                "claude",
                "-p",
                prompt,
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "--no-session-persistence",
            ])
        };
        AgentProfile {
            name: "claude".to_owned(),
            integration: "claude".to_owned(),
            version_command: argv(&["claude", "--version"]),
            phase_commands: [
                (Phase::Specify, print("/speckit-specify {text}")),
                (Phase::Plan, print("/speckit-plan")),
                (Phase::Tasks, print("/speckit-tasks")),
            ]
            .into_iter()
            .collect(),
            env: [
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("DISABLE_ERROR_REPORTING", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            secret_env: vec!["ANTHROPIC_API_KEY".to_owned()],
            options: BTreeMap::new(),
            network: Network::Egress,
            egress: Vec::new(),
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::ClaudeStreamJson,
            commit_paths: default_commit_paths(),
            unexpected_changes: Unexpected::LeaveOut,
            gateway: Some(GatewayProfile::claude()),
        }
    }

    /// Google's Gemini CLI (`gemini -p '/speckit.specify ...' --yolo -o stream-json`),
    /// invoking the commands Spec Kit's `gemini` integration writes to
    /// `.gemini/commands/speckit.*.toml`.
    ///
    /// `GEMINI_CLI_TRUST_WORKSPACE` lets it act in the repository without an interactive
    /// trust prompt (else `--yolo` falls back to asking, and a headless run stops).
    /// `.gemini/settings.json` selects API-key auth and turns off usage statistics,
    /// telemetry and update checks, so the model API is the only host it contacts, and
    /// the pty shell (the image leaves its native module out). The model is the CLI's
    /// default (`auto`, which also asks the model API to route each turn); an agents
    /// file's `env` can pin one with `GEMINI_MODEL`. Its output is kept as plain text.
    pub fn gemini() -> Self {
        let prompt = |prompt: &str| argv(&["gemini", "-p", prompt, "--yolo", "-o", "stream-json"]);
        AgentProfile {
            name: "gemini".to_owned(),
            integration: "gemini".to_owned(),
            version_command: argv(&["gemini", "--version"]),
            phase_commands: [
                (Phase::Specify, prompt("/speckit.specify {text}")),
                (Phase::Plan, prompt("/speckit.plan")),
                (Phase::Tasks, prompt("/speckit.tasks")),
            ]
            .into_iter()
            .collect(),
            env: [("GEMINI_CLI_TRUST_WORKSPACE".to_owned(), "true".to_owned())]
                .into_iter()
                .collect(),
            secret_env: vec!["GEMINI_API_KEY".to_owned()],
            options: BTreeMap::new(),
            network: Network::Egress,
            egress: Vec::new(),
            image: None,
            home_files: [(
                ".gemini/settings.json".to_owned(),
                GEMINI_SETTINGS.to_owned(),
            )]
            .into_iter()
            .collect(),
            output: OutputFormat::Text,
            commit_paths: default_commit_paths(),
            unexpected_changes: Unexpected::LeaveOut,
            gateway: Some(GatewayProfile::gemini()),
        }
    }

    /// GitHub's Copilot CLI (`copilot -p '/speckit-specify ...' --yolo --output-format
    /// json`), invoking the skills Spec Kit's `copilot` integration writes to
    /// `.github/skills/speckit-*/SKILL.md`. It authenticates with `COPILOT_GITHUB_TOKEN`
    /// (the first of the variables it reads; never the runner's forge token).
    ///
    /// Not verified end to end here: the Copilot CLI is not in the job image, so this
    /// profile needs an image that has it (`image` in an agents file). Its output is kept
    /// as plain text. It has no gateway yet, though Copilot CLI 1.0.x documents
    /// `COPILOT_PROVIDER_BASE_URL` / `COPILOT_PROVIDER_TYPE` (its own provider) and
    /// `COPILOT_OFFLINE`.
    pub fn copilot() -> Self {
        let prompt =
            |prompt: &str| argv(&["copilot", "-p", prompt, "--yolo", "--output-format", "json"]);
        AgentProfile {
            name: "copilot".to_owned(),
            integration: "copilot".to_owned(),
            version_command: argv(&["copilot", "--version"]),
            phase_commands: [
                (Phase::Specify, prompt("/speckit-specify {text}")),
                (Phase::Plan, prompt("/speckit-plan")),
                (Phase::Tasks, prompt("/speckit-tasks")),
            ]
            .into_iter()
            .collect(),
            env: BTreeMap::new(),
            secret_env: vec!["COPILOT_GITHUB_TOKEN".to_owned()],
            options: BTreeMap::new(),
            network: Network::Egress,
            egress: vec!["api.githubcopilot.com:443".to_owned()],
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::Text,
            commit_paths: default_commit_paths(),
            unexpected_changes: Unexpected::LeaveOut,
            gateway: None,
        }
    }

    /// The profiles specrun ships with.
    pub fn builtins() -> Vec<AgentProfile> {
        vec![
            AgentProfile::scripted(),
            AgentProfile::codex(),
            AgentProfile::claude(),
            AgentProfile::gemini(),
            AgentProfile::copilot(),
        ]
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<AgentProfile, AgentError> {
        let all = AgentProfile::builtins();
        let known = all
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        all.iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or(AgentError::Unknown {
                name: name.to_owned(),
                known,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_an_unknown_one_is_named() {
        assert_eq!(Network::parse("egress"), Ok(Network::Egress));
        assert_eq!(
            Network::parse("network:specrun-1"),
            Ok(Network::Named("specrun-1".to_owned()))
        );
        for bad in ["host", "network:host", "network:", "network:a b"] {
            assert_eq!(
                Network::parse(bad).map_err(|e| e.to_string()),
                Err(format!(
                    "network {bad:?} must be none, egress, bridge or network:<docker network name>"
                ))
            );
        }
    }

    #[test]
    fn text_stays_one_argument() -> Result<(), AgentError> {
        let text = "Add login; rm -rf / $(id) \"quoted\"";
        let argv = AgentProfile::scripted().phase_argv(Phase::Specify, text)?;
        assert_eq!(argv, vec!["specrun-scripted-agent", "specify", text]);
        let codex = AgentProfile::codex().phase_argv(Phase::Plan, text)?;
        assert_eq!(codex.last().map(String::as_str), Some("$speckit-plan"));
        assert!(codex.contains(&"/workspace/home/last-message-plan.txt".to_owned()));
        Ok(())
    }

    #[test]
    fn options_map_to_declared_variables_only() {
        let scripted = AgentProfile::scripted();
        let ok = [("behaviour".to_owned(), "clarify".to_owned())]
            .into_iter()
            .collect();
        let env = scripted.option_env(&ok).ok();
        assert_eq!(
            env.and_then(|e| e.get("SPECRUN_SCRIPTED_BEHAVIOUR").cloned()),
            Some("clarify".to_owned())
        );
        let bad = [("ld_preload".to_owned(), "x".to_owned())]
            .into_iter()
            .collect();
        assert!(scripted.option_env(&bad).is_err());
    }

    #[test]
    fn unknown_agents_list_the_known_ones() {
        let err = AgentProfile::builtin("nope").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown agent \"nope\"; known agents: scripted, codex, claude, gemini, copilot")
        );
        assert!(AgentProfile::builtin("scripted").is_ok());
    }

    #[test]
    fn claude_invokes_spec_kit_skills_non_interactively() -> Result<(), AgentError> {
        let claude = AgentProfile::builtin("claude")?;
        assert_eq!(claude.integration, "claude");
        assert_eq!(claude.secret_env, ["ANTHROPIC_API_KEY"]);
        assert_eq!(claude.output, OutputFormat::ClaudeStreamJson);
        let text = "Add login; $(id) \"quoted\"";
        let specify = claude.phase_argv(Phase::Specify, text)?;
        assert_eq!(
            &specify[..3],
            ["claude", "-p", &format!("/speckit-specify {text}")]
        );
        for flag in ["stream-json", "--verbose", "--dangerously-skip-permissions"] {
            assert!(specify.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(claude.phase_argv(Phase::Tasks, text)?[2], "/speckit-tasks");
        assert_eq!(
            claude
                .env
                .get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC")
                .map(String::as_str),
            Some("1")
        );
        let gemini = AgentProfile::builtin("gemini")?;
        assert_eq!(gemini.phase_argv(Phase::Plan, text)?[2], "/speckit.plan");
        let copilot = AgentProfile::builtin("copilot")?;
        assert_eq!(copilot.phase_argv(Phase::Plan, text)?[2], "/speckit-plan");
        assert_eq!(copilot.secret_env, ["COPILOT_GITHUB_TOKEN"]);
        Ok(())
    }
}
