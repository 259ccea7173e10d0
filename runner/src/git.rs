//! Git on the host side of the workspace, with git2: clone the base branch, find what the
//! agent changed, commit it on the feature branch, push. The git directory lives outside
//! the agent's reach (mounted read-only into the container), the remote URL is always the
//! one the run was given, and credentials exist only inside the credentials callback.
//! These functions block: call them from `spawn_blocking`.

use git2::{
    Cred, CredentialType, Direction, FetchOptions, IndexAddOption, PushOptions, RemoteCallbacks,
    Repository, Signature, Status, StatusOptions,
};
use std::path::Path;

/// What went wrong with git, classified so the run can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("the remote refused the credentials or gave no access: {0}")]
    Permission(String),
    #[error("the repository does not exist on the remote or is not visible: {0}")]
    NotFound(String),
    #[error("the base branch {0:?} does not exist on the remote")]
    BaseBranchMissing(String),
    #[error("the remote has no branches yet; push an initial commit first")]
    EmptyRemote,
    #[error("the remote rejected the push of {branch}: {reason}")]
    PushRejected { branch: String, reason: String },
    #[error("git failed while {doing}: {source}")]
    Other {
        doing: &'static str,
        #[source]
        source: git2::Error,
    },
}

fn other(doing: &'static str) -> impl FnOnce(git2::Error) -> GitError {
    move |source| GitError::Other { doing, source }
}

/// Sorts a transport error into permission, not-found or other.
fn classify(doing: &'static str, e: git2::Error) -> GitError {
    let text = e.message().to_owned();
    let lower = text.to_lowercase();
    if e.code() == git2::ErrorCode::Auth
        || lower.contains("401")
        || lower.contains("403")
        || lower.contains("authentication")
        || lower.contains("too many redirects or authentication replays")
    {
        GitError::Permission(text)
    } else if lower.contains("404")
        || lower.contains("not found")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("failed to resolve path")
    {
        GitError::NotFound(text)
    } else {
        GitError::Other { doing, source: e }
    }
}

/// Callbacks that answer a credential request once with the token, if there is one.
fn callbacks(token: Option<&str>) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    let mut asked = false;
    callbacks.credentials(move |_url, _user, allowed| {
        let token = match token {
            Some(token) if !asked && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => token,
            _ => {
                return Err(git2::Error::from_str(
                    "authentication failed: no usable credentials for this remote",
                ))
            }
        };
        asked = true;
        Cred::userpass_plaintext("x-access-token", token)
    });
    callbacks
}

/// Opens the run's repository: the git directory and the worktree are separate paths.
pub fn open(git_dir: &Path, worktree: &Path) -> Result<Repository, GitError> {
    let repo = Repository::open_bare(git_dir).map_err(other("opening the run's repository"))?;
    repo.set_workdir(worktree, false)
        .map_err(other("attaching the worktree"))?;
    Ok(repo)
}

/// The base branch a clone ended up on and its commit.
#[derive(Debug, Clone)]
pub struct Cloned {
    pub base_branch: String,
    pub base_commit: String,
}

/// Fetches `base_branch` (the remote's default branch when None) from `url` into a fresh
/// repository at `git_dir` and checks it out into `worktree`.
pub fn clone(
    url: &str,
    base_branch: Option<&str>,
    git_dir: &Path,
    worktree: &Path,
    token: Option<&str>,
) -> Result<Cloned, GitError> {
    let repo = Repository::init_bare(git_dir).map_err(other("creating the run's repository"))?;
    repo.config()
        .and_then(|mut c| c.set_bool("core.bare", false))
        .map_err(other("configuring the run's repository"))?;
    let repo = open(git_dir, worktree)?;
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let connection = remote
        .connect_auth(Direction::Fetch, Some(callbacks(token)), None)
        .map_err(|e| classify("connecting to the remote", e))?;
    let base = match base_branch {
        Some(branch) => branch.to_owned(),
        None => match connection.default_branch() {
            Ok(name) => String::from_utf8_lossy(&name)
                .trim_start_matches("refs/heads/")
                .to_owned(),
            Err(_) => return Err(GitError::EmptyRemote),
        },
    };
    let remote_has_base = connection
        .list()
        .map_err(other("listing the remote's branches"))?
        .iter()
        .any(|head| head.name() == format!("refs/heads/{base}"));
    drop(connection);
    if !remote_has_base {
        return Err(GitError::BaseBranchMissing(base));
    }
    let tracking = format!("refs/remotes/origin/{base}");
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks(token));
    remote
        .fetch(
            &[format!("+refs/heads/{base}:{tracking}")],
            Some(&mut fetch),
            None,
        )
        .map_err(|e| classify("fetching the base branch", e))?;
    let commit = repo
        .find_reference(&tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(other("reading the fetched base branch"))?;
    repo.branch(&base, &commit, true)
        .map_err(other("creating the local base branch"))?;
    repo.set_head(&format!("refs/heads/{base}"))
        .map_err(other("checking out the base branch"))?;
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .map_err(other("checking out the base branch"))?;
    Ok(Cloned {
        base_branch: base,
        base_commit: commit.id().to_string(),
    })
}

