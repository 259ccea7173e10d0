//! The `specrun` command line as an operator uses it: progress on stderr, `--json` on
//! stdout, exit codes, `status`, `logs` and `cancel` on the state directory or the bucket.

use specrun_core::ports::BlobStore as _;
use specrun_core::request::Publish;
use specrun_core::state::{AgentConfiguration, ArtifactRef, RunRecord};
use specrun_core::{Phase, RunStatus};
use specrun_store::S3BlobStore;
use specrun_tests::emulator::{aws_env, http_request, Moto, SpecrunEnv, SpecrunProcess};
use specrun_tests::harness::{job_image, specrun_bin, Harness, CANARY_TOKEN};
use specrun_tests::world::BUCKET;
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

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_ends_cancelled_and_leaves_nothing_behind() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("interrupted", "# Interrupted\n")?;
    let agents = specrun_tests::harness::write_slow_agents_file(h.work.path(), "slow", 60)?;
    let mut child = Command::new(specrun_bin()?)
        .args([
            "run",
            "--repo",
            &url,
            "--text",
            "Export reports",
            "--agent",
            "slow",
        ])
        .env("SPECRUN_STATE_DIR", h.state.path())
        .env("SPECRUN_WORK_DIR", h.work.path())
        .env("SPECRUN_IMAGE", job_image())
        .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
        .env("SPECRUN_AGENTS_FILE", &agents)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let specify_running = || -> Option<RunRecord> {
        let runs = std::fs::read_dir(h.state.path().join("runs")).ok()?;
        runs.filter_map(Result::ok).find_map(|dir| {
            let record: RunRecord =
                serde_json::from_slice(&std::fs::read(dir.path().join("run.json")).ok()?).ok()?;
            (record.phase(Phase::Specify).status == specrun_core::PhaseStatus::Running)
                .then_some(record)
        })
    };
    let mut running = None;
    for _ in 0..600 {
        running = specify_running();
        if running.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let running = running.ok_or_else(|| anyhow::anyhow!("the specify phase never started"))?;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        anyhow::ensure!(started.elapsed().as_secs() < 60, "specrun run did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)?;
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("interrupted; cancelling run"), "{stderr}");
    let record: RunRecord = serde_json::from_slice(&std::fs::read(
        h.state
            .path()
            .join(format!("runs/{}/run.json", running.run_id)),
    )?)?;
    assert_eq!(record.status, RunStatus::Cancelled, "{record:#?}");
    assert!(
        record
            .phase(Phase::Specify)
            .artifacts
            .iter()
            .any(|a| a.name.ends_with(".log")),
        "the interrupted phase's logs are kept: {:#?}",
        record.phase(Phase::Specify)
    );
    assert_eq!(
        record.phase(Phase::Cleanup).status,
        specrun_core::PhaseStatus::Succeeded
    );
    let label = format!("label=io.specrun.run-id={}", running.run_id);
    let containers = Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()?;
    assert!(
        text(&containers.stdout).trim().is_empty(),
        "a job container is left"
    );
    assert!(
        !h.work.path().join(&running.run_id).exists(),
        "the workspace is left"
    );
    Ok(())
}

/// A stand-in for a job container a killed runner left behind, labelled for `run`.
fn leftover_container(run: &str) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(["run", "-d", "--rm", "--network", "none"])
        .args(["--label", "io.specrun.managed=true"])
        .args(["--label", &format!("io.specrun.run-id={run}")])
        .args([job_image().as_str(), "sleep", "300"])
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
    Ok(text(&out.stdout).trim().to_owned())
}

