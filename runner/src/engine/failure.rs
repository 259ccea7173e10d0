//! Turning what went wrong into a [`RunError`]: a stable code, the message, and the
//! remediation an operator can act on without shell access.

use specrun_core::ports::StoreError;
use specrun_core::state::RunError;
use specrun_core::{ErrorCode, Phase};
use specrun_publish::changes::ChangesError;
use specrun_publish::forge::ForgeError;
use specrun_publish::git::GitError;
use specrun_sandbox::docker::DockerError;
use specrun_sandbox::egress::EgressError;
use specrun_sandbox::safe_fs::WalkError;
use specrun_sandbox::workspace::WorkspaceError;
use specrun_sandbox::SandboxError;

/// Builds a run error for `phase`.
pub fn error(
    phase: Phase,
    code: ErrorCode,
    message: impl Into<String>,
    remediation: impl Into<String>,
) -> RunError {
    RunError {
        phase: Some(phase),
        ..RunError::new(code, message, remediation)
    }
}

/// The job environment could not do what a phase asked.
pub fn sandbox(phase: Phase, e: &SandboxError, image: &str) -> RunError {
    match e {
        SandboxError::Engine(e) => docker(phase, e, image),
        SandboxError::Workspace(e) => workspace(phase, e),
        SandboxError::Egress(e) => error(
            phase,
            ErrorCode::EgressSetupFailed,
            e.to_string(),
            egress_remediation(e),
        ),
        SandboxError::HomeFiles(e) => io(phase, "writing the agent's configuration files", e),
    }
}

fn egress_remediation(e: &EgressError) -> &'static str {
    match e {
        EgressError::Docker(_) => "Docker could not create the run's network. Each run of an egress agent in flight takes one network from Docker's default-address-pools: look for leftovers with `docker network ls --filter label=io.specrun.managed`, or widen the pools in daemon.json. Or give the agent network = \"bridge\" to opt out of egress control.",
        EgressError::Proxy { .. } | EgressError::Service { .. } => "The runner serves the egress proxy and the model gateway on the run network's gateway, so it must run on the Docker engine's host (not against a remote DOCKER_HOST). Or give the agent network = \"bridge\" to opt out of egress control.",
        EgressError::Firewall { .. } => "The runner sets host firewall rules with iptables: run it as root (or with CAP_NET_ADMIN) and install iptables. Or give the agent network = \"bridge\" to opt out of egress control.",
    }
}

fn docker(phase: Phase, e: &DockerError, image: &str) -> RunError {
    match e {
        DockerError::Unreachable(_) => error(
            phase,
            ErrorCode::DockerUnreachable,
            e.to_string(),
            "Start the Docker engine (scripts/ensure-docker.sh installs and starts one) or point \
             DOCKER_HOST at a running engine, then submit the run again.",
        ),
        DockerError::ImageMissing(_) => error(
            phase,
            ErrorCode::ImageMissing,
            e.to_string(),
            format!("Build the job image with `scripts/build-image.sh --tag {image}`, or set SPECRUN_IMAGE to an image this engine has."),
        ),
        DockerError::ContainerGone(_) => error(
            phase,
            ErrorCode::ContainerCrashed,
            e.to_string(),
            "The job container stopped during the phase (killed from outside, out of memory, or the engine restarted). Check `docker events` and the container limits, then submit the run again.",
        ),
        DockerError::Api { .. } => error(
            phase,
            ErrorCode::DockerError,
            e.to_string(),
            "Check the Docker engine's log and free resources, then submit the run again.",
        ),
    }
}

/// The worktree could not be read safely, or holds more than a commit may.
pub fn changes(phase: Phase, e: &ChangesError, repository: &str) -> RunError {
    match e {
        ChangesError::Git(e) => git(phase, e, repository),
        ChangesError::TooLarge(_) | ChangesError::Walk(WalkError::TooMany(_)) => error(
            phase,
            ErrorCode::CommitTooLarge,
            e.to_string(),
            "The agent wrote more than one commit may hold: check its logs for a runaway loop, or raise the commit limits.",
        ),
        ChangesError::Walk(_) | ChangesError::Unsafe { .. } => error(
            phase,
            ErrorCode::UnsafeOutput,
            e.to_string(),
            "The agent left a symbolic link, a special file or an unreadable path where specrun reads; check the agent phases' logs.",
        ),
    }
}

pub fn workspace(phase: Phase, e: &WorkspaceError) -> RunError {
    match e {
        WorkspaceError::Quota { .. } => error(
            phase,
            ErrorCode::WorkspaceQuotaFailed,
            e.to_string(),
            "The runner mounts a size-limited tmpfs per run and needs root for it: run it as root, \
             or set SPECRUN_WORKSPACE_QUOTA_MIB=0 to run without a disk quota.",
        ),
        WorkspaceError::Create { .. } => error(
            phase,
            ErrorCode::WorkspaceError,
            e.to_string(),
            "Check that SPECRUN_WORK_DIR is writable and has free space, then submit the run again.",
        ),
    }
}

