//! Idempotent submission on the serverless path: `specrun serve` reaches S3 directly and
//! SQS through an [`OutageRelay`], so only the queue fails. A send that fails, or whose
//! answer is lost after the message went out, answers 503 and leaves the run queued; the
//! same request with the same `idempotency_key` queues it (202, the same run), and the run
//! is executed once however many messages name it.

use serde_json::{json, Value};
use specrun_core::keys;
use specrun_core::RunStatus;
use specrun_tests::emulator::{SpecrunEnv, SpecrunProcess};
use specrun_tests::harness::require_image;
use specrun_tests::outage::OutageRelay;
use specrun_tests::world::{post_runs, pushes, run_request, wait_final, World, BUCKET};

type TestResult = anyhow::Result<()>;

/// The world's environment with only SQS reached through `relay`.
fn queue_via(world: &World, relay: &OutageRelay) -> SpecrunEnv {
    let mut env = world.env.clone();
    env.extra
        .push(("AWS_ENDPOINT_URL_SQS".to_owned(), relay.endpoint()));
    env
}

/// Submits `body` while the queue is away: 503 naming the run, which stays queued.
async fn refused_but_recorded(world: &World, base: &str, body: &Value) -> anyhow::Result<String> {
    let refused = post_runs(base, body).await?;
    let answer = refused.json()?;
    assert_eq!(refused.status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    let index = world.moto.keys(BUCKET, "index/runs/").await?;
    let [entry] = index.as_slice() else {
        anyhow::bail!("one run recorded, not {index:?}");
    };
    let run_id = keys::run_from_index(entry)
        .map(|id| id.to_string())
        .unwrap_or_default();
    let record = world.stored_run(&run_id).await?;
    assert_eq!(
        record.status,
        RunStatus::Queued,
        "an unsure send must not fail the run"
    );
    assert_eq!(answer["error"]["run_id"], run_id.as_str(), "{answer}");
    Ok(run_id)
}

/// The same request again once the queue is back: 202 with the run, then 200 with it.
async fn resubmit(base: &str, body: &Value, run_id: &str) -> anyhow::Result<String> {
    let queued = post_runs(base, body).await?;
    let answer = queued.json()?;
    assert_eq!(queued.status, 202, "{answer}");
    assert_eq!(answer["run_id"], run_id, "{answer}");
    let known = post_runs(base, body).await?;
    assert_eq!(known.status, 200, "{}", known.json()?);
    assert_eq!(known.json()?["run_id"], run_id);
    Ok(answer["status_url"].as_str().unwrap_or_default().to_owned())
}

/// A runner executes the run once: it succeeds, one push, every message acknowledged.
async fn runs_once(world: &World, status_url: &str, repo: &str) -> TestResult {
    let runner = SpecrunProcess::runner(&world.env, &["--concurrency", "2"]).await?;
    let document = wait_final(status_url, &runner).await?;
    assert_eq!(
        document["status"],
        json!(RunStatus::Succeeded),
        "{document:#}"
    );
    assert_eq!(document["attempt"], 1, "{document:#}");
    assert_eq!(pushes(world.git(), repo), 1, "one run, one push");
    world.wait_queue_empty().await
}

/// Moto, `specrun serve` reaching SQS through a relay, and a request with `key`.
async fn start(key: &str) -> anyhow::Result<(World, OutageRelay, SpecrunProcess, Value)> {
    require_image().await?;
    let world = World::start(5).await?;
    let relay = OutageRelay::start(&world.moto.endpoint()).await?;
    let serve = SpecrunProcess::serve(&queue_via(&world, &relay), &["--no-runner"]).await?;
    let url = world.git().create_repo("api", "# Api\n")?;
    let mut body = run_request(&url, "Let operators rotate API keys");
    body["idempotency_key"] = json!(key);
    Ok((world, relay, serve, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submission_while_the_queue_is_away_is_queued_once_on_retry() -> TestResult {
    let (world, relay, serve, body) = start("rotate-keys-queue-away").await?;
    let base = serve.base_url()?;

    relay.refuse();
    let run_id = refused_but_recorded(&world, base, &body).await?;
    let depth = world.moto.queue_depth(&world.queues.url).await?;
    assert!(depth.is_empty(), "{depth:?}");

    relay.restore().await?;
    let status_url = resubmit(base, &body, &run_id).await?;
    let depth = world.moto.queue_depth(&world.queues.url).await?;
    assert_eq!(depth.visible + depth.in_flight, 1, "one message: {depth:?}");
    runs_once(&world, &status_url, "api").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_whose_answer_was_lost_is_resent_and_the_run_still_runs_once() -> TestResult {
    let (world, relay, serve, body) = start("rotate-keys-answer-lost").await?;
    let base = serve.base_url()?;

    relay.lose_answers().await?;
    let run_id = refused_but_recorded(&world, base, &body).await?;
    // The message went out (the SDK's own retries may have sent it more than once).
    let lost = world.moto.queue_depth(&world.queues.url).await?;
    assert!(lost.visible >= 1, "{lost:?}");

    relay.restore().await?;
    let status_url = resubmit(base, &body, &run_id).await?;
    let depth = world.moto.queue_depth(&world.queues.url).await?;
    assert_eq!(depth.visible, lost.visible + 1, "one resend: {depth:?}");
    // Every duplicate is acknowledged without running the run again.
    runs_once(&world, &status_url, "api").await
}
