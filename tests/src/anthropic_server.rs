//! A scripted model server that speaks Anthropic's Messages API over SSE, so tests can
//! drive the real Claude Code CLI (2.1.x) through Spec Kit's phases without any real model.
//!
//! Claude Code (`ANTHROPIC_BASE_URL=http://IP:PORT`) sends every turn as
//! `POST /v1/messages?beta=true` with `"stream": true`, the key in `x-api-key`, and the
//! whole conversation in `messages`. A Spec Kit skill invoked as `/speckit-plan` arrives
//! expanded in a user message: `<command-name>/speckit-plan</command-name>`,
//! `<command-args>...</command-args>` and then the skill's text. The server finds the
//! last such message and answers:
//!
//! - `/speckit-specify <text>`: one assistant turn with two `tool_use` blocks: Claude
//!   Code's `Write` tool creating `specs/001-<slug>/spec.md` (an absolute path under the
//!   session's working directory) and its `Bash` tool writing `.specify/feature.json`;
//! - `/speckit-plan`, `/speckit-tasks`: a `Bash` call writing `plan.md` / `tasks.md` into
//!   the feature directory, failing without the previous phase's file (the same commands
//!   as [`crate::model_server::phase_command`]);
//! - once the conversation carries the calls' `tool_result`s: a final text message saying
//!   whether they succeeded (`stop_reason: end_turn`);
//! - anything else: a short text message.
//!
//! Each answer is one SSE stream as the API sends it: `message_start`, `ping`,
//! `content_block_start` / `_delta` (`text_delta` or `input_json_delta`) / `_stop` per
//! block, `message_delta` (stop reason, output tokens) and `message_stop`. A request
//! without `"stream": true` gets the same message as one JSON object;
//! `POST /v1/messages/count_tokens` gets an estimate.
//!
//! Every request is recorded (headers without `x-api-key` and `authorization`). Requests
//! whose `x-api-key` is not the key get 401 with the API's error shape.
//!
//! The server runs on its own thread with its own runtime, so it keeps answering while a
//! test blocks its own runtime; it stops when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http_thread::HttpThread;
use crate::model_server::{
    feature_dir_name, phase_command, spec_markdown, Phase, Refusal, ScriptedApi,
};

/// The header Claude Code sends the API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Where the job container keeps the repository, if a request does not say.
const DEFAULT_WORKDIR: &str = "/workspace/repo";

/// A scripted Messages API server; stops when dropped.
pub struct AnthropicServer {
    http: HttpThread,
    api: Arc<ScriptedApi>,
}

impl AnthropicServer {
    /// Starts the server on `bind_ip` with an OS-chosen port; requests must carry
    /// `x-api-key: <api_key>`.
    pub async fn start(bind_ip: IpAddr, api_key: &str) -> anyhow::Result<Self> {
        let key_header = HeaderName::from_static(API_KEY_HEADER);
        let api = ScriptedApi::new(key_header, api_key.to_owned(), true);
        let (http, api) = api.serve(bind_ip, "anthropic-server", handle)?;
        Ok(Self { http, api })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// The value for `ANTHROPIC_BASE_URL`: `http://IP:PORT` (Claude Code adds `/v1/...`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Every request received so far, in order, as `{"method", "path", "query",
    /// "headers": {name: value}, "body": JSON or null}`; header names are lower-case and
    /// `x-api-key` and `authorization` are left out.
    pub fn requests(&self) -> Vec<Value> {
        self.api.requests()
    }

    /// Whether any request carried the right `x-api-key`.
    pub fn saw_key(&self) -> bool {
        self.api.saw_key()
    }

    /// How many requests were refused with 401 (missing or wrong key).
    pub fn unauthorized_requests(&self) -> usize {
        self.api.unauthorized_requests()
    }
}

/// Admits one request and answers it.
async fn handle(api: Arc<ScriptedApi>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, json_body) = match api.admit(req).await {
        Ok(admitted) => admitted,
        Err(Refusal::UnreadableBody(err)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("body: {err}"),
            )
        }
        Err(Refusal::WrongKey) => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            )
        }
    };
    match (&parts.method, parts.uri.path(), json_body) {
        (&Method::POST, "/v1/messages", Some(body)) => respond(&body, api.next_id()),
        (&Method::POST, "/v1/messages/count_tokens", Some(body)) => json_response(
            StatusCode::OK,
            &json!({"input_tokens": estimate_tokens(&body)}),
        ),
        (&Method::POST, _, None) => error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body is not JSON",
        ),
        _ => error_response(StatusCode::NOT_FOUND, "not_found_error", "not scripted"),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The Messages API's error shape.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// Answers a `POST /v1/messages`: SSE when the request streams, else one JSON message.
