//! A fake GitHub for tests: a small, stateful imitation of the GitHub REST endpoints specrun
//! calls, under a GitHub-Enterprise-style `/api/v3` base, next to a real git smart-HTTP server
//! ([`GitHttpServer`]) holding the repositories.
//!
//! Every request is checked against GitHub's own OpenAPI description of the operation (the
//! subset in `tests/fixtures/github-openapi-subset.json`, made by
//! `scripts/update-github-openapi.sh`): its query parameters and JSON body on the way in, and
//! the fake's own JSON answer on the way out. Whatever does not fit is recorded; tests assert
//! [`ForgeServer::violations`] is empty.
//!
//! Operations: `GET /repos/{owner}/{repo}`, `GET` and `POST /repos/{owner}/{repo}/pulls`,
//! `GET` and `PATCH /repos/{owner}/{repo}/pulls/{pull_number}`,
//! `POST /repos/{owner}/{repo}/issues/{issue_number}/labels`.
//!
//! GitHub behaviours honoured: `head` in a pull-request listing filters only in
//! `owner:branch` form and is silently ignored without `owner:`; a second open pull request
//! for the same head and base gets 422 "A pull request already exists for OWNER:BRANCH.";
//! a head or base branch missing from the git repository, or a head with no commits over
//! the base, gets 422; `draft` is a field of create only; labels are added by name through
//! the issues endpoint, creating the missing ones; an API request without the token gets
//! 401 "Bad credentials", an unknown repository or pull request 404 "Not Found"; a new pull
//! request's `mergeable` is `null` (GitHub computes it in the background).
//!
//! # Known deviations from GitHub (the allow-list)
//!
//! - **Stricter request bodies.** A body field the operation's schema does not declare
//!   (e.g. `labels` or `assignees` in create-PR, `draft` in update-PR) is a violation and gets
//!   422 `Invalid request.`; GitHub silently ignores unknown fields. This is on purpose: a
//!   client sending a field GitHub ignores has a bug that GitHub would hide.
//! - **Stricter responses.** The fake's own answers may not carry a property the schema
//!   does not declare either, so it cannot invent fields.
//! - **Invalid query parameters** (undeclared names, values outside an `enum`, non-integers
//!   where an integer is declared) are violations answered with 422; GitHub mostly ignores
//!   them.
//! - **Statuses GitHub's description leaves out** (401 for every operation; 404 for
//!   create-PR, list-PRs and update-PR) are sent with GitHub's `basic-error` body but cannot be
//!   checked against the operation's description.
//! - **No forks, one user.** Every request acts as one user, [`FORGE_USER`]; `head` may name
//!   only the repository's own owner; `head_repo` and `issue` (converting an issue) are refused
//!   with 422. Repository owners are users, never organisations.
//! - **Only pull requests are issues.** The labels endpoint accepts the number of a pull
//!   request; a plain issue cannot be created.
//! - **Labels** created on the fly get color `ededed` and description `""` (GitHub: `null`;
//!   the description's `pull-request-simple` schema declares a label's description
//!   non-nullable). Label names match case-insensitively, as on GitHub.
//! - **Git on its own port.** `clone_url` points at the [`GitHttpServer`]
//!   (`{git_base_url}/{owner}/{name}.git`, Basic auth `x-access-token:TOKEN`), not at the API's
//!   host; `html_url`s point at the API's host, which serves no web pages.
//! - **Counters not kept**: comments, review comments, stars, watchers, forks and sizes are
//!   always 0; `mergeable_state` is always `unknown`; no merging; no `Link` header beyond
//!   `rel="next"`; no ETags, rate limits or conditional requests.
//! - **Tolerated body fields** ([`TOLERATED_BODY_FIELDS`]): fields a known client sends that
//!   GitHub ignores and the strict check would otherwise refuse. Only `pull_number` in
//!   update-PR, which octocrab 0.54's `pulls().update(n)` builder serialises into the body.
//! - **Request bodies** over 1 MiB get 400 "Problems parsing JSON".

use std::collections::BTreeMap;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{ensure, Context as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LINK, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::NON_ALPHANUMERIC;
use serde_json::{json, Map, Value};

use crate::git_http::GitHttpServer;
use crate::http_thread::{HttpThread, RequestGate};

/// The login of the one user every API request acts as.
pub const FORGE_USER: &str = "specrun-bot";

/// The API's path prefix, as on GitHub Enterprise Server.
pub const API_PREFIX: &str = "/api/v3";

/// GitHub's OpenAPI description of the operations the fake serves (dereferenced subset).
const OPENAPI_SUBSET: &str = include_str!("../fixtures/github-openapi-subset.json");

/// The REST API version the fake claims to serve.
const API_VERSION: &str = "2022-11-28";

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// (operationId, field): body fields a known client sends that GitHub ignores, removed before
/// the strict check instead of being refused. octocrab 0.54's `UpdatePullRequestBuilder`
/// serialises its `pull_number` into the PATCH body.
pub const TOLERATED_BODY_FIELDS: &[(&str, &str)] = &[("pulls/update", "pull_number")];

/// The color GitHub gives a label created without one.
const DEFAULT_LABEL_COLOR: &str = "ededed";

/// One pull request as the fake holds it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRecord {
    /// The pull request's number in its repository (shared with issues on GitHub).
    pub number: u64,
    /// Its title.
    pub title: String,
    /// Its body (description), if any.
    pub body: Option<String>,
    /// The head branch's name (without `owner:`).
    pub head: String,
    /// The base branch's name.
    pub base: String,
    /// Whether it was opened as a draft.
    pub draft: bool,
    /// The names of its labels, in the order they were added.
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    /// Whether maintainers may push to the head branch.
    pub maintainer_can_modify: bool,
}

/// One API request the fake answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequestRecord {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The path, e.g. `/api/v3/repos/acme/widgets/pulls`.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The JSON body sent, if any (`Value::String` holding the text when it was not JSON).
    pub body: Option<Value>,
    /// The status code answered.
    pub status: u16,
}

/// A fake GitHub on 127.0.0.1: the REST API under [`API_PREFIX`] on one port, and the
/// repositories over git smart HTTP on another. Both take the same token. It stops when dropped.
pub struct ForgeServer {
    /// Declared before `git`: fields drop in order, so the API server stops first.
    api: HttpThread,
    shared: Arc<Shared>,
    git: GitHttpServer,
}

