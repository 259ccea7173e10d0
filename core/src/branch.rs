//! Branch names, checked against git's `check-ref-format` rules before any git call sees
//! them.

use std::fmt;

/// A branch name that git accepts under `refs/heads/` and that cannot be read as an option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchName(String);

/// Why a branch name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBranchName(&'static str);

const MAX_LEN: usize = 200;

impl BranchName {
    pub fn parse(name: &str) -> Result<Self, InvalidBranchName> {
        let bad = |why| Err(InvalidBranchName(why));
        if name.is_empty() {
            return bad("is empty");
        }
        if name.len() > MAX_LEN {
            return bad("is longer than 200 characters");
        }
        if !name.chars().all(|c| c.is_ascii_graphic()) {
            return bad("may only hold printable ASCII characters without spaces");
        }
        if name.starts_with('-') {
            return bad("may not start with '-'");
        }
        if name == "@" || name == "HEAD" {
            return bad("may not be '@' or 'HEAD'");
        }
        if name.contains("..") || name.contains("@{") || name.contains("//") {
            return bad("may not contain '..', '@{' or '//'");
        }
        if name.chars().any(|c| "~^:?*[\\".contains(c)) {
            return bad("may not contain any of ~ ^ : ? * [ \\");
        }
        if name.starts_with('/') || name.ends_with('/') || name.ends_with('.') {
            return bad("may not start or end with '/' or end with '.'");
        }
        if name
            .split('/')
            .any(|part| part.starts_with('.') || part.ends_with(".lock"))
        {
            return bad("may not have a component starting with '.' or ending with '.lock'");
        }
        Ok(BranchName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full ref, `refs/heads/<name>`.
    pub fn refname(&self) -> String {
        format!("refs/heads/{}", self.0)
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_kit_names() {
        for ok in [
            "001-user-auth",
            "main",
            "feature/x.y",
            "20260319-143022-auth",
            "a_b",
        ] {
            assert!(BranchName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_git_refuses() {
        for bad in [
            "",
            "-x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "/a",
            "a/",
            "a.",
            "a//b",
            ".hidden",
            "x/.y",
            "a.lock",
            "a@{1}",
            "@",
            "HEAD",
            "é",
            "a\u{7f}",
            "tab\there",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(BranchName::parse(&"a".repeat(201)).is_err());
    }
}