pub fn git(phase: Phase, e: &GitError, repository: &str) -> RunError {
    let (code, remediation) = match e {
        GitError::Permission(_) => (
            ErrorCode::PermissionDenied(phase),
            format!("Give the configured token (SPECRUN_GIT_TOKEN) {} access to {repository}, or check that it has not expired.", if phase == Phase::Push { "write" } else { "read" }),
        ),
        GitError::NotFound(_) => (
            ErrorCode::RepositoryNotFound,
            format!("Check the repository name {repository:?}; a private repository also looks missing when the token cannot read it."),
        ),
        GitError::BaseBranchMissing(_) => (
            ErrorCode::BaseBranchMissing,
            "Name an existing branch in base_branch (--base-branch), or leave it out to use the repository's default branch.".to_owned(),
        ),
        GitError::EmptyRemote => (
            ErrorCode::EmptyRepository,
            "Push an initial commit to the repository, then submit the run again.".to_owned(),
        ),
        GitError::PushRejected { .. } => (
            ErrorCode::PushRejected,
            "The branch may be protected or already exist with other history: choose another branch_name, delete the stale branch, or allow the token to push to it.".to_owned(),
        ),
        GitError::TimedOut { .. } => (
            ErrorCode::GitTimeout,
            "The remote is slow or unreachable, or the repository is very large: check it, or raise SPECRUN_GIT_TIMEOUT_SECS.".to_owned(),
        ),
        GitError::TooLarge { .. } => (
            ErrorCode::RepositoryTooLarge,
            "The repository does not fit the run's workspace: raise SPECRUN_WORKSPACE_QUOTA_MIB (the per-run disk quota), or run against a smaller repository.".to_owned(),
        ),
        GitError::Other { .. } => (
            ErrorCode::GitFailed(phase),
            "Check the phase's log artifact; if the remote is unreachable, check the network and the repository URL.".to_owned(),
        ),
    };
    error(phase, code, e.to_string(), remediation)
}

pub fn store(phase: Phase, e: &StoreError) -> RunError {
    error(
        phase,
        ErrorCode::StateStoreError,
        e.to_string(),
        "Check that the state store (state directory or bucket) is writable and reachable.",
    )
}

pub fn io(phase: Phase, doing: &str, e: &std::io::Error) -> RunError {
    error(
        phase,
        ErrorCode::WorkspaceError,
        format!("{doing}: {e}"),
        "Check free space and permissions of the work directory (SPECRUN_WORK_DIR).",
    )
}

/// A failed agent command: its exit code says how.
pub fn agent_exit(phase: Phase, agent: &str, exit_code: i64, excerpt: String) -> RunError {
    let remediation = if exit_code == 137 {
        "The agent was killed (signal 9): it crashed or hit the container's memory limit. Read the phase's stderr log; raise the limit or retry the run.".to_owned()
    } else {
        format!("Read the {phase} phase's stdout and stderr logs for the agent's reason; check the agent's credentials and model access.")
    };
    RunError {
        exit_code: Some(exit_code),
        log_excerpt: Some(excerpt),
        ..error(
            phase,
            ErrorCode::AgentPhaseFailed,
            format!("agent {agent} exited with code {exit_code} in the {phase} phase"),
            remediation,
        )
    }
}

pub fn forge(phase: Phase, e: &ForgeError, repository: &str) -> RunError {
    let (code, remediation) = match e.status {
        401 => (ErrorCode::ForgeUnauthorized, "The forge refused the token: set SPECRUN_GIT_TOKEN to a valid, unexpired token.".to_owned()),
        403 => (ErrorCode::ForgeForbidden, format!("Give the token permission to open pull requests on {repository} (pull requests: write).")),
        404 => (ErrorCode::ForgeNotFound, format!("Check that {repository} exists on the forge at SPECRUN_FORGE_API_URL and that the token can see it.")),
        422 => (ErrorCode::PullRequestRejected, "The forge refused the pull request as given; read its message, check the base branch and the labels.".to_owned()),
        0 => (ErrorCode::ForgeUnreachable, "Check SPECRUN_FORGE_API_URL and the network path to the forge; the branch was pushed, so running again only opens the pull request.".to_owned()),
        _ => (ErrorCode::ForgeError, "Retry the run; the branch was pushed, so running again updates it and opens the pull request.".to_owned()),
    };
    error(phase, code, e.to_string(), remediation)
}
