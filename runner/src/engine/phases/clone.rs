//! clone: clones the base branch into the workspace with the runner's credentials, then
//! hands the worktree to the agent's user.
//!
//! The transfer needs nothing but the workspace, so prepare starts it ([`Fetch::start`])
//! as soon as the workspace exists, and it runs while the job's container starts (and
//! the agent reports its version); this phase waits for it and hands the worktree over.
//! Until then the worktree and HOME belong to root, so the agent (its version command)
//! can read them but change nothing, and `specs/` is listed before the agent can write
//! there.

use super::command::bounded_git;
use super::{blocking, message, short, Cloned, Failure, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::{ErrorCode, Phase};
use specrun_publish::git;
use specrun_sandbox::{Job, Workspace};

const PHASE: Phase = Phase::Clone;

type Fetched = Result<(git::Cloned, Vec<String>), git::GitError>;

/// The clone's transfer, running.
pub(crate) struct Fetch(tokio::task::JoinHandle<Result<Fetched, Failure>>);

impl Fetch {
    /// Starts cloning the run's base branch into `workspace` (git's own time limit
    /// applies); the result also lists `specs/` as cloned.
    pub(crate) fn start(run: &Run, workspace: &Workspace) -> Fetch {
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
        Fetch(tokio::spawn(bounded_git(
            PHASE,
            run.config.git_timeout,
            cloning,
        )))
    }

    async fn wait(self) -> Result<Fetched, Failure> {
        self.0.await.unwrap_or_else(|e| {
            Err(failure::error(
                PHASE,
                ErrorCode::InternalError,
                format!("the clone's task ended early: {e}"),
                "Retry the run.",
            )
            .into())
        })
    }

    /// Waits until the transfer no longer writes into the workspace (cleanup, before the
    /// workspace is removed, when the run ended before the clone phase).
    pub(crate) async fn settle(self) {
        let _ = self.0.await;
    }
}

pub(crate) async fn run(run: &mut Run, job: &dyn Job) -> StepResult<Cloned> {
    let workspace = job.workspace().clone();
    let fetch = match run.fetch.take() {
        Some(fetch) => fetch,
        None => Fetch::start(run, &workspace),
    };
    let (cloned, specs_before) = match fetch.wait().await? {
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
