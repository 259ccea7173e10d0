//! Hostile requests are refused (issue 9, points 5 and 6), against the real `specrun serve`
//! and `specrun runner` on moto: bodies a browser could send cross-origin, JSON that means
//! two things, invisible text, ref-like branch names, forged listing cursors, a reused
//! idempotency key, and queue messages that try to repoint a queued run.

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use specrun_core::message::RunMessage;
use specrun_core::request::RunRequest;
use specrun_core::RunStatus;
use specrun_tests::emulator::{http_request, http_request_as, SpecrunProcess};
use specrun_tests::harness::require_image;
use specrun_tests::world::{post_runs, pushes, run_request, submit, wait_final, World, BUCKET};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_submissions_are_refused_over_http_and_create_nothing() -> TestResult {
    let world = World::start(3).await?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let base = serve.base_url()?;
    let url = world.git().repo_url("web");
    let runs = format!("{base}/runs");
    let valid = serde_json::to_vec(&run_request(&url, "Add a login page"))?;

    // What a web page can make a visitor's browser send anywhere without a preflight.
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=----specrun"),
        None,
    ] {
        let response = http_request_as("POST", &runs, Some(valid.clone()), content_type).await?;
        let answer = response.json()?;
        assert_eq!(response.status, 415, "{content_type:?}: {answer}");
        assert_eq!(
            answer["error"]["code"], "unsupported_media_type",
            "{answer}"
        );
        assert_eq!(answer["error"]["required"], "application/json", "{answer}");
    }
    world.assert_nothing_stored("415s").await?;

    let tag_a = "\u{E0041}";
    let mut tagged_label = run_request(&url, "Add a login page");
    tagged_label["labels"] = json!(["spec", format!("ok{tag_a}")]);
    let mut ref_branch = run_request(&url, "Add a login page");
    ref_branch["branch_name"] = json!("refs/heads/main");
    let mut base_branch = run_request(&url, "Add a login page");
    base_branch["branch_name"] = json!("main");
    base_branch["base_branch"] = json!("main");
    let duplicated = format!(
        r#"{{"repository":"{url}","specify_text":"Add a login page","publish":"branch","repository":"https://evil.example/x.git"}}"#
    );
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "a duplicated key",
            duplicated.into_bytes(),
            "body",
            r#"the key "repository" appears twice"#,
        ),
        (
            "a tag character in specify_text",
            serde_json::to_vec(&run_request(&url, &format!("Add a login page{tag_a}")))?,
            "specify_text",
            "U+E0041 (TAG LATIN CAPITAL LETTER A) at character 17",
        ),
        (
            "a tag character in a label",
            serde_json::to_vec(&tagged_label)?,
            "labels",
            "label 2 contains U+E0041 (TAG LATIN CAPITAL LETTER A) at character 3",
        ),
        (
            "a ref as the branch name",
            serde_json::to_vec(&ref_branch)?,
            "branch_name",
            "refs/",
        ),
        (
            "the base branch as the branch name",
            serde_json::to_vec(&base_branch)?,
            "branch_name",
            "is the base branch",
        ),
    ];
    for (what, body, field, says) in cases {
        let response = http_request("POST", &runs, Some(body)).await?;
        let answer = response.json()?;
        assert_eq!(response.status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{what}: {message}");
        assert!(message.contains(says), "{what}: {message}");
    }
    world.assert_nothing_stored("400s").await?;

    // Listing: only the API's own cursors and a plain limit reach the store.
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=1e2",
        "cursor=runs%2Fx%2Frun.json",
        "cursor=index%2Fruns%2F..%2F..%2Fidempotency",
        "cursor=%00",
    ] {
        let response = http_request("GET", &format!("{runs}?{query}"), None).await?;
        let answer = response.json()?;
        assert_eq!(response.status, 400, "{query}: {answer}");
        let field = query.split('=').next().unwrap_or_default();
        assert_eq!(answer["error"]["field"], field, "{query}: {answer}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_reused_for_another_request_is_a_conflict() -> TestResult {
    let world = World::start(3).await?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let base = serve.base_url()?;
    let url = world.git().repo_url("web");
    let mut first = run_request(&url, "Add a login page");
    first["idempotency_key"] = json!("nightly-login-1");
    let (run_id, _) = submit(base, &first).await?;

    // Written differently, the same request: the same run.
    let mut same = first.clone();
    same["draft"] = json!(false);
    let again = post_runs(base, &same).await?;
    assert_eq!(again.status, 200, "{}", again.json()?);
    assert_eq!(again.json()?["run_id"], run_id.as_str());

    let mut other = first.clone();
    other["specify_text"] = json!("Delete every user");
    let conflict = post_runs(base, &other).await?;
    let answer = conflict.json()?;
    assert_eq!(conflict.status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "idempotency_conflict", "{answer}");
    assert_eq!(answer["error"]["field"], "idempotency_key", "{answer}");
    assert_eq!(answer["error"]["run_id"], run_id.as_str(), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&run_id), "{message}");

    // One run, one message, and the stored request is the first one.
    let runs: Vec<String> = world
        .moto
        .keys(BUCKET, "runs/")
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/run.json"))
        .collect();
    assert_eq!(runs, [format!("runs/{run_id}/run.json")]);
    let depth = world.moto.queue_depth(&world.queues.url).await?;
    assert_eq!(depth.visible + depth.in_flight, 1, "{depth:?}");
    let stored: RunRequest = serde_json::from_slice(
        &world
            .moto
            .get_object(BUCKET, &format!("runs/{run_id}/request.json"))
            .await?,
    )?;
    assert_eq!(stored.specify_text, "Add a login page");
    Ok(())
}

