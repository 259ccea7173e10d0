//! Notifications and metrics (issue 11, points 3 and 4), on the real engine: a webhook
//! receiver on loopback gets one signed event per final status (succeeded, failed, and
//! cancelled while queued, which no runner ran), after answering 500 twice; a callback
//! that is down for good ends `delivered: false` with its attempts recorded; signatures
//! are checked with Python's `hmac`, an implementation independent of the runner's; a
//! real UDP socket receives the documented StatsD lines and the EMF file parses as EMF;
//! the secret and the URL's token never show.

use anyhow::{ensure, Context as _};
use serde_json::Value;
use specrun_core::message::RunMessage;
use specrun_core::metrics::MetricName;
use specrun_core::notify::{delivery, NotifyUrl};
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use specrun_runner::config::{NotifyConfig, Secret};
use specrun_runner::notify::Notifier;
use specrun_tests::emulator::{http_request, SpecrunProcess};
use specrun_tests::harness::require_image;
use specrun_tests::statsd::StatsdListener;
use specrun_tests::webhook::{Delivery, WebhookReceiver};
use specrun_tests::world::{post_runs, run_request, submit, World, BUCKET};
use std::collections::BTreeMap;
use std::time::Duration;

type TestResult = anyhow::Result<()>;

const SECRET: &str = "whsec-canary-5b0f3c9e1d7a";
const QUERY_TOKEN: &str = "qtok-canary-91c2";

