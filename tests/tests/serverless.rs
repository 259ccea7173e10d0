//! The serverless path end to end on loopback: `specrun serve` (the submit and status
//! functions as one HTTP server) and `specrun runner` on a moto S3 bucket and SQS queue,
//! the real job image on the real Docker engine, a token-protected git server, the AWS CLI
//! reading what the runner wrote, and a Python Celery producer submitting over SQS.
//!
//! Each test starts its own moto, bucket, queues, git server and specrun processes, so
//! they run in parallel.

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use specrun_core::state::RunRecord;
use specrun_core::{Phase, RunStatus};
use specrun_tests::celery::{celery_producer, require_celery, succeeded};
use specrun_tests::emulator::{http_request, SpecrunProcess};
use specrun_tests::harness::require_image;
use specrun_tests::world::{
    eventually, post_runs, pushes, run_request, submit, wait_final, World, BUCKET, RUN_TIMEOUT,
};
use std::collections::BTreeSet;
use std::time::Duration;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread")]
async fn http_submit_runs_through_the_queue_into_the_bucket() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let url = world.git().create_repo("web", "# Web\n")?;
    let serve = SpecrunProcess::serve(&world.env, &[]).await?;
    let base = serve.base_url()?;

    let mut request = run_request(&url, "Let visitors bookmark articles to read later");
    request["idempotency_key"] = json!("nightly-bookmarks-1");
    let (run_id, status_url) = submit(base, &request).await?;
    assert_eq!(status_url, format!("{base}/runs/{run_id}"));
    // The same idempotency key answers with the same run and queues nothing more.
    let again = post_runs(base, &request).await?;
    let again_answer = again.json()?;
    assert_eq!(again.status, 200, "{again_answer}");
    assert_eq!(again_answer["run_id"], run_id.as_str());
    assert_eq!(again_answer["duplicate"], true);

    let document = wait_final(&status_url, &serve).await?;
    let record: RunRecord = serde_json::from_value(document.clone())?;
    assert_eq!(record.status, RunStatus::Succeeded, "{document:#}");
    let branch = record.branch_name.clone().context("no branch name")?;
    assert!(
        world.git().branches("web")?.contains(&branch),
        "branch {branch} not on the git server"
    );
    assert_eq!(pushes(world.git(), "web"), 1, "one run, one push");

    // The AWS CLI reads the same run.json from the bucket.
    let cli_json = world
        .moto
        .aws(&[
            "s3",
            "cp",
            &format!("s3://{BUCKET}/runs/{run_id}/run.json"),
            "-",
        ])
        .await?;
    let stored: RunRecord = serde_json::from_str(&cli_json)?;
    assert_eq!(stored.run_id, record.run_id);
    assert_eq!(stored.status, record.status);
    assert_eq!(stored.phases, record.phases);

    // ... and lists the phase documents and every artifact.
    let listing = world
        .moto
        .aws(&[
            "s3",
            "ls",
            "--recursive",
            &format!("s3://{BUCKET}/runs/{run_id}/"),
        ])
        .await?;
    for phase in Phase::ALL {
        let key = format!("runs/{run_id}/phases/{}.json", phase.as_str());
        assert!(listing.contains(&key), "{key} not in:\n{listing}");
    }
    assert!(!record.artifacts.is_empty());
    for artifact in &record.artifacts {
        assert!(
            listing.contains(&artifact.key),
            "{} not in:\n{listing}",
            artifact.key
        );
    }

    // GET /runs lists it, once.
    let list = http_request("GET", &format!("{base}/runs"), None)
        .await?
        .json()?;
    let ids: Vec<&str> = list["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(ids, [run_id.as_str()], "{list}");

    // A presigned artifact URL is plain HTTP to the bucket and returns the log.
    let log = record
        .artifacts
        .iter()
        .find(|a| a.name.ends_with(".log") && a.size > 0)
        .context("no non-empty log artifact")?;
    let presigned = document["artifact_urls"][&log.key]
        .as_str()
        .with_context(|| format!("no URL for {} in {document:#}", log.key))?;
    assert!(presigned.contains("X-Amz-Signature="), "{presigned}");
    let fetched = http_request("GET", presigned, None).await?;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body.len() as u64, log.size);
    assert_eq!(format!("{:x}", Sha256::digest(&fetched.body)), log.sha256);
    assert_eq!(fetched.body, world.moto.get_object(BUCKET, &log.key).await?);

    world.wait_queue_empty().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_over_http_and_leave_nothing_behind() -> TestResult {
    let world = World::start(3).await?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let base = serve.base_url()?;
    let git_url = world.git().repo_url("web");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a file:// repository",
            serde_json::to_vec(&run_request("file:///etc", "x"))?,
            400,
            "repository",
        ),
        (
            "a host not on the allow-list",
            serde_json::to_vec(&run_request("https://git.example.com/a/b.git", "x"))?,
            400,
            "repository",
        ),
        (
            "the git server's host on another port",
            serde_json::to_vec(&run_request("http://127.0.0.1:1/web.git", "x"))?,
            400,
            "repository",
        ),
        (
            "an unknown field",
            serde_json::to_vec(&json!({
                "repository": git_url, "specify_text": "x", "colour": "blue"
            }))?,
            400,
            "body",
        ),
        ("invalid JSON", b"{\"repository\":".to_vec(), 400, "body"),
        (
            "text over 64 KiB",
            serde_json::to_vec(&run_request(&git_url, &"a".repeat(100 * 1024)))?,
            400,
            "specify_text",
        ),
        (
            "a body over 128 KiB",
            serde_json::to_vec(&run_request(&git_url, &"a".repeat(200 * 1024)))?,
            413,
            "body",
        ),
    ];
    for (what, body, status, field) in cases {
        let response = http_request("POST", &format!("{base}/runs"), Some(body)).await?;
        let answer = response.json()?;
        assert_eq!(response.status, status, "{what}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{what}: {answer}");
    }

    world.assert_nothing_stored("bad requests").await?;
    let list = http_request("GET", &format!("{base}/runs"), None)
        .await?
        .json()?;
    assert_eq!(list["runs"], json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_celery_producer_submits_a_run_and_reads_its_result() -> TestResult {
    require_celery().await?;
    require_image().await?;
    let world = World::start(3).await?;
    let url = world.git().create_repo("celery", "# Celery\n")?;
    let runner = SpecrunProcess::runner(&world.env, &[]).await?;

    let kwargs = run_request(&url, "Email a weekly summary of open support tickets");
    let (_, sent) = celery_producer(&world, &["send", "--kwargs", &kwargs.to_string()]).await?;
    let task_id = sent.trim().to_owned();
    ensure!(!task_id.is_empty(), "send printed no task id");

    let timeout = RUN_TIMEOUT.as_secs().to_string();
    let waited = celery_producer(&world, &["wait", &task_id, "--timeout", &timeout]).await?;
    let answer = succeeded(waited, &runner)?;
    assert_eq!(answer["status"], "SUCCESS", "{answer:#}");
    let result = &answer["result"];
    assert_eq!(result["status"], "succeeded", "{answer:#}");
    let branch = result["branch_name"]
        .as_str()
        .with_context(|| format!("no branch in {answer:#}"))?;
    assert!(world.git().branches("celery")?.contains(&branch.to_owned()));

    let run_id = result["run_id"].as_str().context("no run_id")?;
    let stored = world.stored_run(run_id).await?;
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.branch_name.as_deref(), Some(branch));
    world.wait_queue_empty().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_can_never_finish_lands_in_the_dead_letter_queue_marked_failed() -> TestResult {
    let world = World::start(2).await?;
    let url = world.git().create_repo("stuck", "# Stuck\n")?;

    // A queued run and its message, from the submit function.
    let run_id = {
        let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
        submit(
            serve.base_url()?,
            &run_request(&url, "Export invoices as CSV"),
        )
        .await?
        .0
    };
    // Another runner holds the run's lease and never lets go (its lease is renewed far
    // into the future), so no delivery here can ever run it.
    let lease = json!({
        "run_id": run_id,
        "runner_id": "a-runner-that-never-lets-go",
        "attempt": 1,
        "expires_at": "2999-01-01T00:00:00Z",
    });
    world
        .moto
        .put_object(
            BUCKET,
            &format!("runs/{run_id}/lease.json"),
            serde_json::to_vec(&lease)?,
            "application/json",
        )
        .await?;
    let key = format!("runs/{run_id}/run.json");
    let mut record: Value = serde_json::from_slice(&world.moto.get_object(BUCKET, &key).await?)?;
    let at = record["created_at"].clone();
    record["status"] = json!("running");
    record["runner_id"] = json!("a-runner-that-died");
    record["attempt"] = json!(1);
    record["started_at"] = at.clone();
    record["status_timeline"]
        .as_array_mut()
        .context("no status_timeline")?
        .push(json!({ "status": "running", "at": at }));
    world
        .moto
        .put_object(
            BUCKET,
            &key,
            serde_json::to_vec(&record)?,
            "application/json",
        )
        .await?;

    // Its holder never renews it either (the lease object never changes), so on the last
    // delivery the runner takes the stale lease over and gives the run up.
    let runner = SpecrunProcess::runner(
        &world.env,
        &[
            "--max-receives",
            "2",
            "--visibility-secs",
            "10",
            "--lease-secs",
            "4",
        ],
    )
    .await?;
    let waited = eventually(
        "the message in the DLQ",
        Duration::from_secs(90),
        || async {
            let depth = world.moto.queue_depth(&world.queues.dlq_url).await?;
            Ok((depth.visible + depth.in_flight > 0).then_some(()))
        },
    )
    .await;
    waited.with_context(|| format!("runner stderr:\n{}", runner.stderr_tail(60)))?;

    let stored = world.stored_run(&run_id).await?;
    assert_eq!(stored.status, RunStatus::Failed, "{stored:#?}");
    let error = stored.error.context("no error recorded")?;
    assert_eq!(error.code, "retries_exhausted", "{error:#?}");
    assert!(error.message.contains("after 2 deliveries"), "{error:#?}");
    assert!(world.moto.queue_depth(&world.queues.url).await?.is_empty());
    let dead = world
        .moto
        .sqs()
        .receive_message()
        .queue_url(&world.queues.dlq_url)
        .send()
        .await?;
    let body = dead
        .messages()
        .first()
        .and_then(|m| m.body())
        .context("no message in the DLQ")?;
    assert!(body.contains(&run_id), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runners_share_one_queue_and_run_each_run_once() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let runners = [
        SpecrunProcess::runner(
            &world.env.with_runner_id("runner-a"),
            &["--concurrency", "1"],
        )
        .await?,
        SpecrunProcess::runner(
            &world.env.with_runner_id("runner-b"),
            &["--concurrency", "1"],
        )
        .await?,
    ];
    let texts = [
        "Add dark mode to the settings page",
        "Let users export their data as JSON",
        "Show a banner during scheduled maintenance",
        "Rate-limit password reset emails",
    ];
    let mut submitted = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let name = format!("repo{i}");
        let url = world.git().create_repo(&name, "# Repo\n")?;
        let (run_id, status_url) = submit(serve.base_url()?, &run_request(&url, text)).await?;
        submitted.push((name, run_id, status_url));
    }

    let mut runner_ids = BTreeSet::new();
    for (name, run_id, status_url) in &submitted {
        let document = wait_final(status_url, &serve).await.with_context(|| {
            let tails: Vec<String> = runners.iter().map(|r| r.stderr_tail(40)).collect();
            tails.join("\n---\n")
        })?;
        let record: RunRecord = serde_json::from_value(document)?;
        assert_eq!(record.status, RunStatus::Succeeded, "{run_id}: {record:#?}");
        assert_eq!(record.attempt, 1, "{run_id} ran more than once");
        assert_eq!(pushes(world.git(), name), 1, "{run_id}: pushes to {name}");
        let branch = record.branch_name.clone().context("no branch")?;
        assert!(world.git().branches(name)?.contains(&branch));
        runner_ids.insert(record.runner_id.clone().unwrap_or_default());
    }
    assert_eq!(
        runner_ids,
        BTreeSet::from(["runner-a".to_owned(), "runner-b".to_owned()]),
        "both runners should have taken work"
    );
    world.wait_queue_empty().await?;
    Ok(())
}

/// SC-002: the runner's lifecycle rules are read back from the bucket, and they are the
/// same rules (IDs and prefixes) the CloudFormation template and the emulator script put.
#[tokio::test(flavor = "multi_thread")]
async fn retention_rules_are_checked_and_put_like_the_infrastructure_does() -> anyhow::Result<()> {
    let moto = specrun_tests::emulator::Moto::start().await?;
    moto.create_bucket("retention-check").await?;
    let store = specrun_store::S3BlobStore::new(moto.s3().clone(), "retention-check");
    assert_eq!(
        store.retention_days().await?,
        None,
        "a new bucket has no rule"
    );
    store.ensure_retention(14).await?;
    assert_eq!(store.retention_days().await?, Some(14));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let infra = std::fs::read_to_string(format!("{root}/infra/specrun.yaml"))?;
    let script = std::fs::read_to_string(format!("{root}/localstack/create-resources.sh"))?;
    for (id, prefix) in specrun_store::s3::RETENTION_RULES {
        assert!(
            infra.contains(&format!("Id: {id}")) && infra.contains(&format!("Prefix: {prefix}")),
            "{id} in infra"
        );
        assert!(
            script.contains(&format!("\"ID\": \"{id}\""))
                && script.contains(&format!("\"Prefix\": \"{prefix}\"")),
            "{id} in the script"
        );
    }
    Ok(())
}

/// `--ensure-retention` puts specrun's own rules and nothing else: an operator's rules on
/// the same bucket stay as they were, and a stale specrun rule is replaced, not doubled.
#[tokio::test(flavor = "multi_thread")]
async fn ensure_retention_keeps_the_operators_own_lifecycle_rules() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    let moto = specrun_tests::emulator::Moto::start().await?;
    moto.create_bucket("retention-shared").await?;
    let rule = |id: &str, prefix: &str, days: i32| {
        LifecycleRule::builder()
            .id(id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
            .expiration(LifecycleExpiration::builder().days(days).build())
            .build()
    };
    let operators = BucketLifecycleConfiguration::builder()
        .rules(rule("operator-scratch-cleanup", "scratch/", 3)?)
        .rules(rule("specrun-runs-retention", "runs/", 60)?)
        .build()?;
    moto.s3()
        .put_bucket_lifecycle_configuration()
        .bucket("retention-shared")
        .lifecycle_configuration(operators)
        .send()
        .await?;

    let store = specrun_store::S3BlobStore::new(moto.s3().clone(), "retention-shared");
    store.ensure_retention(14).await?;

    let rules = moto
        .s3()
        .get_bucket_lifecycle_configuration()
        .bucket("retention-shared")
        .send()
        .await?
        .rules()
        .to_vec();
    let ids: Vec<&str> = rules.iter().filter_map(|r| r.id()).collect();
    let operator = rules
        .iter()
        .find(|r| r.id() == Some("operator-scratch-cleanup"))
        .with_context(|| format!("the operator's rule is gone: {ids:?}"))?;
    assert_eq!(operator.filter().and_then(|f| f.prefix()), Some("scratch/"));
    assert_eq!(operator.expiration().and_then(|e| e.days()), Some(3));

    // specrun's rules are exactly the template's, each once, with the new retention.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let infra = std::fs::read_to_string(format!("{root}/infra/specrun.yaml"))?;
    let mut specrun_ids: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| *id != "operator-scratch-cleanup")
        .collect();
    specrun_ids.sort_unstable();
    let mut expected: Vec<&str> = specrun_store::s3::RETENTION_RULES
        .iter()
        .map(|(id, _)| *id)
        .chain([specrun_store::s3::ABORT_MULTIPART_RULE])
        .collect();
    expected.sort_unstable();
    assert_eq!(specrun_ids, expected);
    for (id, prefix) in specrun_store::s3::RETENTION_RULES {
        assert!(infra.contains(&format!("Id: {id}")), "{id} in infra");
        let rule = rules
            .iter()
            .find(|r| r.id() == Some(id))
            .with_context(|| format!("no {id}"))?;
        assert_eq!(rule.filter().and_then(|f| f.prefix()), Some(prefix), "{id}");
        assert_eq!(rule.expiration().and_then(|e| e.days()), Some(14), "{id}");
    }
    assert_eq!(store.retention_days().await?, Some(14));
    Ok(())
}

