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
        if name == "@" || is_special_head(name) {
            return bad("may not be '@', 'HEAD' or another of git's *_HEAD names");
        }
        if name.starts_with("refs/") {
            // The caller gives a branch, which specrun turns into `refs/heads/<name>`:
            // `refs/heads/main` would become `refs/heads/refs/heads/main`.
            return bad("may not start with 'refs/': give the branch (main), not its ref");
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

/// `HEAD` and the names git gives its own pseudo-refs (`FETCH_HEAD`, `ORIG_HEAD`, ...):
/// a branch so named is read as the pseudo-ref by most git commands.
fn is_special_head(name: &str) -> bool {
    name == "HEAD"
        || name.strip_suffix("_HEAD").is_some_and(|stem| {
            !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
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
            "head",
            "my_HEAD-x",
            "_HEAD-ok",
            "feature/refs/x",
            "refsx/y",
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
            "FETCH_HEAD",
            "ORIG_HEAD",
            "CHERRY_PICK_HEAD",
            "refs/heads/main",
            "refs/tags/v1",
            "refs/",
            "é",
            "a\u{7f}",
            "tab\there",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(BranchName::parse(&"a".repeat(201)).is_err());
    }
}
