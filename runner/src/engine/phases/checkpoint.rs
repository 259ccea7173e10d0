//! Checkpoints, so that a retried run continues from its last good phase: after each
//! agent phase that succeeded, what the commit would take (the feature, `.specify/`, the
//! files `specify init` wrote, the profile's commit paths) is stored as that phase's
//! `checkpoint.json`; a retry hands the last one to its new job and writes it into the
//! fresh clone there, as the agent's user (the container is the sandbox: nothing the
//! checkpoint names can reach the host), instead of running those phases again.

use super::command::{require_success, run_command, Command};
use super::{blocking, Failure, Prepared, Specified};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::branch::BranchName;
use specrun_core::checkpoint::{Checkpoint, CheckpointFile};
use specrun_core::clarify;
use specrun_core::commit_scope::CommitScope;
use specrun_core::feature::FeatureDir;
use specrun_core::state::{
    ArtifactRef, PhaseOutcome, RecordedAnswer, Resume, RunError, CHECKPOINT_ARTIFACT,
};
use specrun_core::{ErrorCode, Phase};
use specrun_publish::{changes, git};
use specrun_sandbox::Job;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the new job finds the checkpoint, relative to the agent's HOME; the restore
/// removes it.
const RESTORE_FILE: &str = ".specrun-restore.json";

/// Writes the checkpoint's files into the worktree (the job's working directory),
/// refusing any path outside it or in `.git`, then `.specify/feature.json`.
const RESTORE_SCRIPT: &str = r#"
import base64, json, os, sys
source = os.path.join(os.environ["HOME"], sys.argv[1])
with open(source, encoding="utf-8") as fh:
    data = json.load(fh)
os.remove(source)
root = os.getcwd()
def target(rel):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        sys.exit(f"refusing to restore {rel!r}: not a plain path in the repository")
    return os.path.join(root, *parts)
for entry in data["files"]:
    path = target(entry["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(entry["content_base64"]))
    os.chmod(path, 0o755 if entry.get("executable") else 0o644)
for rel in data.get("deleted", []):
    try:
        os.remove(target(rel))
    except FileNotFoundError:
        pass
os.makedirs(os.path.join(root, ".specify"), exist_ok=True)
with open(os.path.join(root, ".specify", "feature.json"), "w", encoding="utf-8") as fh:
    json.dump({"feature_directory": data["feature"]}, fh)
print(f"restored {len(data['files'])} file(s) of {data['feature']} as the {data['phase']} phase left them")
"#;

/// Records `answers` in the checkpoint's specification, as Spec Kit's clarify step does.
fn record_answers(checkpoint: &mut Checkpoint, feature: &FeatureDir, answers: &[RecordedAnswer]) {
    let answers: Vec<clarify::Answer> = answers
        .iter()
        .map(|a| clarify::Answer {
            question: a.question.clone(),
            answer: a.answer.clone(),
        })
        .collect();
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let today = specrun_store::runs::now()
        .format(&format)
        .unwrap_or_default();
    checkpoint.record_answers(&feature.file("spec.md"), &answers, &today);
}

/// A retried run's checkpoint, read before its job exists.
pub(crate) struct Restore {
    pub resume: Resume,
    pub checkpoint: Checkpoint,
    /// The checkpoint as stored, handed to the job.
    json: String,
    feature: FeatureDir,
    branch: BranchName,
}

impl Restore {
    /// Reads the checkpoint `resume` names; `None` (logged) when it cannot be restored,
    /// and the run then starts over from specify.
    pub(crate) async fn load(run: &Run, resume: &Resume) -> Option<Restore> {
        let bytes = match run.store.get(&resume.checkpoint).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, key = %resume.checkpoint, "the checkpoint could not be read; running every phase again");
                return None;
            }
        };
        let parsed = Checkpoint::from_json(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|checkpoint| {
                let feature = FeatureDir::parse(&checkpoint.feature).map_err(|e| e.to_string())?;
                let branch = BranchName::parse(&checkpoint.branch).map_err(|e| e.to_string())?;
                Ok((checkpoint, feature, branch))
            });
        match parsed {
            Ok((mut checkpoint, feature, branch)) => {
                let json = match resume.answered {
                    true => {
                        record_answers(&mut checkpoint, &feature, &run.record.answers);
                        serde_json::to_string(&checkpoint).unwrap_or_default()
                    }
                    false => String::from_utf8_lossy(&bytes).into_owned(),
                };
                Some(Restore {
                    resume: resume.clone(),
                    checkpoint,
                    json,
                    feature,
                    branch,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %resume.checkpoint, "the checkpoint cannot be restored; running every phase again");
                None
            }
        }
    }

    /// The files the job's HOME gets.
    pub(crate) fn home_files(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(RESTORE_FILE.to_owned(), self.json.clone())])
    }

    /// What the restored phases made.
    pub(crate) fn specified(&self) -> Specified {
        Specified {
            feature: self.feature.clone(),
            branch: self.branch.clone(),
            init_files: self.checkpoint.init_files.clone(),
        }
    }

    /// Writes the checkpoint into the clone, in the job; the command's logs are clone's.
    pub(crate) async fn apply(
        &self,
        run: &Run,
        job: &dyn Job,
    ) -> Result<Vec<ArtifactRef>, Failure> {
        let command = Command {
            phase: Phase::Clone,
            stem: "restore",
            argv: vec![
                "python3".to_owned(),
                "-c".to_owned(),
                RESTORE_SCRIPT.to_owned(),
                RESTORE_FILE.to_owned(),
            ],
            env: job.base_env(),
            limit: Duration::from_secs(120),
            stall_after: None,
        };
        let done = run_command(run, job, command).await?;
        require_success(run, Phase::Clone, done, ErrorCode::WorkspaceError)
    }
}

