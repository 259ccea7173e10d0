//! Tests of the fake forge itself: real HTTP requests through octocrab (the client specrun
//! uses) and real git pushes, checking the GitHub behaviours it promises and that every
//! request and response fits GitHub's OpenAPI description.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use octocrab::params;
use octocrab::Octocrab;
use serde_json::{json, Value};
use specrun_tests::forge::{ForgeServer, PullRecord, FORGE_USER};
use specrun_tests::git_http::TOKEN_USER;

const TOKEN: &str = "forge-test-token";
const OWNER: &str = "acme";
const REPO: &str = "widgets";

/// A forge with repository `acme/widgets` and an octocrab client for its API.
fn forge() -> (ForgeServer, Octocrab) {
    let forge = ForgeServer::start(TOKEN).unwrap();
    forge.create_repo(OWNER, REPO, "# widgets\n").unwrap();
    let client = client(&forge, Some(TOKEN));
    (forge, client)
}

/// An octocrab client for the forge's API, with a personal token if given.
fn client(forge: &ForgeServer, token: Option<&str>) -> Octocrab {
    let builder = Octocrab::builder().base_uri(forge.api_url()).unwrap();
    match token {
        Some(token) => builder.personal_token(token.to_owned()).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

/// Runs git with no user or system config; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Clones `acme/widgets` over HTTP, commits `file` on a new `branch` and pushes it.
fn push_branch(forge: &ForgeServer, branch: &str, file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/{OWNER}/{REPO}.git", forge.git_base_url())
        .replace("http://", &format!("http://{TOKEN_USER}:{TOKEN}@"));
    git(dir.path(), &["clone", "--quiet", &url, "work"]);
    let work = dir.path().join("work");
    std::fs::write(work.join(file), format!("{file}\n")).unwrap();
    git(&work, &["checkout", "--quiet", "-b", branch]);
    git(&work, &["add", file]);
    git(&work, &["commit", "--quiet", "-m", file]);
    git(&work, &["push", "--quiet", "origin", branch]);
}

/// Sends a raw request to the API (path below the `/api/v3` base); returns status and JSON body.
async fn raw(client: &Octocrab, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let response = match method {
        "GET" => client._get(path).await,
        "POST" => client._post(path, body.as_ref()).await,
        "PATCH" => client._patch(path, body.as_ref()).await,
        other => panic!("unsupported method {other}"),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = client.body_to_string(response).await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// Sends `GET path` with the token over a plain connection to `base` (`http://HOST:PORT`);
/// returns the response's status line.
async fn plain_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

/// Asserts no request or response so far departed from GitHub's OpenAPI description.
fn assert_no_violations(forge: &ForgeServer) {
    assert_eq!(forge.violations(), Vec::<String>::new());
}

/// The GitHub error that an octocrab call failed with.
fn github_error<T: std::fmt::Debug>(result: octocrab::Result<T>) -> octocrab::GitHubError {
    match result {
        Err(octocrab::Error::GitHub { source, .. }) => *source,
        other => panic!("expected a GitHub error, got {other:?}"),
    }
}

#[tokio::test]
async fn creates_finds_updates_and_labels_a_pull_request_through_octocrab() {
    let (forge, client) = forge();
    push_branch(&forge, "specrun/run-1", "one.txt");
    let pulls = client.pulls(OWNER, REPO);

    let created = pulls
        .create("Run 1", "specrun/run-1", "main")
        .body("The agent's changes")
        .draft(true)
        .maintainer_can_modify(false)
        .send()
        .await
        .unwrap();
    assert_eq!(created.number, 1);
    let html_url = created.html_url.as_ref().unwrap().to_string();
    assert_eq!(
        html_url,
        format!("{}/{OWNER}/{REPO}/pull/1", forge.web_url())
    );
    assert_eq!(created.head.ref_field, "specrun/run-1");
    assert_eq!(created.head.label.as_deref(), Some("acme:specrun/run-1"));
    assert_eq!(created.head.sha.len(), 40);
    assert_eq!(created.base.ref_field, "main");
    assert_eq!(created.draft, Some(true));
    assert_eq!(created.user.as_ref().unwrap().login, FORGE_USER);
    assert_eq!(
        (created.commits, created.additions, created.changed_files),
        (Some(1), Some(1), Some(1))
    );

    let found = pulls
        .list()
        .state(params::State::Open)
        .head(format!("{OWNER}:specrun/run-1"))
        .base("main")
        .send()
        .await
        .unwrap();
    assert_eq!(
        found.items.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1]
    );

    let updated = pulls
        .update(1)
        .title("Run 1, again")
        .body("Newer changes")
        .send()
        .await
        .unwrap();
    assert_eq!(updated.title.as_deref(), Some("Run 1, again"));
    assert_eq!(updated.body.as_deref(), Some("Newer changes"));

    let labels = client
        .issues(OWNER, REPO)
        .add_labels(1, &["specrun".to_owned(), "needs-review".to_owned()])
        .await
        .unwrap();
    let names: Vec<_> = labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["specrun", "needs-review"]);

    let fetched = pulls.get(1).await.unwrap();
    assert_eq!(fetched.labels.unwrap().len(), 2);
    assert_eq!(
        forge.pulls(OWNER, REPO),
        [PullRecord {
            number: 1,
            title: "Run 1, again".into(),
            body: Some("Newer changes".into()),
            head: "specrun/run-1".into(),
            base: "main".into(),
            draft: true,
            labels: vec!["specrun".into(), "needs-review".into()],
            state: "open".into(),
            maintainer_can_modify: false,
        }]
    );
    let repo = client.repos(OWNER, REPO).get().await.unwrap();
    assert_eq!(repo.default_branch.as_deref(), Some("main"));
    assert_eq!(repo.open_issues_count, Some(1));
    assert_no_violations(&forge);
    assert!(forge
        .requests()
        .iter()
        .all(|r| r.path.starts_with("/api/v3/")));
}

#[tokio::test]
async fn head_filter_applies_only_in_owner_branch_form() {
    let (forge, client) = forge();
    for branch in ["feature-a", "feature-b"] {
        push_branch(&forge, branch, &format!("{branch}.txt"));
        client
            .pulls(OWNER, REPO)
            .create(branch, branch, "main")
            .send()
            .await
            .unwrap();
    }
    let list = |head: &'static str| {
        let client = client.clone();
        async move {
            let page = client
                .pulls(OWNER, REPO)
                .list()
                .head(head)
                .send()
                .await
                .unwrap();
            page.items.iter().map(|p| p.number).collect::<Vec<_>>()
        }
    };
    // Without `owner:` GitHub silently ignores the filter: every open PR, newest first.
    assert_eq!(list("feature-a").await, [2, 1]);
    assert_eq!(list("acme:feature-a").await, [1]);
    assert_eq!(list("acme:feature-b").await, [2]);
    assert_eq!(list("someone-else:feature-a").await, Vec::<u64>::new());
    assert_no_violations(&forge);
}

#[tokio::test]
async fn a_second_open_pull_request_for_the_same_head_gets_422() {
    let (forge, client) = forge();
    push_branch(&forge, "specrun/run-2", "two.txt");
    let body = json!({"title": "Run 2", "head": "specrun/run-2", "base": "main"});
    let path = format!("/repos/{OWNER}/{REPO}/pulls");
    let (status, _) = raw(&client, "POST", &path, Some(body.clone())).await;
    assert_eq!(status, 201);

    let (status, error) = raw(&client, "POST", &path, Some(body)).await;
    assert_eq!(status, 422);
    assert_eq!(error["message"], "Validation Failed");
    assert_eq!(
        error["errors"],
        json!([{
            "resource": "PullRequest",
            "code": "custom",
            "message": "A pull request already exists for acme:specrun/run-2."
        }])
    );
    // Once the first is closed, a new one may be opened; reopening the old one then clashes.
    client
        .pulls(OWNER, REPO)
        .update(1)
        .state(params::pulls::State::Closed)
        .send()
        .await
        .unwrap();
    client
        .pulls(OWNER, REPO)
        .create("Run 2b", "acme:specrun/run-2", "main")
        .send()
        .await
        .unwrap();
    let err = github_error(
        client
            .pulls(OWNER, REPO)
            .update(1)
            .state(params::pulls::State::Open)
            .send()
            .await,
    );
    assert_eq!(err.status_code, 422);
    let states: Vec<_> = forge
        .pulls(OWNER, REPO)
        .into_iter()
        .map(|p| p.state)
        .collect();
    assert_eq!(states, ["closed", "open"]);
    assert_no_violations(&forge);
}

#[tokio::test]
async fn labels_in_a_create_body_is_a_violation_and_gets_422() {
    let (forge, client) = forge();
    push_branch(&forge, "specrun/run-3", "three.txt");
    let body = json!({
        "title": "Run 3", "head": "specrun/run-3", "base": "main", "labels": ["specrun"]
    });
    let (status, error) = raw(
        &client,
        "POST",
        &format!("/repos/{OWNER}/{REPO}/pulls"),
        Some(body),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request."),
        "{error}"
    );
    let violations = forge.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("/labels: property not declared"),
        "{violations:?}"
    );
    assert!(forge.pulls(OWNER, REPO).is_empty());
}

