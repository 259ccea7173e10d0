//! Batches (issue 13, point 4): one specification on five repositories, one of which
//! names a base branch that does not exist. The batch ends with four runs succeeded and
//! one failed, in `GET /batches/{id}` and in batch.json; never more than `max_in_flight`
//! of its runs are in progress at once although the runner takes four at a time; sending
//! the same batch again runs only the failed run (a second attempt of the same run) and
//! leaves the others alone. Two runners take the runs. Bad batches are 400s naming the field or the entry.

use anyhow::Context as _;
use serde_json::{json, Value};
use specrun_core::batch::BatchRecord;
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_tests::emulator::{http_request, SpecrunProcess};
use specrun_tests::harness::{
    job_image, remove_job_containers, require_image, specrun_bin, write_slow_agents_file, Harness,
    CANARY_TOKEN,
};
use specrun_tests::world::{eventually, pushes, World, BUCKET};
use std::time::Duration;
use time::OffsetDateTime;

type TestResult = anyhow::Result<()>;

const TEXT: &str = "Export invoices as CSV files";
const MAX_IN_FLIGHT: usize = 2;

async fn post_batch(base: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let response = http_request(
        "POST",
        &format!("{base}/batches"),
        Some(serde_json::to_vec(body)?),
    )
    .await?;
    Ok((response.status, response.json().unwrap_or(Value::Null)))
}

async fn get_batch(base: &str, id: &str) -> anyhow::Result<(u16, Value)> {
    let response = http_request("GET", &format!("{base}/batches/{id}"), None).await?;
    Ok((response.status, response.json().unwrap_or(Value::Null)))
}

/// Polls `GET /batches/{id}` until every run is final.
async fn wait_batch_finished(
    base: &str,
    id: &str,
    serve: &SpecrunProcess,
) -> anyhow::Result<Value> {
    let waited = eventually("the batch to finish", Duration::from_secs(900), || async {
        let (code, batch) = get_batch(base, id).await?;
        anyhow::ensure!(code == 200, "GET /batches/{id}: {code} {batch}");
        Ok((batch["counts"]["finished"] == true).then_some(batch))
    })
    .await;
    waited.with_context(|| format!("specrun's stderr:\n{}", serve.stderr_tail(80)))
}

