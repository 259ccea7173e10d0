//! push: pushes the feature branch to the run's own remote URL. An existing branch is
//! replaced only when its tip's trailer names a run this store knows for the same
//! repository and branch, and only if the remote still holds that tip when the push
//! negotiates.

use super::command::bounded_git;
use super::{message, short, Committed, Failure, Prepared, Specified, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::keys::RunId;
use specrun_core::Phase;
use specrun_publish::git;

const PHASE: Phase = Phase::Push;

pub(crate) async fn run(
    run: &mut Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
    committed: &Committed,
) -> StepResult<()> {
    let workspace = prepared.job.workspace().clone();
    let url = run.clone_url.clone();
    let token = run
        .config
        .forge_token
        .as_ref()
        .map(|t| t.expose().to_owned());
    let branch = specified.branch.to_string();
    let limit = run.config.git_timeout;
    let git_failure = |run: &Run, e: git::GitError| {
        let mut error = failure::git(PHASE, &e, &run.record.repository);
        error.message = run.redactor.redact_str(&error.message);
        Failure::from(error)
    };
    let looked = {
        let (ws, url, branch, token) = (
            workspace.clone(),
            url.clone(),
            branch.clone(),
            token.clone(),
        );
        move || {
            let repo = git::open(&ws.git, &ws.repo)?;
            git::remote_branch(
                &repo,
                &url,
                &branch,
                token.as_deref(),
                git::Bounds::within(limit),
            )
        }
    };
    let remote = bounded_git(PHASE, limit, looked)
        .await?
        .map_err(|e| git_failure(run, e))?;
    let expected = match remote {
        git::RemoteBranch::Missing => None,
        git::RemoteBranch::Tip {
            commit,
            run: Some(pushed_by),
        } if pushed_by == run.run_id.as_str() => {
            let text = format!(
                "an earlier attempt of this run already pushed {branch} at {}; not pushing again",
                short(&commit.to_string())
            );
            run.record.commit_sha = Some(commit.to_string());
            return Ok(Step::Continue(message(text), ()));
        }
        git::RemoteBranch::Tip {
            commit,
            run: pushed_by,
        } => {
            if let Err(reason) = owned_by_specrun(run, pushed_by.as_deref(), &branch).await {
                return Err(git_failure(run, git::GitError::PushRejected {
                    branch,
                    reason: format!("the branch already exists on the remote at {}; {reason}; specrun only replaces branches its own runs created", short(&commit.to_string())),
                }));
            }
            Some(commit)
        }
    };
    let pushing = {
        let branch = branch.clone();
        move || {
            let repo = git::open(&workspace.git, &workspace.repo)?;
            git::push(&repo, &url, &branch, expected, token.as_deref())
        }
    };
    bounded_git(PHASE, limit, pushing)
        .await?
        .map_err(|e| git_failure(run, e))?;
    let how = match expected {
        Some(previous) => format!(
            " (replaced specrun's earlier commit {})",
            short(&previous.to_string())
        ),
        None => String::new(),
    };
    Ok(Step::Continue(
        message(format!(
            "pushed {branch} at {} to {}{how}",
            short(&committed.sha),
            run.record.repository
        )),
        (),
    ))
}

/// Whether a remote tip naming `pushed_by` is specrun's to replace: that run must be one
/// this store knows, for the same repository and branch.
async fn owned_by_specrun(run: &Run, pushed_by: Option<&str>, branch: &str) -> Result<(), String> {
    let Some(other) = pushed_by else {
        return Err(
            "its tip is a commit specrun did not make (no Specrun-Run-Id trailer)".to_owned(),
        );
    };
    let id = RunId::parse(other)
        .map_err(|_| format!("its tip names {other:?}, which is not a run id"))?;
    let record = specrun_store::runs::load_run(run.store.as_ref(), &id)
        .await
        .map_err(|e| format!("the run its tip names ({other}) could not be read: {e}"))?
        .ok_or_else(|| format!("its tip names run {other}, which this specrun does not know"))?;
    if record.repository == run.record.repository && record.branch_name.as_deref() == Some(branch) {
        Ok(())
    } else {
        Err(format!(
            "its tip names run {other}, which published {:?} on {}, not this branch",
            record.branch_name.unwrap_or_default(),
            record.repository
        ))
    }
}