/// The value in the PR body's table row `| {label} | ... |`.
fn body_row<'b>(body: &'b str, label: &str) -> anyhow::Result<&'b str> {
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("| {label} | ")))
        .and_then(|rest| rest.strip_suffix(" |"))
        .with_context(|| format!("no {label} row in the pull request body:\n{body}"))
}

/// The "Status" and "Logs" links a run's pull request carries answer from the status API
/// that `specrun serve` runs, and the logs page links every log the run kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_links_in_a_pull_request_body_answer_from_the_status_api() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    world.forge.create_repo("octo", "shop", "# Shop\n")?;
    let serve = SpecrunProcess::serve(&world.env, &[]).await?;
    let mut request = run_request("octo/shop", "Let shoppers save a basket for later");
    request["publish"] = json!("pr");
    let (run_id, status_url) = submit(serve.base_url()?, &request).await?;
    let document = wait_final(&status_url, &serve).await?;
    assert_eq!(document["status"], "succeeded", "{document:#}");

    let pulls = world.forge.pulls("octo", "shop");
    let body = pulls
        .first()
        .and_then(|pr| pr.body.clone())
        .with_context(|| format!("no pull request with a body: {pulls:?}"))?;
    let status_link = body_row(&body, "Status")?;
    assert_eq!(status_link, status_url);
    assert_eq!(http_request("GET", status_link, None).await?.status, 200);

    let logs_link = body_row(&body, "Logs")?;
    let logs = http_request("GET", logs_link, None).await?;
    let listing = logs.json()?;
    assert_eq!(logs.status, 200, "GET {logs_link}: {listing}");
    assert_eq!(listing["run_id"], run_id.as_str());
    let record: RunRecord = serde_json::from_value(document)?;
    let log = record
        .artifacts
        .iter()
        .find(|a| a.name.ends_with(".log") && a.size > 0)
        .context("no non-empty log artifact")?;
    let entry = listing["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == log.key.as_str())
        .with_context(|| format!("{} not listed: {listing:#}", log.key))?;
    let url = entry["url"].as_str().context("no url")?;
    let fetched = http_request("GET", url, None).await?;
    assert_eq!(fetched.status, 200, "GET {url}");
    assert_eq!(fetched.body, world.moto.get_object(BUCKET, &log.key).await?);
    Ok(())
}