fn respond(body: &Value, n: u64) -> Response<Full<Bytes>> {
    let reply = script(body);
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let input_tokens = estimate_tokens(body);
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(
            StatusCode::OK,
            &whole_message(&reply, n, &model, input_tokens),
        );
    }
    let events = reply_events(&reply, n, &model, input_tokens);
    let mut response = Response::new(Full::new(Bytes::from(render_sse(&events))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Input tokens reported for a request: ~ body size / 4.
fn estimate_tokens(body: &Value) -> u64 {
    (body.to_string().len() / 4) as u64
}

/// Output tokens reported for every answer.
const OUTPUT_TOKENS: u64 = 42;

// ---------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------

/// What the scripted model answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An assistant turn calling Claude Code's tools (`stop_reason: tool_use`).
    Tools(Vec<ToolUse>),
    /// A final text message (`stop_reason: end_turn`).
    Text(String),
}

/// One `tool_use` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolUse {
    /// Claude Code's tool name (`Bash`, `Write`).
    pub name: String,
    /// The tool's input.
    pub input: Value,
}

/// Decides the reply to a Messages API request body.
pub fn script(body: &Value) -> Reply {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let Some((index, phase)) = find_phase(messages) else {
        return Reply::Text("Nothing scripted for this prompt.".to_owned());
    };
    let results: Vec<&Value> = messages[index + 1..]
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .flat_map(content_blocks)
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .collect();
    if !results.is_empty() {
        return Reply::Text(final_message(&phase, &results));
    }
    Reply::Tools(phase_tools(&phase, &working_dir(body)))
}

/// A message's content as blocks (a plain string content is one text block).
fn content_blocks(message: &Value) -> Vec<&Value> {
    match message.get("content") {
        Some(Value::Array(blocks)) => blocks.iter().collect(),
        Some(text @ Value::String(_)) => vec![text],
        _ => Vec::new(),
    }
}

/// The text of a block (or of a plain string content).
fn block_text(block: &Value) -> Option<&str> {
    match block {
        Value::String(text) => Some(text),
        _ => block.get("text").and_then(Value::as_str),
    }
}

/// The last user message that invokes a Spec Kit skill, with the phase it asks for.
fn find_phase(messages: &[Value]) -> Option<(usize, Phase)> {
    messages
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, message)| {
            if message.get("role").and_then(Value::as_str) != Some("user") {
                return None;
            }
            content_blocks(message)
                .into_iter()
                .filter_map(block_text)
                .find_map(parse_command)
                .map(|phase| (index, phase))
        })
}

/// The text between `<tag>` and `</tag>`.
fn tagged<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(&text[start..end])
}

/// The phase an expanded slash command asks for (`<command-name>/speckit-plan</command-name>`).
pub fn parse_command(text: &str) -> Option<Phase> {
    let name = tagged(text, "command-name")?.trim();
    let args = tagged(text, "command-args").unwrap_or_default().trim();
    match name {
        "/speckit-specify" => Some(Phase::Specify(args.to_owned())),
        "/speckit-plan" => Some(Phase::Plan),
        "/speckit-tasks" => Some(Phase::Tasks),
        _ => None,
    }
}

/// The session's working directory, from the environment section Claude Code sends
/// (`Primary working directory: /workspace/repo`).
fn working_dir(body: &Value) -> String {
    const MARKER: &str = "Primary working directory: ";
    let text = body.to_string();
    text.find(MARKER)
        .map(|at| &text[at + MARKER.len()..])
        .and_then(|rest| rest.split(['\\', '"']).next())
        .map(str::trim)
        .filter(|dir| dir.starts_with('/'))
        .unwrap_or(DEFAULT_WORKDIR)
        .to_owned()
}

/// The tool calls that do `phase` in `workdir`.
fn phase_tools(phase: &Phase, workdir: &str) -> Vec<ToolUse> {
    match phase {
        Phase::Specify(text) => {
            let dir = format!("specs/{}", feature_dir_name(text));
            let feature_json = json!({ "feature_directory": dir }).to_string();
            vec![
                ToolUse {
                    name: "Write".to_owned(),
                    input: json!({
                        "file_path": format!("{workdir}/{dir}/spec.md"),
                        "content": spec_markdown(text),
                    }),
                },
                ToolUse {
                    name: "Bash".to_owned(),
                    input: json!({
                        "command": format!("mkdir -p .specify && printf '%s\\n' '{feature_json}' > .specify/feature.json && echo 'wrote .specify/feature.json'"),
                        "description": "Record the feature directory",
                    }),
                },
            ]
        }
        Phase::Plan | Phase::Tasks => vec![ToolUse {
            name: "Bash".to_owned(),
            input: json!({
                "command": phase_command(phase),
                "description": "Write the phase's document",
            }),
        }],
    }
}