/// After an agent phase that succeeded: stores its checkpoint among the phase's
/// artifacts. A checkpoint that cannot be made is logged, not a failure: only a retry
/// needs it, and without it the retry runs the phase again.
pub(crate) async fn keep(
    run: &Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
    phase: Phase,
    outcome: &mut PhaseOutcome,
) {
    match save(run, prepared, specified, phase).await {
        Ok(artifact) => outcome.artifacts.push(artifact),
        Err(e) => {
            tracing::warn!(%phase, error = %e.message, "no checkpoint for this phase; a retry runs it again")
        }
    }
}

async fn save(
    run: &Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
    phase: Phase,
) -> Result<ArtifactRef, RunError> {
    let scope = CommitScope::new(
        prepared
            .agent
            .profile
            .commit_paths
            .iter()
            .map(String::as_str),
        specified.feature.as_str(),
        specified.init_files.clone(),
    );
    let workspace = prepared.job.workspace().clone();
    let limits = run.config.commit_limits;
    let repository = run.record.repository.clone();
    // The agent is frozen between commands (the port's contract) and every read is
    // link-safe (`safe_fs`), as for the commit.
    let changes = blocking(phase, move || {
        let repo = git::open(&workspace.git, &workspace.repo)
            .map_err(|e| failure::git(phase, &e, &repository))?;
        changes::collect(&repo, &workspace.repo, &scope, limits)
            .map_err(|e| failure::changes(phase, &e, &repository))
    })
    .await??;
    let mut checkpoint = Checkpoint {
        schema_version: 1,
        phase,
        feature: specified.feature.as_str().to_owned(),
        branch: specified.branch.to_string(),
        init_files: specified.init_files.clone(),
        files: Vec::new(),
        deleted: Vec::new(),
    };
    for staged in changes.staged {
        match staged {
            git::Staged::Write {
                path,
                content,
                executable,
            } => checkpoint
                .files
                .push(CheckpointFile::new(&path, &content, executable)),
            git::Staged::Delete { path } => checkpoint.deleted.push(path),
        }
    }
    let bytes = serde_json::to_vec(&checkpoint).unwrap_or_default();
    // A secret the agent wrote is never stored; masked, the files could not be restored.
    if run.redactor.redact_bytes(&bytes) != bytes {
        return Err(failure::error(
            phase,
            ErrorCode::UnsafeOutput,
            "the phase's output holds a secret",
            "",
        ));
    }
    run.artifacts
        .put_bytes(Some(phase), CHECKPOINT_ARTIFACT, bytes, "application/json")
        .await
        .map_err(|e| failure::store(phase, &e))
}
