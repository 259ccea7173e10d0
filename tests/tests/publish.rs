//! Publishing: a run opens a pull request on the forge (a faithful fake of GitHub's REST
//! API, checked against GitHub's OpenAPI description), a second run for the same branch
//! updates it instead of opening another, and a branch specrun did not create is never
//! overwritten.

use specrun_core::request::Publish;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::harness::{failed_with, Harness};

type TestResult = anyhow::Result<()>;

const TEXT: &str = "Let members export saved reports as CSV for their accountants";

fn pr_request(h: &Harness) -> specrun_core::request::RunRequest {
    let mut request = h.request("octo/shop", TEXT);
    request.publish = Some(Publish::Pr);
    request.labels = vec!["spec".to_owned()];
    request.draft = Some(true);
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_opens_a_pull_request_and_a_second_run_updates_it() -> TestResult {
    let mut h = Harness::start().await?;
    h.config.pr_labels = vec!["specrun".to_owned()];
    h.config.status_base_url = Some("https://specrun.example".to_owned());
    h.forge.create_repo("octo", "shop", "# Shop\n")?;

    let first = h.run(pr_request(&h)).await?;
    assert_eq!(first.status, RunStatus::Succeeded, "{:#?}", first.error);
    let branch = first.branch_name.clone().unwrap_or_default();
    let pulls = h.forge.pulls("octo", "shop");
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str(), pr.draft),
        (branch.as_str(), "main", true)
    );
    assert_eq!(pr.title, format!("spec: {branch}"));
    let body = pr.body.clone().unwrap_or_default();
    assert!(
        body.contains(&first.run_id),
        "the body names the run: {body}"
    );
    assert!(
        body.contains("| specify | succeeded |"),
        "the body has the phase summary: {body}"
    );
    assert!(
        body.contains(&format!("https://specrun.example/runs/{}", first.run_id)),
        "{body}"
    );
    let mut labels = pr.labels.clone();
    labels.sort();
    assert_eq!(labels, ["spec", "specrun"]);
    assert_eq!(
        first.pull_request_url.as_deref(),
        Some(format!("{}/octo/shop/pull/{}", h.forge.web_url(), pr.number).as_str())
    );
    for file in ["spec.md", "plan.md", "tasks.md"] {
        let path = format!("specs/{branch}/{file}");
        assert!(
            h.git().read_file("octo/shop", &branch, &path)?.is_some(),
            "{path} on {branch}"
        );
    }

    // The same branch again: the branch is replaced (it is specrun's own) and the open pull
    // request is updated, not duplicated.
    let mut again = pr_request(&h);
    again.branch_name = Some(branch.clone());
    let second = h.run(again).await?;
    assert_eq!(second.status, RunStatus::Succeeded, "{:#?}", second.error);
    let push = second
        .phase(Phase::Push)
        .message
        .clone()
        .unwrap_or_default();
    assert!(push.contains("replaced specrun's earlier commit"), "{push}");
    let pulls = h.forge.pulls("octo", "shop");
    assert_eq!(pulls.len(), 1, "still one pull request: {pulls:?}");
    assert!(pulls[0]
        .body
        .clone()
        .unwrap_or_default()
        .contains(&second.run_id));
    let message = second
        .phase(Phase::PullRequest)
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.starts_with(&format!("updated pull request #{}", pulls[0].number)),
        "{message}"
    );
    assert_eq!(second.pull_request_url, first.pull_request_url);
    assert_eq!(
        h.forge.violations(),
        Vec::<String>::new(),
        "every API call matches GitHub's description"
    );
    h.assert_clean(&second).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_with_someone_elses_commits_is_not_overwritten() -> TestResult {
    let h = Harness::start().await?;
    h.forge.create_repo("octo", "shop", "# Shop\n")?;
    // Someone else's branch, with the name the run will use.
    let root = h.git().root().join("octo/shop.git");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&root)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
    };
    let out = git(&["branch", "taken", "main"])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = git(&["rev-parse", "taken"])?.stdout;

    let mut request = pr_request(&h);
    request.branch_name = Some("taken".to_owned());
    let record = h.run(request).await?;

    let error = failed_with(&record, "push_rejected", Phase::Push)?;
    assert!(
        error.message.contains("specrun did not make"),
        "{}",
        error.message
    );
    assert!(
        error.remediation.contains("branch_name"),
        "{}",
        error.remediation
    );
    assert_eq!(
        git(&["rev-parse", "taken"])?.stdout,
        before,
        "the branch is untouched"
    );
    assert!(h.forge.pulls("octo", "shop").is_empty());
    assert_eq!(
        record.phase(Phase::PullRequest).status,
        PhaseStatus::Skipped
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_branch_pushes_without_a_pull_request() -> TestResult {
    let h = Harness::start().await?;
    h.forge.create_repo("octo", "shop", "# Shop\n")?;
    let mut request = pr_request(&h);
    request.publish = Some(Publish::Branch);
    let record = h.run(request).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert!(h.forge.pulls("octo", "shop").is_empty());
    assert!(record.pull_request_url.is_none());
    assert!(h.forge.requests().is_empty(), "the API was not called");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forge_that_refuses_the_token_fails_at_pull_request_with_the_fix() -> TestResult {
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "shop", "# Shop\n")?;
    // Git accepts the token; point the API at a forge that does not know it.
    let other = specrun_tests::forge::ForgeServer::start("another-token-entirely")?;
    h.config.forge_api_url = Some(other.api_url());
    let record = h.run(pr_request(&h)).await?;
    let error = failed_with(&record, "forge_unauthorized", Phase::PullRequest)?;
    assert!(error.remediation.contains("SPECRUN_GIT_TOKEN"));
    assert_eq!(
        record.phase(Phase::Push).status,
        PhaseStatus::Succeeded,
        "the branch was pushed"
    );
    h.assert_clean(&record).await
}
