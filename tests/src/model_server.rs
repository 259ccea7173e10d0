//! A scripted model server that speaks the OpenAI Responses API over SSE, so tests can
//! drive the real Codex CLI (0.169) through Spec Kit's phases without any real model.
//!
//! Codex sends every turn as `POST /v1/responses` with `"stream": true` and the whole
//! conversation in `input`. The server reads the user's prompt (the last user message that
//! is not a harness-injected `<environment_context>` or `<skill>` block) and answers:
//!
//! - `$speckit-specify <text>`: a `function_call` to Codex's `exec_command` tool whose
//!   command writes `specs/001-<slug>/spec.md` (markdown built from `<text>`) and
//!   `.specify/feature.json`;
//! - `$speckit-plan`: a command that writes `plan.md` into the feature directory (from
//!   `SPECIFY_FEATURE_DIRECTORY`, else `.specify/feature.json`), failing without `spec.md`;
//! - `$speckit-tasks`: likewise `tasks.md`, failing without `plan.md`;
//! - once the conversation carries the call's `function_call_output`: a final assistant
//!   message saying whether the command succeeded;
//! - anything else: a short assistant message and no tool call.
//!
//! Each answer is one SSE stream: `response.created`, `response.output_item.added`,
//! (`response.output_text.delta`), `response.output_item.done`, and `response.completed`
//! with token `usage`. Codex needs `response.completed`; the other events are what the real
//! API sends.
//!
//! Every request is recorded (headers without `authorization`) for assertions. Requests
//! whose `Authorization` is not `Bearer <api key>` get 401.
//!
//! [`TestNetwork`] is the Docker network a test creates for its job container: an
//! `--internal` bridge, so the container reaches its own subnet and the host's address on
//! that bridge (the gateway, where the server listens) and nothing else.
//!
//! The server runs on its own thread with its own runtime, so it keeps answering while a
//! test blocks its own runtime (for example on a `docker exec`); it stops when dropped.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http_thread::HttpThread;

/// The environment variable the generated Codex config reads the API key from.
pub const MODEL_KEY_ENV: &str = "SPECRUN_MODEL_KEY";

/// The model name the generated Codex config asks for.
pub const MODEL: &str = "gpt-test";

/// The provider id the generated Codex config defines.
pub const PROVIDER: &str = "scripted";

/// The harness-injected user messages start with one of these tags, not the prompt.
const INJECTED_PREFIX: char = '<';

/// A scripted Responses API server; stops when dropped.
pub struct ModelServer {
    http: HttpThread,
    api: Arc<ScriptedApi>,
}

impl ModelServer {
    /// Starts the server on `bind_ip` with an OS-chosen port; requests must carry
    /// `Authorization: Bearer <api_key>`.
    pub async fn start(bind_ip: IpAddr, api_key: &str) -> anyhow::Result<Self> {
        let api = ScriptedApi::new(AUTHORIZATION, format!("Bearer {api_key}"), false);
        let (http, api) = api.serve(bind_ip, "model-server", handle)?;
        Ok(Self { http, api })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// The provider base URL, `http://IP:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr())
    }

    /// Every request received so far, in order, as
    /// `{"method", "path", "headers": {name: value}, "body": JSON or null}`; header names
    /// are lower-case and `authorization` is left out.
    pub fn requests(&self) -> Vec<Value> {
        self.api.requests()
    }

    /// Whether any request carried `Authorization: Bearer <api key>`.
    pub fn saw_key(&self) -> bool {
        self.api.saw_key()
    }

    /// How many requests were refused with 401 (missing or wrong key).
    pub fn unauthorized_requests(&self) -> usize {
        self.api.unauthorized_requests()
    }

