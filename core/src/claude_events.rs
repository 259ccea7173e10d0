//! Reading Claude Code's `--output-format stream-json --verbose` stream (one JSON object a
//! line) into what an operator wants to know about a phase: the tools the agent called
//! (and whether they failed), the tokens and turns it used, and how the session ended.
//!
//! The lines that matter: `{"type":"assistant","message":{"content":[...]}}` with
//! `tool_use` and `text` blocks, `{"type":"user","message":{"content":[{"type":
//! "tool_result","tool_use_id":..,"is_error":..}]}}`, and the closing `{"type":"result",
//! "subtype":"success"|"error_...","is_error":..,"num_turns":..,"usage":{..},"result":..}`.

use crate::event_summary::{is_zero, push_bounded, text, EventSummary};
use serde::Serialize;
use serde_json::Value;

/// What one `claude -p ... --output-format stream-json` run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClaudeSummary {
    /// The model named by the `system`/`init` event.
    pub model: Option<String>,
    /// Tool calls in order, each with whether its result was an error (None: no result):
    /// the first [`MAX_ITEMS`](crate::event_summary::MAX_ITEMS).
    pub tools: Vec<ToolCall>,
    /// Tool calls made past those.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_tools: u64,
    pub input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub output_tokens: u64,
    pub num_turns: Option<u64>,
    pub total_cost_usd: Option<f64>,
    /// The `result` event's subtype (`success`, `error_max_turns`, ...).
    pub outcome: Option<String>,
    /// Errors the `result` event reported: the first
    /// [`MAX_ITEMS`](crate::event_summary::MAX_ITEMS).
    pub errors: Vec<String>,
    /// Errors reported past those.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_errors: u64,
    /// The agent's final text.
    pub last_message: Option<String>,
}

/// One `tool_use` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub tool: String,
    /// The command (Bash) or file (Write, Edit, Read) it was given, if any.
    pub target: Option<String>,
    pub is_error: Option<bool>,
    #[serde(skip)]
    id: String,
}

