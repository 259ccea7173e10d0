//! Storage and queue outages in the middle of a run, on the serverless path: the runner
//! reaches moto through an [`OutageRelay`] that refuses connections, then answers 503, then
//! comes back. The runner retries with backoff and the run lands once: one push, one final
//! state, one index entry, every artifact whole, the message acknowledged.

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::emulator::http_request;
use specrun_tests::emulator::SpecrunProcess;
use specrun_tests::harness::{require_image, write_slow_agents_file};
use specrun_tests::outage::OutageRelay;
use specrun_tests::world::{
    eventually, post_runs, pushes, run_request, submit, wait_final, World, BUCKET,
};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread")]
async fn a_run_rides_out_a_storage_and_queue_outage_and_lands_once() -> TestResult {
    require_image().await?;
    let mut world = World::start(5).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_slow_agents_file(dir.path(), "slow", 8)?;
    world
        .env
        .extra
        .push(("SPECRUN_AGENTS_FILE".to_owned(), agents));
    let relay = OutageRelay::start(&world.moto.endpoint()).await?;
    let through_relay = world.env_via(&relay);

    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    // A visibility timeout shorter than the outage: the message comes back to the second
    // receiver slot while the store and queue are away. The lease outlives the outage: a
    // lease that lapses unrenewed stops its attempt by design (another runner may have
    // taken the run), and a new attempt follows.
    let runner = SpecrunProcess::runner(
        &through_relay,
        &[
            "--lease-secs",
            "30",
            "--visibility-secs",
            "10",
            "--concurrency",
            "2",
        ],
    )
    .await?;
    let url = world.git().create_repo("api", "# Api\n")?;
    let mut request = run_request(&url, "Let operators rotate API keys without downtime");
    request["agent"] = json!("slow");
    let (run_id, status_url) = submit(serve.base_url()?, &request).await?;

    eventually(
        "the specify phase to start",
        Duration::from_secs(60),
        || async {
            let specify_running = match world.stored_run(&run_id).await {
                Ok(record) => record.phase(Phase::Specify).status == PhaseStatus::Running,
                Err(_) => false,
            };
            Ok(specify_running.then_some(()))
        },
    )
    .await?;
    relay.refuse();
    tokio::time::sleep(Duration::from_secs(8)).await;
    relay.answer_503().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.restore().await?;

    let document = wait_final(&status_url, &runner).await?;
    let record: RunRecord = serde_json::from_value(document.clone())?;
    assert_eq!(record.status, RunStatus::Succeeded, "{document:#}");
    assert_eq!(
        record.attempt, 1,
        "the outage must not start a second attempt"
    );
    assert!(record.previous_attempts.is_empty(), "{document:#}");
    assert_eq!(pushes(world.git(), "api"), 1, "one run, one push");
    let branch = record.branch_name.clone().context("no branch")?;
    assert!(world.git().branches("api")?.contains(&branch));

    let log = runner.stderr_tail(400);
    assert!(log.contains("storage unavailable; retrying"), "{log}");
    assert!(log.contains("storage reachable again"), "{log}");

    // Every phase document agrees with run.json, and every artifact is whole.
    for phase in Phase::ALL {
        let key = format!("runs/{run_id}/phases/{}.json", phase.as_str());
        let stored: serde_json::Value =
            serde_json::from_slice(&world.moto.get_object(BUCKET, &key).await?)?;
        assert_eq!(
            stored["status"],
            json!(record.phase(phase).status),
            "{key}: {stored}"
        );
    }
    for artifact in &record.artifacts {
        let body = world.moto.get_object(BUCKET, &artifact.key).await?;
        assert_eq!(body.len() as u64, artifact.size, "{}", artifact.key);
        assert_eq!(format!("{:x}", Sha256::digest(&body)), artifact.sha256);
    }
    let index = world.moto.keys(BUCKET, "index/runs/").await?;
    let entries = index.iter().filter(|k| k.ends_with(&run_id)).count();
    assert_eq!(entries, 1, "{index:?}");

    // Both deliveries (the original and the one that came back) are acknowledged.
    world.wait_queue_empty().await?;
    assert!(relay.connections() > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_503_during_an_outage_and_works_again_after() -> TestResult {
    let world = World::start(3).await?;
    let relay = OutageRelay::start(&world.moto.endpoint()).await?;
    let serve = SpecrunProcess::serve(&world.env_via(&relay), &["--no-runner"]).await?;
    let base = serve.base_url()?;
    let url = world.git().create_repo("api", "# Api\n")?;
    let mut body = run_request(&url, "Let operators rotate API keys");
    body["idempotency_key"] = json!("rotate-keys-1");

    relay.refuse();
    let refused = post_runs(base, &body).await?;
    let answer = refused.json()?;
    assert_eq!(refused.status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    let listing = http_request("GET", &format!("{base}/runs"), None).await?;
    assert_eq!(listing.status, 503);

    relay.restore().await?;
    // The same idempotency key after the outage: one run, queued once.
    let (run_id, _) = submit(base, &body).await?;
    let again = post_runs(base, &body).await?.json()?;
    assert_eq!(again["run_id"], run_id.as_str(), "{again}");
    let depth = world.moto.queue_depth(&world.queues.url).await?;
    assert_eq!(depth.visible + depth.in_flight, 1, "{depth:?}");
    Ok(())
}
