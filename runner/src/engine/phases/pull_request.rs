//! pull_request: opens the run's pull request, or updates the open one for the same
//! branch.

use super::{message, Specified, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::{ErrorCode, Phase};
use specrun_publish::forge::{self, Forge, PullRequestSpec};
use std::collections::BTreeMap;

const PHASE: Phase = Phase::PullRequest;

pub(crate) async fn run(run: &mut Run, specified: &Specified) -> StepResult<()> {
    let Some((owner, repo)) = run
        .request
        .repository
        .forge_slug()
        .map(|(o, r)| (o.to_owned(), r.to_owned()))
    else {
        return Ok(Step::Skip(format!(
            "{} is not an owner/name repository on the configured forge, so no pull request can be opened; the branch was pushed",
            run.record.repository
        ), ()));
    };
    if !forge::SUPPORTED {
        return Err(failure::error(
            PHASE,
            ErrorCode::ForgeError,
            "this specrun was built without pull request support (the forge feature); the branch was pushed",
            "Build specrun with --features forge (a default feature), or submit with publish: branch.",
        )
        .into());
    }
    let Some(token) = run.config.forge_token.clone() else {
        return Err(failure::error(
            PHASE,
            ErrorCode::ForgeTokenMissing,
            "opening a pull request needs the forge token, and none is configured",
            "Set SPECRUN_GIT_TOKEN to a token that may open pull requests, or submit with publish: branch.",
        )
        .into());
    };
    let spec = pull_request_spec(run, specified, owner, repo);
    let forge = Forge::new(&run.config.forge_api(), token.expose())
        .map_err(|e| failure::forge(PHASE, &e, &run.record.repository))?;
    let (pr, created) = forge.open_or_update(&spec).await.map_err(|e| {
        let mut error = failure::forge(PHASE, &e, &run.record.repository);
        error.message = run.redactor.redact_str(&error.message);
        error
    })?;
    run.record.pull_request_url = Some(pr.url.clone());
    let verb = if created { "opened" } else { "updated" };
    Ok(Step::Continue(
        message(format!("{verb} pull request #{} {}", pr.number, pr.url)),
        (),
    ))
}

/// Where an operator reads the run: the status function's page when configured, else
/// the CLI command that shows it.
fn link(run: &Run, path: &str, command: &str) -> String {
    match &run.config.status_base_url {
        Some(base) => format!("{}/runs/{}{path}", base.trim_end_matches('/'), run.run_id),
        None => format!("`specrun {command} {}`", run.run_id),
    }
}

fn pull_request_spec(
    run: &Run,
    specified: &Specified,
    owner: String,
    repo: String,
) -> PullRequestSpec {
    let record = &run.record;
    let vars: BTreeMap<&str, String> = [
        ("feature", specified.feature.name().to_owned()),
        ("branch", specified.branch.to_string()),
        (
            "base_branch",
            record.base_branch.clone().unwrap_or_default(),
        ),
        ("run_id", run.run_id.to_string()),
        ("agent", record.agent.name.clone()),
        ("commit", record.commit_sha.clone().unwrap_or_default()),
        ("repository", record.repository.clone()),
        ("status_url", link(run, "", "status")),
        ("logs_url", link(run, "/artifacts/", "logs")),
        ("phases", specrun_core::publish::phase_table(record)),
    ]
    .into_iter()
    .collect();
    let template = &run.config.pr_template;
    let mut labels = run.config.pr_labels.clone();
    labels.extend(
        run.request
            .labels
            .iter()
            .filter(|l| !run.config.pr_labels.contains(l))
            .cloned(),
    );
    let render = |text: &str| {
        run.redactor
            .redact_str(&specrun_core::publish::render(text, &vars))
    };
    PullRequestSpec {
        owner,
        repo,
        head: specified.branch.to_string(),
        base: record.base_branch.clone().unwrap_or_default(),
        title: render(&template.title),
        body: render(&template.body),
        draft: run.request.draft,
        labels,
    }
}
