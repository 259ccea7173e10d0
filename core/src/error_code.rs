//! The stable, machine-readable codes of a failed run (`error.code` in run.json). Clients
//! and dashboards match on these strings, so a code is never renamed; new ones may be
//! added. A stored code this version does not know (written by a newer runner) is kept
//! as [`ErrorCode::Other`], so reading and rewriting run.json never loses it.

use crate::phase::Phase;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    AgentMisconfigured,
    AgentPhaseFailed,
    AgentSecretMissing,
    AgentsFileInvalid,
    AgentsFileUnreadable,
    BaseBranchMissing,
    BranchBusy,
    BudgetExceeded,
    CommitTooLarge,
    ContainerCrashed,
    DiskQuotaExceeded,
    DockerError,
    DockerUnreachable,
    EgressSetupFailed,
    EmptyRepository,
    ForgeError,
    ForgeForbidden,
    ForgeNotFound,
    ForgeTokenMissing,
    ForgeUnauthorized,
    ForgeUnreachable,
    GitTimeout,
    ImageMissing,
    InternalError,
    InvalidBranchName,
    InvalidFeatureDirectory,
    InvalidRequest,
    PhaseOutputMissing,
    PhaseStalled,
    PhaseTimeout,
    PullRequestRejected,
    PushRejected,
    QueueUnavailable,
    RepositoryNotFound,
    RepositoryTooLarge,
    RetriesExhausted,
    RunTimeout,
    SpeckitInitFailed,
    StateStoreError,
    UnexpectedChanges,
    UnknownAgent,
    UnknownAgentOption,
    UnsafeOutput,
    WorkspaceError,
    WorkspaceQuotaFailed,
    /// The forge or remote refused the token in a phase: `<phase>_permission_denied`.
    PermissionDenied(Phase),
    /// A git operation failed in a phase for another reason: `<phase>_failed`
    /// (`clone_failed`, `commit_failed`, `push_failed`).
    GitFailed(Phase),
    /// A code this version does not know, kept as it was read.
    Other(String),
}

/// The codes without a payload, with their text.
const FIXED: &[(ErrorCode, &str)] = &[
    (ErrorCode::AgentMisconfigured, "agent_misconfigured"),
    (ErrorCode::AgentPhaseFailed, "agent_phase_failed"),
    (ErrorCode::AgentSecretMissing, "agent_secret_missing"),
    (ErrorCode::AgentsFileInvalid, "agents_file_invalid"),
    (ErrorCode::AgentsFileUnreadable, "agents_file_unreadable"),
    (ErrorCode::BaseBranchMissing, "base_branch_missing"),
    (ErrorCode::BranchBusy, "branch_busy"),
    (ErrorCode::BudgetExceeded, "budget_exceeded"),
    (ErrorCode::CommitTooLarge, "commit_too_large"),
    (ErrorCode::ContainerCrashed, "container_crashed"),
    (ErrorCode::DiskQuotaExceeded, "disk_quota_exceeded"),
    (ErrorCode::DockerError, "docker_error"),
    (ErrorCode::DockerUnreachable, "docker_unreachable"),
    (ErrorCode::EgressSetupFailed, "egress_setup_failed"),
    (ErrorCode::EmptyRepository, "empty_repository"),
    (ErrorCode::ForgeError, "forge_error"),
    (ErrorCode::ForgeForbidden, "forge_forbidden"),
    (ErrorCode::ForgeNotFound, "forge_not_found"),
    (ErrorCode::ForgeTokenMissing, "forge_token_missing"),
    (ErrorCode::ForgeUnauthorized, "forge_unauthorized"),
    (ErrorCode::ForgeUnreachable, "forge_unreachable"),
    (ErrorCode::GitTimeout, "git_timeout"),
    (ErrorCode::ImageMissing, "image_missing"),
    (ErrorCode::InternalError, "internal_error"),
    (ErrorCode::InvalidBranchName, "invalid_branch_name"),
    (
        ErrorCode::InvalidFeatureDirectory,
        "invalid_feature_directory",
    ),
    (ErrorCode::InvalidRequest, "invalid_request"),
    (ErrorCode::PhaseOutputMissing, "phase_output_missing"),
    (ErrorCode::PhaseStalled, "phase_stalled"),
    (ErrorCode::PhaseTimeout, "phase_timeout"),
    (ErrorCode::PullRequestRejected, "pull_request_rejected"),
    (ErrorCode::PushRejected, "push_rejected"),
    (ErrorCode::QueueUnavailable, "queue_unavailable"),
    (ErrorCode::RepositoryNotFound, "repository_not_found"),
    (ErrorCode::RepositoryTooLarge, "repository_too_large"),
    (ErrorCode::RetriesExhausted, "retries_exhausted"),
    (ErrorCode::RunTimeout, "run_timeout"),
    (ErrorCode::SpeckitInitFailed, "speckit_init_failed"),
    (ErrorCode::StateStoreError, "state_store_error"),
    (ErrorCode::UnexpectedChanges, "unexpected_changes"),
    (ErrorCode::UnknownAgent, "unknown_agent"),
    (ErrorCode::UnknownAgentOption, "unknown_agent_option"),
    (ErrorCode::UnsafeOutput, "unsafe_output"),
    (ErrorCode::WorkspaceError, "workspace_error"),
    (ErrorCode::WorkspaceQuotaFailed, "workspace_quota_failed"),
];

