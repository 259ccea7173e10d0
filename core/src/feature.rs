//! The feature directory the specify phase created (`specs/NNN-short-name`), read from the
//! agent's `.specify/feature.json`. The agent wrote that file, so it is checked like input.

use crate::branch::BranchName;
use serde::Deserialize;

/// A relative path inside the repository, such as `specs/003-user-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDir(String);

/// Why a feature directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(".specify/feature.json is not valid JSON with a \"feature_directory\" string: {0}")]
    Json(#[from] serde_json::Error),
    #[error("feature directory {0:?} must be a relative path inside the repository without '..'")]
    Path(String),
    #[error("feature directory {0:?} is not specs/NNN-short-name, where Spec Kit puts a feature")]
    Layout(String),
    #[error("feature directory {dir:?} does not give a usable branch name: {reason}")]
    Branch { dir: String, reason: String },
}

#[derive(Deserialize)]
struct FeatureJson {
    feature_directory: String,
}

impl FeatureDir {
    /// Reads `.specify/feature.json` as Spec Kit writes it.
    pub fn from_feature_json(bytes: &[u8]) -> Result<Self, FeatureError> {
        let parsed: FeatureJson = serde_json::from_slice(bytes)?;
        Self::parse(&parsed.feature_directory)
    }

    pub fn parse(dir: &str) -> Result<Self, FeatureError> {
        let trimmed = dir.trim().trim_start_matches("./").trim_end_matches('/');
        let well_formed = !trimmed.is_empty()
            && !trimmed.starts_with('/')
            && trimmed.len() <= 255
            && trimmed
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".." && part != ".git")
            && trimmed.chars().all(|c| !c.is_control() && c != '\\');
        if well_formed {
            Ok(FeatureDir(trimmed.to_owned()))
        } else {
            Err(FeatureError::Path(dir.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component, `NNN-short-name`: Spec Kit's branch naming.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The branch a run publishes to when the request names none.
    pub fn branch_name(&self) -> Result<BranchName, FeatureError> {
        BranchName::parse(self.name()).map_err(|e| FeatureError::Branch {
            dir: self.0.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks that this is where Spec Kit puts a feature: `specs/NNN-short-name`
    /// (three or more digits, a dash, a name), so an agent cannot name another part of
    /// the repository as its feature.
    pub fn require_spec_kit_layout(&self) -> Result<(), FeatureError> {
        let name = self.0.strip_prefix("specs/").filter(|n| !n.contains('/'));
        let spec_kit = name.is_some_and(|name| {
            let digits = name.chars().take_while(char::is_ascii_digit).count();
            let rest = &name[digits..];
            digits >= 3
                && rest.len() > 1
                && rest.starts_with('-')
                && rest[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
        if spec_kit {
            Ok(())
        } else {
            Err(FeatureError::Layout(self.0.clone()))
        }
    }

    /// A path of a file inside this directory.
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spec_kit_feature_json() {
        let dir = FeatureDir::from_feature_json(br#"{"feature_directory": "specs/003-user-auth"}"#);
        let dir = dir.ok();
        assert_eq!(dir.as_ref().map(|d| d.name()), Some("003-user-auth"));
        assert_eq!(
            dir.and_then(|d| d.branch_name().ok()).map(|b| b.refname()),
            Some("refs/heads/003-user-auth".to_owned())
        );
    }

    #[test]
    fn refuses_paths_leaving_the_repository() {
        for bad in [
            "/etc",
            "../x",
            "specs/../../x",
            "",
            "specs/.git",
            "a\\b",
            "specs//x",
        ] {
            assert!(FeatureDir::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FeatureDir::from_feature_json(b"{}").is_err());
        assert!(FeatureDir::from_feature_json(b"not json").is_err());
    }

    #[test]
    fn only_spec_kit_feature_directories_are_features() {
        for good in ["specs/001-login", "specs/1234-a", "specs/20250101-120000-x"] {
            let dir = FeatureDir::parse(good).ok();
            assert!(
                dir.is_some_and(|d| d.require_spec_kit_layout().is_ok()),
                "{good}"
            );
        }
        for bad in [
            "src",
            "specs",
            "specs/01-x",
            "specs/001",
            "specs/001-",
            "specs/001-x/sub",
            ".github/workflows",
            "specs/abc-x",
        ] {
            let dir = FeatureDir::parse(bad).ok();
            assert!(
                dir.is_none_or(|d| d.require_spec_kit_layout().is_err()),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_name_git_refuses_is_not_a_branch() {
        let dir = FeatureDir::parse("specs/001-a..b").ok();
        assert!(dir.map(|d| d.branch_name().is_err()).unwrap_or(false));
    }
}