fn container_exists(id: &str) -> anyhow::Result<bool> {
    Ok(Command::new("docker")
        .args(["inspect", id])
        .output()?
        .status
        .success())
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_removes_the_leftovers_of_finished_runs_only() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("swept", "# Swept\n")?;
    let finished = h.run(h.request(&url, "Export reports")).await?;
    assert!(finished.status.is_final());
    // A run another runner holds right now, and a run of some other deployment.
    let mut live = serde_json::to_value(&finished)?;
    let live_id = "0193a1b2-0000-7000-8000-00000000beef";
    live["run_id"] = live_id.into();
    live["status"] = "running".into();
    live["finished_at"] = serde_json::Value::Null;
    let live_run = specrun_core::keys::RunId::parse(live_id)?;
    h.store
        .put(
            &specrun_core::keys::run_json(&live_run),
            serde_json::to_vec(&live)?.into(),
            "application/json",
        )
        .await?;
    let lease = specrun_core::lease::Lease {
        run_id: live_id.to_owned(),
        runner_id: "runner-elsewhere".to_owned(),
        token: "t".to_owned(),
        attempt: 1,
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::minutes(10),
    };
    h.store
        .put(
            &specrun_core::keys::lease(&live_run),
            serde_json::to_vec(&lease)?.into(),
            "application/json",
        )
        .await?;
    let stale = leftover_container(&finished.run_id)?;
    let held = leftover_container(live_id)?;
    let foreign = leftover_container("0193a1b2-0000-7000-8000-0000000f0e19")?;

    let out = specrun(&h, &["sweep"])?;
    let report = text(&out.stdout);
    let kept = (container_exists(&held)?, container_exists(&foreign)?);
    let gone = !container_exists(&stale)?;
    for id in [&held, &foreign, &stale] {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(
        gone,
        "the finished run's container is still there: {report}"
    );
    assert_eq!(
        kept,
        (true, true),
        "a live or unknown run's container was removed"
    );
    assert!(
        report.contains(&format!(
            "removed the leftovers of run {}: the run is over",
            finished.run_id
        )),
        "{report}"
    );
    Ok(())
}

/// `specrun ARGS` pointed at `moto` (endpoint, region, credentials as `specrun runner`
/// gets them) with an empty `--state-dir`: whatever it finds came from the bucket.
fn specrun_on(moto: &Moto, state_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(specrun_bin()?)
        .args(args)
        .env("SPECRUN_STATE_DIR", state_dir)
        .env_remove("SPECRUN_BUCKET")
        .env_remove("AWS_PROFILE")
        .envs(aws_env(&moto.endpoint()))
        .output()?)
}

/// A queued run in `store`, with one specify log when `log` is given.
async fn queued_run(
    store: &S3BlobStore,
    run_id: &str,
    log: Option<&str>,
) -> anyhow::Result<RunRecord> {
    let now = time::OffsetDateTime::now_utc();
    let mut record = RunRecord::queued(
        run_id,
        "octo/shop",
        Publish::Branch,
        AgentConfiguration::default(),
        now,
    );
    if let Some(log) = log {
        let key = format!("runs/{run_id}/artifacts/specify/agent.stdout.log");
        store
            .put(&key, log.as_bytes().to_vec().into(), "text/plain")
            .await?;
        record.artifacts.push(ArtifactRef {
            name: "agent.stdout.log".into(),
            key,
            size: log.len() as u64,
            sha256: String::new(),
            content_type: "text/plain".into(),
            phase: Some(Phase::Specify),
            expires_at: now,
        });
    }
    specrun_store::runs::create_run(store, &record).await?;
    Ok(record)
}

