//! Retry from the last good phase (issue 13, point 2). A run of an agent whose plan
//! command is broken fails at plan; the operator fixes the agents file (read at every
//! run) and retries: the new attempt restores what specify wrote in the first one instead
//! of running it (the fixed profile's specify would fail if it ran), runs plan and tasks,
//! and pushes. Retrying a run in progress or one that succeeded is a 409.

use anyhow::Context as _;
use serde_json::Value;
use specrun_core::state::{PhaseState, RunRecord};
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::emulator::{http_request, SpecrunProcess};
use specrun_tests::harness::{
    failed_with, job_image, require_image, specrun_bin, write_agents_file, Harness, CANARY_TOKEN,
};
use specrun_tests::world::{run_request, submit, wait_final, World, BUCKET};
use std::process::{Command, Output};

type TestResult = anyhow::Result<()>;

/// The `flaky` agent as first configured: the scripted agent, but plan fails.
const BROKEN_PLAN: &str = "[agents.flaky]\nextends = \"scripted\"\n[agents.flaky.phases]\nplan = [\"sh\", \"-c\", \"echo the planning service is down >&2; exit 7\"]\n";

/// The operator's fix: plan works again. Specify now fails, so a retry that ran it again
/// could not succeed.
const FIXED_PLAN: &str = "[agents.flaky]\nextends = \"scripted\"\n[agents.flaky.phases]\nspecify = [\"sh\", \"-c\", \"echo specify must not run again >&2; exit 9\"]\n";

const TEXT: &str = "Export invoices as CSV files";

async fn post(url: &str) -> anyhow::Result<(u16, Value)> {
    let response = http_request("POST", url, None).await?;
    let status = response.status;
    Ok((status, response.json().unwrap_or(Value::Null)))
}