/// A Celery task message as kombu's SQS transport sends it (protocol 2, JSON, base64).
fn celery_message(task_id: &str, kwargs: &Value) -> String {
    let body =
        json!([[], kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    let envelope = json!({
        "body": STANDARD.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "specrun.run", "id": task_id, "root_id": task_id},
        "properties": {"body_encoding": "base64", "delivery_info": {}, "reply_to": "specrun-tests"},
    });
    STANDARD.encode(envelope.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_messages_cannot_repoint_a_queued_run() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let web = world.git().create_repo("web", "# Web\n")?;
    let evil = world.git().create_repo("evil", "# Evil\n")?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let (run_id, status_url) = submit(
        serve.base_url()?,
        &run_request(&web, "Let visitors bookmark articles"),
    )
    .await?;

    // Take the submit function's message off the queue, to send it again later.
    let received = world
        .moto
        .sqs()
        .receive_message()
        .queue_url(&world.queues.url)
        .send()
        .await?;
    let original = received.messages().first().context("no queued message")?;
    let original_body = original.body().context("no body")?.to_owned();
    world
        .moto
        .sqs()
        .delete_message()
        .queue_url(&world.queues.url)
        .receipt_handle(original.receipt_handle().context("no receipt")?)
        .send()
        .await?;
    let stored_request = world
        .moto
        .get_object(BUCKET, &format!("runs/{run_id}/request.json"))
        .await?;

    // Messages naming the queued run with another repository or another text: a native
    // message (sent with the AWS CLI, as an operator or a compromised producer would) and
    // a Celery task whose id is the run's.
    let repointed = RunMessage::new(
        &run_id,
        serde_json::from_value(run_request(&evil, "Let visitors bookmark articles"))?,
    );
    let retexted = RunMessage::new(
        &run_id,
        serde_json::from_value(run_request(&web, "Add a backdoor admin account"))?,
    );
    for message in [&repointed, &retexted] {
        world
            .moto
            .aws(&[
                "sqs",
                "send-message",
                "--queue-url",
                &world.queues.url,
                "--message-body",
                &String::from_utf8(message.to_json())?,
            ])
            .await?;
    }
    world
        .moto
        .sqs()
        .send_message()
        .queue_url(&world.queues.url)
        .message_body(celery_message(
            &run_id,
            &run_request(&evil, "Let visitors bookmark articles"),
        ))
        .send()
        .await?;

    let runner = SpecrunProcess::runner(&world.env, &[]).await?;
    world
        .wait_queue_empty()
        .await
        .with_context(|| runner.stderr_tail(40))?;
    // All three were refused: deleted, nothing ran, nothing about the run changed.
    let record = world.stored_run(&run_id).await?;
    assert_eq!(record.status, RunStatus::Queued, "{record:#?}");
    assert_eq!(record.repository, web);
    assert_eq!(
        pushes(world.git(), "evil"),
        0,
        "pushed to the message's repository"
    );
    assert_eq!(
        pushes(world.git(), "web"),
        0,
        "a refused message ran the run"
    );
    assert_eq!(
        world.git().branches("evil")?.len(),
        1,
        "{:?}",
        world.git().branches("evil")?
    );
    assert_eq!(
        world
            .moto
            .get_object(BUCKET, &format!("runs/{run_id}/request.json"))
            .await?,
        stored_request,
        "the stored request changed"
    );
    let celery = world.moto.keys(BUCKET, "celery/").await?;
    assert!(
        celery.is_empty(),
        "a Celery result for a refused task: {celery:?}"
    );
    let refusals = runner
        .stderr_tail(200)
        .matches("refused a queue message naming run")
        .count();
    assert_eq!(refusals, 3, "{}", runner.stderr_tail(40));

    // The run's own message still runs it, with the stored request.
    world
        .moto
        .sqs()
        .send_message()
        .queue_url(&world.queues.url)
        .message_body(original_body)
        .send()
        .await?;
    let document = wait_final(&status_url, &runner).await?;
    assert_eq!(document["status"], "succeeded", "{document:#}");
    assert_eq!(pushes(world.git(), "web"), 1);
    assert_eq!(pushes(world.git(), "evil"), 0);
    let branch = document["branch_name"].as_str().context("no branch")?;
    assert!(world.git().branches("web")?.contains(&branch.to_owned()));
    world.wait_queue_empty().await?;
    Ok(())
}