impl ForgeServer {
    /// Starts the API server and its git server; API requests must carry
    /// `Authorization: Bearer TOKEN` (or `token TOKEN`), git requests Basic auth
    /// `x-access-token:TOKEN`.
    pub fn start(token: &str) -> anyhow::Result<Self> {
        ensure!(!token.is_empty(), "the forge token must not be empty");
        let git = GitHttpServer::start(Some(token))?;
        let spec: Value =
            serde_json::from_str(OPENAPI_SUBSET).context("parsing the OpenAPI subset")?;
        // Bound before the state is built: the state's URLs carry the port.
        let listener = StdTcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the listener's address")?;
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            spec,
            urls: Urls {
                web: format!("http://{addr}"),
                api: format!("http://{addr}{API_PREFIX}"),
                git: git.base_url(),
            },
            git_root: git.root().to_path_buf(),
            state: Mutex::new(State::default()),
            log: Mutex::new(Log::default()),
            gate: RequestGate::default(),
        });
        let handler_shared = Arc::clone(&shared);
        let api = HttpThread::start(listener, "forge-server", move |req| {
            handle(Arc::clone(&handler_shared), req)
        })?;
        Ok(Self { api, shared, git })
    }

    /// The API base URL, `http://127.0.0.1:PORT/api/v3` (octocrab's `base_uri`).
    pub fn api_url(&self) -> String {
        format!("http://{}{API_PREFIX}", self.api.addr())
    }

    /// The web base URL `http://127.0.0.1:PORT` that `html_url`s start with.
    pub fn web_url(&self) -> String {
        format!("http://{}", self.api.addr())
    }

    /// The git base URL: repository `owner/name` is at `{git_base_url}/owner/name.git`.
    pub fn git_base_url(&self) -> String {
        self.git.base_url()
    }

    /// Creates repository `owner/name`, whose `main` branch (the default branch) has one
    /// commit adding `README.md` with content `readme`; returns its clone URL.
    pub fn create_repo(&self, owner: &str, name: &str, readme: &str) -> anyhow::Result<String> {
        ensure!(
            valid_owner(owner) && valid_repo_name(name),
            "invalid repository name {owner}/{name}"
        );
        let url = self.git.create_repo(&format!("{owner}/{name}"), readme)?;
        let mut state = self.shared.state();
        let id = IdSource(&mut state.last_id).next();
        let created_at = now();
        state.repos.insert(
            repo_key(owner, name),
            Repo {
                id,
                owner: owner.to_owned(),
                name: name.to_owned(),
                default_branch: "main".to_owned(),
                created_at,
                labels: Vec::new(),
                pulls: Vec::new(),
            },
        );
        Ok(url)
    }

    /// The git server holding the repositories (for `branches()`, `read_file()`, its requests).
    pub fn git(&self) -> &GitHttpServer {
        &self.git
    }

    /// The pull requests of `owner/name`, by number; empty for an unknown repository.
    pub fn pulls(&self, owner: &str, name: &str) -> Vec<PullRecord> {
        let state = self.shared.state();
        let Some(repo) = state.repos.get(&repo_key(owner, name)) else {
            return Vec::new();
        };
        repo.pulls.iter().map(Pull::record).collect()
    }

    /// The names of the labels defined in `owner/name`, in creation order.
    pub fn labels(&self, owner: &str, name: &str) -> Vec<String> {
        let state = self.shared.state();
        state
            .repos
            .get(&repo_key(owner, name))
            .map(|repo| repo.labels.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Holds an API request (e.g. the next pull request's creation) once its body is
    /// read, until the test lets it go.
    pub fn gate(&self) -> &RequestGate {
        &self.shared.gate
    }

    /// Every API request answered so far, in order.
    pub fn requests(&self) -> Vec<ApiRequestRecord> {
        self.shared.log().requests.clone()
    }

    /// Every departure from GitHub's OpenAPI description seen so far, in requests or in the
    /// fake's own responses, each prefixed with the request (`POST /api/v3/...: ...`).
    pub fn violations(&self) -> Vec<String> {
        self.shared.log().violations.clone()
    }
}

/// The base URLs responses are built with.
struct Urls {
    /// `http://127.0.0.1:PORT`, for `html_url`s.
    web: String,
    /// `http://127.0.0.1:PORT/api/v3`, for API `url`s.
    api: String,
    /// The git server's base, for `clone_url`s.
    git: String,
}

/// State shared by every request handler.
struct Shared {
    token: String,
    spec: Value,
    urls: Urls,
    git_root: PathBuf,
    state: Mutex<State>,
    log: Mutex<Log>,
    gate: RequestGate,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bare repository directory of `repo`.
    fn git_dir(&self, repo: &Repo) -> PathBuf {
        self.git_root
            .join(format!("{}/{}.git", repo.owner, repo.name))
    }
}

/// What was asked and what went wrong, for assertions.
#[derive(Default)]
struct Log {
    requests: Vec<ApiRequestRecord>,
    violations: Vec<String>,
}

/// The forge's repositories and the id counter shared by all objects.
#[derive(Default)]
struct State {
    /// Keyed by lower-cased `owner/name` (GitHub names are case-insensitive).
    repos: BTreeMap<String, Repo>,
    last_id: u64,
}

/// One repository's API state (its git data lives in the git server).
struct Repo {
    id: u64,
    owner: String,
    name: String,
    default_branch: String,
    created_at: String,
    labels: Vec<Label>,
    pulls: Vec<Pull>,
}

impl Repo {
    fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The label named `name`, case-insensitively.
    fn label(&self, name: &str) -> Option<&Label> {
        self.labels
            .iter()
            .find(|l| l.name.to_lowercase() == name.to_lowercase())
    }

    fn pull_mut(&mut self, number: u64) -> Option<&mut Pull> {
        self.pulls.iter_mut().find(|p| p.number == number)
    }

    /// The number the next pull request gets.
    fn next_number(&self) -> u64 {
        self.pulls.len() as u64 + 1
    }
}

/// A label defined in a repository.
#[derive(Clone)]
struct Label {
    id: u64,
    name: String,
    color: String,
    description: String,
}

/// One pull request.
struct Pull {
    id: u64,
    number: u64,
    title: String,
    body: Option<String>,
    head: String,
    /// The head's commit when last seen (kept when the branch is deleted).
    head_sha: String,
    base: String,
    draft: bool,
    open: bool,
    maintainer_can_modify: bool,
    /// Label names, as defined in the repository.
    labels: Vec<String>,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
}

impl Pull {
    fn record(&self) -> PullRecord {
        PullRecord {
            number: self.number,
            title: self.title.clone(),
            body: self.body.clone(),
            head: self.head.clone(),
            base: self.base.clone(),
            draft: self.draft,
            labels: self.labels.clone(),
            state: self.state().to_owned(),
            maintainer_can_modify: self.maintainer_can_modify,
        }
    }

    fn state(&self) -> &'static str {
        if self.open {
            "open"
        } else {
            "closed"
        }
    }
}

/// The map key of repository `owner/name`.
fn repo_key(owner: &str, name: &str) -> String {
    format!("{owner}/{name}").to_lowercase()
}

/// GitHub's rule for user and organisation logins.
fn valid_owner(owner: &str) -> bool {
    let bytes = owner.as_bytes();
    !owner.is_empty()
        && owner.len() <= 39
        && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
        && !owner.contains("--")
}

/// GitHub's rule for repository names.
fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The current time as GitHub writes it, e.g. `2024-01-01T00:00:00Z`.
fn now() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

/// The operations the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    GetRepo,
    ListPulls,
    CreatePull,
    GetPull(u64),
    UpdatePull(u64),
    AddLabels(u64),
}

