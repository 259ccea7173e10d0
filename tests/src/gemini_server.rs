//! A scripted model server that speaks Google's Gemini API (`generateContent`,
//! `streamGenerateContent`), so tests can drive the real Gemini CLI (0.61) through Spec
//! Kit's phases without any real model.
//!
//! Gemini CLI (`GOOGLE_GEMINI_BASE_URL=http://IP:PORT`, `GEMINI_API_KEY`) sends every turn
//! as `POST /v1beta/models/<model>:streamGenerateContent?alt=sse`, the key in
//! `x-goog-api-key`, the whole conversation in `contents`. A Spec Kit command invoked as
//! `/speckit.plan` arrives expanded: the text of `.gemini/commands/speckit.plan.toml`'s
//! `prompt`, its `{{args}}` replaced by what followed the command (inside the first
//! fenced `text` block). The commands name no phase; each checks its own extension hooks
//! (`hooks.before_plan`), which is how the server tells them apart. It answers:
//!
//! - specify: one model turn with two `functionCall` parts: the CLI's `write_file` tool
//!   creating `specs/001-<slug>/spec.md` (an absolute path under the workspace directory
//!   the session context names) and its `run_shell_command` tool writing
//!   `.specify/feature.json`;
//! - plan, tasks: a `run_shell_command` call writing `plan.md` / `tasks.md` into the
//!   feature directory, failing without the previous phase's file (the same commands as
//!   [`crate::model_server::phase_command`], piped base64-encoded to `sh`: the CLI
//!   refuses a command holding `$(...)` with `Blocked: command substitution detected`);
//! - once the conversation carries the calls' `functionResponse`s: a final text saying
//!   whether they succeeded (the CLI reports a failed command as `Exit Code: N` in the
//!   output);
//! - anything else: a short text.
//!
//! Each answer is one candidate with `finishReason: STOP` and `usageMetadata`
//! (`promptTokenCount` = body length / 4, `candidatesTokenCount` = 42): one SSE `data:`
//! event when streamed, one JSON object otherwise. `:countTokens` gets the same estimate.
//!
//! Every request is recorded (headers without `x-goog-api-key` and `authorization`, with
//! the query). Requests whose `x-goog-api-key` is not the key get 400 with the API's
//! error shape (`API_KEY_INVALID`), as the real API answers.
//!
//! The server runs on its own thread with its own runtime; it stops when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http_thread::HttpThread;
use crate::model_server::{
    feature_dir_name, phase_command, spec_markdown, Phase, Refusal, ScriptedApi,
};

/// The header Gemini CLI sends the API key in.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

/// The model the tests ask for (`GEMINI_MODEL`); any name is answered.
pub const GEMINI_TEST_MODEL: &str = "gemini-test";

/// Output tokens reported for every answer.
pub const OUTPUT_TOKENS: u64 = 42;

/// Where the job container keeps the repository, if a request does not say.
const DEFAULT_WORKDIR: &str = "/workspace/repo";

/// A scripted Gemini API server; stops when dropped.
pub struct GeminiServer {
    http: HttpThread,
    api: Arc<ScriptedApi>,
}

impl GeminiServer {
    /// Starts the server on `bind_ip` with an OS-chosen port; requests must carry
    /// `x-goog-api-key: <api_key>`.
    pub async fn start(bind_ip: IpAddr, api_key: &str) -> anyhow::Result<Self> {
        let key_header = HeaderName::from_static(API_KEY_HEADER);
        let api = ScriptedApi::new(key_header, api_key.to_owned(), true);
        let (http, api) = api.serve(bind_ip, "gemini-server", handle)?;
        Ok(Self { http, api })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// The value for `GOOGLE_GEMINI_BASE_URL`: `http://IP:PORT` (the CLI adds `/v1beta/...`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Every request received so far, in order, as `{"method", "path", "query",
    /// "headers", "body"}`.
    pub fn requests(&self) -> Vec<Value> {
        self.api.requests()
    }

    /// Whether any request carried the right key.
    pub fn saw_key(&self) -> bool {
        self.api.saw_key()
    }

    /// How many requests were refused (missing or wrong key).
    pub fn unauthorized_requests(&self) -> usize {
        self.api.unauthorized_requests()
    }
}

/// What a request asks of a model: `/v1beta/models/M:generateContent` and the like.
fn method_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    rest.rsplit_once(':').map(|(_, method)| method)
}

