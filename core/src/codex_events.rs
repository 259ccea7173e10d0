//! Reading Codex's `--json` event stream (one JSON object a line) into what an operator
//! wants to know about a phase: the commands the agent ran, the tokens it used, and
//! whether a turn failed.

use crate::event_summary::{is_zero, push_bounded, text, EventSummary};
use serde::Serialize;
use serde_json::Value;

/// What one `codex exec --json` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodexSummary {
    /// Commands the agent ran, with their exit codes: the first
    /// [`MAX_ITEMS`](crate::event_summary::MAX_ITEMS).
    pub commands: Vec<CommandRun>,
    /// Commands run past those.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_commands: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Messages of `turn.failed` and top-level `error` events: the first
    /// [`MAX_ITEMS`](crate::event_summary::MAX_ITEMS).
    pub errors: Vec<String>,
    /// Errors reported past those.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_errors: u64,
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
        match event["type"].as_str() {
            Some("item.completed") => {
                let item = &event["item"];
                match item["type"].as_str() {
                    Some("command_execution") => push_bounded(
                        &mut self.commands,
                        &mut self.more_commands,
                        CommandRun {
                            command: text(&item["command"]).unwrap_or_default(),
                            exit_code: item["exit_code"].as_i64(),
                        },
                    ),
                    Some("agent_message") => self.last_message = text(&item["text"]),
                    _ => {}
                }
            }
            Some("turn.completed") => {
                let usage = &event["usage"];
                let count = |key: &str| usage[key].as_u64().unwrap_or(0);
                self.input_tokens = self.input_tokens.saturating_add(count("input_tokens"));
                self.cached_input_tokens = self
                    .cached_input_tokens
                    .saturating_add(count("cached_input_tokens"));
                self.output_tokens = self.output_tokens.saturating_add(count("output_tokens"));
            }
            Some("turn.failed") => push_bounded(
                &mut self.errors,
                &mut self.more_errors,
                text(&event["error"]["message"]).unwrap_or_else(|| "turn failed".to_owned()),
            ),
            Some("error") => push_bounded(
                &mut self.errors,
                &mut self.more_errors,
                text(&event["message"]).unwrap_or_else(|| "error".to_owned()),
            ),
            _ => {}
        }
    }

    /// One line for the phase's message.
    fn headline(&self) -> String {
        format!(
            "codex ran {} command(s), {} input and {} output tokens",
            self.commands.len() as u64 + self.more_commands,
            self.input_tokens,
            self.output_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_summary::{MAX_ITEMS, MAX_TEXT};

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
        let json = serde_json::to_value(&summary).unwrap_or_default();
        assert!(json.get("more_commands").is_none(), "{json}");
    }

    #[test]
    fn a_flood_of_commands_keeps_a_bounded_summary() {
        let long = "x".repeat(10 * MAX_TEXT);
        let line = format!(
            r#"{{"type":"item.completed","item":{{"type":"command_execution","command":"{long}","exit_code":1}}}}"#
        );
        let lines = vec![line.as_str(); MAX_ITEMS + 50];
        let summary = CodexSummary::from_lines(lines);
        assert_eq!(summary.commands.len(), MAX_ITEMS);
        assert_eq!(summary.more_commands, 50);
        assert_eq!(summary.commands[0].command.len(), MAX_TEXT);
        assert!(summary.headline().starts_with("codex ran 250 command(s)"));
    }
}
