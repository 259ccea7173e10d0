//! A real git smart-HTTP server for tests: bridges HTTP on 127.0.0.1 to the
//! `git http-backend` CGI program, with optional token (HTTP Basic) authentication.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;

use crate::http_thread::{HttpThread, RequestGate};

/// The Basic-auth user name every authenticated request must use.
pub const TOKEN_USER: &str = "x-access-token";

/// The `WWW-Authenticate` challenge sent with every 401.
const CHALLENGE: &str = r#"Basic realm="specrun-test""#;

/// Largest request body accepted (a pushed pack included).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Fixed identity and dates for commits the helpers create, so object ids are reproducible.
const COMMIT_ENV: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "specrun test"),
    ("GIT_AUTHOR_EMAIL", "test@specrun.invalid"),
    ("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "specrun test"),
    ("GIT_COMMITTER_EMAIL", "test@specrun.invalid"),
    ("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"),
];

/// One HTTP request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The HTTP method, e.g. `GET` or `POST`.
    pub method: String,
    /// The request path with its query string, e.g. `/repo.git/info/refs?service=git-upload-pack`.
    pub path_and_query: String,
    /// Whether the request carried an `Authorization` header (valid or not).
    pub had_authorization: bool,
    /// The status code of the response sent back.
    pub status: u16,
}