impl Operation {
    /// The operation's method and path template in the OpenAPI description.
    fn spec_key(self) -> (&'static str, &'static str) {
        match self {
            Self::GetRepo => ("get", "/repos/{owner}/{repo}"),
            Self::ListPulls => ("get", "/repos/{owner}/{repo}/pulls"),
            Self::CreatePull => ("post", "/repos/{owner}/{repo}/pulls"),
            Self::GetPull(_) => ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
            Self::UpdatePull(_) => ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"),
            Self::AddLabels(_) => ("post", "/repos/{owner}/{repo}/issues/{issue_number}/labels"),
        }
    }

    /// The operation's page in GitHub's REST documentation.
    fn documentation_url(self) -> &'static str {
        match self {
            Self::GetRepo => "https://docs.github.com/rest/repos/repos#get-a-repository",
            Self::ListPulls => "https://docs.github.com/rest/pulls/pulls#list-pull-requests",
            Self::CreatePull => "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
            Self::GetPull(_) => "https://docs.github.com/rest/pulls/pulls#get-a-pull-request",
            Self::UpdatePull(_) => "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
            Self::AddLabels(_) => {
                "https://docs.github.com/rest/issues/labels#add-labels-to-an-issue"
            }
        }
    }
}

/// A request matched to an operation on repository `owner/repo`.
struct Route {
    operation: Operation,
    owner: String,
    repo: String,
}

/// Matches an API path (below [`API_PREFIX`]) and method to an operation.
fn route(method: &Method, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
    let operation = match (method.as_str(), segments.as_slice()) {
        ("GET", ["repos", _, _]) => Operation::GetRepo,
        ("GET", ["repos", _, _, "pulls"]) => Operation::ListPulls,
        ("POST", ["repos", _, _, "pulls"]) => Operation::CreatePull,
        ("GET", ["repos", _, _, "pulls", n]) => Operation::GetPull(number(n)?),
        ("PATCH", ["repos", _, _, "pulls", n]) => Operation::UpdatePull(number(n)?),
        ("POST", ["repos", _, _, "issues", n, "labels"]) => Operation::AddLabels(number(n)?),
        _ => return None,
    };
    Some(Route {
        operation,
        owner: segments.get(1)?.to_string(),
        repo: segments.get(2)?.to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------

/// A JSON answer with its status and extra headers.
struct Reply {
    status: StatusCode,
    body: Value,
    headers: Vec<(hyper::header::HeaderName, String)>,
}

impl Reply {
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: hyper::header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Why an API request failed, as GitHub reports it.
enum ApiError {
    /// 401 Bad credentials.
    Unauthorized,
    /// 404 Not Found.
    NotFound,
    /// 400 Problems parsing JSON.
    BadJson,
    /// 422 Invalid request (the request did not fit the OpenAPI description).
    Invalid(Vec<String>),
    /// 422 Validation Failed, with GitHub's `errors` objects.
    Failed(Vec<Value>),
}

impl ApiError {
    /// The error's reply; `docs` is the operation's documentation URL.
    fn reply(self, docs: &str) -> Reply {
        let basic = |status: StatusCode, message: &str| {
            json!({
                "message": message,
                "documentation_url": docs,
                "status": status.as_str(),
            })
        };
        match self {
            Self::Unauthorized => Reply::new(
                StatusCode::UNAUTHORIZED,
                basic(StatusCode::UNAUTHORIZED, "Bad credentials"),
            ),
            Self::NotFound => Reply::new(
                StatusCode::NOT_FOUND,
                basic(StatusCode::NOT_FOUND, "Not Found"),
            ),
            Self::BadJson => Reply::new(
                StatusCode::BAD_REQUEST,
                basic(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
            ),
            Self::Invalid(problems) => Reply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "message": format!("Invalid request.\n\n{}", problems.join("\n")),
                    "documentation_url": docs,
                }),
            ),
            Self::Failed(errors) => Reply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "message": "Validation Failed",
                    "errors": errors,
                    "documentation_url": docs,
                }),
            ),
        }
    }
}

/// The `errors` entry GitHub sends for an invalid field.
fn invalid_field(resource: &str, field: &str, code: &str) -> Value {
    json!({"resource": resource, "field": field, "code": code})
}

/// The `errors` entry GitHub sends for a rule with its own message.
fn custom_error(resource: &str, message: String) -> Value {
    json!({"resource": resource, "code": "custom", "message": message})
}

/// The parts of a request the handlers look at.
struct ApiRequest {
    query: Vec<(String, String)>,
    body: Option<Value>,
}

/// Answers one HTTP request and records it.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // A body over the limit is kept as a note and answered 400, as unparsable JSON.
    let (body, body_value) = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            let value = (!body.is_empty()).then(|| {
                serde_json::from_slice::<Value>(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            });
            (body, value)
        }
        Err(err) => (
            Bytes::new(),
            Some(Value::String(format!("unreadable body: {err}"))),
        ),
    };
    if !shared
        .gate
        .pass(parts.method.as_str(), parts.uri.path())
        .await
    {
        let mut dropped = Response::new(Full::new(Bytes::from_static(b"dropped by the test\n")));
        *dropped.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return dropped;
    }
    let reply = answer(&shared, &parts, &body, body_value.clone());
    shared.log().requests.push(ApiRequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body: body_value,
        status: reply.status.as_u16(),
    });
    to_response(reply)
}

/// The reply to one request: authentication, routing, checks against the description, the
/// operation itself, and the check of the reply.
fn answer(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    raw_body: &[u8],
    body: Option<Value>,
) -> Reply {
    const ROOT_DOCS: &str = "https://docs.github.com/rest";
    let request_line = format!("{} {}", parts.method, parts.uri.path());
    let Some(path) = parts.uri.path().strip_prefix(API_PREFIX) else {
        shared.log().violations.push(format!(
            "{request_line}: not under the API base {API_PREFIX}"
        ));
        return ApiError::NotFound.reply(ROOT_DOCS);
    };
    if !authorized(&shared.token, &parts.headers) {
        return ApiError::Unauthorized.reply(ROOT_DOCS);
    }
    let Some(route) = route(&parts.method, path) else {
        shared.log().violations.push(format!(
            "{request_line}: not an operation of the OpenAPI subset"
        ));
        return ApiError::NotFound.reply(ROOT_DOCS);
    };
    let docs = route.operation.documentation_url();
    let (method, template) = route.operation.spec_key();
    let Some(operation) = shared.spec.pointer(&spec_pointer(template, method)) else {
        shared.log().violations.push(format!(
            "{request_line}: {method} {template} missing from the subset"
        ));
        return ApiError::NotFound.reply(docs);
    };
    let request = ApiRequest {
        query: url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        body,
    };
    let reply = match check_request(operation, &request, raw_body) {
        Err(ApiError::Invalid(problems)) => {
            let mut log = shared.log();
            for problem in &problems {
                log.violations
                    .push(format!("{request_line}: request {problem}"));
            }
            ApiError::Invalid(problems).reply(docs)
        }
        Err(err) => {
            shared
                .log()
                .violations
                .push(format!("{request_line}: request body is not JSON"));
            err.reply(docs)
        }
        Ok(()) => execute(shared, &route, &request).unwrap_or_else(|err| err.reply(docs)),
    };
    for problem in check_reply(operation, &reply) {
        shared
            .log()
            .violations
            .push(format!("{request_line}: response {problem}"));
    }
    reply
}