#[tokio::test]
async fn wrongly_typed_fields_and_unknown_query_parameters_are_violations() {
    let (forge, client) = forge();
    push_branch(&forge, "b", "b.txt");
    let path = format!("/repos/{OWNER}/{REPO}/pulls");
    let body = json!({"title": "T", "head": "b", "base": "main", "draft": "yes"});
    assert_eq!(raw(&client, "POST", &path, Some(body)).await.0, 422);
    assert_eq!(
        raw(&client, "GET", &format!("{path}?state=merged"), None)
            .await
            .0,
        422
    );
    assert_eq!(
        raw(&client, "GET", &format!("{path}?labels=x"), None)
            .await
            .0,
        422
    );
    let violations = forge.violations();
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(
        violations[0].contains("/draft: expected boolean"),
        "{violations:?}"
    );
    assert!(violations[1].contains("\"state\""), "{violations:?}");
    assert!(
        violations[2].contains("\"labels\": not declared"),
        "{violations:?}"
    );
}

#[tokio::test]
async fn missing_branches_and_empty_heads_get_422() {
    let (forge, client) = forge();
    push_branch(&forge, "real", "real.txt");
    let pulls = client.pulls(OWNER, REPO);
    let err = github_error(pulls.create("T", "no-such-branch", "main").send().await);
    assert_eq!(err.status_code, 422);
    assert_eq!(err.errors.unwrap()[0]["field"], "head");
    let err = github_error(pulls.create("T", "real", "no-such-base").send().await);
    assert_eq!(err.errors.unwrap()[0]["field"], "base");
    let err = github_error(pulls.create("T", "main", "main").send().await);
    assert_eq!(
        err.errors.unwrap()[0]["message"],
        "No commits between main and main"
    );
    assert!(forge.pulls(OWNER, REPO).is_empty());
    assert_no_violations(&forge);
}