/// State shared by every request handler.
struct Shared {
    root: PathBuf,
    token: Option<String>,
    backend: PathBuf,
    requests: Mutex<Vec<RequestRecord>>,
    gate: RequestGate,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A git smart-HTTP server on 127.0.0.1 serving bare repositories from a fresh temp dir.
///
/// It runs on its own thread with its own single-threaded tokio runtime, so it works
/// from plain `#[test]`s and from `#[tokio::test]`s alike. It stops when dropped.
pub struct GitHttpServer {
    /// Declared before `_dir`: fields drop in order, so the server stops first.
    http: HttpThread,
    shared: Arc<Shared>,
    /// Held so the repositories live as long as the server; removed on drop.
    _dir: tempfile::TempDir,
}

impl GitHttpServer {
    /// Serves bare repositories under a fresh temp dir.
    ///
    /// `token`: when `Some`, every request must carry HTTP Basic auth with user
    /// `x-access-token` and that password, else the answer is 401 with
    /// `WWW-Authenticate: Basic realm="specrun-test"`; a wrong token also gets 401
    /// (git then reports "Authentication failed"). When `None`, anonymous clone
    /// and push are allowed.
    pub fn start(token: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("specrun-git-http-")
            .tempdir()
            .context("creating the git server's temp dir")?;
        let shared = Arc::new(Shared {
            root: dir.path().to_path_buf(),
            token: token.map(str::to_owned),
            backend: http_backend_path(dir.path())?,
            requests: Mutex::new(Vec::new()),
            gate: RequestGate::default(),
        });
        let handler_shared = Arc::clone(&shared);
        let http = HttpThread::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "git-http-server",
            move |req| handle(Arc::clone(&handler_shared), req),
        )?;
        Ok(Self {
            http,
            shared,
            _dir: dir,
        })
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http.addr())
    }

    /// The URL of repository `name`, `http://127.0.0.1:PORT/<name>.git`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base_url())
    }

    /// The directory holding the `<name>.git` bare repositories.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Creates a bare repo `<name>.git` whose `main` branch has one commit adding
    /// `README.md` with content `readme`, with HEAD -> main; returns its URL.
    pub fn create_repo(&self, name: &str, readme: &str) -> anyhow::Result<String> {
        let url = self.create_empty_repo(name)?;
        let repo = self.repo_dir(name)?;
        let blob = git_stdin(&repo, &["hash-object", "-w", "--stdin"], readme)?;
        let tree = git_stdin(
            &repo,
            &["mktree"],
            &format!("100644 blob {blob}\tREADME.md\n"),
        )?;
        let commit = git(&repo, &["commit-tree", &tree, "-m", "Initial commit"])?;
        git(&repo, &["update-ref", "refs/heads/main", &commit])?;
        Ok(url)
    }

    /// Creates an empty bare repo `<name>.git` (no commits, HEAD -> main); returns its URL.
    pub fn create_empty_repo(&self, name: &str) -> anyhow::Result<String> {
        let repo = self.repo_dir(name)?;
        ensure!(!repo.exists(), "repository {name} already exists");
        let repo_arg = repo.to_str().context("repository path is not UTF-8")?;
        git(
            &self.shared.root,
            &["init", "--quiet", "--bare", "-b", "main", repo_arg],
        )?;
        // Every push leaves a reflog entry, for `ref_updates`.
        git(&repo, &["config", "core.logAllRefUpdates", "always"])?;
        Ok(self.repo_url(name))
    }

    /// Makes `branch` of `<name>.git` a commit on top of `main` that adds `files`
    /// (path, content) with `message`, as someone other than specrun would; returns it.
    pub fn commit_on(
        &self,
        name: &str,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
    ) -> anyhow::Result<String> {
        let repo = self.existing_repo_dir(name)?;
        let index = repo.join("specrun-test-index");
        let index_arg = index
            .to_str()
            .context("index path is not UTF-8")?
            .to_owned();
        let with_index = |args: &[&str]| -> anyhow::Result<String> {
            let mut all = vec!["--work-tree", "/nonexistent"];
            all.extend_from_slice(args);
            let out = git_command(&repo, &all)
                .env("GIT_INDEX_FILE", &index_arg)
                .output()?;
            ensure!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        with_index(&["read-tree", "main"])?;
        for (path, content) in files {
            let blob = git_stdin(&repo, &["hash-object", "-w", "--stdin"], content)?;
            with_index(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{blob},{path}"),
            ])?;
        }
        let tree = with_index(&["write-tree"])?;
        let _ = std::fs::remove_file(&index);
        let commit = git(&repo, &["commit-tree", &tree, "-p", "main", "-m", message])?;
        git(
            &repo,
            &["update-ref", &format!("refs/heads/{branch}"), &commit],
        )?;
        Ok(commit)
    }

    /// True when any object of `<name>.git` (every blob, tree and commit, unpacked)
    /// holds `needle`: how a test proves a host file never reached the remote.
    pub fn objects_contain(&self, name: &str, needle: &str) -> anyhow::Result<bool> {
        let repo = self.existing_repo_dir(name)?;
        let all = git_raw(&repo, &["cat-file", "--batch-all-objects", "--batch"], None)?;
        Ok(all
            .windows(needle.len())
            .any(|window| window == needle.as_bytes()))
    }

    /// Lists the branch names of bare repo `<name>.git`, sorted.
    pub fn branches(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let repo = self.existing_repo_dir(name)?;
        let out = git(
            &repo,
            &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Reads file `path` at branch `branch` of `<name>.git` (like `git show branch:path`).
    ///
    /// Returns `None` when the file is absent from that branch; an error when the
    /// repository or the branch does not exist.
    pub fn read_file(
        &self,
        name: &str,
        branch: &str,
        path: &str,
    ) -> anyhow::Result<Option<String>> {
        let repo = self.existing_repo_dir(name)?;
        let branch_ref = format!("refs/heads/{branch}");
        git(&repo, &["rev-parse", "--verify", "--quiet", &branch_ref])
            .with_context(|| format!("branch {branch} not found in {name}"))?;
        let spec = format!("{branch_ref}:{path}");
        if !git_succeeds(&repo, &["cat-file", "-e", &spec])? {
            return Ok(None);
        }
        let bytes = git_raw(&repo, &["cat-file", "blob", &spec], None)?;
        String::from_utf8(bytes)
            .map(Some)
            .with_context(|| format!("{spec} is not UTF-8"))
    }

    /// All requests answered so far, in order: method, path and query, whether an
    /// `Authorization` header was present, and the response status.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests().clone()
    }

    /// Holds a request (e.g. the next push) once its body is read, until the test lets it go.
    pub fn gate(&self) -> &RequestGate {
        &self.shared.gate
    }

    /// How many times a push moved branch `branch` of `<name>.git` (its reflog: every
    /// repository logs all ref updates); 0 when it was never pushed.
    pub fn ref_updates(&self, name: &str, branch: &str) -> anyhow::Result<usize> {
        let log = self
            .existing_repo_dir(name)?
            .join("logs/refs/heads")
            .join(branch);
        match std::fs::read_to_string(&log) {
            Ok(text) => Ok(text.lines().count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", log.display())),
        }
    }

    /// The commit branch `branch` of `<name>.git` points at, and that commit's message;
    /// `None` when there is no such branch.
    pub fn tip(&self, name: &str, branch: &str) -> anyhow::Result<Option<(String, String)>> {
        let repo = self.existing_repo_dir(name)?;
        let branch_ref = format!("refs/heads/{branch}");
        if !git_succeeds(&repo, &["rev-parse", "--verify", "--quiet", &branch_ref])? {
            return Ok(None);
        }
        let commit = git(&repo, &["rev-parse", &branch_ref])?;
        let message = git(&repo, &["log", "-1", "--format=%B", &commit])?;
        Ok(Some((commit, message)))
    }

    /// The path of `<name>.git` under the root, after checking `name` is a plain relative name.
    fn repo_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let valid = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        ensure!(valid, "invalid repository name {name:?}");
        Ok(self.shared.root.join(format!("{name}.git")))
    }

    /// Like [`Self::repo_dir`], but fails when the repository does not exist.
    fn existing_repo_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let repo = self.repo_dir(name)?;
        ensure!(repo.is_dir(), "repository {name} does not exist");
        Ok(repo)
    }
}