    /// A Codex `config.toml` that uses this server as the only model provider, reading the
    /// key from [`MODEL_KEY_ENV`], with no retries and nothing that calls other hosts.
    ///
    /// Two settings keep Codex 0.169 off the internet:
    /// - `[analytics] enabled = false`: otherwise it exports OTLP metrics to
    ///   `https://ab.chatgpt.com/otlp/v1/metrics` (and on an internal network waits ~5 s for
    ///   that to fail before exiting);
    /// - `[features] plugins = false`: otherwise it syncs the plugin marketplace with a
    ///   background `git ls-remote https://github.com/openai/plugins.git`, which outlives
    ///   `codex exec` itself.
    ///
    /// `web_search = "disabled"` drops the (server-side) `web_search` tool from requests.
    pub fn codex_config_toml(&self) -> String {
        format!(
            r#"# Written by specrun's tests: the scripted model server is the only provider.
model = "{MODEL}"
model_provider = "{PROVIDER}"
web_search = "disabled"

[analytics]
enabled = false

[features]
plugins = false

[model_providers.{PROVIDER}]
name = "{PROVIDER}"
base_url = "{base_url}"
wire_api = "responses"
env_key = "{MODEL_KEY_ENV}"
request_max_retries = 0
stream_max_retries = 0
"#,
            base_url = self.base_url(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

/// Admits one request and answers it.
async fn handle(api: Arc<ScriptedApi>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, json_body) = match api.admit(req).await {
        Ok(admitted) => admitted,
        Err(Refusal::UnreadableBody(err)) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("body: {err}"))
        }
        Err(Refusal::WrongKey) => {
            return error_response(StatusCode::UNAUTHORIZED, "missing or wrong API key")
        }
    };
    match (&parts.method, parts.uri.path(), json_body) {
        (&Method::POST, "/v1/responses", Some(body)) => respond(&api, &body),
        (&Method::POST, "/v1/responses", None) => {
            error_response(StatusCode::BAD_REQUEST, "body is not JSON")
        }
        _ => error_response(StatusCode::NOT_FOUND, "not scripted"),
    }
}

/// An OpenAI-style JSON error.
fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers a `POST /v1/responses` with the scripted SSE stream.
fn respond(api: &ScriptedApi, body: &Value) -> Response<Full<Bytes>> {
    let reply = script(body);
    let events = reply_events(&reply, api.next_id(), usage_for(body));
    let mut response = Response::new(Full::new(Bytes::from(render_sse(&events))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

// ---------------------------------------------------------------------------------------
// What this server shares with the Anthropic one
// ---------------------------------------------------------------------------------------

/// Largest request body accepted (Codex sends ~40 KB per turn, Claude Code ~60 KB: tools
/// and prompt; both grow with the history).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A scripted model API's key check and records, the same for the Responses API
/// ([`ModelServer`]) and the Messages API ([`crate::anthropic_server::AnthropicServer`]).
pub(crate) struct ScriptedApi {
    /// The header carrying the key; left out of the records, as `authorization` is.
    key_header: HeaderName,
    /// That header's value on an authorised request.
    expected_key: String,
    /// Whether the records carry the query string as `"query"`.
    records_query: bool,
    requests: Mutex<Vec<Value>>,
    saw_key: AtomicBool,
    unauthorized: AtomicUsize,
    next_id: AtomicU64,
}

/// Why [`ScriptedApi::admit`] turned a request away.
pub(crate) enum Refusal {
    /// The body could not be read (too large, or the connection broke); not recorded.
    UnreadableBody(String),
    /// The key was missing or wrong; recorded and counted.
    WrongKey,
}

impl ScriptedApi {
    /// An API whose requests must carry `key_header: expected_key`.
    pub(crate) fn new(key_header: HeaderName, expected_key: String, records_query: bool) -> Self {
        Self {
            key_header,
            expected_key,
            records_query,
            requests: Mutex::new(Vec::new()),
            saw_key: AtomicBool::new(false),
            unauthorized: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    /// Serves this API on `bind_ip` with an OS-chosen port, on a thread called `name`,
    /// answering every request with `handler`.
    pub(crate) fn serve<F, Fut>(
        self,
        bind_ip: IpAddr,
        name: &str,
        handler: F,
    ) -> anyhow::Result<(HttpThread, Arc<Self>)>
    where
        F: Fn(Arc<Self>, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let api = Arc::new(self);
        let handler_api = Arc::clone(&api);
        let http = HttpThread::bind(SocketAddr::new(bind_ip, 0), name, move |req| {
            handler(Arc::clone(&handler_api), req)
        })?;
        Ok((http, api))
    }

    /// Reads the request's body, records the request and checks its key; returns the
    /// request's parts and its body as JSON (`None` when it is not JSON).
    pub(crate) async fn admit(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Parts, Option<Value>), Refusal> {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|err| Refusal::UnreadableBody(err.to_string()))?
            .to_bytes();
        let json_body = serde_json::from_slice::<Value>(&body).ok();
        let mut record = json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
        });
        if self.records_query {
            record["query"] = json!(parts.uri.query());
        }
        record["headers"] = self.headers_without_keys(&parts.headers);
        record["body"] = json_body.clone().unwrap_or(Value::Null);
        self.recorded().push(record);
        let authorized = parts
            .headers
            .get(&self.key_header)
            .is_some_and(|value| value.as_bytes() == self.expected_key.as_bytes());
        if !authorized {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::WrongKey);
        }
        self.saw_key.store(true, Ordering::Relaxed);
        Ok((parts, json_body))
    }

    /// Every request recorded so far, in order.
    pub(crate) fn requests(&self) -> Vec<Value> {
        self.recorded().clone()
    }

    /// Whether any request carried the right key.
    pub(crate) fn saw_key(&self) -> bool {
        self.saw_key.load(Ordering::Relaxed)
    }

    /// How many requests were refused for a missing or wrong key.
    pub(crate) fn unauthorized_requests(&self) -> usize {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// A fresh number for the ids of one answer, from 1.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn recorded(&self) -> MutexGuard<'_, Vec<Value>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The headers as a JSON object (lower-case names; repeated headers joined with ", "),
    /// without `authorization` and the key header.
    fn headers_without_keys(&self, headers: &HeaderMap) -> Value {
        let mut map = serde_json::Map::new();
        for name in headers
            .keys()
            .filter(|name| **name != AUTHORIZATION && **name != self.key_header)
        {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            map.insert(name.as_str().to_owned(), Value::String(joined));
        }
        Value::Object(map)
    }
}

// ---------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------

/// What the scripted model answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A call to Codex's `exec_command` tool running `cmd`.
    Exec {
        /// The shell command.
        cmd: String,
    },
    /// A final assistant message.
    Message {
        /// The message text.
        text: String,
    },
}

/// The Spec Kit phase a prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// `$speckit-specify <text>`, with the text.
    Specify(String),
    /// `$speckit-plan`.
    Plan,
    /// `$speckit-tasks`.
    Tasks,
}

/// Decides the reply to a Responses API request body.
pub fn script(body: &Value) -> Reply {
    let input = body
        .get("input")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let Some((index, prompt)) = find_prompt(input) else {
        return message("No prompt found.");
    };
    let Some(phase) = parse_phase(&prompt) else {
        return message("Nothing scripted for this prompt.");
    };
    match input[index..].iter().rev().find_map(tool_output) {
        Some(output) => message(&final_message(&phase, &output)),
        None => Reply::Exec {
            cmd: phase_command(&phase),
        },
    }
}

/// A [`Reply::Message`].
fn message(text: &str) -> Reply {
    Reply::Message {
        text: text.to_owned(),
    }
}

/// The last user message that is not a harness-injected block, with its index.
fn find_prompt(input: &[Value]) -> Option<(usize, String)> {
    input.iter().enumerate().rev().find_map(|(index, item)| {
        let is_user = item.get("role").and_then(Value::as_str) == Some("user");
        let text = message_text(item)?;
        let injected = text.trim_start().starts_with(INJECTED_PREFIX);
        (is_user && !injected).then(|| (index, text.trim().to_owned()))
    })
}

/// The concatenated `input_text` parts of a message item.
fn message_text(item: &Value) -> Option<String> {
    if item.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let parts = item.get("content")?.as_array()?;
    Some(
        parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The output of a `function_call_output` item, as text.
fn tool_output(item: &Value) -> Option<String> {
    if item.get("type").and_then(Value::as_str) != Some("function_call_output") {
        return None;
    }
    match item.get("output")? {
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// The phase a prompt invokes, if any.
pub fn parse_phase(prompt: &str) -> Option<Phase> {
    let (skill, rest) = prompt
        .split_once(char::is_whitespace)
        .unwrap_or((prompt, ""));
    match skill {
        "$speckit-specify" => Some(Phase::Specify(rest.trim().to_owned())),
        "$speckit-plan" => Some(Phase::Plan),
        "$speckit-tasks" => Some(Phase::Tasks),
        _ => None,
    }
}

/// The final message once the phase's command has run.
fn final_message(phase: &Phase, output: &str) -> String {
    let file = match phase {
        Phase::Specify(_) => "spec.md",
        Phase::Plan => "plan.md",
        Phase::Tasks => "tasks.md",
    };
    if command_succeeded(output) {
        format!("Wrote {file}. The phase is complete.")
    } else {
        format!("Writing {file} failed:\n{output}")
    }
}

/// Whether an `exec_command` output reports exit code 0.
fn command_succeeded(output: &str) -> bool {
    output.contains("Process exited with code 0")
}

// ---------------------------------------------------------------------------------------
// The phases' commands and documents
// ---------------------------------------------------------------------------------------

/// The shell command the scripted model runs for `phase` (in the repository root).
pub fn phase_command(phase: &Phase) -> String {
    match phase {
        Phase::Specify(text) => specify_command(text),
        Phase::Plan => write_in_feature_dir("spec.md", "plan.md", "Implementation Plan", PLAN_BODY),
        Phase::Tasks => write_in_feature_dir("plan.md", "tasks.md", "Tasks", TASKS_BODY),
    }
}

/// The feature directory's name for spec text: `001-` and up to four key words.
pub fn feature_dir_name(text: &str) -> String {
    const STOP: [&str; 16] = [
        "a", "an", "the", "to", "for", "of", "and", "or", "with", "in", "on", "that", "is", "be",
        "as", "by",
    ];
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|word| !word.is_empty() && !STOP.contains(&word.as_str()))
        .take(4)
        .collect();
    let slug = if words.is_empty() {
        "feature".to_owned()
    } else {
        words.join("-")
    };
    format!("001-{slug}")
}

/// Writes `spec.md` and `.specify/feature.json`.
fn specify_command(text: &str) -> String {
    let dir = format!("specs/{}", feature_dir_name(text));
    let feature_json = json!({ "feature_directory": dir }).to_string();
    format!(
        "set -e\nmkdir -p '{dir}' .specify\n{write}\nprintf '%s\\n' '{feature_json}' > .specify/feature.json\necho 'wrote {dir}/spec.md'",
        write = decode_to(&spec_markdown(text), &format!("'{dir}/spec.md'"), ">"),
    )
}

/// Writes `file` into the feature directory (env, else `.specify/feature.json`) with a
/// heading naming the feature and then `body`, failing unless `needs` is already there.
fn write_in_feature_dir(needs: &str, file: &str, heading: &str, body: &str) -> String {
    format!(
        r#"set -e
dir="${{SPECIFY_FEATURE_DIRECTORY:-$(sed -n 's/.*"feature_directory"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' .specify/feature.json 2>/dev/null || true)}}"
if [ -z "$dir" ] || [ ! -f "$dir/{needs}" ]; then echo "no feature directory with {needs}" >&2; exit 1; fi
printf '# {heading}: %s\n\n' "$(basename "$dir")" > "$dir/{file}"
{write}
echo "wrote $dir/{file}""#,
        write = decode_to(body, &format!("\"$dir/{file}\""), ">>"),
    )
}

/// A shell line writing `content` (base64, so any text is safe) to `target` with `redirect`.
fn decode_to(content: &str, target: &str, redirect: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    format!("printf '%s' '{encoded}' | base64 -d {redirect} {target}")
}

/// The spec document for `text`, in Spec Kit's template shape.
pub fn spec_markdown(text: &str) -> String {
    let title = text.lines().next().unwrap_or_default().trim();
    let title: String = title.chars().take(80).collect();
    let branch = feature_dir_name(text);
    format!(
        "# Feature Specification: {title}\n\n\
         **Feature Branch**: `{branch}`\n\
         **Status**: Draft\n\
         **Input**: User description: \"{text}\"\n\n\
         ## User Scenarios & Testing *(mandatory)*\n\n\
         ### User Story 1 - {title} (Priority: P1)\n\n\
         {text}\n\n\
         **Acceptance Scenarios**:\n\n\
         1. **Given** the feature is available, **When** a user uses it, **Then** it behaves as described above.\n\n\
         ## Requirements *(mandatory)*\n\n\
         ### Functional Requirements\n\n\
         - **FR-001**: The system MUST provide: {title}.\n\n\
         ## Success Criteria *(mandatory)*\n\n\
         - **SC-001**: Users can complete User Story 1 without assistance.\n"
    )
}

/// The plan document's body (after its heading).
const PLAN_BODY: &str = "**Input**: Feature specification from `spec.md`\n\n\
## Summary\n\nDeliver User Story 1 of the specification.\n\n\
## Technical Context\n\n**Language/Version**: as the repository\n**Testing**: the repository's test suite\n\n\
## Constitution Check\n\nNo violations.\n\n\
## Project Structure\n\n```text\nspecs/<feature>/\n├── spec.md\n├── plan.md\n└── tasks.md\n```\n";

/// The tasks document's body (after its heading).
const TASKS_BODY: &str = "**Input**: Design documents from the feature directory (`spec.md`, `plan.md`)\n\n\
## Phase 1: Setup\n\n- [ ] T001 Create the project structure per plan.md\n\n\
## Phase 2: User Story 1 (Priority: P1)\n\n\
- [ ] T002 [US1] Implement User Story 1\n- [ ] T003 [US1] Test User Story 1 against its acceptance scenarios\n";

// ---------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------

/// Token usage reported for a request: input ~ body size / 4, fixed output.
fn usage_for(body: &Value) -> Value {
    let input_tokens = (body.to_string().len() / 4) as u64;
    let output_tokens = 42_u64;
    json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    })
}

/// The Responses API events answering with `reply`; `n` makes the ids unique.
pub fn reply_events(reply: &Reply, n: u64, usage: Value) -> Vec<Value> {
    let response_id = format!("resp_{n}");
    let mut events = vec![json!({
        "type": "response.created",
        "response": {"id": response_id, "object": "response", "status": "in_progress"},
    })];
    match reply {
        Reply::Exec { cmd } => events.extend(exec_events(n, cmd)),
        Reply::Message { text } => events.extend(message_events(n, text)),
    }
    events.push(json!({
        "type": "response.completed",
        "response": {"id": response_id, "object": "response", "status": "completed", "usage": usage},
    }));
    events
}

/// `output_item.added` and `.done` for an `exec_command` function call.
fn exec_events(n: u64, cmd: &str) -> Vec<Value> {
    let arguments = json!({ "cmd": cmd }).to_string();
    let item = |status: &str, arguments: &str| {
        json!({
            "type": "function_call", "id": format!("fc_{n}"), "call_id": format!("call_{n}"),
            "name": "exec_command", "arguments": arguments, "status": status,
        })
    };
    vec![
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", "")}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item("completed", &arguments)}),
    ]
}

/// `output_item.added`, one text delta and `.done` for an assistant message.
fn message_events(n: u64, text: &str) -> Vec<Value> {
    let id = format!("msg_{n}");
    let item = |status: &str, content: Value| json!({"type": "message", "id": id, "role": "assistant", "status": status, "content": content});
    vec![
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", json!([]))}),
        json!({"type": "response.output_text.delta", "item_id": id, "output_index": 0, "content_index": 0, "delta": text}),
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": item("completed", json!([{"type": "output_text", "text": text, "annotations": []}]))}),
    ]
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

// ---------------------------------------------------------------------------------------
// The test's Docker network
// ---------------------------------------------------------------------------------------

/// A Docker network created by a test (an `--internal` bridge); removed when dropped.
///
/// Containers on it reach each other and the host's address on the bridge (the gateway),
/// where a test binds its servers; no route leads anywhere else, so an agent inside cannot
/// reach the internet or the host's other networks even if it tried.
pub struct TestNetwork {
    name: String,
    gateway: IpAddr,
}

impl TestNetwork {
    /// Creates `specrun-test-<random>` with the docker CLI and reads its gateway address.
    pub fn create() -> anyhow::Result<Self> {
        let name = format!("specrun-test-{:016x}", random_u64());
        docker(&[
            "network",
            "create",
            "--internal",
            "--driver",
            "bridge",
            "--label",
            "io.specrun.test=1",
            &name,
        ])?;
        match network_gateway(&name) {
            Ok(gateway) => Ok(Self { name, gateway }),
            Err(err) => {
                let _ = docker(&["network", "rm", &name]);
                Err(err)
            }
        }
    }

    /// The network's name, for `docker run --network`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gateway address: the host's own address on the network's bridge.
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(err) = docker(&["network", "rm", &self.name]) {
            eprintln!("removing test network {}: {err:#}", self.name);
        }
    }
}

/// Checks from inside `container` that a TCP connection to `addr` opens within 5 s, so a
/// firewall in the way shows up as a clear error rather than as a hanging agent.
pub fn check_reachable_from(container: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let script = format!(
        "import socket; socket.create_connection(('{}', {}), timeout=5).close()",
        addr.ip(),
        addr.port()
    );
    docker(&["exec", container, "python3", "-c", &script]).with_context(|| {
        format!(
            "container {container} cannot reach {addr}: a host firewall probably drops \
             traffic from the test network's bridge to the host (check the INPUT chain, \
             e.g. `iptables -S INPUT`)"
        )
    })?;
    Ok(())
}

/// The IPv4 gateway of network `name`.
fn network_gateway(name: &str) -> anyhow::Result<IpAddr> {
    let out = docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        name,
    ])?;
    out.split_whitespace()
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
        .with_context(|| format!("network {name} has no IPv4 gateway (inspect said {out:?})"))
}

