//! What an agent phase leaves for a retry: the feature, its branch, the files `specify
//! init` wrote, and every file the commit would take as the phase left it. A retried run
//! restores the last good phase's checkpoint into its fresh clone instead of running the
//! phases again (`checkpoint.json`, an artifact of that phase).

use crate::phase::Phase;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `artifacts/<phase>/checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema_version: u32,
    pub phase: Phase,
    /// The feature directory, `specs/NNN-short-name`.
    pub feature: String,
    pub branch: String,
    #[serde(default)]
    pub init_files: Vec<String>,
    #[serde(default)]
    pub files: Vec<CheckpointFile>,
    /// Tracked files the phases deleted.
    #[serde(default)]
    pub deleted: Vec<String>,
}

/// One file as the phase left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub path: String,
    pub content_base64: String,
    #[serde(default)]
    pub executable: bool,
}

/// A checkpoint that cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint.json is not a checkpoint: {0}")]
    Json(#[from] serde_json::Error),
    #[error("checkpoint.json names {0:?}, which is not a plain path inside the repository")]
    Path(String),
}

impl CheckpointFile {
    pub fn new(path: &str, content: &[u8], executable: bool) -> Self {
        CheckpointFile {
            path: path.to_owned(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
            executable,
        }
    }
}

/// Relative, no `.`/`..`/empty segment, not in `.git`.
fn plain_path(path: &str) -> bool {
    !path.starts_with('/')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && path.split('/').next() != Some(".git")
}

impl Checkpoint {
    /// The text of the file at `path`, as the checkpoint holds it.
    pub fn text(&self, path: &str) -> Option<String> {
        let file = self.files.iter().find(|f| f.path == path)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&file.content_base64)
            .ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Records `answers` in the specification at `spec` (see
    /// [`crate::clarify::record_answers`]).
    pub fn record_answers(&mut self, spec: &str, answers: &[crate::clarify::Answer], date: &str) {
        let Some(text) = self.text(spec) else {
            return;
        };
        let answered = crate::clarify::record_answers(&text, answers, date);
        for file in self.files.iter_mut().filter(|f| f.path == spec) {
            *file = CheckpointFile::new(spec, answered.as_bytes(), file.executable);
        }
    }

    /// Reads a stored checkpoint, refusing any path a restore could write outside the
    /// worktree or into `.git`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let checkpoint: Checkpoint = serde_json::from_slice(bytes)?;
        let paths = checkpoint
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(checkpoint.deleted.iter().map(String::as_str))
            .chain(std::iter::once(checkpoint.feature.as_str()));
        for path in paths {
            if !plain_path(path) {
                return Err(CheckpointError::Path(path.to_owned()));
            }
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(path: &str) -> Checkpoint {
        Checkpoint {
            schema_version: 1,
            phase: Phase::Specify,
            feature: "specs/001-login".into(),
            branch: "001-login".into(),
            init_files: vec![],
            files: vec![CheckpointFile::new(path, b"# Spec\n", false)],
            deleted: vec![],
        }
    }

    #[test]
    fn a_checkpoint_round_trips() {
        let good = checkpoint("specs/001-login/spec.md");
        let bytes = serde_json::to_vec(&good).unwrap_or_default();
        assert_eq!(Checkpoint::from_json(&bytes).ok(), Some(good));
    }

    #[test]
    fn paths_outside_the_worktree_or_into_git_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "specs/../../x",
            ".git/hooks/pre-commit",
            "a//b",
        ] {
            let bytes = serde_json::to_vec(&checkpoint(bad)).unwrap_or_default();
            assert!(Checkpoint::from_json(&bytes).is_err(), "{bad}");
        }
    }
}
