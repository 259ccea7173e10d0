//! Git on the host side of the workspace, with git2: clone the base branch, find what the
//! agent changed, commit it on the feature branch, push. The git directory lives outside
//! the agent's reach (mounted read-only into the container), the remote URL is always the
//! one the run was given, and credentials exist only inside the credentials callback.
//! These functions block: call them from `spawn_blocking`.

pub use git2::Signature;
use git2::{
    Cred, CredentialType, Direction, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository,
};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

/// When a git operation must be done by, and how large a fetch may grow.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub deadline: Instant,
    pub limit: Duration,
    pub max_fetch_bytes: Option<u64>,
}

impl Bounds {
    /// `limit` from now, with no size bound.
    pub fn within(limit: Duration) -> Self {
        Bounds {
            deadline: Instant::now() + limit,
            limit,
            max_fetch_bytes: None,
        }
    }
}

/// Why a fetch stopped itself, so the error says so instead of "user cancelled".
#[derive(Debug, Clone, Copy, Default)]
enum Stopped {
    #[default]
    No,
    Late,
    Large(u64),
}

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
    #[error("git did not finish {doing} within {limit:?}")]
    TimedOut {
        doing: &'static str,
        limit: std::time::Duration,
    },
    #[error("the repository is larger than the workspace's {limit} bytes (fetched {fetched} bytes before stopping)")]
    TooLarge { limit: u64, fetched: u64 },
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

/// Credentials callbacks that also stop a fetch past its deadline or size bound.
fn bounded_callbacks<'a>(
    token: Option<&'a str>,
    bounds: Bounds,
    stopped: &'a Cell<Stopped>,
) -> RemoteCallbacks<'a> {
    let mut callbacks = callbacks(token);
    callbacks.transfer_progress(move |progress| {
        let fetched = progress.received_bytes() as u64;
        if Instant::now() > bounds.deadline {
            stopped.set(Stopped::Late);
            return false;
        }
        match bounds.max_fetch_bytes {
            Some(max) if fetched > max => {
                stopped.set(Stopped::Large(fetched));
                false
            }
            _ => true,
        }
    });
    callbacks
}

/// The error of a fetch that stopped itself, or the transport's own.
fn fetch_error(
    doing: &'static str,
    e: git2::Error,
    stopped: &Cell<Stopped>,
    bounds: Bounds,
) -> GitError {
    match (stopped.get(), bounds.max_fetch_bytes) {
        (Stopped::Late, _) => GitError::TimedOut {
            doing,
            limit: bounds.limit,
        },
        (Stopped::Large(fetched), Some(limit)) => GitError::TooLarge { limit, fetched },
        _ => out_of_space(&e, bounds).unwrap_or_else(|| classify(doing, e)),
    }
}

/// A write that failed because the workspace's quota is full: the repository is larger
/// than the workspace may hold.
fn out_of_space(e: &git2::Error, bounds: Bounds) -> Option<GitError> {
    e.message()
        .contains("No space left")
        .then(|| GitError::TooLarge {
            limit: bounds.max_fetch_bytes.unwrap_or_default(),
            fetched: 0,
        })
}

/// The git mode of a regular file.
/// The author and committer of a commit made now.
pub fn signature(name: &str, email: &str) -> Result<Signature<'static>, git2::Error> {
    Signature::now(name, email)
}

pub fn file_mode(executable: bool) -> u32 {
    if executable {
        0o100_755
    } else {
        0o100_644
    }
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
    /// The remote's default branch (its HEAD), when it says.
    pub default_branch: Option<String>,
}

/// Fetches `base_branch` (the remote's default branch when None) from `url` into a fresh
/// repository at `git_dir` and checks it out into `worktree`.
pub fn clone(
    url: &str,
    base_branch: Option<&str>,
    git_dir: &Path,
    worktree: &Path,
    token: Option<&str>,
    bounds: Bounds,
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
    let default_branch = connection.default_branch().ok().map(|name| {
        String::from_utf8_lossy(&name)
            .trim_start_matches("refs/heads/")
            .to_owned()
    });
    let base = match (base_branch, &default_branch) {
        (Some(branch), _) => branch.to_owned(),
        (None, Some(default)) => default.clone(),
        (None, None) => return Err(GitError::EmptyRemote),
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
    let stopped = Cell::new(Stopped::No);
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(bounded_callbacks(token, bounds, &stopped));
    remote
        .fetch(
            &[format!("+refs/heads/{base}:{tracking}")],
            Some(&mut fetch),
            None,
        )
        .map_err(|e| fetch_error("fetching the base branch", e, &stopped, bounds))?;
    drop(fetch);
    let commit = repo
        .find_reference(&tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(other("reading the fetched base branch"))?;
    repo.branch(&base, &commit, true)
        .map_err(other("creating the local base branch"))?;
    repo.set_head(&format!("refs/heads/{base}"))
        .map_err(other("checking out the base branch"))?;
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .map_err(|e| {
            out_of_space(&e, bounds).unwrap_or_else(|| other("checking out the base branch")(e))
        })?;
    Ok(Cloned {
        base_branch: base,
        base_commit: commit.id().to_string(),
        default_branch,
    })
}

/// One change to commit, its content already read safely from the worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// A regular file's new content, and whether it is executable.
    Write {
        path: String,
        content: Vec<u8>,
        executable: bool,
    },
    Delete {
        path: String,
    },
}

/// The checked-out commit's tree: what the worktree is compared with.
pub fn head_tree(repo: &Repository) -> Result<git2::Tree<'_>, GitError> {
    repo.head()
        .and_then(|h| h.peel_to_tree())
        .map_err(other("reading the base commit"))
}