/// `status`, `logs` and `cancel` work on the serverless deployment's bucket
/// (`--bucket`, `SPECRUN_BUCKET`), and `cancel` there leaves the bucket as the submit
/// API's `POST /runs/{id}/cancel` does.
#[tokio::test(flavor = "multi_thread")]
async fn status_logs_and_cancel_work_on_the_bucket() -> TestResult {
    let moto = Moto::start().await?;
    moto.create_bucket(BUCKET).await?;
    let queues = moto.create_queues("cli-runs", 3, 30).await?;
    let store = S3BlobStore::new(moto.s3().clone(), BUCKET);
    let by_cli = "0193a1b2-0000-7000-8000-00000000c111";
    let by_api = "0193a1b2-0000-7000-8000-00000000a222";
    queued_run(&store, by_cli, Some("specify said hello from the bucket")).await?;
    queued_run(&store, by_api, None).await?;
    let empty = tempfile::tempdir()?;

    let status = specrun_on(&moto, empty.path(), &["status", by_cli, "--bucket", BUCKET])?;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let table = text(&status.stdout);
    assert!(
        table.contains(by_cli) && table.contains("queued"),
        "{table}"
    );

    // The variable does what the flag does.
    let json = Command::new(specrun_bin()?)
        .args(["status", by_cli, "--json"])
        .env("SPECRUN_STATE_DIR", empty.path())
        .env("SPECRUN_BUCKET", BUCKET)
        .envs(aws_env(&moto.endpoint()))
        .output()?;
    assert_eq!(json.status.code(), Some(0), "{}", text(&json.stderr));
    let record: RunRecord = serde_json::from_slice(&json.stdout)?;
    assert_eq!(record.run_id, by_cli);

    let logs = specrun_on(
        &moto,
        empty.path(),
        &["logs", by_cli, "--phase", "specify", "--bucket", BUCKET],
    )?;
    assert_eq!(logs.status.code(), Some(0), "{}", text(&logs.stderr));
    assert!(
        text(&logs.stdout).contains("specify said hello from the bucket"),
        "{}",
        text(&logs.stdout)
    );

    let cancel = specrun_on(&moto, empty.path(), &["cancel", by_cli, "--bucket", BUCKET])?;
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel.stderr));
    assert!(
        text(&cancel.stdout).contains("cancelled before it started"),
        "{}",
        text(&cancel.stdout)
    );

    // The same through the submit API, for comparison.
    let env = SpecrunEnv::new(&moto, BUCKET, &queues.url, "127.0.0.1");
    let serve = SpecrunProcess::serve(&env, &["--no-runner"]).await?;
    let url = format!("{}/runs/{by_api}/cancel", serve.base_url()?);
    assert_eq!(http_request("POST", &url, None).await?.status, 200);

    let stored = |id: &'static str| {
        let moto = &moto;
        async move {
            let bytes = moto
                .get_object(BUCKET, &format!("runs/{id}/run.json"))
                .await?;
            let record: RunRecord = serde_json::from_slice(&bytes)?;
            let marker = moto
                .get_object(BUCKET, &format!("runs/{id}/cancel.json"))
                .await?;
            let marker: serde_json::Value = serde_json::from_slice(&marker)?;
            anyhow::Ok((record, marker))
        }
    };
    let (cli_record, cli_marker) = stored(by_cli).await?;
    let (api_record, api_marker) = stored(by_api).await?;
    assert_eq!(cli_record.status, RunStatus::Cancelled);
    assert_eq!(cli_record.status, api_record.status);
    let phases = |r: &RunRecord| -> Vec<_> {
        r.phases
            .iter()
            .map(|p| (p.phase, p.status, p.message.clone()))
            .collect()
    };
    assert_eq!(phases(&cli_record), phases(&api_record));
    for (record, marker) in [(&cli_record, &cli_marker), (&api_record, &api_marker)] {
        let by = marker["requested_by"].as_str().unwrap_or_default();
        assert!(!by.is_empty(), "{marker}");
        assert_eq!(
            record.status_reason.as_deref(),
            Some(format!("cancelled by {by} before it started").as_str())
        );
    }
    // The state directory was never written.
    assert_eq!(std::fs::read_dir(empty.path())?.count(), 0);
    Ok(())
}

/// A bucket that does not exist is a configuration error naming the bucket and what to
/// set, from the status API and the command line alike, never "no such run".
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_a_configuration_error_not_a_missing_run() -> TestResult {
    let moto = Moto::start().await?;
    let queues = moto.create_queues("cli-runs", 3, 30).await?;
    let missing = "specrun-state-never-created";
    let run_id = "0193a1b2-0000-7000-8000-00000000b333";

    let env = SpecrunEnv::new(&moto, missing, &queues.url, "127.0.0.1");
    let serve = SpecrunProcess::serve(&env, &["--no-runner"]).await?;
    for path in [
        format!("/runs/{run_id}"),
        format!("/runs/{run_id}/artifacts/"),
        "/runs".to_owned(),
    ] {
        let response = http_request("GET", &format!("{}{path}", serve.base_url()?), None).await?;
        let answer = response.json()?;
        assert_eq!(response.status, 500, "GET {path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "misconfigured",
            "GET {path}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(missing) && message.contains("SPECRUN_BUCKET"),
            "GET {path}: {message}"
        );
    }

    let empty = tempfile::tempdir()?;
    for args in [
        vec!["status", run_id, "--bucket", missing],
        vec!["logs", run_id, "--bucket", missing],
        vec!["cancel", run_id, "--bucket", missing],
    ] {
        let out = specrun_on(&moto, empty.path(), &args)?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("bucket {missing} does not exist"))
                && stderr.contains("SPECRUN_BUCKET")
                && !stderr.contains("no run"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}
