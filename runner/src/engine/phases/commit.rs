//! commit: stops the agent for good while it commits what the agent changed inside the run's
//! commit paths on the feature branch (staged from a link-safe walk, so git never reads
//! the worktree), or stops with no_changes.

use super::command::bounded_git;
use super::{
    json_bytes, short, store_failure, Committed, Failure, Prepared, Specified, Step, StepResult,
};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::commit_scope::{CommitScope, Unexpected};
use specrun_core::quote::quote_path;
use specrun_core::state::{ArtifactRef, PhaseOutcome, RunError};
use specrun_core::{ErrorCode, Phase, RunStatus};
use specrun_publish::{changes, git};

const PHASE: Phase = Phase::Commit;

pub(crate) async fn run(
    run: &mut Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
) -> StepResult<Committed> {
    let profile = &prepared.agent.profile;
    let scope = CommitScope::new(
        profile.commit_paths.iter().map(String::as_str),
        specified.feature.as_str(),
        specified.init_files.clone(),
    );
    let fail_on_unexpected = profile.unexpected_changes == Unexpected::Fail;
    let work = {
        let workspace = prepared.job.workspace().clone();
        let limits = run.config.commit_limits;
        let message = commit_message(run, specified);
        let (name, email) = (
            run.config.commit_name.clone(),
            run.config.commit_email.clone(),
        );
        let repository = run.record.repository.clone();
        let branch = specified.branch.clone();
        move || {
            workspace
                .take_back()
                .map_err(|e| failure::changes(PHASE, &e.into(), &repository))?;
            let repo = git::open(&workspace.git, &workspace.repo)
                .map_err(|e| failure::git(PHASE, &e, &repository))?;
            let changes = changes::collect(&repo, &workspace.repo, &scope, limits)
                .map_err(|e| failure::changes(PHASE, &e, &repository))?;
            if changes.staged.is_empty()
                || (fail_on_unexpected && changes.left_out().next().is_some())
            {
                return Ok((changes, None));
            }
            let author = git2_signature(&name, &email)?;
            let sha =
                git::commit_staged(&repo, branch.as_str(), &message, &author, &changes.staged)
                    .map_err(|e| failure::git(PHASE, &e, &repository))?;
            let summary =
                git::diff_summary(&repo, &sha).map_err(|e| failure::git(PHASE, &e, &repository))?;
            Ok::<_, RunError>((changes, Some((sha, summary))))
        }
    };
    // The agent's processes are frozen since its last command returned (the port's
    // contract), so nothing of theirs can change the worktree while it is read; they are
    // killed for good meanwhile, and the phase fails if that did not happen.
    let (stopped, committed) = tokio::join!(
        prepared.job.stop_all(),
        bounded_git(PHASE, run.config.git_timeout, work)
    );
    stopped.map_err(|e| failure::sandbox(PHASE, &e, &run.record.agent.image))?;
    let (changes, committed) = committed??;
    let sha = committed.as_ref().map(|c| c.0.as_str());
    let mut artifacts = vec![store_commit_json(run, specified, &changes, sha).await?];
    let left_out = changes.left_out().count();
    if fail_on_unexpected && left_out > 0 {
        return Err(Failure {
            error: failure::error(
                PHASE,
                ErrorCode::UnexpectedChanges,
                format!(
                    "the agent changed {left_out} path(s) outside the commit paths, e.g. {}; nothing was committed",
                    changes.left_out().take(5).map(|c| quote_path(&c.path)).collect::<Vec<_>>().join(", ")
                ),
                "Read the commit phase's commit.json for every path and reason; add the paths the agent may write to the profile's commit_paths, or set unexpected_changes = \"leave_out\".",
            ),
            artifacts,
        });
    }
    let noted = match left_out {
        0 => String::new(),
        n => format!("; left out {n} change(s) outside the commit paths (see commit.json)"),
    };
    let Some((sha, summary)) = committed else {
        return Ok(Step::Stop {
            outcome: PhaseOutcome { artifacts, message: Some(format!("no repository changes{noted}")), ..Default::default() },
            status: RunStatus::NoChanges,
            reason: format!("the phases produced no repository changes to commit{noted}; no branch was pushed and no pull request was opened"),
        });
    };
    let summary = run.redactor.redact_bytes(summary.as_bytes());
    artifacts.push(
        run.artifacts
            .put_bytes(
                Some(PHASE),
                "diff-summary.txt",
                summary,
                "text/plain; charset=utf-8",
            )
            .await
            .map_err(store_failure(PHASE))?,
    );
    run.record.commit_sha = Some(sha.clone());
    let message = format!(
        "committed {} file(s) as {} on {}{noted}",
        changes.committed().count(),
        short(&sha),
        specified.branch
    );
    Ok(Step::Continue(
        PhaseOutcome {
            artifacts,
            message: Some(message),
            ..Default::default()
        },
        Committed { sha },
    ))
}

fn git2_signature(name: &str, email: &str) -> Result<git::Signature<'static>, RunError> {
    git::signature(name, email).map_err(|e| {
        failure::error(
            PHASE,
            ErrorCode::GitFailed(PHASE),
            e.to_string(),
            "Check SPECRUN_COMMIT_NAME and SPECRUN_COMMIT_EMAIL.",
        )
    })
}

/// commit.json: the commit, and every changed path with what became of it.
async fn store_commit_json(
    run: &Run,
    specified: &Specified,
    changes: &changes::Changes,
    sha: Option<&str>,
) -> Result<ArtifactRef, Failure> {
    let status = serde_json::json!({
        "commit": sha,
        "branch": specified.branch.to_string(),
        "base_branch": run.record.base_branch,
        "files": changes.committed().map(|c| serde_json::json!({"path": c.path, "change": c.kind})).collect::<Vec<_>>(),
        "left_out": changes.left_out().map(|c| serde_json::json!({
            "path": c.path,
            "change": c.kind,
            "reason": c.left_out.map(|r| r.as_str()),
        })).collect::<Vec<_>>(),
        "pushed": false,
    });
    let status = run.redactor.redact_bytes(&json_bytes(&status));
    run.artifacts
        .put_bytes(Some(PHASE), "commit.json", status, "application/json")
        .await
        .map_err(store_failure(PHASE))
}

fn commit_message(run: &Run, specified: &Specified) -> String {
    format!(
        "docs(spec): add Spec Kit specification, plan and tasks for {feature}\n\n\
         Generated by specrun with the {agent} agent: Spec Kit specify, plan and tasks.\n\n\
         {trailer}: {run_id}\n",
        feature = specified.feature.as_str(),
        trailer = specrun_core::trailer::RUN_TRAILER,
        agent = run.record.agent.name,
        run_id = run.run_id,
    )
}