/// The documented scheme, computed by Python: hex HMAC-SHA256 of "<t>.<body>".
fn python_signature(timestamp: &str, body: &[u8]) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, os, sys\n\
             key = os.environ['KEY'].encode()\n\
             data = sys.argv[1].encode() + b'.' + sys.stdin.buffer.read()\n\
             print(hmac.new(key, data, hashlib.sha256).hexdigest())",
            timestamp,
        ])
        .env("KEY", SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running python3")?;
    child.stdin.take().context("stdin")?.write_all(body)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "python3 failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Checks a delivery's `Specrun-Signature` against its body with [`python_signature`].
fn assert_signed(delivery: &Delivery) -> TestResult {
    let header = delivery
        .header("specrun-signature")
        .context("no Specrun-Signature header")?;
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .with_context(|| format!("the header {header:?} is not t=<unix>,v1=<hex>"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sent: i64 = t.parse()?;
    ensure!(
        (now - sent).abs() < 600,
        "the timestamp {sent} is not now ({now})"
    );
    assert_eq!(
        v1,
        python_signature(t, &delivery.body)?,
        "the signature does not match"
    );
    Ok(())
}

/// The deliveries of each event id, in arrival order.
fn by_event(deliveries: &[Delivery]) -> BTreeMap<String, Vec<Delivery>> {
    let mut events: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    for delivery in deliveries {
        let id = delivery.header("specrun-event-id").unwrap_or("").to_owned();
        events.entry(id).or_default().push(delivery.clone());
    }
    events
}

/// A loopback port nothing listens on.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_final_status_is_sent_once_signed_and_metrics_reach_statsd_and_emf() -> TestResult {
    require_image().await?;
    let world = World::start(5).await?;
    let webhook = WebhookReceiver::start(2)?;
    let callback = WebhookReceiver::start(0)?;
    let down = closed_port()?;
    let statsd = StatsdListener::start()?;
    let dir = tempfile::tempdir()?;
    let emf = dir.path().join("metrics.emf");
    let mut env = world.env.clone();
    env.extra.extend(
        [
            (
                "SPECRUN_WEBHOOK_URL",
                format!("{}/hooks/specrun?token={QUERY_TOKEN}", webhook.base_url()),
            ),
            ("SPECRUN_WEBHOOK_SECRET", SECRET.to_owned()),
            ("SPECRUN_WEBHOOK_ATTEMPTS", "3".to_owned()),
            (
                "SPECRUN_CALLBACK_HOSTS",
                format!("{},127.0.0.1:{down}", callback.host()),
            ),
            ("SPECRUN_CALLBACK_ALLOW_HTTP_LOOPBACK", "1".to_owned()),
            ("SPECRUN_STATSD_ADDR", statsd.addr()),
            ("SPECRUN_METRICS_EMF", emf.display().to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let api = SpecrunProcess::serve(&env, &["--no-runner"]).await?;
    let base = api.base_url()?;
    let repo = world.git().create_repo("notified", "# Notified\n")?;

    // Cancelled while queued: final without any runner.
    let (cancelled, _) = submit(base, &run_request(&repo, "Cancel this before it runs")).await?;
    http_request("POST", &format!("{base}/runs/{cancelled}/cancel"), None)
        .await?
        .assert_status(200);
    // Succeeds, and tells its callback too.
    let mut body = run_request(&repo, "Export invoices as CSV files");
    body["callback_url"] = format!("{}/cb/succeeded", callback.base_url()).into();
    let (succeeded, _) = submit(base, &body).await?;
    // Fails (the repository is not there), and its callback is down for good.
    let mut body = run_request(
        &format!("{}/missing.git", world.git().base_url()),
        "Never cloned",
    );
    body["callback_url"] = format!("http://127.0.0.1:{down}/cb/failed").into();
    let (failed, _) = submit(base, &body).await?;

    let runner = SpecrunProcess::runner(&env, &[]).await?;
    let mut records = BTreeMap::new();
    for run_id in [&cancelled, &succeeded, &failed] {
        let record = world
            .final_run(run_id, Duration::from_secs(180))
            .await
            .with_context(|| runner.stderr_tail(40))?;
        records.insert(run_id.clone(), record);
    }
    // A message is deleted only after its run's notifications: with the queue empty,
    // every delivery is over and nothing more will come.
    world
        .wait_queue_empty()
        .await
        .with_context(|| runner.stderr_tail(40))?;
    let records: BTreeMap<String, RunRecord> = {
        let mut fresh = BTreeMap::new();
        for run_id in records.keys() {
            fresh.insert(run_id.clone(), world.stored_run(run_id).await?);
        }
        fresh
    };
    assert_eq!(records[&cancelled].status, RunStatus::Cancelled);
    assert_eq!(
        records[&succeeded].status,
        RunStatus::Succeeded,
        "{:#?}",
        records[&succeeded].error
    );
    assert_eq!(records[&failed].status, RunStatus::Failed);

    // The webhook: every request signed; the first two answered 500; then exactly one
    // 2xx per final status, and nothing else.
    let deliveries = webhook.deliveries();
    for delivery in &deliveries {
        assert_signed(delivery)?;
        assert_eq!(
            delivery.path_and_query,
            format!("/hooks/specrun?token={QUERY_TOKEN}")
        );
    }
    let answers: Vec<u16> = deliveries.iter().map(|d| d.answered).collect();
    assert_eq!(&answers[..2], [500, 500], "{answers:?}");
    let events = by_event(&deliveries);
    assert_eq!(events.len(), 3, "{:?}", events.keys());
    for (run_id, record) in &records {
        let event_id = format!("{run_id}.{}.{}", record.attempt, record.status);
        let sent = events
            .get(&event_id)
            .with_context(|| format!("no event {event_id}: {:?}", events.keys()))?;
        let ok: Vec<&Delivery> = sent.iter().filter(|d| d.answered < 300).collect();
        assert_eq!(ok.len(), 1, "{event_id} was delivered {} times", ok.len());
        assert_eq!(ok[0].header("content-type"), Some("application/json"));
        let event: Value = ok[0].json()?;
        assert_eq!(event["type"], "run.finished");
        assert_eq!(event["schema_version"], 1);
        assert_eq!(event["event_id"], event_id.as_str());
        assert_eq!(event["run_id"], run_id.as_str());
        assert_eq!(event["status"], record.status.as_str());
        assert_eq!(event["branch"], serde_json::json!(record.branch_name));
        match record.status {
            RunStatus::Failed => assert!(event["error_code"].is_string(), "{event}"),
            _ => assert!(event["error_code"].is_null(), "{event}"),
        }
        // run.json: the same attempts, the URL masked.
        let recorded = record
            .notifications
            .iter()
            .find(|n| n.target == "webhook" && n.event_id == event_id)
            .with_context(|| format!("run.json of {run_id} records no webhook delivery"))?;
        assert!(recorded.delivered);
        assert!(recorded.claim.is_none());
        assert_eq!(recorded.attempts.len(), sent.len(), "{recorded:?}");
        assert!(recorded.url.ends_with("?token=***"), "{}", recorded.url);
    }

    // A duplicate message of a finished run (what SQS delivers again after a missed
    // visibility extension) finds its events delivered: nothing is sent again.
    let request = world
        .moto
        .get_object(BUCKET, &format!("runs/{succeeded}/request.json"))
        .await?;
    let message = RunMessage::new(&succeeded, serde_json::from_slice(&request)?);
    world.send_to_run_queue(message.to_json()).await?;
    world
        .wait_queue_empty()
        .await
        .with_context(|| runner.stderr_tail(40))?;
    assert_eq!(webhook.deliveries().len(), deliveries.len());
    assert_eq!(callback.deliveries().len(), 1);

    // The callback: the succeeded run's, once, signed; the failed run's receiver is down:
    // three attempts, each with its error, and not delivered.
    let called = callback.deliveries();
    assert_eq!(called.len(), 1, "{called:?}");
    assert_signed(&called[0])?;
    assert_eq!(called[0].path_and_query, "/cb/succeeded");
    assert_eq!(called[0].json()?["run_id"], succeeded.as_str());
    let undelivered = records[&failed]
        .notifications
        .iter()
        .find(|n| n.target == "callback")
        .context("no callback record for the failed run")?;
    assert!(!undelivered.delivered);
    assert_eq!(undelivered.attempts.len(), 3, "{undelivered:?}");
    assert!(undelivered
        .attempts
        .iter()
        .all(|a| a.status_code.is_none() && a.error.is_some()));

    // Nothing shows the secret or the URL's token.
    let mut exposed = Vec::new();
    for run_id in records.keys() {
        let key = format!("runs/{run_id}/run.json");
        exposed.push(String::from_utf8(
            world.moto.get_object(BUCKET, &key).await?,
        )?);
    }
    exposed.push(runner.stderr_tail(100_000));
    exposed.push(api.stderr_tail(100_000));
    let listing = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()?;
    exposed.push(String::from_utf8_lossy(&listing.stdout).into_owned());
    for text in &exposed {
        assert!(!text.contains(SECRET), "the webhook secret leaked");
        assert!(!text.contains(QUERY_TOKEN), "the URL's token leaked");
    }

    // StatsD: the documented lines of the runs, each well formed.
    let lines = statsd.lines();
    for line in &lines {
        let (name, rest) = line.split_once(':').context("no value")?;
        let known = MetricName::ALL
            .iter()
            .any(|m| m.full_name("specrun.") == name);
        ensure!(known, "undocumented metric in {line:?}");
        let kind = rest.split('|').nth(1).unwrap_or("");
        ensure!(["c", "ms", "h"].contains(&kind), "bad type in {line:?}");
    }
    let expect = [
        "specrun.runs.started:1|c|#agent:scripted".to_owned(),
        "specrun.runs.finished:1|c|#status:succeeded,agent:scripted".to_owned(),
    ];
    for wanted in &expect {
        ensure!(lines.contains(wanted), "no {wanted:?} in {lines:#?}");
    }
    let has = |prefix: &str, suffix: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.ends_with(suffix))
    };
    ensure!(
        has(
            "specrun.phase.duration:",
            "|ms|#phase:specify,agent:scripted,status:succeeded"
        ),
        "{lines:#?}"
    );
    ensure!(
        has(
            "specrun.runs.finished:1|c|#status:failed,agent:scripted,error_code:",
            ""
        ),
        "{lines:#?}"
    );
    ensure!(
        has("specrun.queue.wait:", "|ms|#agent:scripted"),
        "{lines:#?}"
    );
    ensure!(
        has(
            "specrun.run.duration:",
            "|ms|#status:succeeded,agent:scripted"
        ),
        "{lines:#?}"
    );

    // EMF: every line is an EMF object whose metrics and dimensions are present.
    let text = std::fs::read_to_string(&emf)?;
    let mut names = Vec::new();
    for line in text.lines() {
        let object: Value = serde_json::from_str(line)?;
        let aws = &object["_aws"];
        ensure!(aws["Timestamp"].is_i64(), "{line}");
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .context("no directives")?;
        for directive in directives {
            assert_eq!(directive["Namespace"], "specrun");
            for metric in directive["Metrics"].as_array().context("no Metrics")? {
                let name = metric["Name"].as_str().context("no Name")?;
                ensure!(object[name].is_number(), "{name} has no value in {line}");
                ensure!(metric["Unit"].is_string(), "{line}");
                names.push(name.to_owned());
            }
            for set in directive["Dimensions"]
                .as_array()
                .context("no Dimensions")?
            {
                for dimension in set.as_array().context("a dimension set")? {
                    let key = dimension.as_str().context("dimension name")?;
                    ensure!(object[key].is_string(), "{key} missing in {line}");
                }
            }
        }
    }
    for wanted in [
        "specrun.runs.started",
        "specrun.runs.finished",
        "specrun.phase.duration",
    ] {
        ensure!(names.iter().any(|n| n == wanted), "no EMF {wanted}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_url_off_the_allow_list_or_with_credentials_is_refused_at_submit() -> TestResult
{
    let world = World::start(3).await?;
    let mut env = world.env.clone();
    env.extra.extend([
        (
            "SPECRUN_CALLBACK_HOSTS".to_owned(),
            "hooks.example.com".to_owned(),
        ),
        ("SPECRUN_WEBHOOK_SECRET".to_owned(), SECRET.to_owned()),
    ]);
    let api = SpecrunProcess::serve(&env, &["--no-runner"]).await?;
    let repo = world.git().create_repo("refused", "# Refused\n")?;
    let cases = [
        (
            "https://elsewhere.example.net/hook",
            "not an allowed callback host",
        ),
        ("https://user:pw@hooks.example.com/hook", "credentials"),
        ("http://hooks.example.com/hook", "https"),
        ("ftp://hooks.example.com/hook", "is not https"),
        ("file:///etc/passwd", "has no host"),
    ];
    for (url, why) in cases {
        let mut body = run_request(&repo, "Export invoices as CSV files");
        body["callback_url"] = url.into();
        let response = post_runs(api.base_url()?, &body).await?;
        let answer = response.json()?;
        assert_eq!(response.status, 400, "{url}: {answer}");
        assert_eq!(answer["error"]["field"], "callback_url", "{url}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(why), "{url}: {answer}");
    }
    world.assert_nothing_stored("refused callback URLs").await?;
    // An allowed one is taken.
    let mut body = run_request(&repo, "Export invoices as CSV files");
    body["callback_url"] = "https://hooks.example.com/hook?team=7".into();
    submit(api.base_url()?, &body).await?;
    Ok(())
}

#[test]
fn the_readme_lists_every_metric() -> TestResult {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    for metric in MetricName::ALL {
        let name = metric.full_name("specrun.");
        ensure!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list {name}"
        );
    }
    Ok(())
}

/// A finished run in a fresh embedded store, and its id.
async fn finished_run(
    store: &specrun_store::FsBlobStore,
) -> anyhow::Result<specrun_core::keys::RunId> {
    let run_id = specrun_store::runs::new_run_id();
    let now = specrun_store::runs::now();
    let mut record = RunRecord::queued(
        run_id.as_str(),
        "https://git.example/a/b",
        Default::default(),
        Default::default(),
        now,
    );
    record.start("runner-x", now)?;
    record.finish(RunStatus::Succeeded, None, now)?;
    specrun_store::runs::create_run(store, &record).await?;
    Ok(run_id)
}

fn notifier(receiver: &WebhookReceiver, runner_id: &str) -> anyhow::Result<Notifier> {
    let config = NotifyConfig {
        webhook: Some(NotifyUrl::webhook(&format!(
            "{}/hook",
            receiver.base_url()
        ))?),
        secret: Some(Secret::new(SECRET)),
        ..NotifyConfig::default()
    };
    Notifier::from_config(&config, runner_id).context("no notifier")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runners_notifying_one_run_at_once_deliver_it_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = specrun_store::FsBlobStore::new(dir.path());
    let run_id = finished_run(&store).await?;
    let receiver = WebhookReceiver::start(0)?;
    let (a, b) = (
        notifier(&receiver, "runner-a")?,
        notifier(&receiver, "runner-b")?,
    );
    let targets = a.targets(&run_id, None);
    tokio::join!(
        a.deliver(&store, &run_id, &targets),
        b.deliver(&store, &run_id, &targets)
    );
    // Once more, as a later duplicate delivery would.
    b.deliver(&store, &run_id, &targets).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_signed(&deliveries[0])?;
    let record = specrun_store::runs::load_run(&store, &run_id)
        .await?
        .context("run")?;
    assert_eq!(record.notifications.len(), 1);
    assert!(record.notifications[0].delivered);
    assert_eq!(record.notifications[0].attempts.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_runners_lapsed_claim_is_taken_over_and_its_attempts_kept() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = specrun_store::FsBlobStore::new(dir.path());
    let run_id = finished_run(&store).await?;
    // Runner-a died after one failed attempt, its claim lapsed.
    let (mut record, version) = specrun_store::runs::load_run_versioned(&store, &run_id)
        .await?
        .context("run")?;
    let event_id = specrun_core::notify::event::event_id(&record);
    let then = specrun_store::runs::now() - time::Duration::minutes(5);
    delivery::claim(
        &mut record.notifications,
        "webhook",
        "http://masked",
        &event_id,
        delivery::DeliveryClaim {
            runner_id: "runner-a".into(),
            until: then,
        },
    );
    delivery::record_attempt(
        &mut record.notifications,
        "webhook",
        &event_id,
        delivery::DeliveryAttempt {
            at: then,
            runner_id: Some("runner-a".into()),
            status_code: Some(500),
            error: None,
        },
        false,
    );
    specrun_store::runs::save_run_fenced(&store, &record, &version).await?;
    let receiver = WebhookReceiver::start(0)?;
    let b = notifier(&receiver, "runner-b")?;
    b.deliver(&store, &run_id, &b.targets(&run_id, None)).await;
    assert_eq!(receiver.deliveries().len(), 1);
    let record = specrun_store::runs::load_run(&store, &run_id)
        .await?
        .context("run")?;
    let kept = &record.notifications[0];
    assert!(kept.delivered && kept.claim.is_none(), "{kept:?}");
    let by: Vec<Option<&str>> = kept
        .attempts
        .iter()
        .map(|a| a.runner_id.as_deref())
        .collect();
    assert_eq!(by, [Some("runner-a"), Some("runner-b")]);
    Ok(())
}