const PERMISSION_DENIED: &str = "_permission_denied";
const FAILED: &str = "_failed";

impl ErrorCode {
    /// The code as stored and shown.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            ErrorCode::PermissionDenied(phase) => Cow::Owned(format!("{phase}{PERMISSION_DENIED}")),
            ErrorCode::GitFailed(phase) => Cow::Owned(format!("{phase}{FAILED}")),
            ErrorCode::Other(code) => Cow::Borrowed(code),
            fixed => Cow::Borrowed(
                FIXED
                    .iter()
                    .find(|(code, _)| code == fixed)
                    .map_or("internal_error", |(_, text)| text),
            ),
        }
    }

    /// Reads a stored code; anything unknown becomes [`ErrorCode::Other`].
    pub fn parse(text: &str) -> ErrorCode {
        if let Some((code, _)) = FIXED.iter().find(|(_, t)| *t == text) {
            return code.clone();
        }
        let phase_of = |suffix: &str| {
            text.strip_suffix(suffix)
                .and_then(|name| Phase::from_str(name).ok())
        };
        if let Some(phase) = phase_of(PERMISSION_DENIED) {
            return ErrorCode::PermissionDenied(phase);
        }
        if let Some(phase) = phase_of(FAILED) {
            return ErrorCode::GitFailed(phase);
        }
        ErrorCode::Other(text.to_owned())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&text))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself() {
        let mut all: Vec<ErrorCode> = FIXED.iter().map(|(code, _)| code.clone()).collect();
        for phase in Phase::ALL {
            all.push(ErrorCode::PermissionDenied(phase));
            all.push(ErrorCode::GitFailed(phase));
        }
        for code in all {
            let text = code.to_string();
            assert_eq!(ErrorCode::parse(&text), code, "{text}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn the_phase_codes_keep_their_historic_text() {
        assert_eq!(
            ErrorCode::GitFailed(Phase::Clone).to_string(),
            "clone_failed"
        );
        assert_eq!(
            ErrorCode::PermissionDenied(Phase::Push).to_string(),
            "push_permission_denied"
        );
        assert_eq!(
            ErrorCode::parse("commit_failed"),
            ErrorCode::GitFailed(Phase::Commit)
        );
    }

    #[test]
    fn an_unknown_code_survives_a_round_trip() {
        let code: ErrorCode = serde_json::from_str("\"quota_exhausted_elsewhere\"").unwrap();
        assert_eq!(
            code,
            ErrorCode::Other("quota_exhausted_elsewhere".to_owned())
        );
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            "\"quota_exhausted_elsewhere\""
        );
    }

    #[test]
    fn no_code_text_is_listed_twice() {
        let mut texts: Vec<&str> = FIXED.iter().map(|(_, t)| *t).collect();
        texts.sort_unstable();
        let before = texts.len();
        texts.dedup();
        assert_eq!(texts.len(), before);
    }
}
