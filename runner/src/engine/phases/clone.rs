//! clone: clones the base branch into the workspace with the runner's credentials, then
//! hands the worktree to the agent's user.

use super::command::bounded_git;
use super::{blocking, message, short, Cloned, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::{ErrorCode, Phase};
use specrun_publish::git;
use specrun_sandbox::{Job, Workspace};

const PHASE: Phase = Phase::Clone;

pub(crate) async fn run(run: &mut Run, job: &dyn Job) -> StepResult<Cloned> {
    let workspace = job.workspace().clone();
    let url = run.clone_url.clone();
    let base = run.request.base_branch.as_ref().map(ToString::to_string);
    let token = run
        .config
        .forge_token
        .as_ref()
        .map(|t| t.expose().to_owned());
    let bounds = git::Bounds {
        max_fetch_bytes: run.config.workspace_quota_bytes,
        ..git::Bounds::within(run.config.git_timeout)
    };
    let ws = workspace.clone();
    let cloning = move || {
        let cloned = git::clone(
            &url,
            base.as_deref(),
            &ws.git,
            &ws.repo,
            token.as_deref(),
            bounds,
        )?;
        Ok::<_, git::GitError>((cloned, list_specs(&ws)))
    };
    let (cloned, specs_before) = match bounded_git(PHASE, run.config.git_timeout, cloning).await? {
        Ok(done) => done,
        Err(e) => {
            let mut error = failure::git(PHASE, &e, &run.record.repository);
            error.message = run.redactor.redact_str(&error.message);
            return Err(error.into());
        }
    };
    run.record.base_branch = Some(cloned.base_branch.clone());
    blocking(PHASE, move || workspace.hand_to_agent())
        .await?
        .map_err(|e| {
            failure::error(
                PHASE,
                ErrorCode::WorkspaceError,
                format!("handing the workspace to the agent user: {e}"),
                "The runner needs root to give the worktree to the agent's user; run it as root.",
            )
        })?;
    Ok(Step::Continue(
        message(format!(
            "cloned {} at {} ({})",
            run.record.repository,
            cloned.base_branch,
            short(&cloned.base_commit)
        )),
        Cloned {
            specs_before,
            default_branch: cloned.default_branch,
        },
    ))
}

/// Names of the directories under `specs/` (a symlinked `specs` has none).
pub(super) fn list_specs(workspace: &Workspace) -> Vec<String> {
    let mut names =
        specrun_sandbox::safe_fs::subdirectories(&workspace.repo, "specs").unwrap_or_default();
    names.sort();
    names
}