#[tokio::test]
async fn draft_can_only_be_set_at_creation() {
    let (forge, client) = forge();
    push_branch(&forge, "d", "d.txt");
    client
        .pulls(OWNER, REPO)
        .create("D", "d", "main")
        .draft(true)
        .send()
        .await
        .unwrap();
    let path = format!("/repos/{OWNER}/{REPO}/pulls/1");
    let (status, _) = raw(&client, "PATCH", &path, Some(json!({"draft": false}))).await;
    assert_eq!(status, 422);
    assert!(forge.pulls(OWNER, REPO)[0].draft);
    let violations = forge.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("PATCH") && violations[0].contains("/draft"),
        "{violations:?}"
    );
}

#[tokio::test]
async fn adding_labels_creates_missing_ones_once() {
    let (forge, client) = forge();
    push_branch(&forge, "l", "l.txt");
    client
        .pulls(OWNER, REPO)
        .create("L", "l", "main")
        .send()
        .await
        .unwrap();
    let issues = client.issues(OWNER, REPO);
    issues.add_labels(1, &["bug".to_owned()]).await.unwrap();
    let labels = issues
        .add_labels(1, &["BUG".to_owned(), "docs".to_owned()])
        .await
        .unwrap();
    let names: Vec<_> = labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["bug", "docs"]);
    assert_eq!(forge.labels(OWNER, REPO), ["bug", "docs"]);
    assert_eq!(forge.pulls(OWNER, REPO)[0].labels, ["bug", "docs"]);
    let err = github_error(issues.add_labels(9, &["bug".to_owned()]).await);
    assert_eq!(err.status_code, 404);
    assert_no_violations(&forge);
}