/// The final message once the phase's tools have run.
fn final_message(phase: &Phase, results: &[&Value]) -> String {
    let file = match phase {
        Phase::Specify(_) => "spec.md",
        Phase::Plan => "plan.md",
        Phase::Tasks => "tasks.md",
    };
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.get("is_error").and_then(Value::as_bool) == Some(true))
        .map(|r| match r.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        })
        .collect();
    if failed.is_empty() {
        format!("Wrote {file}. The phase is complete.")
    } else {
        format!("Writing {file} failed:\n{}", failed.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------
// Messages and SSE
// ---------------------------------------------------------------------------------------

/// The content blocks and stop reason of a reply; `n` makes tool ids unique.
fn reply_content(reply: &Reply, n: u64) -> (Vec<Value>, &'static str) {
    match reply {
        Reply::Tools(tools) => (
            tools
                .iter()
                .enumerate()
                .map(|(i, tool)| {
                    json!({"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": tool.name, "input": tool.input})
                })
                .collect(),
            "tool_use",
        ),
        Reply::Text(text) => (vec![json!({"type": "text", "text": text})], "end_turn"),
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    })
}

/// A reply as one non-streamed message.
fn whole_message(reply: &Reply, n: u64, model: &Value, input_tokens: u64) -> Value {
    let (content, stop_reason) = reply_content(reply, n);
    json!({
        "id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": usage(input_tokens, OUTPUT_TOKENS),
    })
}

/// The stream events answering with `reply`.
pub fn reply_events(reply: &Reply, n: u64, model: &Value, input_tokens: u64) -> Vec<Value> {
    let (content, stop_reason) = reply_content(reply, n);
    let mut events = vec![
        json!({"type": "message_start", "message": {
            "id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage(input_tokens, 1),
        }}),
        json!({"type": "ping"}),
    ];
    for (index, block) in content.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let mut start = block.clone();
                start["input"] = json!({});
                events.push(
                    json!({"type": "content_block_start", "index": index, "content_block": start}),
                );
                // The input arrives as JSON text in pieces, as the API streams it.
                let input = block["input"].to_string();
                let cut = input
                    .char_indices()
                    .nth(input.chars().count() / 2)
                    .map_or(0, |(i, _)| i);
                for piece in [&input[..cut], &input[cut..]] {
                    events.push(json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}));
                }
            }
            _ => {
                events.push(json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}));
                events.push(json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": block["text"]}}));
            }
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
    }
    events.push(json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": OUTPUT_TOKENS}}));
    events.push(json!({"type": "message_stop"}));
    events
}

/// Renders events as an SSE stream (`event:` line with the type, `data:` line with JSON).
pub fn render_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|event| {
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            format!("event: {kind}\ndata: {event}\n\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"type": "text", "text": text}]})
    }

    const SPECIFY: &str = "<command-message>speckit-specify</command-message>\n<command-name>/speckit-specify</command-name>\n<command-args>Add a photo album organiser</command-args>";

    #[test]
    fn parses_expanded_skill_commands() {
        assert_eq!(
            parse_command(SPECIFY),
            Some(Phase::Specify("Add a photo album organiser".into()))
        );
        assert_eq!(
            parse_command(
                "<command-name>/speckit-tasks</command-name>\n<command-args></command-args>"
            ),
            Some(Phase::Tasks)
        );
        assert_eq!(parse_command("/speckit-plan"), None);
        assert_eq!(
            parse_command("<command-name>/speckit-implement</command-name>"),
            None
        );
    }

    #[test]
    fn writes_then_answers_after_the_tool_results() {
        let first = json!({"messages": [
            user("<system-reminder>context</system-reminder>"),
            user(SPECIFY),
            {"role": "system", "content": [{"type": "text", "text": "# Environment\n - Primary working directory: /work/r\n - Is a git repository: true"}]},
        ]});
        let Reply::Tools(tools) = script(&first) else {
            panic!("expected tool calls");
        };
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0].name, "Write");
        assert_eq!(
            tools[0].input["file_path"],
            "/work/r/specs/001-add-photo-album-organiser/spec.md"
        );
        assert!(tools[1].input["command"]
            .as_str()
            .is_some_and(|c| c.contains(".specify/feature.json")));

        let second = json!({"messages": [
            user(SPECIFY),
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok", "is_error": false}]},
        ]});
        assert_eq!(
            script(&second),
            Reply::Text("Wrote spec.md. The phase is complete.".into())
        );
        let failed = json!({"messages": [
            user("<command-name>/speckit-plan</command-name>"),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "no feature directory", "is_error": true}]},
        ]});
        assert_eq!(
            script(&failed),
            Reply::Text("Writing plan.md failed:\nno feature directory".into())
        );
    }

    #[test]
    fn streams_tool_input_in_pieces() {
        let reply = Reply::Tools(vec![ToolUse {
            name: "Bash".into(),
            input: json!({"command": "echo é"}),
        }]);
        let events = reply_events(&reply, 7, &json!("m"), 10);
        let partial: String = events
            .iter()
            .filter_map(|e| e["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&partial).ok(),
            Some(json!({"command": "echo é"}))
        );
        let sse = render_sse(&events);
        assert!(sse.starts_with("event: message_start\ndata: {"));
        assert!(sse.contains("\"stop_reason\":\"tool_use\""));
        assert!(sse.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}
