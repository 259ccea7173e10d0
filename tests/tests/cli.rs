//! The `specrun` command line as an operator uses it: progress on stderr, `--json` on
//! stdout, exit codes, `status` and `logs` reading the state store.

use specrun_core::state::RunRecord;
use specrun_core::{Phase, RunStatus};
use specrun_tests::harness::{job_image, specrun_bin, Harness, CANARY_TOKEN};
use std::process::{Command, Output};

type TestResult = anyhow::Result<()>;

fn specrun(h: &Harness, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(specrun_bin()?)
        .args(args)
        .env("SPECRUN_STATE_DIR", h.state.path())
        .env("SPECRUN_WORK_DIR", h.work.path())
        .env("SPECRUN_IMAGE", job_image())
        .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
        .env_remove("SPECRUN_DEFAULT_AGENT")
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_json_status_and_logs() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("cli", "# CLI\n")?;
    let out = specrun(
        &h,
        &[
            "run",
            "--repo",
            &url,
            "--text",
            "Show a weekly digest of saved reports",
            "--agent",
            "scripted",
            "--publish",
            "branch",
            "--json",
        ],
    )?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // stdout is run.json and nothing else; progress and the summary went to stderr.
    let record: RunRecord = serde_json::from_str(&stdout)?;
    assert_eq!(record.status, RunStatus::Succeeded);
    for phase in Phase::ALL {
        assert!(
            stderr.contains(&format!("] {:<13} running", phase.as_str()))
                || phase == Phase::PullRequest,
            "no progress for {phase}: {stderr}"
        );
    }
    assert!(!stderr.contains(CANARY_TOKEN) && !stdout.contains(CANARY_TOKEN));

    let status = specrun(&h, &["status", &record.run_id])?;
    let table = text(&status.stdout);
    assert_eq!(status.status.code(), Some(0));
    for phase in Phase::ALL {
        let row = table
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("{:<13} ", phase.as_str()))
            })
            .ok_or_else(|| anyhow::anyhow!("no row for {phase}: {table}"))?;
        if phase != Phase::PullRequest {
            assert!(
                row.contains("Z ") && row.contains('s'),
                "timestamp and duration for {phase}: {row}"
            );
        }
    }

    let logs = specrun(&h, &["logs", &record.run_id, "--phase", "specify"])?;
    let logs = text(&logs.stdout);
    assert!(
        logs.contains("artifacts/specify/agent.stdout.log") && logs.contains("spec.md"),
        "{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_outcomes_apart() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("codes", "# Codes\n")?;
    let base = [
        "run",
        "--repo",
        url.as_str(),
        "--text",
        "Export reports",
        "--agent",
        "scripted",
        "--publish",
        "branch",
    ];
    let with = |option: &str| -> anyhow::Result<Output> {
        let mut args = base.to_vec();
        args.extend(["--agent-option", option]);
        specrun(&h, &args)
    };
    assert_eq!(
        with("behaviour=nothing")?.status.code(),
        Some(0),
        "no_changes is a success"
    );
    assert_eq!(with("behaviour=clarify")?.status.code(), Some(3));
    let failed = with("behaviour=crash:tasks")?;
    assert_eq!(failed.status.code(), Some(1));
    let summary = text(&failed.stdout);
    assert!(
        summary.contains("error agent_phase_failed") && summary.contains("fix: "),
        "{summary}"
    );

    let refused = specrun(
        &h,
        &[
            "run",
            "--repo",
            &url,
            "--text",
            "x",
            "--branch-name",
            "a..b",
        ],
    )?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("branch_name: branch name may not contain '..'"),
        "{}",
        text(&refused.stderr)
    );
    let missing = specrun(&h, &["status", "0193a1b2-0000-7000-8000-000000000000"])?;
    assert!(text(&missing.stderr).contains("no run 0193a1b2-0000-7000-8000-000000000000"));
    Ok(())
}