/// Whether the headers carry `Authorization: Bearer TOKEN` or `token TOKEN`.
fn authorized(token: &str, headers: &hyper::HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        && credential.trim() == token
}

/// The JSON pointer of operation `method` of path `template` in the description.
fn spec_pointer(template: &str, method: &str) -> String {
    format!(
        "/paths/{}/{method}",
        template.replace('~', "~0").replace('/', "~1")
    )
}

/// Checks the query parameters and the body against the operation's description.
fn check_request(operation: &Value, request: &ApiRequest, raw_body: &[u8]) -> Result<(), ApiError> {
    let mut problems = check_query(operation, &request.query);
    let request_body = operation.get("requestBody");
    let schema = request_body.and_then(|b| b.pointer("/content/application~1json/schema"));
    match (&request.body, schema) {
        (Some(_), _) if serde_json::from_slice::<Value>(raw_body).is_err() => {
            return Err(ApiError::BadJson)
        }
        (Some(body), Some(schema)) => {
            let body = without_tolerated_fields(operation, body);
            problems.extend(
                schema::check(schema, &body, true)
                    .into_iter()
                    .map(|p| format!("body {p}")),
            );
        }
        (Some(_), None) => problems.push("body: the operation takes no body".to_owned()),
        (None, Some(_)) => {
            let required = request_body
                .and_then(|b| b.get("required"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if required {
                problems.push("body: missing, the operation requires one".to_owned());
            }
        }
        (None, None) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(problems))
    }
}

/// `body` without the [`TOLERATED_BODY_FIELDS`] of the operation.
fn without_tolerated_fields(operation: &Value, body: &Value) -> Value {
    let id = operation
        .get("operationId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        for (_, field) in TOLERATED_BODY_FIELDS.iter().filter(|(op, _)| *op == id) {
            object.remove(*field);
        }
    }
    body
}

/// Checks each query parameter is declared by the operation and fits its schema.
fn check_query(operation: &Value, query: &[(String, String)]) -> Vec<String> {
    let params = operation
        .get("parameters")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, value) in query {
        let declared = params.iter().find(|p| {
            p.get("in").and_then(Value::as_str) == Some("query")
                && p.get("name").and_then(Value::as_str) == Some(name)
        });
        let Some(schema) = declared.and_then(|p| p.get("schema")) else {
            problems.push(format!(
                "query parameter {name:?}: not declared by the operation"
            ));
            continue;
        };
        let typed = match schema.get("type").and_then(Value::as_str) {
            Some("integer") => value.parse::<i64>().map(Value::from).ok(),
            Some("boolean") => value.parse::<bool>().map(Value::from).ok(),
            _ => Some(Value::String(value.clone())),
        };
        match typed {
            Some(typed) => problems.extend(
                schema::check(schema, &typed, true)
                    .into_iter()
                    .map(|p| format!("query parameter {name:?}{p}")),
            ),
            None => problems.push(format!(
                "query parameter {name:?}: {value:?} is not of type {schema}"
            )),
        }
    }
    problems
}

/// Checks a reply against the operation's response for its status, when the description has
/// one (statuses it leaves out are on the allow-list).
fn check_reply(operation: &Value, reply: &Reply) -> Vec<String> {
    let Some(response) = operation.pointer(&format!("/responses/{}", reply.status.as_str())) else {
        return Vec::new();
    };
    match response.pointer("/content/application~1json/schema") {
        Some(schema) => schema::check(schema, &reply.body, true)
            .into_iter()
            .map(|p| format!("{} body {p}", reply.status.as_str()))
            .collect(),
        None => vec![format!(
            "{}: the description gives this status no JSON body",
            reply.status
        )],
    }
}

/// Runs the operation on the forge's state.
fn execute(shared: &Shared, route: &Route, request: &ApiRequest) -> Result<Reply, ApiError> {
    let mut guard = shared.state();
    let State { repos, last_id } = &mut *guard;
    let repo = repos
        .get_mut(&repo_key(&route.owner, &route.repo))
        .ok_or(ApiError::NotFound)?;
    let mut ids = IdSource(last_id);
    let empty = Map::new();
    let body = request
        .body
        .as_ref()
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match route.operation {
        Operation::GetRepo => Ok(Reply::new(
            StatusCode::OK,
            Render::new(shared, repo).repo(true),
        )),
        Operation::ListPulls => list_pulls(shared, repo, &request.query),
        Operation::CreatePull => create_pull(shared, repo, body, &mut ids),
        Operation::GetPull(number) => get_pull(shared, repo, number),
        Operation::UpdatePull(number) => update_pull(shared, repo, number, body),
        Operation::AddLabels(number) => add_labels(shared, repo, number, body, &mut ids),
    }
}

/// Hands out ids from the state's counter while a repository is borrowed from it.
struct IdSource<'a>(&'a mut u64);

impl IdSource<'_> {
    fn next(&mut self) -> u64 {
        *self.0 += 1;
        *self.0
    }
}