/// One changed path in the worktree, untracked files included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: &'static str,
}

/// Everything that differs from the checked-out commit, ignoring what `.gitignore` ignores.
pub fn changes(repo: &Repository) -> Result<Vec<Change>, GitError> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo
        .statuses(Some(&mut options))
        .map_err(other("reading the worktree's status"))?;
    Ok(statuses
        .iter()
        .map(|entry| Change {
            path: String::from_utf8_lossy(entry.path_bytes()).into_owned(),
            kind: describe(entry.status()),
        })
        .collect())
}

fn describe(status: Status) -> &'static str {
    if status.intersects(Status::WT_NEW | Status::INDEX_NEW) {
        "added"
    } else if status.intersects(Status::WT_DELETED | Status::INDEX_DELETED) {
        "deleted"
    } else if status.intersects(Status::WT_RENAMED | Status::INDEX_RENAMED) {
        "renamed"
    } else {
        "modified"
    }
}

/// Commits every change on `branch` (created from the checked-out commit) and returns the
/// commit id. HEAD moves to the new branch.
pub fn commit_all(
    repo: &Repository,
    branch: &str,
    message: &str,
    author: &Signature<'_>,
) -> Result<String, GitError> {
    let mut index = repo.index().map_err(other("opening the index"))?;
    index
        .add_all(["*"], IndexAddOption::DEFAULT, None)
        .map_err(other("staging the changes"))?;
    index
        .update_all(["*"], None)
        .map_err(other("staging deletions"))?;
    index.write().map_err(other("writing the index"))?;
    let tree_id = index.write_tree().map_err(other("writing the tree"))?;
    let tree = repo.find_tree(tree_id).map_err(other("reading the tree"))?;
    let parent = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(other("reading the base commit"))?;
    let refname = format!("refs/heads/{branch}");
    let id = repo
        .commit(None, author, author, message, &tree, &[&parent])
        .map_err(other("creating the commit"))?;
    repo.reference(&refname, id, true, "specrun: feature branch")
        .map_err(other("creating the feature branch"))?;
    repo.set_head(&refname)
        .map_err(other("switching to the feature branch"))?;
    Ok(id.to_string())
}

/// A short report of what the commit changed: per-file status and line counts.
pub fn diff_summary(repo: &Repository, commit: &str) -> Result<String, GitError> {
    let oid = git2::Oid::from_str(commit).map_err(other("reading the commit id"))?;
    let commit = repo.find_commit(oid).map_err(other("reading the commit"))?;
    let parent = commit.parent(0).map_err(other("reading the base commit"))?;
    let (old, new) = (
        parent.tree().map_err(other("reading the base tree"))?,
        commit.tree().map_err(other("reading the new tree"))?,
    );
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(other("diffing the commit"))?;
    let stats = diff.stats().map_err(other("counting the diff"))?;
    let mut out = format!(
        "{} file(s) changed, {} insertion(s), {} deletion(s)\n\n",
        stats.files_changed(),
        stats.insertions(),
        stats.deletions()
    );
    for delta in diff.deltas() {
        let path = delta
            .new_file()
            .path()
            .or_else(|| delta.old_file().path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let code = match delta.status() {
            git2::Delta::Added => 'A',
            git2::Delta::Deleted => 'D',
            git2::Delta::Renamed => 'R',
            _ => 'M',
        };
        out.push_str(&format!("{code}\t{path}\n"));
    }
    Ok(out)
}

/// The trailer that marks a commit as specrun's own.
pub const RUN_TRAILER: &str = "Specrun-Run-Id:";

/// What a push did to the remote branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The branch did not exist on the remote.
    Created,
    /// The branch held an earlier specrun commit, replaced (with a lease) by this one.
    Replaced { previous: String },
    /// An earlier attempt of the same run had pushed already (its runner died before
    /// recording it): the branch is left as it is, so a run never pushes twice.
    AlreadyPushed { tip: String },
}