/// Admits one request and answers it.
async fn handle(api: Arc<ScriptedApi>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, json_body) = match api.admit(req).await {
        Ok(admitted) => admitted,
        Err(Refusal::UnreadableBody(err)) => {
            return error_response(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &err)
        }
        Err(Refusal::WrongKey) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key. (API_KEY_INVALID)",
            )
        }
    };
    let Some(body) = json_body else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "body is not JSON",
        );
    };
    match (&parts.method, method_of(parts.uri.path())) {
        (&Method::POST, Some("streamGenerateContent")) => {
            let chunk = answer(&body);
            let mut response =
                Response::new(Full::new(Bytes::from(format!("data: {chunk}\r\n\r\n"))));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response
        }
        (&Method::POST, Some("generateContent")) => json_response(StatusCode::OK, &answer(&body)),
        (&Method::POST, Some("countTokens")) => json_response(
            StatusCode::OK,
            &json!({"totalTokens": estimate_tokens(&body)}),
        ),
        _ => error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "not scripted"),
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

/// The Gemini API's error shape.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "status": kind}}),
    )
}

/// Prompt tokens reported for a request: ~ body size / 4.
pub fn estimate_tokens(body: &Value) -> u64 {
    (body.to_string().len() / 4) as u64
}

/// The `GenerateContentResponse` answering `body`.
pub fn answer(body: &Value) -> Value {
    let parts: Vec<Value> = match script(body) {
        Reply::Calls(calls) => calls
            .into_iter()
            .map(|call| json!({"functionCall": {"name": call.name, "args": call.args}}))
            .collect(),
        Reply::Text(text) => vec![json!({"text": text})],
    };
    let prompt = estimate_tokens(body);
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": OUTPUT_TOKENS,
            "totalTokenCount": prompt + OUTPUT_TOKENS,
        },
        "modelVersion": GEMINI_TEST_MODEL,
    })
}

// ---------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------

/// What the scripted model answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A model turn calling the CLI's tools.
    Calls(Vec<FunctionCall>),
    /// A final text.
    Text(String),
}

/// One `functionCall` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// The CLI's tool name (`write_file`, `run_shell_command`).
    pub name: String,
    pub args: Value,
}

/// The text parts of a content.
fn texts(content: &Value) -> impl Iterator<Item = &str> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("text").and_then(Value::as_str))
}

/// The `functionResponse`s of a content.
fn function_responses(content: &Value) -> impl Iterator<Item = &Value> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("functionResponse"))
}

/// Decides the reply to a `generateContent` request body.
pub fn script(body: &Value) -> Reply {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let found = contents.iter().enumerate().rev().find_map(|(index, c)| {
        if c.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        texts(c).find_map(parse_command).map(|phase| (index, phase))
    });
    let Some((index, phase)) = found else {
        return Reply::Text("Nothing scripted for this prompt.".to_owned());
    };
    let responses: Vec<&Value> = contents[index + 1..]
        .iter()
        .flat_map(function_responses)
        .collect();
    if !responses.is_empty() {
        return Reply::Text(final_message(&phase, &responses));
    }
    Reply::Calls(phase_calls(&phase, &working_dir(contents)))
}

/// The phase an expanded Spec Kit command asks for, with `{{args}}` (the first fenced
/// `text` block) as the specify phase's text.
pub fn parse_command(text: &str) -> Option<Phase> {
    if text.contains("hooks.before_specify") {
        let args = text
            .split_once("```text\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .map_or("", |(args, _)| args.trim());
        Some(Phase::Specify(args.to_owned()))
    } else if text.contains("hooks.before_plan") {
        Some(Phase::Plan)
    } else if text.contains("hooks.before_tasks") {
        Some(Phase::Tasks)
    } else {
        None
    }
}

/// The workspace directory the CLI's session context names (`- **Workspace
/// Directories:**` then `  - /workspace/repo`).
fn working_dir(contents: &[Value]) -> String {
    const MARKER: &str = "Workspace Directories:**\n";
    contents
        .iter()
        .flat_map(texts)
        .find_map(|text| {
            let rest = &text[text.find(MARKER)? + MARKER.len()..];
            let line = rest.lines().next()?.trim().strip_prefix("- ")?;
            line.starts_with('/').then(|| line.trim().to_owned())
        })
        .unwrap_or_else(|| DEFAULT_WORKDIR.to_owned())
}

/// The tool calls that do `phase` in `workdir`.
fn phase_calls(phase: &Phase, workdir: &str) -> Vec<FunctionCall> {
    let shell = |command: String| FunctionCall {
        name: "run_shell_command".to_owned(),
        args: json!({"command": command, "description": "Write the phase's document"}),
    };
    match phase {
        Phase::Specify(text) => {
            let dir = format!("specs/{}", feature_dir_name(text));
            let feature_json = json!({ "feature_directory": dir }).to_string();
            vec![
                FunctionCall {
                    name: "write_file".to_owned(),
                    args: json!({
                        "file_path": format!("{workdir}/{dir}/spec.md"),
                        "content": spec_markdown(text),
                    }),
                },
                shell(format!(
                    "mkdir -p .specify && printf '%s\\n' '{feature_json}' > .specify/feature.json && echo 'wrote .specify/feature.json'"
                )),
            ]
        }
        // The CLI blocks a command with `$(...)` in it (as the phase commands have), so
        // the command travels base64-encoded to a shell.
        Phase::Plan | Phase::Tasks => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(phase_command(phase));
            vec![shell(format!("printf '%s' '{encoded}' | base64 -d | sh"))]
        }
    }
}