/// Asserts the attempt-2 run restored specify from attempt 1 and ran plan and tasks.
fn assert_resumed_from_plan(record: &RunRecord, first_specify: &PhaseState) {
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(record.attempt, 2);
    let earlier = &record.previous_attempts[..];
    assert_eq!(earlier.len(), 1, "{earlier:#?}");
    assert_eq!(earlier[0].status, Some(RunStatus::Failed));
    assert_eq!(
        earlier[0].error.as_ref().and_then(|e| e.phase),
        Some(Phase::Plan)
    );
    let specify = record.phase(Phase::Specify);
    assert_eq!(specify.status, PhaseStatus::Succeeded);
    assert_eq!(specify.restored_from_attempt, Some(1));
    assert_eq!(
        specify.started_at, first_specify.started_at,
        "specify keeps the times of the attempt that ran it"
    );
    assert!(specify
        .message
        .as_deref()
        .unwrap_or_default()
        .starts_with("not run again"));
    for phase in [Phase::Plan, Phase::Tasks, Phase::Commit, Phase::Push] {
        let state = record.phase(phase);
        assert_eq!(state.status, PhaseStatus::Succeeded, "{phase}: {state:#?}");
        assert_eq!(
            state.restored_from_attempt, None,
            "{phase} ran in attempt 2"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_failed_at_plan_is_retried_from_plan_over_the_api() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_agents_file(dir.path(), BROKEN_PLAN)?;
    let mut env = world.env.clone();
    env.extra
        .push(("SPECRUN_AGENTS_FILE".to_owned(), agents.clone()));
    let serve = SpecrunProcess::serve(&env, &[]).await?;
    let base = serve.base_url()?.to_owned();
    let url = world.git().create_repo("flaky", "# Flaky\n")?;
    let mut body = run_request(&url, TEXT);
    body["agent"] = "flaky".into();
    let (run_id, status_url) = submit(&base, &body).await?;
    // Queued or running: in progress either way.
    let (code, answer) = post(&format!("{base}/runs/{run_id}/retry")).await?;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "not_retryable");

    let first: RunRecord = serde_json::from_value(wait_final(&status_url, &serve).await?)?;
    failed_with(&first, "agent_phase_failed", Phase::Plan)?;
    let first_specify = first.phase(Phase::Specify).clone();
    assert!(
        first_specify
            .artifacts
            .iter()
            .any(|a| a.name == "checkpoint.json"),
        "specify left a checkpoint: {first_specify:#?}"
    );

    write_agents_file(dir.path(), FIXED_PLAN)?;
    let (code, answer) = post(&format!("{base}/runs/{run_id}/retry")).await?;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["attempt"], 2);
    assert_eq!(answer["resume_after"], "specify");
    let record: RunRecord = serde_json::from_value(wait_final(&status_url, &serve).await?)?;
    assert_resumed_from_plan(&record, &first_specify);

    // The phase JSON says the same as run.json, and attempt 2 stored nothing for specify.
    let specify_json: PhaseState = serde_json::from_slice(
        &world
            .moto
            .get_object(BUCKET, &format!("runs/{run_id}/phases/specify.json"))
            .await?,
    )?;
    assert_eq!(specify_json.restored_from_attempt, Some(1));
    let keys = world
        .moto
        .keys(BUCKET, &format!("runs/{run_id}/artifacts/attempt-2/"))
        .await?;
    assert!(
        !keys.iter().any(|k| k.contains("/specify/")),
        "attempt 2 ran specify: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains("/plan/")), "{keys:?}");

    let branch = record.branch_name.clone().context("a branch")?;
    let spec = world
        .git()
        .read_file("flaky", &branch, &format!("specs/{branch}/spec.md"))?
        .context("spec.md pushed")?;
    assert!(spec.contains("Export invoices"), "{spec}");
    assert!(world
        .git()
        .read_file("flaky", &branch, &format!("specs/{branch}/plan.md"))?
        .is_some());

    let (code, answer) = post(&format!("{base}/runs/{run_id}/retry")).await?;
    assert_eq!(code, 409, "a run that succeeded is not retried: {answer}");
    assert_eq!(answer["error"]["status"], "succeeded");
    let (code, _) = post(&format!(
        "{base}/runs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/retry"
    ))
    .await?;
    assert_eq!(code, 404);
    Ok(())
}

fn specrun(h: &Harness, agents: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(specrun_bin()?)
        .args(args)
        .env("SPECRUN_STATE_DIR", h.state.path())
        .env("SPECRUN_WORK_DIR", h.work.path())
        .env("SPECRUN_IMAGE", job_image())
        .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
        .env("SPECRUN_AGENTS_FILE", agents)
        .output()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn specrun_retry_continues_a_local_run_from_plan() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("flaky-cli", "# Flaky\n")?;
    let dir = tempfile::tempdir()?;
    let agents = write_agents_file(dir.path(), BROKEN_PLAN)?;
    let out = specrun(
        &h,
        &agents,
        &[
            "run",
            "--repo",
            &url,
            "--text",
            TEXT,
            "--agent",
            "flaky",
            "--publish",
            "branch",
            "--json",
        ],
    )?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: RunRecord = serde_json::from_slice(&out.stdout)?;
    failed_with(&first, "agent_phase_failed", Phase::Plan)?;

    write_agents_file(dir.path(), FIXED_PLAN)?;
    let out = specrun(&h, &agents, &["retry", &first.run_id, "--json"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("specify and the phases before it are restored from attempt 1"),
        "{stderr}"
    );
    let record: RunRecord = serde_json::from_slice(&out.stdout)?;
    assert_resumed_from_plan(&record, first.phase(Phase::Specify));

    let status = specrun(&h, &agents, &["status", &first.run_id])?;
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(table.contains("attempt 2"), "{table}");
    assert!(
        table.contains("attempt 1: failed (agent_phase_failed"),
        "{table}"
    );
    assert!(
        table.contains("not run again: succeeded in attempt 1"),
        "{table}"
    );

    let again = specrun(&h, &agents, &["retry", &first.run_id])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("is succeeded: only a failed or cancelled run can be retried"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}
