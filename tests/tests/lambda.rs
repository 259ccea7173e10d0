//! The submit and status functions as Lambdas behind function URLs: `cargo lambda watch`
//! runs each `lambda_http` binary behind the real Lambda runtime API and serves it at
//! `/lambda-url/<bin>/...` (path and query reach the handler as on AWS), against moto.

use specrun_tests::emulator::{aws_env, free_port, http_request, http_request_as, Moto};
use specrun_tests::harness::clean_cargo;
use std::process::{Child, Stdio};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// `cargo lambda watch` for the workspace, killed on drop.
struct LambdaWatch(Child);

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cargo_lambda_watch(
    port: u16,
    env: &[(&str, String)],
    log: &std::path::Path,
) -> anyhow::Result<LambdaWatch> {
    // cargo lambda splits --env-var values on commas; no value here needs one.
    let vars: Vec<String> = env
        .iter()
        .filter(|(_, v)| !v.contains(','))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let child = clean_cargo()
        .args([
            "lambda",
            "watch",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .args(vars.iter().flat_map(|v| ["--env-var", v.as_str()]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "starting `cargo lambda watch` ({e}); scripts/setup.sh installs cargo-lambda"
            )
        })?;
    Ok(LambdaWatch(child))
}

/// The first answer `wanted` takes to a request (POST with a body, else GET), asked every
/// 2 s for up to ten minutes: a function's first invocation builds it.
async fn first_answer(
    url: &str,
    body: Option<Vec<u8>>,
    log: &std::path::Path,
    wanted: impl Fn(u16) -> bool,
) -> anyhow::Result<specrun_tests::emulator::HttpResponse> {
    let method = if body.is_some() { "POST" } else { "GET" };
    for _ in 0..300 {
        match http_request(method, url, body.clone()).await {
            Ok(answer) if wanted(answer.status) => return Ok(answer),
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
    anyhow::bail!(
        "{method} {url} never answered as expected: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_functions_answer_through_the_lambda_runtime() -> TestResult {
    let moto = Moto::start().await?;
    moto.create_bucket("lambda-state").await?;
    let queues = moto.create_queues("lambda-runs", 3, 30).await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}/lambda-url");
    let mut env = aws_env(&moto.endpoint());
    env.extend([
        ("SPECRUN_BUCKET", "lambda-state".to_owned()),
        ("SPECRUN_QUEUE_URL", queues.url.clone()),
        ("SPECRUN_DEFAULT_AGENT", "scripted".to_owned()),
        ("SPECRUN_ALLOW_REPO_HOSTS", "git.example.com".to_owned()),
        ("SPECRUN_STATUS_URL", format!("{base}/status")),
    ]);
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("cargo-lambda.log");
    let _watch = cargo_lambda_watch(port, &env, &log)?;

    // The first invocation builds and starts the function: from a fresh target directory
    // that is a build of its own feature set (minutes on a fresh machine), so it may take
    // up to ten minutes.
    let body =
        br#"{"repository":"octo/hello","specify_text":"Add login","idempotency_key":"nightly-1"}"#
            .to_vec();
    let submitted = first_answer(
        &format!("{base}/submit/runs"),
        Some(body.clone()),
        &log,
        |status| status == 202,
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&submitted.body)?;
    let run_id = answer["run_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(answer["status_url"], format!("{base}/status/runs/{run_id}"));

    let again = http_request("POST", &format!("{base}/submit/runs"), Some(body)).await?;
    let again: serde_json::Value = serde_json::from_slice(&again.body)?;
    assert_eq!(
        again["run_id"],
        run_id.as_str(),
        "the same idempotency key, the same run"
    );

    let refused = http_request(
        "POST",
        &format!("{base}/submit/runs"),
        Some(br#"{"repository":"https://evil.example/a/b","specify_text":"x"}"#.to_vec()),
    )
    .await?;
    assert_eq!(refused.status, 400);
    let refused: serde_json::Value = serde_json::from_slice(&refused.body)?;
    assert_eq!(refused["error"]["field"], "repository");

    // Through the Lambda adapter too: only JSON bodies, each key once.
    let plain = br#"{"repository":"octo/hello","specify_text":"Add logout"}"#.to_vec();
    let not_json = http_request_as(
        "POST",
        &format!("{base}/submit/runs"),
        Some(plain),
        Some("text/plain"),
    )
    .await?;
    not_json.assert_status(415);
    let twice = br#"{"repository":"octo/hello","specify_text":"x","specify_text":"y"}"#.to_vec();
    let twice = http_request("POST", &format!("{base}/submit/runs"), Some(twice)).await?;
    twice.assert_status(400);

    // The status function's first invocation builds it too.
    let status = first_answer(&format!("{base}/status/runs/{run_id}"), None, &log, |_| {
        true
    })
    .await?;
    assert_eq!(status.status, 200);
    let run: serde_json::Value = serde_json::from_slice(&status.body)?;
    assert_eq!(
        (run["run_id"].as_str(), run["status"].as_str()),
        (Some(run_id.as_str()), Some("queued"))
    );
    let listing = http_request("GET", &format!("{base}/status/runs?limit=5"), None).await?;
    let listing: serde_json::Value = serde_json::from_slice(&listing.body)?;
    assert_eq!(listing["runs"][0]["run_id"], run_id.as_str());
    // ... and only the API's own cursors.
    let forged = http_request(
        "GET",
        &format!("{base}/status/runs?cursor=runs%2F{run_id}%2Frun.json"),
        None,
    )
    .await?;
    forged.assert_status(400);
    let missing = http_request(
        "GET",
        &format!("{base}/status/runs/0193a1b2-0000-7000-8000-000000000000"),
        None,
    )
    .await?;
    assert_eq!(missing.status, 404);
    let depth = moto.queue_depth(&queues.url).await?;
    assert_eq!(
        depth.visible + depth.in_flight,
        1,
        "one message for one run"
    );
    Ok(())
}
