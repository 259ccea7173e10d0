//! Reading what an agent phase wrote: its file, safely; a missing file; open questions.

use super::{blocking, json_bytes, store_failure, Failure, Step};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::clarify;
use specrun_core::state::{ArtifactRef, PhaseOutcome};
use specrun_core::{ErrorCode, Phase, RunStatus};
use specrun_sandbox::Workspace;

/// Spec Kit files larger than this are not read back.
const MAX_SPEC_FILE: u64 = 4 * 1024 * 1024;

/// Reads a file the agent wrote, as text, refusing symlinks; `None` when it is missing.
pub(crate) async fn read_output(
    workspace: &Workspace,
    phase: Phase,
    relative: &str,
    artifacts: &mut Vec<ArtifactRef>,
) -> Result<Option<String>, Failure> {
    let (workspace, path) = (workspace.clone(), relative.to_owned());
    let read = blocking(phase, move || {
        workspace.read_repo_file(&path, MAX_SPEC_FILE)
    })
    .await?;
    match read {
        Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(Failure {
            error: failure::error(
                phase,
                ErrorCode::UnsafeOutput,
                format!("{relative} could not be read safely: {e}"),
                "The agent wrote a symbolic link or an oversized file; check the phase's logs.",
            ),
            artifacts: std::mem::take(artifacts),
        }),
    }
}

/// The agent succeeded but did not write the phase's file.
pub(crate) fn output_missing(phase: Phase, file: &str, artifacts: Vec<ArtifactRef>) -> Failure {
    Failure {
        error: failure::error(
            phase,
            ErrorCode::PhaseOutputMissing,
            format!("the {phase} phase did not write {file}"),
            format!("Read the {phase} phase's logs for the agent's reason."),
        ),
        artifacts,
    }
}

/// When `text` holds `[NEEDS CLARIFICATION]` markers, stores the questions and stops.
pub(crate) async fn clarification_stop<T>(
    run: &Run,
    phase: Phase,
    file: &str,
    text: &str,
    artifacts: &mut Vec<ArtifactRef>,
) -> Result<Option<Step<T>>, Failure> {
    let questions = clarify::find_questions(text);
    if questions.is_empty() {
        return Ok(None);
    }
    let markdown = run
        .redactor
        .redact_bytes(clarify::questions_markdown(file, &questions).as_bytes());
    artifacts.push(
        run.artifacts
            .put_bytes(
                None,
                "clarifications.md",
                markdown,
                "text/markdown; charset=utf-8",
            )
            .await
            .map_err(store_failure(phase))?,
    );
    let json = run.redactor.redact_bytes(&json_bytes(
        &serde_json::json!({ "file": file, "questions": questions }),
    ));
    artifacts.push(
        run.artifacts
            .put_bytes(None, "clarifications.json", json, "application/json")
            .await
            .map_err(store_failure(phase))?,
    );
    let reason = format!("{file} has {} open question(s) marked [NEEDS CLARIFICATION]; answer them in the specification text and submit again (see artifacts/clarifications.md)", questions.len());
    Ok(Some(Step::Stop {
        outcome: PhaseOutcome {
            artifacts: std::mem::take(artifacts),
            message: Some(format!("{} open question(s) in {file}", questions.len())),
            ..Default::default()
        },
        status: RunStatus::NeedsClarification,
        reason,
    }))
}