/// Whether a `functionResponse` reports a failure: an `error`, a command's non-zero
/// `Exit Code:` (the CLI states it only when it is not 0) or a command the CLI `Blocked`.
fn failed(response: &Value) -> Option<String> {
    let body = response.get("response")?;
    if let Some(error) = body.get("error") {
        return Some(error.to_string());
    }
    let output = body.get("output").and_then(Value::as_str)?;
    (output.contains("Exit Code: ") || output.starts_with("Blocked")).then(|| output.to_owned())
}

/// The final message once the phase's tools have run.
fn final_message(phase: &Phase, responses: &[&Value]) -> String {
    let file = match phase {
        Phase::Specify(_) => "spec.md",
        Phase::Plan => "plan.md",
        Phase::Tasks => "tasks.md",
    };
    let failures: Vec<String> = responses.iter().filter_map(|r| failed(r)).collect();
    if failures.is_empty() {
        format!("Wrote {file}. The phase is complete.")
    } else {
        format!("Writing {file} failed:\n{}", failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    const CONTEXT: &str = "<session_context>\n- **Workspace Directories:**\n  - /work/r\n- **Directory Structure:**\n";
    const SPECIFY: &str = "\n## User Input\n\n```text\nAdd a photo album organiser\n```\n\n- look for entries under the `hooks.before_specify` key";

    #[test]
    fn tells_the_expanded_commands_apart() {
        assert_eq!(
            parse_command(SPECIFY),
            Some(Phase::Specify("Add a photo album organiser".into()))
        );
        assert_eq!(
            parse_command("```text\n\n```\nentries under the `hooks.before_tasks` key"),
            Some(Phase::Tasks)
        );
        assert_eq!(parse_command("/speckit.plan"), None);
    }

    #[test]
    fn writes_then_answers_after_the_function_responses() {
        let first = json!({"contents": [user(CONTEXT), user(SPECIFY)]});
        let Reply::Calls(calls) = script(&first) else {
            panic!("expected calls");
        };
        assert_eq!(calls[0].name, "write_file");
        assert_eq!(
            calls[0].args["file_path"],
            "/work/r/specs/001-add-photo-album-organiser/spec.md"
        );
        assert_eq!(calls[1].name, "run_shell_command");

        let response = |output: &str| json!({"role": "user", "parts": [{"functionResponse": {"name": "run_shell_command", "response": {"output": output}}}]});
        let done =
            json!({"contents": [user(SPECIFY), {"role": "model", "parts": []}, response("wrote")]});
        assert_eq!(
            script(&done),
            Reply::Text("Wrote spec.md. The phase is complete.".into())
        );
        let broken = json!({"contents": [user("`hooks.before_plan`"), response("Output: no feature directory\nExit Code: 1")]});
        assert_eq!(
            script(&broken),
            Reply::Text(
                "Writing plan.md failed:\nOutput: no feature directory\nExit Code: 1".into()
            )
        );
    }

    #[test]
    fn reports_usage_on_every_answer() {
        let body = json!({"contents": [user("hello")]});
        let answer = answer(&body);
        assert_eq!(
            answer["usageMetadata"]["promptTokenCount"],
            estimate_tokens(&body)
        );
        assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 42);
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["text"],
            "Nothing scripted for this prompt."
        );
        assert_eq!(
            method_of("/v1beta/models/gemini-test:streamGenerateContent"),
            Some("streamGenerateContent")
        );
    }
}