/// `GET /repos/{owner}/{repo}/pulls`: filters by `state`, `head` (only as `owner:branch`) and
/// `base`; newest first unless `direction=asc`; paged by `per_page` and `page`.
fn list_pulls(shared: &Shared, repo: &Repo, query: &[(String, String)]) -> Result<Reply, ApiError> {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let state = param("state").unwrap_or("open");
    // GitHub ignores a `head` without `owner:`.
    let head = param("head").and_then(|h| h.split_once(':'));
    let base = param("base");
    let mut pulls: Vec<&Pull> = repo
        .pulls
        .iter()
        .filter(|p| state == "all" || p.state() == state)
        .filter(|p| {
            head.is_none_or(|(owner, branch)| {
                owner.eq_ignore_ascii_case(&repo.owner) && p.head == branch
            })
        })
        .filter(|p| base.is_none_or(|b| p.base == b))
        .collect();
    if param("direction") != Some("asc") {
        pulls.reverse();
    }
    let per_page = param("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = param("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let render = Render::new(shared, repo);
    let items: Vec<Value> = pulls
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|p| render.pull(p, false))
        .collect();
    let mut reply = Reply::new(StatusCode::OK, Value::Array(items));
    if pulls.len() > page * per_page {
        let mut next: Vec<(String, String)> =
            query.iter().filter(|(k, _)| k != "page").cloned().collect();
        next.push(("page".to_owned(), (page + 1).to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        let url = format!(
            "{}/repos/{}/pulls?{query}",
            shared.urls.api,
            repo.full_name()
        );
        reply = reply.with_header(LINK, format!("<{url}>; rel=\"next\""));
    }
    Ok(reply)
}

/// `POST /repos/{owner}/{repo}/pulls`.
fn create_pull(
    shared: &Shared,
    repo: &mut Repo,
    body: &Map<String, Value>,
    ids: &mut IdSource<'_>,
) -> Result<Reply, ApiError> {
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let flag = |name: &str| body.get(name).and_then(Value::as_bool);
    if body.contains_key("issue") || body.contains_key("head_repo") {
        return Err(ApiError::Failed(vec![custom_error(
            "PullRequest",
            "The fake forge supports neither converting issues nor cross-repository pull requests."
                .to_owned(),
        )]));
    }
    let title = text("title")
        .ok_or_else(|| ApiError::Failed(vec![invalid_field("Issue", "title", "missing_field")]))?;
    let head = text("head").unwrap_or_default();
    let base = text("base").unwrap_or_default();
    let head_branch = match head.split_once(':') {
        Some((owner, branch)) if owner.eq_ignore_ascii_case(&repo.owner) => branch,
        Some(_) => {
            return Err(ApiError::Failed(vec![invalid_field(
                "PullRequest",
                "head",
                "invalid",
            )]))
        }
        None => head,
    };
    let git_dir = shared.git_dir(repo);
    let head_sha = branch_sha(&git_dir, head_branch)
        .ok_or_else(|| ApiError::Failed(vec![invalid_field("PullRequest", "head", "invalid")]))?;
    let base_sha = branch_sha(&git_dir, base)
        .ok_or_else(|| ApiError::Failed(vec![invalid_field("PullRequest", "base", "invalid")]))?;
    if repo
        .pulls
        .iter()
        .any(|p| p.open && p.head == head_branch && p.base == base)
    {
        return Err(already_exists(repo, head_branch));
    }
    if commit_count(&git_dir, &base_sha, &head_sha) == 0 {
        return Err(ApiError::Failed(vec![custom_error(
            "PullRequest",
            format!("No commits between {base} and {head_branch}"),
        )]));
    }
    let now = now();
    let pull = Pull {
        id: ids.next(),
        number: repo.next_number(),
        title: title.to_owned(),
        body: text("body").map(str::to_owned),
        head: head_branch.to_owned(),
        head_sha,
        base: base.to_owned(),
        draft: flag("draft").unwrap_or(false),
        open: true,
        maintainer_can_modify: flag("maintainer_can_modify").unwrap_or(false),
        labels: Vec::new(),
        created_at: now.clone(),
        updated_at: now,
        closed_at: None,
    };
    let location = format!(
        "{}/repos/{}/pulls/{}",
        shared.urls.api,
        repo.full_name(),
        pull.number
    );
    let rendered = Render::new(shared, repo).pull(&pull, true);
    repo.pulls.push(pull);
    Ok(Reply::new(StatusCode::CREATED, rendered).with_header(LOCATION, location))
}

/// GitHub's 422 for a second open pull request from the same head to the same base.
fn already_exists(repo: &Repo, head_branch: &str) -> ApiError {
    ApiError::Failed(vec![custom_error(
        "PullRequest",
        format!(
            "A pull request already exists for {}:{head_branch}.",
            repo.owner
        ),
    )])
}

/// `GET /repos/{owner}/{repo}/pulls/{pull_number}`.
fn get_pull(shared: &Shared, repo: &mut Repo, number: u64) -> Result<Reply, ApiError> {
    refresh_head(shared, repo, number);
    let pull = repo
        .pulls
        .iter()
        .find(|p| p.number == number)
        .ok_or(ApiError::NotFound)?;
    Ok(Reply::new(
        StatusCode::OK,
        Render::new(shared, repo).pull(pull, true),
    ))
}

/// `PATCH /repos/{owner}/{repo}/pulls/{pull_number}`: title, body, state, base,
/// maintainer_can_modify.
fn update_pull(
    shared: &Shared,
    repo: &mut Repo,
    number: u64,
    body: &Map<String, Value>,
) -> Result<Reply, ApiError> {
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    refresh_head(shared, repo, number);
    let git_dir = shared.git_dir(repo);
    let current = repo
        .pulls
        .iter()
        .find(|p| p.number == number)
        .ok_or(ApiError::NotFound)?;
    let base = text("base").unwrap_or(&current.base).to_owned();
    if branch_sha(&git_dir, &base).is_none() {
        return Err(ApiError::Failed(vec![invalid_field(
            "PullRequest",
            "base",
            "invalid",
        )]));
    }
    let reopen = text("state") == Some("open") && !current.open;
    let head = current.head.clone();
    let clash = repo
        .pulls
        .iter()
        .any(|p| p.number != number && p.open && p.head == head && p.base == base);
    if clash && (reopen || current.open) {
        return Err(already_exists(repo, &head));
    }
    let now = now();
    let pull = repo.pull_mut(number).ok_or(ApiError::NotFound)?;
    if let Some(title) = text("title") {
        pull.title = title.to_owned();
    }
    if let Some(text) = text("body") {
        pull.body = Some(text.to_owned());
    }
    if let Some(flag) = body.get("maintainer_can_modify").and_then(Value::as_bool) {
        pull.maintainer_can_modify = flag;
    }
    pull.base = base;
    match text("state") {
        Some("closed") if pull.open => {
            pull.open = false;
            pull.closed_at = Some(now.clone());
        }
        Some("open") if !pull.open => {
            pull.open = true;
            pull.closed_at = None;
        }
        _ => {}
    }
    pull.updated_at = now;
    let pull = repo
        .pulls
        .iter()
        .find(|p| p.number == number)
        .ok_or(ApiError::NotFound)?;
    Ok(Reply::new(
        StatusCode::OK,
        Render::new(shared, repo).pull(pull, true),
    ))
}

/// `POST /repos/{owner}/{repo}/issues/{issue_number}/labels`: adds labels by name (strings or
/// `{name}` objects), creating the ones the repository lacks; answers with all the issue's labels.
fn add_labels(
    shared: &Shared,
    repo: &mut Repo,
    number: u64,
    body: &Map<String, Value>,
    ids: &mut IdSource<'_>,
) -> Result<Reply, ApiError> {
    if !repo.pulls.iter().any(|p| p.number == number) {
        return Err(ApiError::NotFound);
    }
    let names: Vec<String> = body
        .get("labels")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.as_str().or_else(|| l.get("name").and_then(Value::as_str)))
        .map(str::to_owned)
        .collect();
    let mut canonical = Vec::new();
    for name in names {
        let label = match repo.label(&name) {
            Some(label) => label.clone(),
            None => {
                let label = Label {
                    id: ids.next(),
                    name,
                    color: DEFAULT_LABEL_COLOR.to_owned(),
                    description: String::new(),
                };
                repo.labels.push(label.clone());
                label
            }
        };
        canonical.push(label.name);
    }
    let now = now();
    let pull = repo.pull_mut(number).ok_or(ApiError::NotFound)?;
    for name in canonical {
        if !pull.labels.contains(&name) {
            pull.labels.push(name);
        }
    }
    pull.updated_at = now;
    let pull = repo
        .pulls
        .iter()
        .find(|p| p.number == number)
        .ok_or(ApiError::NotFound)?;
    let render = Render::new(shared, repo);
    Ok(Reply::new(
        StatusCode::OK,
        Value::Array(render.labels(&pull.labels)),
    ))
}

/// Updates the recorded head commit of pull request `number` from its branch, if the branch
/// still exists.
fn refresh_head(shared: &Shared, repo: &mut Repo, number: u64) {
    let git_dir = shared.git_dir(repo);
    if let Some(pull) = repo.pull_mut(number) {
        if let Some(sha) = branch_sha(&git_dir, &pull.head) {
            pull.head_sha = sha;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Git look-ups
// ---------------------------------------------------------------------------------------

/// Runs `git args` in bare repository `git_dir`, isolated from any user or system config;
/// returns its trimmed stdout, or `None` when it fails.
fn git_output(git_dir: &Path, args: &[&str]) -> Option<String> {
    let out = StdCommand::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit branch `branch` points at, if it exists.
fn branch_sha(git_dir: &Path, branch: &str) -> Option<String> {
    if branch.is_empty() || branch.starts_with('-') {
        return None;
    }
    let spec = format!("refs/heads/{branch}^{{commit}}");
    git_output(git_dir, &["rev-parse", "--verify", "--quiet", &spec])
}

/// The number of commits reachable from `head` but not from `base`.
fn commit_count(git_dir: &Path, base: &str, head: &str) -> u64 {
    git_output(
        git_dir,
        &["rev-list", "--count", &format!("{base}..{head}")],
    )
    .and_then(|n| n.parse().ok())
    .unwrap_or(0)
}

/// Lines added and deleted and files changed from the merge base of `base` and `head` to `head`.
fn diff_stats(git_dir: &Path, base: &str, head: &str) -> (u64, u64, u64) {
    let range = format!("{base}...{head}");
    let Some(numstat) = git_output(git_dir, &["diff", "--numstat", &range]) else {
        return (0, 0, 0);
    };
    numstat
        .lines()
        .filter(|l| !l.is_empty())
        .fold((0, 0, 0), |(added, deleted, files), line| {
            let mut fields = line.split('\t');
            let mut count = || {
                fields
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (a, d) = (count(), count());
            (added + a, deleted + d, files + 1)
        })
}

// ---------------------------------------------------------------------------------------
// JSON rendering
// ---------------------------------------------------------------------------------------

/// Builds GitHub's JSON objects for one repository.
struct Render<'a> {
    urls: &'a Urls,
    repo: &'a Repo,
    git_dir: PathBuf,
}

impl<'a> Render<'a> {
    fn new(shared: &'a Shared, repo: &'a Repo) -> Self {
        Self {
            urls: &shared.urls,
            repo,
            git_dir: shared.git_dir(repo),
        }
    }

    /// `{api}/repos/{owner}/{name}`.
    fn repo_api_url(&self) -> String {
        format!("{}/repos/{}", self.urls.api, self.repo.full_name())
    }

    /// A `simple-user` object for `login`.
    fn user(&self, login: &str) -> Value {
        let api = format!("{}/users/{login}", self.urls.api);
        json!({
            "login": login,
            "id": user_id(login),
            "node_id": format!("U_{login}"),
            "avatar_url": format!("{}/avatars/{login}", self.urls.web),
            "gravatar_id": "",
            "url": api,
            "html_url": format!("{}/{login}", self.urls.web),
            "followers_url": format!("{api}/followers"),
            "following_url": format!("{api}/following{{/other_user}}"),
            "gists_url": format!("{api}/gists{{/gist_id}}"),
            "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{api}/subscriptions"),
            "organizations_url": format!("{api}/orgs"),
            "repos_url": format!("{api}/repos"),
            "events_url": format!("{api}/events{{/privacy}}"),
            "received_events_url": format!("{api}/received_events"),
            "type": "User",
            "site_admin": false,
        })
    }

    /// A `repository` object, or with `full` a `full-repository` one.
    fn repo(&self, full: bool) -> Value {
        let repo = self.repo;
        let full_name = repo.full_name();
        let api = self.repo_api_url();
        let open_issues = repo.pulls.iter().filter(|p| p.open).count();
        let mut value = json!({
            "id": repo.id,
            "node_id": format!("R_{}", repo.id),
            "name": repo.name,
            "full_name": full_name,
            "owner": self.user(&repo.owner),
            "private": false,
            "visibility": "public",
            "html_url": format!("{}/{full_name}", self.urls.web),
            "description": null,
            "fork": false,
            "url": api,
            "clone_url": format!("{}/{full_name}.git", self.urls.git),
            "git_url": format!("{}/{full_name}.git", self.urls.git),
            "ssh_url": format!("{}/{full_name}.git", self.urls.git),
            "svn_url": format!("{}/{full_name}", self.urls.web),
            "mirror_url": null,
            "homepage": null,
            "language": null,
            "license": null,
            "default_branch": repo.default_branch,
            "forks": 0, "forks_count": 0,
            "stargazers_count": 0, "watchers": 0, "watchers_count": 0,
            "open_issues": open_issues, "open_issues_count": open_issues,
            "size": 0,
            "has_issues": true, "has_projects": false, "has_wiki": false, "has_pages": false,
            "has_downloads": true, "has_discussions": false,
            "archived": false, "disabled": false,
            "pushed_at": repo.created_at,
            "created_at": repo.created_at,
            "updated_at": repo.created_at,
        });
        if let Some(object) = value.as_object_mut() {
            for (field, suffix) in REPO_URL_FIELDS {
                object.insert((*field).to_owned(), Value::String(format!("{api}{suffix}")));
            }
            if full {
                object.insert("network_count".to_owned(), json!(0));
                object.insert("subscribers_count".to_owned(), json!(0));
            }
        }
        value
    }

    /// The `label` objects of the named labels.
    fn labels(&self, names: &[String]) -> Vec<Value> {
        names
            .iter()
            .filter_map(|name| self.repo.label(name))
            .map(|label| {
                let encoded: String =
                    percent_encoding::utf8_percent_encode(&label.name, NON_ALPHANUMERIC).collect();
                json!({
                    "id": label.id,
                    "node_id": format!("LA_{}", label.id),
                    "url": format!("{}/labels/{encoded}", self.repo_api_url()),
                    "name": label.name,
                    "description": label.description,
                    "color": label.color,
                    "default": false,
                })
            })
            .collect()
    }

    /// A pull request's `head` or `base` object.
    fn branch(&self, branch: &str, sha: &str) -> Value {
        json!({
            "label": format!("{}:{branch}", self.repo.owner),
            "ref": branch,
            "sha": sha,
            "user": self.user(&self.repo.owner),
            "repo": self.repo(false),
        })
    }

    /// A `pull-request` object, or without `full` a `pull-request-simple` one.
    fn pull(&self, pull: &Pull, full: bool) -> Value {
        let full_name = self.repo.full_name();
        let api = self.repo_api_url();
        let url = format!("{api}/pulls/{}", pull.number);
        let html_url = format!("{}/{full_name}/pull/{}", self.urls.web, pull.number);
        let issue_url = format!("{api}/issues/{}", pull.number);
        let statuses_url = format!("{api}/statuses/{}", pull.head_sha);
        let base_sha = branch_sha(&self.git_dir, &pull.base).unwrap_or_default();
        let mut value = json!({
            "url": url,
            "id": pull.id,
            "node_id": format!("PR_{}", pull.id),
            "html_url": html_url,
            "diff_url": format!("{html_url}.diff"),
            "patch_url": format!("{html_url}.patch"),
            "issue_url": issue_url,
            "commits_url": format!("{url}/commits"),
            "review_comments_url": format!("{url}/comments"),
            "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
            "comments_url": format!("{issue_url}/comments"),
            "statuses_url": statuses_url,
            "number": pull.number,
            "state": pull.state(),
            "locked": false,
            "active_lock_reason": null,
            "title": pull.title,
            "user": self.user(FORGE_USER),
            "body": pull.body,
            "labels": self.labels(&pull.labels),
            "milestone": null,
            "created_at": pull.created_at,
            "updated_at": pull.updated_at,
            "closed_at": pull.closed_at,
            "merged_at": null,
            "merge_commit_sha": null,
            "assignee": null,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": self.branch(&pull.head, &pull.head_sha),
            "base": self.branch(&pull.base, &base_sha),
            "_links": links(&[
                ("self", url.clone()),
                ("html", html_url.clone()),
                ("issue", issue_url.clone()),
                ("comments", format!("{issue_url}/comments")),
                ("review_comments", format!("{url}/comments")),
                ("review_comment", format!("{api}/pulls/comments{{/number}}")),
                ("commits", format!("{url}/commits")),
                ("statuses", statuses_url.clone()),
            ]),
            "author_association": "OWNER",
            "auto_merge": null,
            "draft": pull.draft,
        });
        if full {
            if let Some(object) = value.as_object_mut() {
                self.add_full_pull_fields(object, pull, &base_sha);
            }
        }
        value
    }

    /// The fields a `pull-request` has beyond a `pull-request-simple`.
    fn add_full_pull_fields(&self, object: &mut Map<String, Value>, pull: &Pull, base_sha: &str) {
        let commits = commit_count(&self.git_dir, base_sha, &pull.head_sha);
        let (additions, deletions, changed_files) =
            diff_stats(&self.git_dir, base_sha, &pull.head_sha);
        let fields = json!({
            "merged": false,
            "mergeable": null,
            "rebaseable": null,
            "mergeable_state": "unknown",
            "merged_by": null,
            "comments": 0,
            "review_comments": 0,
            "maintainer_can_modify": pull.maintainer_can_modify,
            "commits": commits,
            "additions": additions,
            "deletions": deletions,
            "changed_files": changed_files,
        });
        if let Value::Object(fields) = fields {
            object.extend(fields);
        }
    }
}

/// A `_links` object: each name maps to `{"href": url}`.
fn links(entries: &[(&str, String)]) -> Value {
    entries
        .iter()
        .map(|(name, href)| ((*name).to_owned(), json!({ "href": href })))
        .collect::<Map<String, Value>>()
        .into()
}

/// A stable user id for `login`.
fn user_id(login: &str) -> u64 {
    login
        .bytes()
        .fold(5381_u64, |hash, b| hash.wrapping_mul(33) ^ u64::from(b))
        % 1_000_000_000
}

/// The templated URL fields of a repository object, as suffixes of its API URL.
const REPO_URL_FIELDS: &[(&str, &str)] = &[
    ("archive_url", "/{archive_format}{/ref}"),
    ("assignees_url", "/assignees{/user}"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("branches_url", "/branches{/branch}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("comments_url", "/comments{/number}"),
    ("commits_url", "/commits{/sha}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("contents_url", "/contents/{+path}"),
    ("contributors_url", "/contributors"),
    ("deployments_url", "/deployments"),
    ("downloads_url", "/downloads"),
    ("events_url", "/events"),
    ("forks_url", "/forks"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("hooks_url", "/hooks"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("issue_events_url", "/issues/events{/number}"),
    ("issues_url", "/issues{/number}"),
    ("keys_url", "/keys{/key_id}"),
    ("labels_url", "/labels{/name}"),
    ("languages_url", "/languages"),
    ("merges_url", "/merges"),
    ("milestones_url", "/milestones{/number}"),
    (
        "notifications_url",
        "/notifications{?since,all,participating}",
    ),
    ("pulls_url", "/pulls{/number}"),
    ("releases_url", "/releases{/id}"),
    ("stargazers_url", "/stargazers"),
    ("statuses_url", "/statuses/{sha}"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("tags_url", "/tags"),
    ("teams_url", "/teams"),
    ("trees_url", "/git/trees{/sha}"),
];

// ---------------------------------------------------------------------------------------
// Schema checks
// ---------------------------------------------------------------------------------------

/// A checker for the part of OpenAPI 3.0 schemas GitHub's description uses: `type`,
/// `nullable`, `enum`, `properties`, `required`, `additionalProperties`, `items`,
/// `minItems`/`maxItems`, `oneOf`/`anyOf`/`allOf`, and the `date-time` and `uri` formats.
pub mod schema {
    use serde_json::Value;

    /// The ways `value` departs from `schema`, each as `/json/pointer: problem`.
    ///
    /// With `strict`, an object property the schema does not declare is a problem too (unless
    /// the schema allows additional properties explicitly or composes the object with `allOf`).
    pub fn check(schema: &Value, value: &Value, strict: bool) -> Vec<String> {
        let mut problems = Vec::new();
        Checker { strict }.check(schema, value, "", &mut problems);
        problems
    }

    struct Checker {
        strict: bool,
    }

    impl Checker {
        fn check(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
            let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
            if value.is_null() && nullable {
                return;
            }
            if !self.composition(schema, value, at, out) {
                return;
            }
            if value.is_null() {
                if schema.get("type").is_some() || schema.get("enum").is_some() {
                    out.push(format!(
                        "{}: null, but the schema is not nullable",
                        at_or_root(at)
                    ));
                }
                return;
            }
            if let Some(expected) = schema.get("type").and_then(Value::as_str) {
                if !has_type(value, expected) {
                    out.push(format!(
                        "{}: expected {expected}, got {}",
                        at_or_root(at),
                        type_name(value)
                    ));
                    return;
                }
            }
            if let Some(options) = schema.get("enum").and_then(Value::as_array) {
                if !options.contains(value) {
                    out.push(format!(
                        "{}: {value} is not one of {}",
                        at_or_root(at),
                        Value::Array(options.clone())
                    ));
                }
            }
            match value {
                Value::String(text) => check_format(schema, text, at, out),
                Value::Array(items) => self.array(schema, items, at, out),
                Value::Object(object) => self.object(schema, object, at, out),
                _ => {}
            }
        }

        /// Checks `allOf`, `anyOf` and `oneOf`; returns whether the rest of the schema applies.
        fn composition(
            &self,
            schema: &Value,
            value: &Value,
            at: &str,
            out: &mut Vec<String>,
        ) -> bool {
            if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
                for sub in all {
                    self.check(sub, value, at, out);
                }
            }
            for (keyword, exactly_one) in [("anyOf", false), ("oneOf", true)] {
                let Some(options) = schema.get(keyword).and_then(Value::as_array) else {
                    continue;
                };
                let results: Vec<Vec<String>> = options
                    .iter()
                    .map(|sub| {
                        let mut problems = Vec::new();
                        self.check(sub, value, at, &mut problems);
                        problems
                    })
                    .collect();
                let matches = results.iter().filter(|r| r.is_empty()).count();
                if matches == 0 {
                    let details: Vec<String> = results.into_iter().flatten().collect();
                    out.push(format!(
                        "{}: matches none of the {keyword} schemas ({})",
                        at_or_root(at),
                        details.join("; ")
                    ));
                    return false;
                }
                if exactly_one && matches > 1 {
                    out.push(format!(
                        "{}: matches {matches} of the oneOf schemas",
                        at_or_root(at)
                    ));
                }
            }
            true
        }

        fn array(&self, schema: &Value, items: &[Value], at: &str, out: &mut Vec<String>) {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    out.push(format!("{}: {len} items, fewer than {min}", at_or_root(at)));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    out.push(format!("{}: {len} items, more than {max}", at_or_root(at)));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    self.check(item_schema, item, &format!("{at}/{index}"), out);
                }
            }
        }

        fn object(
            &self,
            schema: &Value,
            object: &serde_json::Map<String, Value>,
            at: &str,
            out: &mut Vec<String>,
        ) {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    out.push(format!(
                        "{}: required property {name:?} is missing",
                        at_or_root(at)
                    ));
                }
            }
            let additional = schema.get("additionalProperties");
            for (name, value) in object {
                let path = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
                if let Some(sub) = properties.and_then(|p| p.get(name)) {
                    self.check(sub, value, &path, out);
                    continue;
                }
                match additional {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{path}: property not allowed by the schema"));
                    }
                    Some(Value::Object(_)) => {
                        if let Some(sub) = additional {
                            self.check(sub, value, &path, out);
                        }
                    }
                    Some(_) => {}
                    None => {
                        if self.strict && properties.is_some() && schema.get("allOf").is_none() {
                            out.push(format!("{path}: property not declared by the schema"));
                        }
                    }
                }
            }
        }
    }

    fn check_format(schema: &Value, text: &str, at: &str, out: &mut Vec<String>) {
        let ok = match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            }
            Some("uri") => url::Url::parse(text).is_ok(),
            _ => true,
        };
        if !ok {
            let format = schema
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.push(format!(
                "{}: {text:?} is not a valid {format}",
                at_or_root(at)
            ));
        }
    }

    fn has_type(value: &Value, expected: &str) -> bool {
        match expected {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => true,
        }
    }

    fn type_name(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn at_or_root(at: &str) -> &str {
        if at.is_empty() {
            "(root)"
        } else {
            at
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------

/// Turns a reply into an HTTP response with GitHub's usual headers.
fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(&reply.body).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static(API_VERSION),
    );
    headers.insert(
        "x-github-media-type",
        HeaderValue::from_static("github.v3; format=json"),
    );
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_operations_and_nothing_else() {
        let get = Method::GET;
        let r = route(&get, "/repos/acme/widgets/pulls/7").unwrap();
        assert_eq!(r.operation, Operation::GetPull(7));
        assert_eq!((r.owner.as_str(), r.repo.as_str()), ("acme", "widgets"));
        assert!(route(&get, "/repos/acme/widgets/pulls/0").is_none());
        assert!(route(&get, "/repos/acme/widgets/pulls/x").is_none());
        assert!(route(&Method::DELETE, "/repos/acme/widgets").is_none());
        assert_eq!(
            route(&Method::POST, "/repos/a/b/issues/3/labels")
                .unwrap()
                .operation,
            Operation::AddLabels(3)
        );
    }

    #[test]
    fn accepts_bearer_and_token_schemes_only_with_the_token() {
        let headers = |v: &'static str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert!(authorized("s3cret", &headers("Bearer s3cret")));
        assert!(authorized("s3cret", &headers("token s3cret")));
        assert!(!authorized("s3cret", &headers("Bearer wrong")));
        assert!(!authorized("s3cret", &headers("Basic s3cret")));
        assert!(!authorized("s3cret", &hyper::HeaderMap::new()));
    }

    #[test]
    fn schema_check_finds_type_required_nullable_and_undeclared_problems() {
        let schema = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string", "nullable": true},
                "c": {"type": "string", "format": "date-time"},
                "d": {"oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}},
                ]},
            },
        });
        assert!(schema::check(&schema, &json!({"a": 1, "b": null, "d": ["x"]}), true).is_empty());
        let problems = schema::check(
            &schema,
            &json!({"b": 3, "c": "yesterday", "d": 1, "e": true}),
            true,
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(schema::check(&schema, &json!({"a": 1, "e": true}), false).is_empty());
        assert!(!schema::check(&schema, &json!({"a": null}), false).is_empty());
    }

    #[test]
    fn the_subset_describes_every_operation() {
        let spec: Value = serde_json::from_str(OPENAPI_SUBSET).unwrap();
        for operation in [
            Operation::GetRepo,
            Operation::ListPulls,
            Operation::CreatePull,
            Operation::GetPull(1),
            Operation::UpdatePull(1),
            Operation::AddLabels(1),
        ] {
            let (method, template) = operation.spec_key();
            assert!(
                spec.pointer(&spec_pointer(template, method)).is_some(),
                "{template}"
            );
        }
    }

    #[test]
    fn replies_are_checked_against_the_operation_s_response() {
        let spec: Value = serde_json::from_str(OPENAPI_SUBSET).unwrap();
        let (method, template) = Operation::GetPull(1).spec_key();
        let operation = spec.pointer(&spec_pointer(template, method)).unwrap();
        let reply = Reply::new(StatusCode::OK, json!({"number": "1", "invented": true}));
        let problems = check_reply(operation, &reply);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("/number: expected integer")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("\"head\" is missing")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("/invented: property not declared")),
            "{problems:?}"
        );
        let not_found = ApiError::NotFound.reply("https://docs.github.com/rest");
        assert!(check_reply(operation, &not_found).is_empty());
    }

    #[test]
    fn tolerates_only_the_listed_body_fields() {
        let update = json!({"operationId": "pulls/update"});
        let create = json!({"operationId": "pulls/create"});
        let body = json!({"pull_number": 1, "title": "t"});
        assert_eq!(
            without_tolerated_fields(&update, &body),
            json!({"title": "t"})
        );
        assert_eq!(without_tolerated_fields(&create, &body), body);
    }

    #[test]
    fn validates_owner_and_repo_names() {
        assert!(valid_owner("acme-corp") && !valid_owner("-acme") && !valid_owner("a--b"));
        assert!(valid_repo_name("widgets.rs") && !valid_repo_name("..") && !valid_repo_name("a/b"));
    }
}
