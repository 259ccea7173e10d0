//! Agent profiles as data: which Spec Kit integration an agent uses, the command line of
//! each phase, the environment and secret names it gets, and the network it needs. The
//! pipeline only ever reads a profile, so swapping agents needs no code change (FR-010).

use crate::phase::Phase;
use std::collections::BTreeMap;

/// The network a job container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network at all: for agents that need no model API.
    None,
    /// Docker's default bridge: for agents that call a model API.
    Bridge,
    /// A Docker network the platform prepared (for example one whose only way out is the
    /// model API's proxy).
    Named(String),
}

impl Network {
    /// `none`, `bridge`, or `network:<name>`.
    pub fn parse(text: &str) -> Result<Network, String> {
        match text {
            "none" => Ok(Network::None),
            "bridge" => Ok(Network::Bridge),
            other => match other.strip_prefix("network:") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
                {
                    Ok(Network::Named(name.to_owned()))
                }
                _ => Err(format!(
                    "network {other:?} must be none, bridge or network:<docker network name>"
                )),
            },
        }
    }

    /// The Docker `NetworkMode`.
    pub fn docker_mode(&self) -> &str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
            Network::Named(name) => name,
        }
    }
}

/// How an agent's standard output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Plain text, kept as the log.
    Text,
    /// Codex's `--json` event stream: kept as the log and summarised (commands, tokens).
    CodexJson,
}

/// How to run one agent through the Spec Kit phases.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The job image, when this agent needs another than the runner's default.
    pub image: Option<String>,
    /// Files written into the agent's HOME before the container starts (its own
    /// configuration, e.g. `.codex/config.toml`); never secrets.
    pub home_files: BTreeMap<String, String>,
    pub output: OutputFormat,
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
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::Text,
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
            network: Network::Bridge,
            image: None,
            home_files: BTreeMap::new(),
            output: OutputFormat::CodexJson,
        }
    }

    /// The profiles specrun ships with.
    pub fn builtins() -> Vec<AgentProfile> {
        vec![AgentProfile::scripted(), AgentProfile::codex()]
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
            Some("unknown agent \"nope\"; known agents: scripted, codex")
        );
        assert!(AgentProfile::builtin("scripted").is_ok());
    }
}