/// Locates `git-http-backend` in git's exec path.
fn http_backend_path(cwd: &Path) -> anyhow::Result<PathBuf> {
    let exec_path = git(cwd, &["--exec-path"])?;
    let backend = Path::new(exec_path.trim()).join("git-http-backend");
    ensure!(backend.is_file(), "{} not found", backend.display());
    Ok(backend)
}

/// A `git` command isolated from the user's and system's git config.
fn git_command(dir: &Path, args: &[&str]) -> StdCommand {
    let mut cmd = StdCommand::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .envs(COMMIT_ENV);
    cmd
}

/// Runs `git args` in `dir`, feeding `stdin` if given; returns its stdout, failing on a non-zero exit.
fn git_raw(dir: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut cmd = git_command(dir, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning git {}", args.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .context("writing git's stdin")?;
    }
    let out = child.wait_with_output().context("waiting for git")?;
    if !out.status.success() {
        bail!(
            "git {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs `git args` in `dir`; returns its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    git_stdin_opt(dir, args, None)
}

/// Runs `git args` in `dir` with `input` on stdin; returns its trimmed stdout.
fn git_stdin(dir: &Path, args: &[&str], input: &str) -> anyhow::Result<String> {
    git_stdin_opt(dir, args, Some(input))
}

/// Runs `git args` in `dir`, feeding `input` if given; returns its trimmed stdout.
fn git_stdin_opt(dir: &Path, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let out = git_raw(dir, args, input)?;
    let text = String::from_utf8(out).context("git output is not UTF-8")?;
    Ok(text.trim().to_owned())
}

/// Runs `git args` in `dir`; returns whether it exited successfully.
fn git_succeeds(dir: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let status = git_command(dir, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    Ok(status.success())
}

/// Answers one request and records it.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.to_string());
    let had_authorization = req.headers().contains_key(AUTHORIZATION);
    let response = match check_access(&shared, req.headers()) {
        Access::Denied => unauthorized(),
        access => run_backend(&shared, req, access)
            .await
            .unwrap_or_else(|err| {
                eprintln!("git http server: {err:#}");
                text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n"))
            }),
    };
    let status = response.status().as_u16();
    shared.requests().push(RequestRecord {
        method,
        path_and_query,
        had_authorization,
        status,
    });
    response
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No token is configured: anyone may clone and push.
    Anonymous,
    /// The request carried the right token.
    Authenticated,
    /// A token is configured and the request lacked it or carried a wrong one.
    Denied,
}

/// Checks the request's `Authorization` header against the configured token.
fn check_access(shared: &Shared, headers: &hyper::HeaderMap) -> Access {
    let Some(token) = &shared.token else {
        return Access::Anonymous;
    };
    match headers.get(AUTHORIZATION).and_then(parse_basic_auth) {
        Some((user, password)) if user == TOKEN_USER && password == *token => Access::Authenticated,
        _ => Access::Denied,
    }
}

/// The 401 response asking for Basic credentials.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text_response(StatusCode::UNAUTHORIZED, "authentication required\n".into());
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}

/// Decodes an `Authorization: Basic ...` header into (user, password).
fn parse_basic_auth(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A plain-text response with the given status.
fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Runs `git http-backend` for the request and turns its CGI output into a response.
async fn run_backend(
    shared: &Shared,
    req: Request<Incoming>,
    access: Access,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("reading the request body: {err}"))?
        .to_bytes();
    if !shared
        .gate
        .pass(parts.method.as_str(), parts.uri.path())
        .await
    {
        return Ok(text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "dropped by the test\n".into(),
        ));
    }
    let mut cmd = backend_command(shared, &parts, body.len(), access);
    let mut child = cmd.spawn().context("spawning git http-backend")?;
    let mut stdin = child.stdin.take().context("http-backend has no stdin")?;
    let feed = async move {
        // The backend may stop reading early (e.g. on an error); a broken pipe is then expected.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let (_, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.context("waiting for git http-backend")?;
    if !output.status.success() {
        eprintln!(
            "git http-backend exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_cgi_output(&output.stdout)
}

/// Builds the `git http-backend` command with the CGI environment for the request.
fn backend_command(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body_len: usize,
    access: Access,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&shared.backend);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(content_type) = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("CONTENT_TYPE", content_type);
    }
    if body_len > 0 || parts.headers.contains_key(CONTENT_LENGTH) {
        cmd.env("CONTENT_LENGTH", body_len.to_string());
    }
    match access {
        // http-backend serves receive-pack (push) only to a REMOTE_USER ...
        Access::Authenticated => {
            cmd.env("REMOTE_USER", TOKEN_USER).env("AUTH_TYPE", "Basic");
        }
        // ... or when http.receivepack is true: set it for every repo in anonymous mode.
        Access::Anonymous => {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.receivepack")
                .env("GIT_CONFIG_VALUE_0", "true");
        }
        Access::Denied => {}
    }
    for (name, value) in cgi_http_headers(&parts.headers) {
        cmd.env(name, value);
    }
    cmd
}

/// The request headers as CGI `HTTP_*` variables (e.g. `Content-Encoding` → `HTTP_CONTENT_ENCODING`,
/// `Git-Protocol` → `HTTP_GIT_PROTOCOL`), leaving out credentials and the ones CGI passes otherwise.
fn cgi_http_headers(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| ![AUTHORIZATION, CONTENT_TYPE, CONTENT_LENGTH].contains(name))
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((
                format!(
                    "HTTP_{}",
                    name.as_str().to_ascii_uppercase().replace('-', "_")
                ),
                value.to_owned(),
            ))
        })
        .collect()
}