#[tokio::test]
async fn api_requests_need_the_token() {
    let (forge, _) = forge();
    let path = format!("/repos/{OWNER}/{REPO}");
    for token in [None, Some("wrong-token")] {
        let (status, body) = raw(&client(&forge, token), "GET", &path, None).await;
        assert_eq!(status, 401);
        assert_eq!(body["message"], "Bad credentials");
    }
    // The `token` scheme works as well as `Bearer`.
    let anonymous = client(&forge, None);
    let request = hyper::Request::get(format!("{}{path}", forge.api_url()))
        .header("authorization", format!("token {TOKEN}"))
        .body(String::new())
        .unwrap();
    let response = anonymous.execute(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_no_violations(&forge);
}

#[tokio::test]
async fn requests_outside_the_operations_are_violations() {
    let (forge, client) = forge();
    let request = hyper::Request::post(format!("{}/repos/{OWNER}/{REPO}/pulls", forge.api_url()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body("{not json".to_owned())
        .unwrap();
    let response = client.execute(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = raw(
        &client,
        "GET",
        &format!("/repos/{OWNER}/{REPO}/issues"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // octocrab would put its base path in front: a plain HTTP request shows the fake's answer.
    let status_line = plain_get(&forge.web_url(), &format!("/repos/{OWNER}/{REPO}")).await;
    assert!(status_line.starts_with("HTTP/1.1 404"), "{status_line}");
    let violations = forge.violations();
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(violations[0].contains("not JSON"), "{violations:?}");
    assert!(violations[1].contains("not an operation"), "{violations:?}");
    assert!(
        violations[2].contains("not under the API base"),
        "{violations:?}"
    );
}

#[tokio::test]
async fn unknown_repositories_and_pull_requests_are_404() {
    let (forge, client) = forge();
    let (status, body) = raw(&client, "GET", "/repos/acme/nope", None).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Not Found")));
    let err = github_error(client.pulls(OWNER, REPO).get(7).await);
    assert_eq!(err.status_code, 404);
    assert_no_violations(&forge);
}

#[tokio::test]
async fn serves_git_and_the_repository_object_points_at_it() {
    let (forge, client) = forge();
    let repo = client.repos(OWNER, REPO).get().await.unwrap();
    let clone_url = repo.clone_url.unwrap().to_string();
    assert_eq!(
        clone_url,
        format!("{}/{OWNER}/{REPO}.git", forge.git_base_url())
    );
    push_branch(&forge, "pushed", "pushed.txt");
    assert_eq!(
        forge.git().branches("acme/widgets").unwrap(),
        ["main", "pushed"]
    );
    let file = forge
        .git()
        .read_file("acme/widgets", "pushed", "pushed.txt")
        .unwrap();
    assert_eq!(file.as_deref(), Some("pushed.txt\n"));
    // The head follows the branch when it moves.
    client
        .pulls(OWNER, REPO)
        .create("P", "pushed", "main")
        .send()
        .await
        .unwrap();
    let before = client.pulls(OWNER, REPO).get(1).await.unwrap().head.sha;
    let dir = tempfile::tempdir().unwrap();
    let url = clone_url.replace("http://", &format!("http://{TOKEN_USER}:{TOKEN}@"));
    git(dir.path(), &["clone", "--quiet", "-b", "pushed", &url, "w"]);
    let work = dir.path().join("w");
    std::fs::write(work.join("more.txt"), "more\n").unwrap();
    git(&work, &["add", "more.txt"]);
    git(&work, &["commit", "--quiet", "-m", "more"]);
    git(&work, &["push", "--quiet", "origin", "pushed"]);
    let after = client.pulls(OWNER, REPO).get(1).await.unwrap();
    assert_ne!(after.head.sha, before);
    assert_eq!(after.head.sha, git(&work, &["rev-parse", "HEAD"]));
    assert_eq!(after.commits, Some(2));
    assert_no_violations(&forge);
}
