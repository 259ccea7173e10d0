//! Answer and resume (issue 13, point 3). The scripted agent's `clarify` behaviour leaves
//! two `[NEEDS CLARIFICATION]` questions in the spec, so the run ends
//! `needs_clarification` with nothing published. The operator answers over the API: the
//! run resumes as a new attempt from the phase that asked, the answers recorded in the
//! spec as Spec Kit's clarify step records them, the questions checked again, and the
//! pipeline goes on through plan and tasks to one pushed branch and one pull request.
//! Answering one question of two stops the run again with the other still open.

use anyhow::Context as _;
use serde_json::{json, Value};
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::emulator::{http_request_as, SpecrunProcess};
use specrun_tests::harness::require_image;
use specrun_tests::world::{eventually, submit, wait_final, World, BUCKET, RUN_TIMEOUT};

type TestResult = anyhow::Result<()>;

const OWNER: &str = "acme";
const REPO: &str = "answers";

async fn post_answers(base: &str, run_id: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let response = http_request_as(
        "POST",
        &format!("{base}/runs/{run_id}/answers"),
        Some(serde_json::to_vec(body)?),
        Some("application/json"),
    )
    .await?;
    Ok((response.status, response.json().unwrap_or(Value::Null)))
}

/// Submits `body` and waits until its run ends `needs_clarification`.
async fn run_with_questions(
    serve: &SpecrunProcess,
    body: &Value,
) -> anyhow::Result<(String, String, RunRecord)> {
    let (run_id, status_url) = submit(serve.base_url()?, body).await?;
    let first: RunRecord = serde_json::from_value(wait_final(&status_url, serve).await?)?;
    anyhow::ensure!(
        first.status == RunStatus::NeedsClarification && first.attempt == 1,
        "{} (attempt {}): {:#?}",
        first.status,
        first.attempt,
        first.error
    );
    Ok((run_id, status_url, first))
}