/// Parses CGI output (a header block, a blank line, the body) into a response.
fn parse_cgi_output(output: &[u8]) -> anyhow::Result<Response<Full<Bytes>>> {
    let (head, body) = split_cgi_head(output).context("http-backend output has no header block")?;
    let head = std::str::from_utf8(head).context("http-backend headers are not UTF-8")?;
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body)));
    for line in head.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            *response.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .with_context(|| format!("bad CGI status {value:?}"))?;
        } else {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("bad CGI header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("bad CGI header value {value:?}"))?;
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// Splits CGI output at the first blank line (`\r\n\r\n` or `\n\n`).
fn split_cgi_head(output: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = find(output, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(output, b"\n\n").map(|i| (i, 2));
    let (at, len) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b)?,
    };
    Some((&output[..at], &output[at + len..]))
}

/// The first index of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgi_status_headers_and_body() {
        let out = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nExpires: Fri, 01 Jan 1980 00:00:00 GMT\r\n\r\nRepository not found.\n";
        let response = parse_cgi_output(out).unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        assert!(response.headers().contains_key("expires"));
    }

    #[test]
    fn cgi_output_without_status_is_200_and_keeps_binary_body() {
        let response =
            parse_cgi_output(b"Content-Type: application/x-git\n\n\x00\x01\r\n\r\n").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(parse_cgi_output(b"no header block").is_err());
    }

    #[test]
    fn parses_basic_auth() {
        let value = HeaderValue::from_static("Basic eC1hY2Nlc3MtdG9rZW46czM6Y3JldA==");
        let expected = Some(("x-access-token".to_owned(), "s3:cret".to_owned()));
        assert_eq!(parse_basic_auth(&value), expected);
        assert_eq!(
            parse_basic_auth(&HeaderValue::from_static("Bearer abc")),
            None
        );
    }
}