/// Commits exactly `staged` on top of the checked-out commit, as `branch`, and returns
/// the commit id. The tree is built in memory from the base tree: git never reads the
/// worktree, so nothing the agent left there (a symlink, a FIFO, a hook) is followed.
pub fn commit_staged(
    repo: &Repository,
    branch: &str,
    message: &str,
    author: &Signature<'_>,
    staged: &[Staged],
) -> Result<String, GitError> {
    let parent = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(other("reading the base commit"))?;
    let base = parent.tree().map_err(other("reading the base tree"))?;
    let mut index = git2::Index::new().map_err(other("creating an index"))?;
    index
        .read_tree(&base)
        .map_err(other("reading the base tree"))?;
    for change in staged {
        match change {
            Staged::Write {
                path,
                content,
                executable,
            } => {
                let id = repo.blob(content).map_err(other("writing a blob"))?;
                index
                    .add(&index_entry(path, id, *executable, content.len()))
                    .map_err(other("staging a file"))?;
            }
            Staged::Delete { path } => index
                .remove_path(Path::new(path))
                .map_err(other("staging a deletion"))?,
        }
    }
    let tree_id = index
        .write_tree_to(repo)
        .map_err(other("writing the tree"))?;
    let tree = repo.find_tree(tree_id).map_err(other("reading the tree"))?;
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

fn index_entry(path: &str, id: Oid, executable: bool, size: usize) -> git2::IndexEntry {
    git2::IndexEntry {
        ctime: git2::IndexTime::new(0, 0),
        mtime: git2::IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: file_mode(executable),
        uid: 0,
        gid: 0,
        file_size: u32::try_from(size).unwrap_or(u32::MAX),
        id,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
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
            .map(|p| specrun_core::quote::quote_path(&p.to_string_lossy()))
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

/// What the remote's branch holds before a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteBranch {
    /// No such branch.
    Missing,
    /// The branch's tip, and the run its trailer block names (git's trailer rules), if any.
    Tip { commit: Oid, run: Option<String> },
}

/// The commit `branch` points at on the remote, if the branch exists.
fn remote_tip(
    repo: &Repository,
    url: &str,
    branch: &str,
    token: Option<&str>,
) -> Result<Option<Oid>, GitError> {
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

/// Looks at `branch` on the remote: missing, or its tip and the run that tip names.
pub fn remote_branch(
    repo: &Repository,
    url: &str,
    branch: &str,
    token: Option<&str>,
    bounds: Bounds,
) -> Result<RemoteBranch, GitError> {
    let Some(tip) = remote_tip(repo, url, branch, token)? else {
        return Ok(RemoteBranch::Missing);
    };
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let stopped = Cell::new(Stopped::No);
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(bounded_callbacks(token, bounds, &stopped));
    let tracking = format!("refs/specrun/remote/{branch}");
    remote
        .fetch(
            &[format!("+refs/heads/{branch}:{tracking}")],
            Some(&mut fetch),
            None,
        )
        .map_err(|e| fetch_error("fetching the existing branch", e, &stopped, bounds))?;
    drop(fetch);
    let commit = repo
        .find_commit(tip)
        .map_err(other("reading the existing branch"))?;
    let run =
        specrun_core::trailer::run_of(commit.message().unwrap_or_default()).map(str::to_owned);
    Ok(RemoteBranch::Tip { commit: tip, run })
}

/// Pushes `branch` to `url` (never to a URL read from the repository's configuration),
/// only if the remote's branch is still at `expected` (`None`: it must not exist). The
/// check is made in the push's own connection, on the remote's answer (libgit2's push
/// negotiation), so a commit pushed by someone else in between is never overwritten.
pub fn push(
    repo: &Repository,
    url: &str,
    branch: &str,
    expected: Option<Oid>,
    token: Option<&str>,
) -> Result<(), GitError> {
    let force = if expected.is_some() { "+" } else { "" };
    send(
        repo,
        url,
        &format!("{force}refs/heads/{branch}:refs/heads/{branch}"),
        branch,
        expected.unwrap_or_else(Oid::zero),
        token,
    )
}

fn send(
    repo: &Repository,
    url: &str,
    refspec: &str,
    branch: &str,
    expected: Oid,
    token: Option<&str>,
) -> Result<(), GitError> {
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(other("preparing the remote"))?;
    let mut rejection: Option<String> = None;
    let moved: Cell<Option<Oid>> = Cell::new(None);
    let mut callbacks = callbacks(token);
    callbacks.push_negotiation(
        |updates| match updates.iter().find(|u| u.src() != expected) {
            Some(update) => {
                moved.set(Some(update.src()));
                Err(git2::Error::from_str("the remote branch moved"))
            }
            None => Ok(()),
        },
    );
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
    if let Some(now) = moved.get() {
        return Err(GitError::PushRejected {
            branch: branch.to_owned(),
            reason: format!(
                "the branch moved on the remote while specrun was pushing (now at {now}); nothing was overwritten; retry the run"
            ),
        });
    }
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