/// The run's saved questions, from its clarifications.json artifact.
async fn questions(world: &World, record: &RunRecord) -> anyhow::Result<Vec<String>> {
    let key = record
        .artifacts
        .iter()
        .find(|a| a.name == "clarifications.json")
        .map(|a| a.key.clone())
        .context("no clarifications.json")?;
    let saved: Value = serde_json::from_slice(&world.moto.get_object(BUCKET, &key).await?)?;
    Ok(serde_json::from_value(saved["questions"].clone())?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clarify_run_answered_resumes_to_one_pushed_branch_and_one_pull_request() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    world.forge.create_repo(OWNER, REPO, "# Answers\n")?;
    let serve = SpecrunProcess::serve(&world.env, &[]).await?;
    let base = serve.base_url()?.to_owned();
    let body = json!({
        "repository": format!("{OWNER}/{REPO}"),
        "specify_text": "Let members export their invoices as CSV files",
        "publish": "pr",
        "agent": "scripted",
        "agent_options": {"behaviour": "clarify"},
    });
    let (run_id, status_url, first) = run_with_questions(&serve, &body).await?;
    let asked = questions(&world, &first).await?;
    assert_eq!(asked.len(), 2, "{asked:?}");
    let branch = first.branch_name.clone().context("the branch is named")?;
    assert!(world.forge.pulls(OWNER, REPO).is_empty());

    // Bad answers are refused and change nothing.
    let (code, answer) = post_answers(
        &base,
        &run_id,
        &json!({"answers": [{"question": "Is this a question?", "answer": "No"}]}),
    )
    .await?;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "answers[0].question");
    assert_eq!(
        world.stored_run(&run_id).await?.status,
        RunStatus::NeedsClarification
    );

    // One answer of two: the run resumes, finds the other question still open, and stops.
    let (code, answer) = post_answers(
        &base,
        &run_id,
        &json!({"answers": [{"question": asked[0], "answer": "Only administrators"}]}),
    )
    .await?;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["resume_after"], "specify");
    let second: RunRecord = serde_json::from_value(wait_final(&status_url, &serve).await?)?;
    assert_eq!(
        second.status,
        RunStatus::NeedsClarification,
        "{:#?}",
        second.error
    );
    assert_eq!(questions(&world, &second).await?, vec![asked[1].clone()]);
    assert!(
        world.forge.pulls(OWNER, REPO).is_empty(),
        "nothing published with a question open"
    );

    let (code, answer) = post_answers(
        &base,
        &run_id,
        &json!({"answers": [{"question": asked[1], "answer": "Seven years; members may not delete them"}]}),
    )
    .await?;
    assert_eq!(code, 202, "{answer}");
    let done: RunRecord = serde_json::from_value(wait_final(&status_url, &serve).await?)?;
    assert_eq!(done.status, RunStatus::Succeeded, "{:#?}", done.error);
    assert_eq!(done.attempt, 3);
    assert_eq!(
        done.branch_name.as_deref(),
        Some(branch.as_str()),
        "the same branch"
    );
    let kept: Vec<(&str, &str)> = done
        .answers
        .iter()
        .map(|a| (a.question.as_str(), a.answer.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            (asked[0].as_str(), "Only administrators"),
            (
                asked[1].as_str(),
                "Seven years; members may not delete them"
            )
        ]
    );
    assert_eq!(
        done.previous_attempts
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [Some(RunStatus::NeedsClarification); 2]
    );
    let specify = done.phase(Phase::Specify);
    assert_eq!(specify.status, PhaseStatus::Succeeded);
    assert!(
        specify
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("recorded 2 answer(s)"),
        "{specify:#?}"
    );
    for phase in [
        Phase::Plan,
        Phase::Tasks,
        Phase::Commit,
        Phase::Push,
        Phase::PullRequest,
    ] {
        assert_eq!(done.phase(phase).status, PhaseStatus::Succeeded, "{phase}");
    }

    // The pushed spec holds the answers the way Spec Kit's clarify step writes them.
    let repo = format!("{OWNER}/{REPO}");
    let spec = world
        .git()
        .read_file(&repo, &branch, &format!("specs/{branch}/spec.md"))?
        .context("spec.md pushed")?;
    assert!(!spec.contains("NEEDS CLARIFICATION"), "{spec}");
    assert!(spec.contains("## Clarifications\n\n### Session "), "{spec}");
    assert!(
        spec.contains(&format!("- Q: {} → A: Only administrators", asked[0])),
        "{spec}"
    );
    assert!(spec.contains(&format!(
        "- Q: {} → A: Seven years; members may not delete them",
        asked[1]
    )));
    assert!(world
        .git()
        .read_file(&repo, &branch, &format!("specs/{branch}/tasks.md"))?
        .is_some());
    let pulls = world.forge.pulls(OWNER, REPO);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].head, branch);
    assert!(done.pull_request_url.is_some());

    let (code, answer) = post_answers(
        &base,
        &run_id,
        &json!({"answers": [{"question": asked[0], "answer": "Everyone"}]}),
    )
    .await?;
    assert_eq!(code, 409, "a finished run takes no answers: {answer}");
    assert_eq!(answer["error"]["status"], "succeeded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_sent_as_a_queue_message_resume_the_run() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let url = world.git().create_repo("queued-answers", "# Answers\n")?;
    let serve = SpecrunProcess::serve(&world.env, &[]).await?;
    let mut body = specrun_tests::world::run_request(&url, "Let members export invoices");
    body["agent_options"] = json!({"behaviour": "clarify"});
    let (run_id, _, first) = run_with_questions(&serve, &body).await?;
    let answers = questions(&world, &first)
        .await?
        .into_iter()
        .map(|question| specrun_core::clarify::Answer {
            question,
            answer: "As the product owner decides".to_owned(),
        })
        .collect();
    let message = specrun_core::message::AnswersMessage::new(&run_id, answers);
    world.send_to_run_queue(message.to_json()).await?;
    // The run is final (needs_clarification) until the runner takes the message.
    let done = eventually("the answered run to finish", RUN_TIMEOUT, || async {
        let record = world.stored_run(&run_id).await?;
        Ok((record.attempt == 2 && record.status.is_final()).then_some(record))
    })
    .await
    .with_context(|| serve.stderr_tail(30))?;
    assert_eq!(done.status, RunStatus::Succeeded, "{:#?}", done.error);
    assert_eq!(done.answers.len(), 2);
    let branch = done.branch_name.clone().context("a branch")?;
    let spec = world
        .git()
        .read_file(
            "queued-answers",
            &branch,
            &format!("specs/{branch}/spec.md"),
        )?
        .context("spec.md pushed")?;
    assert!(
        !spec.contains("NEEDS CLARIFICATION") && spec.contains("→ A: As the product owner decides"),
        "{spec}"
    );
    Ok(())
}
