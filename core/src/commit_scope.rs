//! Which of the agent's changes specrun commits. The agent reads untrusted text, so what it
//! wrote outside the places Spec Kit's phases write (its feature directory, `.specify/`,
//! the files `specify init` created) is not published unless an operator said so: it is
//! listed and left out, or it fails the run, per agent profile.
//!
//! Patterns are relative to the repository root: `dir/` covers everything below `dir`,
//! anything else names one file, and `{feature}` stands for the run's feature directory.
//! A few paths run code or redirect content when someone merely checks the branch out or
//! opens a pull request (`.github/workflows/`, `.gitmodules`): those are committed only when
//! a pattern names them explicitly, however broad the other patterns are.

use std::fmt;

/// The patterns used when a profile sets none.
pub const DEFAULT_PATTERNS: [&str; 2] = ["{feature}/", ".specify/"];

/// Paths committed only when a pattern itself starts with them.
const GUARDED: [&str; 2] = [".github/workflows/", ".gitmodules"];

/// What happens to a change outside the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unexpected {
    /// Listed in the commit's artifact and not committed.
    #[default]
    LeaveOut,
    /// The run fails with `unexpected_changes`.
    Fail,
}

impl Unexpected {
    /// `leave_out` or `fail`.
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        match text {
            "leave_out" => Ok(Unexpected::LeaveOut),
            "fail" => Ok(Unexpected::Fail),
            other => Err(ScopeError::Unexpected(other.to_owned())),
        }
    }
}

/// Bounds on what one commit may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitLimits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for CommitLimits {
    fn default() -> Self {
        CommitLimits {
            max_files: 2_000,
            max_file_bytes: 4 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A pattern an operator wrote that cannot be a path inside the repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("commit path {0:?} must be relative to the repository root, without '.', '..', '.git' or empty parts")]
    Pattern(String),
    #[error("unexpected_changes {0:?} must be leave_out or fail")]
    Unexpected(String),
}

/// One allowed path: a directory prefix (ends with `/`) or a single file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match self.0.strip_suffix('/') {
            Some(dir) => path
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/')),
            None => path == self.0,
        }
    }

    /// True when this pattern names `guard` itself or something below it.
    fn names(&self, guard: &str) -> bool {
        self.0.starts_with(guard)
    }
}

/// Checks a pattern's shape, `{feature}` allowed as a whole first part.
pub fn check_pattern(pattern: &str) -> Result<(), ScopeError> {
    let body = pattern.strip_suffix('/').unwrap_or(pattern);
    let fine = !body.is_empty()
        && body.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part != ".git"
                && !part.contains('\\')
                && !part.chars().any(char::is_control)
        });
    if fine {
        Ok(())
    } else {
        Err(ScopeError::Pattern(pattern.to_owned()))
    }
}

/// Why a changed path is not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    /// Not under any of the profile's commit paths.
    OutsideScope,
    /// Under `.github/workflows/` or `.gitmodules`, which no pattern names explicitly.
    Guarded,
    /// A symbolic link: never committed, whatever it points at.
    Symlink,
    /// A FIFO, socket or device node.
    SpecialFile,
    /// A `.git` file or directory below the root (a nested repository or a gitlink).
    NestedGit,
    /// A name that is not UTF-8.
    UnreadableName,
}

impl LeftOut {
    /// The reason as it appears in commit.json.
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::OutsideScope => "outside_commit_paths",
            LeftOut::Guarded => "guarded_path",
            LeftOut::Symlink => "symbolic_link",
            LeftOut::SpecialFile => "special_file",
            LeftOut::NestedGit => "nested_git",
            LeftOut::UnreadableName => "non_utf8_name",
        }
    }

    /// True for what only a hostile agent leaves: the commit is refused, not trimmed,
    /// when the profile fails on unexpected changes.
    pub fn is_scope(self) -> bool {
        matches!(self, LeftOut::OutsideScope | LeftOut::Guarded)
    }
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The paths one run may commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitScope {
    patterns: Vec<Pattern>,
}

impl CommitScope {
    /// The scope of a run whose feature directory is `feature`, from the profile's
    /// patterns (checked when the profile was read) and the files `specify init` created.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
        feature: &str,
        init_files: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut patterns: Vec<Pattern> = patterns
            .into_iter()
            .map(|p| Pattern(p.replace("{feature}", feature)))
            .collect();
        patterns.extend(init_files.into_iter().map(Pattern));
        CommitScope { patterns }
    }

    /// Whether a changed path is committed, and if not why.
    pub fn decide(&self, path: &str) -> Result<(), LeftOut> {
        let matching: Vec<&Pattern> = self.patterns.iter().filter(|p| p.matches(path)).collect();
        if matching.is_empty() {
            return Err(LeftOut::OutsideScope);
        }
        for guard in GUARDED {
            let guarded = match guard.strip_suffix('/') {
                Some(dir) => path.starts_with(dir) && path[dir.len()..].starts_with('/'),
                None => path == guard,
            };
            if guarded && !matching.iter().any(|p| p.names(guard)) {
                return Err(LeftOut::Guarded);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_scope(init: &[&str]) -> CommitScope {
        CommitScope::new(
            DEFAULT_PATTERNS,
            "specs/001-login",
            init.iter().map(|s| (*s).to_owned()),
        )
    }

    #[test]
    fn the_feature_directory_and_spec_kit_files_are_committed() {
        let scope = default_scope(&[".agents/skills/speckit-plan/SKILL.md"]);
        assert_eq!(scope.decide("specs/001-login/spec.md"), Ok(()));
        assert_eq!(scope.decide("specs/001-login/contracts/api.md"), Ok(()));
        assert_eq!(scope.decide(".specify/memory/constitution.md"), Ok(()));
        assert_eq!(scope.decide(".agents/skills/speckit-plan/SKILL.md"), Ok(()));
    }

    #[test]
    fn everything_else_is_left_out() {
        let scope = default_scope(&[".agents/skills/speckit-plan/SKILL.md"]);
        for path in [
            "specs/002-other/spec.md",
            "specs/001-login-evil/spec.md",
            "specs/001-login",
            "build.sh",
            "src/main.rs",
            ".agents/skills/evil/SKILL.md",
            ".specifyx/a",
        ] {
            assert_eq!(scope.decide(path), Err(LeftOut::OutsideScope), "{path}");
        }
    }

    #[test]
    fn workflows_need_a_pattern_that_names_them() {
        let broad = CommitScope::new([".github/", "{feature}/"], "specs/001-x", []);
        assert_eq!(broad.decide(".github/CODEOWNERS"), Ok(()));
        assert_eq!(
            broad.decide(".github/workflows/ci.yml"),
            Err(LeftOut::Guarded)
        );
        let explicit = CommitScope::new([".github/workflows/"], "specs/001-x", []);
        assert_eq!(explicit.decide(".github/workflows/ci.yml"), Ok(()));
        let file = CommitScope::new([".gitmodules"], "specs/001-x", []);
        assert_eq!(file.decide(".gitmodules"), Ok(()));
        let other = CommitScope::new(["docs/"], "specs/001-x", []);
        assert_eq!(other.decide(".gitmodules"), Err(LeftOut::OutsideScope));
    }

    #[test]
    fn patterns_must_stay_inside_the_repository() {
        for good in ["{feature}/", ".specify/", "docs/adr/", "README.md"] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "", "/", "/etc/", "../x", "a/../b", ".git/", "a//b", "a\\b", "./x",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Unexpected::parse("fail"), Ok(Unexpected::Fail));
        assert!(Unexpected::parse("ignore").is_err());
    }
}
