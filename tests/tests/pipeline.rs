//! End-to-end runs of the pipeline on a real Docker engine, the real job image and real
//! git remotes over HTTP: each outcome a run can have, and that nothing is left behind.

use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::harness::{failed_with, Harness, CANARY_TOKEN};

type TestResult = anyhow::Result<()>;

const TEXT: &str =
    "Add user login with email and password so that members can read their saved reports";

fn phase(
    record: &specrun_core::state::RunRecord,
    phase: Phase,
) -> &specrun_core::state::PhaseState {
    record.phase(phase)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_pushes_spec_plan_and_tasks_to_a_feature_branch() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("shop", "# Shop\n")?;
    let record = h.run(h.request(&url, TEXT)).await?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    assert!(branch.starts_with("001-"), "Spec Kit naming: {branch}");
    assert_eq!(
        h.git().branches("shop")?,
        vec![branch.clone(), "main".to_owned()]
    );
    for file in ["spec.md", "plan.md", "tasks.md"] {
        let text = h
            .git()
            .read_file("shop", &branch, &format!("specs/{branch}/{file}"))?;
        assert!(
            text.is_some_and(|t| t.len() > 200),
            "{file} missing or empty on {branch}"
        );
    }
    // Spec Kit's own scaffolding was initialised and committed with the spec.
    assert!(h
        .git()
        .read_file("shop", &branch, ".specify/templates/spec-template.md")?
        .is_some());
    assert!(h.git().read_file("shop", &branch, "README.md")?.is_some());

    // Every phase is recorded with timestamps; the stored run.json is what was returned.
    for state in &record.phases {
        assert!(
            state.finished_at.is_some(),
            "{} has no end time",
            state.phase
        );
        let expected = if state.phase == Phase::PullRequest {
            PhaseStatus::Skipped
        } else {
            PhaseStatus::Succeeded
        };
        assert_eq!(state.status, expected, "{}", state.phase);
    }
    assert!(phase(&record, Phase::PullRequest)
        .message
        .as_deref()
        .unwrap_or("")
        .contains("publish: branch"));
    assert_eq!(h.stored_run(&record.run_id).await?, record);
    assert_eq!(record.agent.name, "scripted");
    assert_eq!(
        record.agent.version.as_deref(),
        Some("specrun-scripted-agent 1.0.0")
    );
    assert_eq!(record.base_branch.as_deref(), Some("main"));
    let statuses: Vec<_> = record.status_timeline.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Queued, RunStatus::Running, RunStatus::Succeeded]
    );

    // The commit names the run, and the diff summary lists the spec files.
    let summary = h
        .artifact(&record, Some(Phase::Commit), "diff-summary.txt")
        .await?;
    assert!(
        summary.contains(&format!("specs/{branch}/tasks.md")),
        "{summary}"
    );
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(log.contains("spec.md"), "{log}");

    // Artifacts are what run.json says they are, and expire no sooner than seven days out.
    for artifact in &record.artifacts {
        let path = h.state.path().join(&artifact.key);
        let bytes = std::fs::read(&path)?;
        assert_eq!(bytes.len() as u64, artifact.size, "{}", artifact.key);
        use sha2::Digest;
        assert_eq!(
            format!("{:x}", sha2::Sha256::digest(&bytes)),
            artifact.sha256,
            "{}",
            artifact.key
        );
        assert!(artifact.expires_at - record.created_at >= time::Duration::days(7));
    }

    // The forge token was used for clone and push but is written nowhere.
    assert!(h
        .git()
        .requests()
        .iter()
        .any(|r| r.had_authorization && r.method == "POST"));
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert!(
            !text.contains(CANARY_TOKEN),
            "token leaked into {}",
            file.display()
        );
    }
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_writes_nothing_ends_in_no_changes_and_publishes_nothing() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("quiet", "# Quiet\n")?;
    let mut request = h.request(&url, TEXT);
    request
        .agent_options
        .insert("behaviour".into(), "nothing".into());
    let record = h.run(request).await?;

    assert_eq!(record.status, RunStatus::NoChanges, "{:#?}", record.error);
    assert!(
        record
            .status_reason
            .as_deref()
            .unwrap_or("")
            .contains("wrote no specification"),
        "{:?}",
        record.status_reason
    );
    assert_eq!(h.git().branches("quiet")?, vec!["main".to_owned()]);
    for skipped in [
        Phase::Plan,
        Phase::Tasks,
        Phase::Commit,
        Phase::Push,
        Phase::PullRequest,
    ] {
        let state = phase(&record, skipped);
        assert_eq!(state.status, PhaseStatus::Skipped, "{skipped}");
        assert!(
            state
                .message
                .as_deref()
                .unwrap_or("")
                .starts_with("skipped:"),
            "{skipped} says why"
        );
    }
    assert!(record.commit_sha.is_none());
    // The logs of what did run are kept.
    assert!(h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?
        .contains("nothing"));
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn open_questions_stop_the_run_and_are_saved_for_the_operator() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("unclear", "# Unclear\n")?;
    let mut request = h.request(&url, TEXT);
    request
        .agent_options
        .insert("behaviour".into(), "clarify".into());
    let record = h.run(request).await?;

    assert_eq!(record.status, RunStatus::NeedsClarification);
    assert_eq!(
        h.git().branches("unclear")?,
        vec!["main".to_owned()],
        "nothing is published"
    );
    assert_eq!(phase(&record, Phase::Plan).status, PhaseStatus::Skipped);
    let questions = h.artifact(&record, None, "clarifications.md").await?;
    assert!(
        questions.contains("1. ") && questions.contains("2. "),
        "{questions}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&h.artifact(&record, None, "clarifications.json").await?)?;
    assert_eq!(json["questions"].as_array().map(Vec::len), Some(2));
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_phase_fails_the_run_with_its_exit_code_and_logs() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("crash", "# Crash\n")?;
    let mut request = h.request(&url, TEXT);
    request
        .agent_options
        .insert("behaviour".into(), "crash:plan".into());
    let record = h.run(request).await?;

    assert_eq!(record.status, RunStatus::Failed);
    let error = record
        .error
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no error recorded"))?;
    assert_eq!(
        (error.phase, error.exit_code),
        (Some(Phase::Plan), Some(137))
    );
    assert!(
        error.remediation.contains("killed"),
        "{}",
        error.remediation
    );
    assert!(
        !error.log_excerpt.unwrap_or_default().trim().is_empty(),
        "an excerpt of the output"
    );
    assert_eq!(phase(&record, Phase::Plan).status, PhaseStatus::Failed);
    assert_eq!(phase(&record, Phase::Plan).exit_code, Some(137));
    assert_eq!(phase(&record, Phase::Tasks).status, PhaseStatus::Skipped);
    assert_eq!(
        phase(&record, Phase::Cleanup).status,
        PhaseStatus::Succeeded
    );
    assert!(h
        .artifact(&record, Some(Phase::Plan), "agent.stderr.log")
        .await
        .is_ok());
    assert_eq!(h.git().branches("crash")?, vec!["main".to_owned()]);
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_fast_at_prepare_with_the_fix() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("noimage", "# x\n")?;
    let mut config = h.config.clone();
    config.image = "specrun-job:does-not-exist".to_owned();
    let record = h.run_with(config, h.request(&url, TEXT)).await?;

    let error = failed_with(&record, "image_missing", Phase::Prepare)?;
    assert!(error
        .remediation
        .contains("scripts/build-image.sh --tag specrun-job:does-not-exist"));
    assert_eq!(
        phase(&record, Phase::Clone).status,
        PhaseStatus::Skipped,
        "nothing cloned"
    );
    assert!(
        h.git().requests().is_empty(),
        "the remote was never contacted"
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_docker_engine_fails_fast_with_the_fix() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("nodocker", "# x\n")?;
    let mut config = h.config.clone();
    config.docker_host = Some("unix:///nonexistent/docker.sock".to_owned());
    let record = h.run_with(config, h.request(&url, TEXT)).await?;

    let error = failed_with(&record, "docker_unreachable", Phase::Prepare)?;
    assert!(error.remediation.contains("scripts/ensure-docker.sh"));
    assert_eq!(
        phase(&record, Phase::Cleanup).status,
        PhaseStatus::Succeeded
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cloning_a_missing_repository_says_so() -> TestResult {
    let h = Harness::start().await?;
    let record = h
        .run(h.request(&h.git().repo_url("no-such-repo"), TEXT))
        .await?;

    let error = failed_with(&record, "repository_not_found", Phase::Clone)?;
    assert!(
        error.remediation.contains("Check the repository name"),
        "{}",
        error.remediation
    );
    assert_eq!(phase(&record, Phase::Specify).status, PhaseStatus::Skipped);
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_without_access_names_the_token_and_leaks_nothing() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("private", "# x\n")?;
    let mut config = h.config.clone();
    config.forge_token = Some(specrun_runner::config::Secret::new("wrong-token-value-123"));
    let record = h.run_with(config, h.request(&url, TEXT)).await?;

    let error = failed_with(&record, "clone_permission_denied", Phase::Clone)?;
    assert!(
        error.remediation.contains("SPECRUN_GIT_TOKEN"),
        "{}",
        error.remediation
    );
    for file in h.state_files() {
        let text = std::fs::read_to_string(&file)?;
        assert!(
            !text.contains("wrong-token-value-123"),
            "token leaked into {}",
            file.display()
        );
    }
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_initialised_repository_is_left_as_it_is_and_numbering_continues() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("twice", "# Twice\n")?;
    let first = h.run(h.request(&url, TEXT)).await?;
    let first_branch = first.branch_name.clone().unwrap_or_default();
    assert_eq!(first.status, RunStatus::Succeeded, "{:#?}", first.error);

    let mut second = h.request(&url, "Export saved reports as CSV files for accountants");
    second.base_branch = Some(first_branch.clone());
    second.branch_name = Some("spec/csv-export".to_owned());
    let second = h.run(second).await?;

    assert_eq!(second.status, RunStatus::Succeeded, "{:#?}", second.error);
    assert_eq!(second.branch_name.as_deref(), Some("spec/csv-export"));
    let specify = phase(&second, Phase::Specify)
        .message
        .clone()
        .unwrap_or_default();
    assert!(!specify.contains("initialised Spec Kit"), "{specify}");
    assert!(
        specify.contains("specs/002-"),
        "numbering continues: {specify}"
    );
    assert!(h
        .artifact(&second, Some(Phase::Specify), "speckit-init.stdout.log")
        .await
        .is_err());
    let template = |branch: &str| {
        h.git()
            .read_file("twice", branch, ".specify/templates/spec-template.md")
    };
    assert_eq!(template(&first_branch)?, template("spec/csv-export")?);
    h.assert_clean(&second).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_commits_nothing_to_the_remote() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("dry", "# Dry\n")?;
    let mut request = h.request(&url, TEXT);
    request.publish = Some(specrun_core::request::Publish::None);
    let record = h.run(request).await?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert!(record.commit_sha.is_some());
    assert_eq!(phase(&record, Phase::Push).status, PhaseStatus::Skipped);
    assert_eq!(h.git().branches("dry")?, vec!["main".to_owned()]);
    assert!(!h
        .git()
        .requests()
        .iter()
        .any(|r| r.path_and_query.contains("git-receive-pack")));
    h.assert_clean(&record).await
}
