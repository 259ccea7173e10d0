//! Reading Codex's `--json` event stream (one JSON object a line) into what an operator
//! wants to know about a phase: the commands the agent ran, the tokens it used, and
//! whether a turn failed.

use crate::event_summary::EventSummary;
use serde::Serialize;
use serde_json::Value;

/// What one `codex exec --json` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodexSummary {
    /// Commands the agent ran, with their exit codes.
    pub commands: Vec<CommandRun>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Messages of `turn.failed` and top-level `error` events.
    pub errors: Vec<String>,
    /// The agent's last message.
    pub last_message: Option<String>,
}

/// One `command_execution` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRun {
    pub command: String,
    pub exit_code: Option<i64>,
}

impl EventSummary for CodexSummary {
    fn add(&mut self, event: &Value) {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        match event["type"].as_str() {
            Some("item.completed") => {
                let item = &event["item"];
                match item["type"].as_str() {
                    Some("command_execution") => self.commands.push(CommandRun {
                        command: text(&item["command"]).unwrap_or_default(),
                        exit_code: item["exit_code"].as_i64(),
                    }),
                    Some("agent_message") => self.last_message = text(&item["text"]),
                    _ => {}
                }
            }
            Some("turn.completed") => {
                let usage = &event["usage"];
                self.input_tokens += usage["input_tokens"].as_u64().unwrap_or(0);
                self.cached_input_tokens += usage["cached_input_tokens"].as_u64().unwrap_or(0);
                self.output_tokens += usage["output_tokens"].as_u64().unwrap_or(0);
            }
            Some("turn.failed") => {
                self.errors.push(
                    text(&event["error"]["message"]).unwrap_or_else(|| "turn failed".to_owned()),
                );
            }
            Some("error") => self
                .errors
                .push(text(&event["message"]).unwrap_or_else(|| "error".to_owned())),
            _ => {}
        }
    }

    /// One line for the phase's message.
    fn headline(&self) -> String {
        format!(
            "codex ran {} command(s), {} input and {} output tokens",
            self.commands.len(),
            self.input_tokens,
            self.output_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_commands_usage_and_failures() {
        let log = r#"{"type":"thread.started","thread_id":"t"}
{"type":"item.completed","item":{"id":"i0","type":"error","message":"Model metadata for `gpt-test` not found"}}
{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"bash -lc 'cat > spec.md'","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"i2","type":"agent_message","text":"Wrote the spec."}}
{"type":"turn.completed","usage":{"input_tokens":1200,"cached_input_tokens":100,"output_tokens":80}}
Reading additional input from stdin...
{"type":"turn.failed","error":{"message":"unexpected status 401"}}"#;
        let summary = CodexSummary::from_lines(log.lines());
        assert_eq!(summary.commands.len(), 1);
        assert_eq!(summary.commands[0].exit_code, Some(0));
        assert_eq!((summary.input_tokens, summary.output_tokens), (1200, 80));
        assert_eq!(summary.last_message.as_deref(), Some("Wrote the spec."));
        assert_eq!(summary.errors, ["unexpected status 401"]);
        assert_eq!(
            summary.headline(),
            "codex ran 1 command(s), 1200 input and 80 output tokens"
        );
    }
}
