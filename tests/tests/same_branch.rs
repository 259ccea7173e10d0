//! One run per repository and branch at a time (issue 13, point 1): two runs that publish
//! the same branch, on two runners, never push at once. The first run's push is held by
//! the git server; the second waits for it, visibly (`waiting_for` in its run.json names
//! the first), and pushes nothing until the first has finished. With
//! `SPECRUN_BRANCH_BUSY=refuse` the second fails with `branch_busy` instead.

use anyhow::Context as _;
use specrun_core::{Phase, RunStatus};
use specrun_tests::emulator::SpecrunProcess;
use specrun_tests::harness::require_image;
use specrun_tests::http_thread::{Arrival, HeldRequest};
use specrun_tests::world::{eventually, pushes, run_request, submit, World};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

const BRANCH: &str = "feature-shared";

/// Submits two runs of `repo` that both publish [`BRANCH`]; returns their ids.
async fn submit_two(world: &World, repo: &str) -> anyhow::Result<[String; 2]> {
    let url = world.git().create_repo(repo, "# Shared\n")?;
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let mut ids = Vec::new();
    for text in [
        "Export invoices as CSV files",
        "Export invoices as PDF files",
    ] {
        let mut body = run_request(&url, text);
        body["branch_name"] = BRANCH.into();
        ids.push(submit(serve.base_url()?, &body).await?.0);
    }
    Ok([ids[0].clone(), ids[1].clone()])
}

/// Waits until the git server holds a push.
async fn push_held(held: &mut HeldRequest) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(150) {
        match held.arrived() {
            Arrival::Arrived(_) => return Ok(()),
            Arrival::Never => anyhow::bail!("the gate was disarmed"),
            Arrival::Waiting => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    anyhow::bail!("no push reached the git server")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_for_the_same_branch_waits_for_the_first_across_runners() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let repo = "shared-wait";
    // The first push to reach the git server is held there until the test lets it go.
    let mut held = world
        .git()
        .gate()
        .hold_next("POST", &format!("/{repo}.git/git-receive-pack"));
    let ids = submit_two(&world, repo).await?;
    let a = SpecrunProcess::runner(&world.env.with_runner_id("runner-a"), &[]).await?;
    let b = SpecrunProcess::runner(&world.env.with_runner_id("runner-b"), &[]).await?;
    push_held(&mut held)
        .await
        .with_context(|| format!("{}\n{}", a.stderr_tail(20), b.stderr_tail(20)))?;
    // Exactly one of the two waits, naming the other.
    let (waiter, holder) = eventually(
        "the other run to wait",
        Duration::from_secs(150),
        || async {
            for (me, other) in [(&ids[0], &ids[1]), (&ids[1], &ids[0])] {
                let record = world.stored_run(me).await?;
                if let Some(wait) = &record.waiting_for {
                    return Ok(Some((me.clone(), other.clone(), wait.clone())));
                }
            }
            Ok(None)
        },
    )
    .await
    .map(|(me, other, wait)| {
        assert_eq!(
            wait.run_id, other,
            "the waiting run names the run it waits for"
        );
        assert_eq!(wait.branch, BRANCH);
        (me, other)
    })
    .with_context(|| format!("{}\n{}", a.stderr_tail(20), b.stderr_tail(20)))?;
    let waiting = world.stored_run(&waiter).await?;
    assert_eq!(waiting.status, RunStatus::Running);
    assert_eq!(
        pushes(world.git(), repo),
        0,
        "the waiting run pushed while the first one's push was in flight"
    );
    held.release(true);
    let first = world.final_run(&holder, Duration::from_secs(150)).await?;
    let second = world.final_run(&waiter, Duration::from_secs(150)).await?;
    for record in [&first, &second] {
        assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
        assert!(
            record.waiting_for.is_none(),
            "a finished run waits for nothing"
        );
    }
    let message = second
        .phase(Phase::Push)
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains(&format!("for run {holder} to finish with {BRANCH}")),
        "{message}"
    );
    assert_eq!(
        pushes(world.git(), repo),
        2,
        "each run pushed once, one after the other"
    );
    // The second run replaced the first's branch (it is specrun's own), after it.
    let (_, tip) = world
        .git()
        .tip(repo, BRANCH)?
        .context("the branch was pushed")?;
    assert!(
        tip.contains(&waiter),
        "the last push is the waiting run's: {tip}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_refuse_a_second_run_for_a_busy_branch_fails_with_branch_busy() -> TestResult {
    require_image().await?;
    let world = World::start(3).await?;
    let repo = "shared-refuse";
    let mut held = world
        .git()
        .gate()
        .hold_next("POST", &format!("/{repo}.git/git-receive-pack"));
    let ids = submit_two(&world, repo).await?;
    let mut env = world.env.with_runner_id("runner-r");
    env.extra
        .push(("SPECRUN_BRANCH_BUSY".to_owned(), "refuse".to_owned()));
    // One runner working both runs at once: the lock holds within a runner too.
    let runner = SpecrunProcess::runner(&env, &["--concurrency", "2"]).await?;
    push_held(&mut held)
        .await
        .with_context(|| runner.stderr_tail(20))?;
    let refused = eventually(
        "one run to be refused",
        Duration::from_secs(150),
        || async {
            for id in &ids {
                let record = world.stored_run(id).await?;
                if record.status == RunStatus::Failed {
                    return Ok(Some(record));
                }
            }
            Ok(None)
        },
    )
    .await
    .with_context(|| runner.stderr_tail(20))?;
    held.release(true);
    let error = refused.error.clone().context("a failed run has an error")?;
    assert_eq!(error.code.as_str(), "branch_busy");
    assert_eq!(error.phase, Some(Phase::Push));
    let other = ids
        .iter()
        .find(|id| **id != refused.run_id)
        .context("two runs")?;
    assert!(error.message.contains(other.as_str()), "{}", error.message);
    assert!(error.remediation.contains("SPECRUN_BRANCH_BUSY=wait"));
    let holder = world.final_run(other, Duration::from_secs(150)).await?;
    assert_eq!(holder.status, RunStatus::Succeeded, "{:#?}", holder.error);
    assert_eq!(
        pushes(world.git(), repo),
        1,
        "the refused run pushed nothing"
    );
    Ok(())
}