/// The most runs whose [started_at, finished_at] spans overlap at one moment.
fn most_at_once(spans: &[(OffsetDateTime, OffsetDateTime)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// When a run started and ended (read before any resubmission: its first attempt).
fn span(record: &RunRecord) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    Ok((
        record.started_at.context("started")?,
        record.finished_at.context("finished")?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_five_with_one_failing_then_resubmitted_runs_only_the_failed_one() -> TestResult
{
    require_image().await?;
    let world = World::start(3).await?;
    let mut env = world.env.clone();
    env.extra.extend([
        ("SPECRUN_BATCH_MAX_REPOSITORIES".to_owned(), "5".to_owned()),
        ("SPECRUN_BATCH_MAX_IN_FLIGHT".to_owned(), "3".to_owned()),
    ]);
    // Two runners take four runs at a time each: the batch's bound, kept in the store,
    // is what holds it to two.
    let serve = SpecrunProcess::serve(&env, &["--concurrency", "4"]).await?;
    let _second =
        SpecrunProcess::runner(&env.with_runner_id("runner-2"), &["--concurrency", "4"]).await?;
    let base = serve.base_url()?.to_owned();
    let names = ["alpha", "bravo", "charlie", "delta", "echo"];
    let mut urls = Vec::new();
    for name in names {
        urls.push(world.git().create_repo(name, &format!("# {name}\n"))?);
    }
    let mut repositories: Vec<Value> = urls[..4].iter().map(|u| json!(u)).collect();
    repositories.push(json!({"repository": urls[4], "base_branch": "no-such-branch"}));
    let body = json!({
        "repositories": repositories,
        "specify_text": TEXT,
        "publish": "branch",
        "agent": "scripted",
        "batch_key": "invoices-csv",
        "max_in_flight": MAX_IN_FLIGHT,
    });

    let (code, created) = post_batch(&base, &body).await?;
    assert_eq!(code, 202, "{created}");
    let batch_id = created["batch_id"].as_str().context("batch_id")?.to_owned();
    assert_eq!(created["max_in_flight"], MAX_IN_FLIGHT);
    assert_eq!(created["counts"]["total"], 5);
    assert_eq!(
        created["counts"]["held"], 3,
        "only two released at first: {created}"
    );
    let run_ids: Vec<String> = created["runs"]
        .as_array()
        .context("runs")?
        .iter()
        .map(|r| r["run_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(run_ids.len(), 5);

    let batch = wait_batch_finished(&base, &batch_id, &serve).await?;
    assert_eq!(batch["counts"]["succeeded"], 4, "{batch:#}");
    assert_eq!(batch["counts"]["failed"], 1, "{batch:#}");
    assert_eq!(batch["runs"][4]["status"], "failed");
    assert!(batch["runs"][0]["status_url"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&format!("/runs/{}", run_ids[0])));

    // batch.json itself: written by the runner as each run ended.
    let key = format!("batches/{batch_id}/batch.json");
    let stored: BatchRecord = eventually(
        "batch.json to count every run",
        Duration::from_secs(30),
        || async {
            let stored: BatchRecord =
                serde_json::from_slice(&world.moto.get_object(BUCKET, &key).await?)?;
            Ok(stored.counts.finished.then_some(stored))
        },
    )
    .await?;
    assert_eq!(
        (stored.counts.succeeded, stored.counts.failed),
        (4, 1),
        "{stored:#?}"
    );

    let mut records = Vec::new();
    for run_id in &run_ids {
        records.push(world.stored_run(run_id).await?);
    }
    let spans: Vec<_> = records.iter().map(span).collect::<anyhow::Result<_>>()?;
    assert_eq!(
        most_at_once(&spans),
        MAX_IN_FLIGHT,
        "runs' spans: {spans:#?}"
    );
    assert!(records
        .iter()
        .all(|r| r.batch_id.as_deref() == Some(batch_id.as_str())));
    let failed = &records[4];
    assert_eq!(failed.status, RunStatus::Failed);
    let pushed_before: Vec<usize> = names.iter().map(|n| pushes(world.git(), n)).collect();
    assert!(
        pushed_before[..4].iter().all(|p| *p == 1),
        "{pushed_before:?}"
    );

    // The same batch again: only the failed run runs, as its second attempt.
    let (code, again) = post_batch(&base, &body).await?;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["batch_id"], batch_id.as_str());
    assert_eq!(
        again["resubmission"]["retried"],
        json!([run_ids[4]]),
        "{again:#}"
    );
    assert_eq!(
        again["resubmission"]["skipped"],
        json!(run_ids[..4]),
        "{again:#}"
    );
    let batch = wait_batch_finished(&base, &batch_id, &serve).await?;
    assert_eq!(
        (
            batch["counts"]["succeeded"].clone(),
            batch["counts"]["failed"].clone()
        ),
        (json!(4), json!(1)),
        "{batch:#}"
    );
    assert_eq!(batch["submissions"], 2);
    for (index, run_id) in run_ids.iter().enumerate() {
        let now = world.stored_run(run_id).await?;
        if index == 4 {
            assert_eq!(now.attempt, 2, "the failed run ran again: {now:#?}");
            assert_eq!(now.previous_attempts.len(), 1);
        } else {
            assert_eq!(
                now.attempt, records[index].attempt,
                "{run_id} did not run again"
            );
            assert_eq!(now.finished_at, records[index].finished_at);
        }
    }
    let pushed_after: Vec<usize> = names.iter().map(|n| pushes(world.git(), n)).collect();
    assert_eq!(
        pushed_after[..4],
        pushed_before[..4],
        "no succeeded repository was pushed again"
    );

    // Another request under the same batch_key is refused.
    let mut other = body.clone();
    other["specify_text"] = "Something else".into();
    let (code, refused) = post_batch(&base, &other).await?;
    assert_eq!(code, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "batch_conflict");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batches_are_400s_that_name_the_field_or_the_entry() -> TestResult {
    let world = World::start(3).await?;
    let mut env = world.env.clone();
    env.extra
        .push(("SPECRUN_BATCH_MAX_REPOSITORIES".to_owned(), "3".to_owned()));
    let serve = SpecrunProcess::serve(&env, &[]).await?;
    let base = serve.base_url()?.to_owned();
    let a = world.git().create_repo("a", "# a\n")?;
    let b = world.git().create_repo("b", "# b\n")?;
    let shared = |repositories: Value| json!({"repositories": repositories, "specify_text": TEXT, "publish": "branch"});
    for (body, field) in [
        (shared(json!([])), "repositories"),
        (shared(json!([a, b, a])), "repositories[2]"),
        (shared(json!([a, b, a, b])), "repositories"),
        (
            shared(json!([a, "https://elsewhere.invalid/x/y"])),
            "repositories[1]",
        ),
        (
            shared(json!([a, {"repository": b, "agent": "no-such-agent"}])),
            "repositories[1].agent",
        ),
        (
            shared(json!([a, {"base_branch": "main"}])),
            "repositories[1]",
        ),
        (
            json!({"repositories": [a], "specify_text": TEXT, "idempotency_key": "k"}),
            "idempotency_key",
        ),
        (json!({"repositories": [a]}), "repositories[0]"),
    ] {
        let (code, answer) = post_batch(&base, &body).await?;
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    world.assert_nothing_stored("bad batches").await?;
    let (code, _) = get_batch(&base, &format!("b-{}", "0".repeat(32))).await?;
    assert_eq!(code, 404);
    let (code, _) = get_batch(&base, "b-not-a-batch").await?;
    assert_eq!(code, 404);
    Ok(())
}

fn specrun_here(h: &Harness, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(specrun_bin()?)
        .args(args)
        .env("SPECRUN_STATE_DIR", h.state.path())
        .env("SPECRUN_WORK_DIR", h.work.path())
        .env("SPECRUN_IMAGE", job_image())
        .env("SPECRUN_GIT_TOKEN", CANARY_TOKEN)
        .env_remove("SPECRUN_BUCKET")
        .env_remove("SPECRUN_QUEUE_URL")
        .output()?)
}

/// `specrun batch` on the embedded store runs the batch in its own process; a repository
/// that is not there yet fails its run. Once it exists, the same --batch-key runs only
/// that run again, and `specrun status <batch-id>` shows the counts and each run.
#[tokio::test(flavor = "multi_thread")]
async fn specrun_batch_runs_here_and_the_same_key_reruns_only_the_failed_run() -> TestResult {
    let h = Harness::start().await?;
    let one = h.git().create_repo("one", "# one\n")?;
    let two = h.git().create_repo("two", "# two\n")?;
    let three = one.replace("/one", "/three");
    let batch = |extra: &[&str]| {
        let mut args = vec![
            "batch",
            "--repo",
            &one,
            "--repo",
            &two,
            "--repo",
            &three,
            "--text",
            TEXT,
            "--agent",
            "scripted",
            "--publish",
            "branch",
            "--batch-key",
            "cli-batch",
            "--max-in-flight",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        specrun_here(&h, &args)
    };
    let out = batch(&[])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "one run failed: {stderr}");
    let first: BatchRecord = serde_json::from_slice(&out.stdout).with_context(|| stderr.clone())?;
    assert_eq!(
        (first.counts.succeeded, first.counts.failed),
        (2, 1),
        "{first:#?}"
    );
    assert_eq!(first.runs[2].status, Some(RunStatus::Failed));

    h.git().create_repo("three", "# three\n")?;
    let out = batch(&[])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let second: BatchRecord =
        serde_json::from_slice(&out.stdout).with_context(|| stderr.clone())?;
    assert_eq!(second.batch_id, first.batch_id);
    assert_eq!(second.counts.succeeded, 3, "{second:#?}");
    let attempts: Vec<u32> = second.runs.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, vec![1, 1, 2], "only the failed run ran again");
    assert_eq!(pushes(h.git(), "one"), 1);

    let out = specrun_here(&h, &["status", first.batch_id.as_str()])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("3 runs: 3 succeeded"), "{table}");
    for run in &second.runs {
        assert!(
            table.contains(&run.run_id) && table.contains(&run.repository),
            "{table}"
        );
    }
    Ok(())
}

/// The only runner is killed while the batch's one released run is in progress: a new
/// runner takes the run over when its lease runs out, its end releases the next, and the
/// batch finishes with every run succeeded, one at a time throughout. `GET /batches/{id}`
/// is served by a process that runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_goes_on_after_its_runner_is_killed() -> TestResult {
    require_image().await?;
    let world = World::start(5).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_slow_agents_file(dir.path(), "slow", 6)?;
    let mut env = world.env.clone();
    env.extra.push(("SPECRUN_AGENTS_FILE".to_owned(), agents));
    let api = SpecrunProcess::serve(&env, &["--no-runner"]).await?;
    let base = api.base_url()?.to_owned();
    let runner_flags = [
        "--concurrency",
        "3",
        "--lease-secs",
        "6",
        "--visibility-secs",
        "10",
    ];
    let mut first = SpecrunProcess::runner(&env.with_runner_id("runner-a"), &runner_flags).await?;
    let mut urls = Vec::new();
    for name in ["one", "two", "three"] {
        urls.push(world.git().create_repo(name, &format!("# {name}\n"))?);
    }
    let body = json!({
        "repositories": urls,
        "specify_text": TEXT,
        "publish": "branch",
        "agent": "slow",
        "max_in_flight": 1,
    });
    let (code, created) = post_batch(&base, &body).await?;
    assert_eq!(code, 202, "{created}");
    let batch_id = created["batch_id"].as_str().context("batch_id")?.to_owned();
    eventually(
        "the first run to start",
        Duration::from_secs(120),
        || async {
            let (_, batch) = get_batch(&base, &batch_id).await?;
            Ok((batch["counts"]["running"] == 1).then_some(()))
        },
    )
    .await?;
    first.kill();
    let (_, batch) = get_batch(&base, &batch_id).await?;
    assert_eq!(batch["counts"]["succeeded"], 0, "killed mid-run: {batch:#}");
    assert_eq!(batch["counts"]["held"], 2, "{batch:#}");

    let second = SpecrunProcess::runner(&env.with_runner_id("runner-b"), &runner_flags).await?;
    let batch = wait_batch_finished(&base, &batch_id, &second).await?;
    assert_eq!(batch["counts"]["succeeded"], 3, "{batch:#}");
    let mut spans = Vec::new();
    for run in batch["runs"].as_array().context("runs")? {
        let record = world
            .stored_run(run["run_id"].as_str().unwrap_or_default())
            .await?;
        assert_eq!(record.runner_id.as_deref(), Some("runner-b"));
        spans.push(span(&record)?);
    }
    assert_eq!(most_at_once(&spans), 1, "{spans:#?}");
    // The killed runner's job for the run it had in progress is its own to remove; it
    // never will, so the test does.
    for run in batch["runs"].as_array().context("runs")? {
        remove_job_containers(run["run_id"].as_str().unwrap_or_default())?;
    }
    Ok(())
}
