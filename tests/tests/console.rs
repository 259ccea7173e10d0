//! The web console (issue 11, point 2) in real headless Chromium against `specrun serve`
//! on the real engine: a run submitted from the form shows up, its running phase's log
//! grows on the page while the agent still writes, the timeline and links are right when
//! it ends, cancel stops a slow run, a bad input shows the API's message beside its field,
//! and a request without the credential gets nothing. Screenshots of the run list and a
//! run page go to target/console-screenshots/.

use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_tests::browser::{run_scenario, screenshots_dir};
use specrun_tests::emulator::{http_request, SpecrunProcess};
use specrun_tests::harness::{require_image, write_agents_file, write_slow_agents_file};
use specrun_tests::world::World;

type TestResult = anyhow::Result<()>;

/// The deployment's console secret in these tests.
const TOKEN: &str = "console-test-token-0123456789abcdef";

/// The scripted agent, writing a numbered line every second for 15 s in the specify
/// phase before it does its work: the log grows while the phase runs.
const CHATTY_AGENT: &str = r#"[agents.chatty]
extends = "scripted"
[agents.chatty.phases]
specify = ["sh", "-c", "for i in $(seq 1 15); do echo \"progress line $i\"; sleep 1; done; exec specrun-scripted-agent specify \"$1\"", "chatty", "{text}"]
"#;

/// `specrun serve` with the console on, taking runs with the agents of `agents_file`.
async fn console_serve(
    world: &World,
    agents_file: &str,
    args: &[&str],
) -> anyhow::Result<SpecrunProcess> {
    let mut env = world.env.clone();
    env.extra.extend([
        ("SPECRUN_CONSOLE_TOKEN".to_owned(), TOKEN.to_owned()),
        ("SPECRUN_AGENTS_FILE".to_owned(), agents_file.to_owned()),
    ]);
    SpecrunProcess::serve(&env, args).await
}

fn run_id(result: &serde_json::Value) -> anyhow::Result<String> {
    result["run_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no run_id in {result}"))
}

/// Runs browser `scenario` with a run of `agent` (from `agents_file`) on a new repository
/// against `specrun serve` with a runner on the real engine; the run as stored after it.
async fn scenario_with_a_run(
    scenario: &str,
    agents_file: impl FnOnce(&std::path::Path) -> anyhow::Result<String>,
    agent: &str,
) -> anyhow::Result<RunRecord> {
    require_image().await?;
    let world = World::start(3).await?;
    let dir = tempfile::tempdir()?;
    let serve = console_serve(&world, &agents_file(dir.path())?, &[]).await?;
    world
        .forge
        .create_repo("octo", agent, &format!("# {agent}\n"))?;
    let repo = format!("octo/{agent}");
    let base = serve.base_url()?.to_owned();
    let result = run_scenario(
        scenario,
        &[
            ("CONSOLE_URL", &base),
            ("CONSOLE_TOKEN", TOKEN),
            ("REPO_URL", &repo),
            ("AGENT", agent),
        ],
    )
    .await;
    let result = result.map_err(|e| e.context(serve.stderr_tail(60)))?;
    world.stored_run(&run_id(&result)?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_submitted_from_the_console_is_followed_live_to_its_end() -> TestResult {
    const SHOTS: [&str; 3] = ["run-list.png", "run-page.png", "submit-form-error.png"];
    for shot in SHOTS {
        // An earlier run's screenshots must not pass for this one's.
        let _ = std::fs::remove_file(screenshots_dir().join(shot));
    }
    let record =
        scenario_with_a_run("flow", |dir| write_agents_file(dir, CHATTY_AGENT), "chatty").await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    assert!(record.pull_request_url.is_some(), "{record:?}");
    for shot in SHOTS {
        let path = screenshots_dir().join(shot);
        assert!(
            std::fs::metadata(&path)?.len() > 10_000,
            "{} was written",
            path.display()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_in_the_console_stops_a_slow_run() -> TestResult {
    let record = scenario_with_a_run(
        "cancel",
        |dir| write_slow_agents_file(dir, "slow", 300),
        "slow",
    )
    .await?;
    assert_eq!(record.status, RunStatus::Cancelled, "{record:?}");
    assert!(record.finished_at.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_credential_the_console_and_the_api_give_nothing() -> TestResult {
    let world = World::start(3).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_agents_file(dir.path(), CHATTY_AGENT)?;
    // No runner: the run stays queued, so the test can see that nothing touched it.
    let serve = console_serve(&world, &agents, &["--no-runner"]).await?;
    let repo = world.git().create_repo("private", "# private\n")?;
    let base = serve.base_url()?.to_owned();

    // The operator's script submits with the bearer token; the scenario then tries
    // everything without it.
    let created = run_scenario(
        "submit",
        &[
            ("CONSOLE_URL", &base),
            ("CONSOLE_TOKEN", TOKEN),
            ("REPO_URL", &repo),
        ],
    )
    .await?;
    let id = run_id(&created)?;
    let result = run_scenario(
        "gate",
        &[
            ("CONSOLE_URL", &base),
            ("CONSOLE_TOKEN", TOKEN),
            ("RUN_ID", &id),
        ],
    )
    .await;
    let result = result.map_err(|e| e.context(serve.stderr_tail(60)))?;
    assert!(
        result["refused"].as_array().is_some_and(|r| r.len() >= 8),
        "{result}"
    );

    // The same from another client: 401, and not a byte of the run.
    for path in ["/", "/runs", &format!("/runs/{id}")] {
        let answer = http_request("GET", &format!("{base}{path}"), None).await?;
        assert_eq!(answer.status, 401, "{path}");
        assert!(
            !String::from_utf8_lossy(&answer.body).contains(&id),
            "{path}"
        );
    }
    let record = world.stored_run(&id).await?;
    assert_eq!(record.status, RunStatus::Queued, "nothing acted on the run");
    Ok(())
}