/// The run a commit message names in its [`RUN_TRAILER`], if any.
pub fn run_of(message: &str) -> Option<&str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(RUN_TRAILER))
        .map(str::trim)
}

/// The commit `branch` points at on the remote, if the branch exists.
fn remote_tip(
    repo: &Repository,
    url: &str,
    branch: &str,
    token: Option<&str>,
) -> Result<Option<git2::Oid>, GitError> {
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let connection = remote
        .connect_auth(Direction::Push, Some(callbacks(token)), None)
        .map_err(|e| classify("connecting to the remote", e))?;
    let refname = format!("refs/heads/{branch}");
    let tip = connection
        .list()
        .map_err(other("listing the remote's branches"))?
        .iter()
        .find(|head| head.name() == refname)
        .map(|head| head.oid());
    Ok(tip)
}

/// The run whose commit the remote's `tip` is, when specrun made it (it carries the run
/// trailer); `None` for anyone else's commit.
fn specrun_run_of(
    repo: &Repository,
    url: &str,
    branch: &str,
    tip: git2::Oid,
    token: Option<&str>,
) -> Result<Option<String>, GitError> {
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks(token));
    let tracking = format!("refs/specrun/remote/{branch}");
    remote
        .fetch(
            &[format!("+refs/heads/{branch}:{tracking}")],
            Some(&mut fetch),
            None,
        )
        .map_err(|e| classify("fetching the existing branch", e))?;
    let commit = repo
        .find_commit(tip)
        .map_err(other("reading the existing branch"))?;
    Ok(run_of(commit.message().unwrap_or_default()).map(str::to_owned))
}

/// Pushes `branch` to `url` (never to a URL read from the repository's configuration).
/// A branch that already exists is replaced only when its tip is specrun's own commit,
/// and only if it still is right before the push (a lease); otherwise the push is refused.
/// When the tip is already `run_id`'s own commit, nothing is pushed.
pub fn push(
    repo: &Repository,
    url: &str,
    branch: &str,
    run_id: &str,
    token: Option<&str>,
) -> Result<Pushed, GitError> {
    let rejected = |reason: String| GitError::PushRejected {
        branch: branch.to_owned(),
        reason,
    };
    let existing = remote_tip(repo, url, branch, token)?;
    if let Some(tip) = existing {
        match specrun_run_of(repo, url, branch, tip, token)? {
            None => {
                return Err(rejected(format!(
                    "the branch already exists on the remote with commits specrun did not make (tip {tip}); specrun only replaces branches it created"
                )))
            }
            Some(run) if run == run_id => {
                return Ok(Pushed::AlreadyPushed {
                    tip: tip.to_string(),
                })
            }
            Some(_) => {}
        }
        if remote_tip(repo, url, branch, token)? != Some(tip) {
            return Err(rejected(
                "the branch moved on the remote while specrun was pushing; retry the run"
                    .to_owned(),
            ));
        }
    }
    let force = if existing.is_some() { "+" } else { "" };
    send(
        repo,
        url,
        &format!("{force}refs/heads/{branch}:refs/heads/{branch}"),
        branch,
        token,
    )?;
    Ok(match existing {
        Some(previous) => Pushed::Replaced {
            previous: previous.to_string(),
        },
        None => Pushed::Created,
    })
}

fn send(
    repo: &Repository,
    url: &str,
    refspec: &str,
    branch: &str,
    token: Option<&str>,
) -> Result<(), GitError> {
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let mut rejection: Option<String> = None;
    let mut callbacks = callbacks(token);
    callbacks.push_update_reference(|_refname, status| {
        if let Some(message) = status {
            rejection = Some(message.to_owned());
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    let pushed = remote.push(&[refspec], Some(&mut options));
    drop(options);
    match (pushed, rejection) {
        (Err(e), _) => match classify("pushing the feature branch", e) {
            GitError::Other { source, .. } => Err(GitError::PushRejected {
                branch: branch.to_owned(),
                reason: source.message().to_owned(),
            }),
            classified => Err(classified),
        },
        (Ok(()), Some(reason)) => Err(GitError::PushRejected {
            branch: branch.to_owned(),
            reason,
        }),
        (Ok(()), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_trailer_names_the_run() {
        let message = "docs(spec): add\n\nGenerated by specrun.\n\nSpecrun-Run-Id: 01a2-b3\n";
        assert_eq!(run_of(message), Some("01a2-b3"));
        assert_eq!(run_of("fix: typo\n\nSigned-off-by: someone\n"), None);
    }
}