impl EventSummary for ClaudeSummary {
    fn add(&mut self, event: &Value) {
        let blocks = || {
            event["message"]["content"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
        };
        match event["type"].as_str() {
            Some("system") if event["subtype"] == "init" => self.model = text(&event["model"]),
            Some("assistant") => {
                for block in blocks() {
                    match block["type"].as_str() {
                        Some("tool_use") => {
                            let input = &block["input"];
                            let target = ["command", "file_path", "path", "pattern"]
                                .iter()
                                .find_map(|key| text(&input[*key]));
                            let call = ToolCall {
                                tool: text(&block["name"]).unwrap_or_default(),
                                target,
                                is_error: None,
                                id: text(&block["id"]).unwrap_or_default(),
                            };
                            push_bounded(&mut self.tools, &mut self.more_tools, call);
                        }
                        Some("text") => {
                            if let Some(t) = text(&block["text"]).filter(|t| !t.trim().is_empty()) {
                                self.last_message = Some(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for block in blocks() {
                    if block["type"] != "tool_result" {
                        continue;
                    }
                    // Ids are kept cut to MAX_TEXT, so they are compared cut.
                    let id = text(&block["tool_use_id"]).unwrap_or_default();
                    if let Some(call) = self.tools.iter_mut().find(|c| c.id == id) {
                        call.is_error = Some(block["is_error"].as_bool().unwrap_or(false));
                    }
                }
            }
            Some("result") => {
                let usage = &event["usage"];
                let count = |key: &str| usage[key].as_u64().unwrap_or(0);
                self.input_tokens = self.input_tokens.saturating_add(count("input_tokens"));
                self.cache_read_input_tokens = self
                    .cache_read_input_tokens
                    .saturating_add(count("cache_read_input_tokens"));
                self.cache_creation_input_tokens = self
                    .cache_creation_input_tokens
                    .saturating_add(count("cache_creation_input_tokens"));
                self.output_tokens = self.output_tokens.saturating_add(count("output_tokens"));
                self.num_turns = event["num_turns"].as_u64();
                self.total_cost_usd = event["total_cost_usd"].as_f64();
                self.outcome = text(&event["subtype"]);
                if let Some(result) = text(&event["result"]).filter(|t| !t.trim().is_empty()) {
                    self.last_message = Some(result);
                }
                let failed = event["is_error"].as_bool().unwrap_or(false)
                    || self.outcome.as_deref().is_some_and(|s| s != "success");
                if failed {
                    let reported = self.errors.len() as u64 + self.more_errors;
                    let listed = event["errors"].as_array().map_or(&[][..], Vec::as_slice);
                    for error in listed.iter().filter_map(text) {
                        push_bounded(&mut self.errors, &mut self.more_errors, error);
                    }
                    if self.errors.len() as u64 + self.more_errors == reported {
                        let error = self
                            .last_message
                            .clone()
                            .or_else(|| self.outcome.clone())
                            .unwrap_or_else(|| "the session failed".to_owned());
                        push_bounded(&mut self.errors, &mut self.more_errors, error);
                    }
                }
            }
            _ => {}
        }
    }

    /// One line for the phase's message.
    fn headline(&self) -> String {
        let failed = self
            .tools
            .iter()
            .filter(|c| c.is_error == Some(true))
            .count();
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        format!(
            "claude made {} tool call(s){failed}, {} input and {} output tokens",
            self.tools.len() as u64 + self.more_tools,
            self.input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_creation_input_tokens),
            self.output_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_summary::{MAX_ITEMS, MAX_TEXT};

    #[test]
    fn folds_tools_usage_and_the_result() {
        let log = r##"{"type":"system","subtype":"init","cwd":"/workspace/repo","model":"claude-test","tools":["Bash","Write"]}
{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"/workspace/repo/specs/001-x/spec.md","content":"# Spec"}},{"type":"tool_use","id":"t2","name":"Bash","input":{"command":"mkdir -p .specify","description":"d"}}]}}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"},{"type":"tool_result","tool_use_id":"t2","content":"boom","is_error":true}]}}
not json at all
{"type":"assistant","message":{"content":[{"type":"text","text":"Wrote the spec."}]}}
{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.25,"result":"Wrote the spec.","usage":{"input_tokens":1200,"cache_read_input_tokens":100,"cache_creation_input_tokens":0,"output_tokens":80}}"##;
        let summary = ClaudeSummary::from_lines(log.lines());
        assert_eq!(summary.model.as_deref(), Some("claude-test"));
        assert_eq!(summary.tools.len(), 2);
        assert_eq!(summary.tools[0].tool, "Write");
        assert_eq!(
            summary.tools[0].target.as_deref(),
            Some("/workspace/repo/specs/001-x/spec.md")
        );
        assert_eq!(summary.tools[0].is_error, Some(false));
        assert_eq!(summary.tools[1].is_error, Some(true));
        assert_eq!((summary.input_tokens, summary.output_tokens), (1200, 80));
        assert_eq!(summary.num_turns, Some(2));
        assert_eq!(summary.outcome.as_deref(), Some("success"));
        assert!(summary.errors.is_empty());
        assert_eq!(summary.last_message.as_deref(), Some("Wrote the spec."));
        assert_eq!(
            summary.headline(),
            "claude made 2 tool call(s) (1 failed), 1300 input and 80 output tokens"
        );
        let json = serde_json::to_value(&summary).unwrap_or_default();
        assert!(json["tools"][0].get("id").is_none());
    }

    #[test]
    fn a_failed_session_reports_its_error() {
        let log = r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 401 invalid x-api-key","usage":{}}
{"type":"result","subtype":"error_max_turns","is_error":false,"errors":["reached the turn limit"]}"#;
        let summary = ClaudeSummary::from_lines(log.lines());
        assert_eq!(
            summary.errors,
            ["API Error: 401 invalid x-api-key", "reached the turn limit"]
        );
    }

    #[test]
    fn a_hostile_stream_keeps_a_bounded_summary() {
        let call = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"{}","name":"Bash","input":{{"command":"ls"}}}}]}}}}"#,
            "i".repeat(10 * MAX_TEXT)
        );
        let errors = vec!["\"e\""; MAX_ITEMS + 7].join(",");
        let result = format!(
            r#"{{"type":"result","subtype":"error_during_execution","errors":[{errors}],"usage":{{"input_tokens":18446744073709551615,"output_tokens":1}}}}"#
        );
        let mut lines = vec![call.as_str(); MAX_ITEMS + 3];
        lines.extend([result.as_str(), result.as_str()]);
        let summary = ClaudeSummary::from_lines(lines);
        assert_eq!((summary.tools.len(), summary.more_tools), (MAX_ITEMS, 3));
        assert_eq!(summary.tools[0].id.len(), MAX_TEXT);
        assert_eq!(summary.errors.len(), MAX_ITEMS);
        assert_eq!(
            summary.more_errors,
            2 * (MAX_ITEMS as u64 + 7) - MAX_ITEMS as u64
        );
        assert_eq!(summary.input_tokens, u64::MAX);
        assert!(summary
            .headline()
            .starts_with("claude made 203 tool call(s)"));
    }
}