/// Runs the docker CLI; returns its trimmed stdout, failing on a non-zero exit.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = StdCommand::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A random 64-bit number from std's randomly keyed hasher, the clock and the process id.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    }

    #[test]
    fn parses_phases() {
        assert_eq!(
            parse_phase("$speckit-specify Build it\nnow"),
            Some(Phase::Specify("Build it\nnow".into()))
        );
        assert_eq!(parse_phase("$speckit-plan"), Some(Phase::Plan));
        assert_eq!(parse_phase("$speckit-tasks  "), Some(Phase::Tasks));
        assert_eq!(parse_phase("/prompts:speckit.plan"), None);
    }

    #[test]
    fn skips_injected_blocks_and_answers_after_the_tool_output() {
        let first = json!({"input": [
            user("<environment_context>..</environment_context>"),
            user("$speckit-plan"),
            user("<skill>\n<name>speckit-plan</name> $speckit-tasks</skill>"),
        ]});
        assert!(matches!(script(&first), Reply::Exec { cmd } if cmd.contains("plan.md")));
        let second = json!({"input": [
            user("$speckit-plan"),
            {"type": "function_call", "call_id": "c", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "Process exited with code 0\nOutput:\nok"},
        ]});
        assert_eq!(
            script(&second),
            message("Wrote plan.md. The phase is complete.")
        );
    }

    #[test]
    fn names_feature_directories() {
        assert_eq!(
            feature_dir_name("Add a photo album organiser to the app"),
            "001-add-photo-album-organiser"
        );
        assert_eq!(feature_dir_name("!!!"), "001-feature");
    }

    #[test]
    fn renders_sse() {
        let events = reply_events(&message("hi"), 1, json!({}));
        let sse = render_sse(&events);
        assert!(sse.starts_with("event: response.created\ndata: {"));
        assert!(sse.ends_with("\n\n"));
        assert_eq!(sse.matches("event: ").count(), 5);
    }
}
