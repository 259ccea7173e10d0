//! What the agent changed, and which of it is committed. The worktree is walked with
//! [`safe_fs`] (never through a symlink, never opening anything but regular files) and
//! compared with the base commit's tree; each change is either staged (inside the run's
//! [`CommitScope`], a plain file, within the limits) or left out with a reason. git never
//! reads the worktree itself. Runs only after the agent's processes are gone.

use crate::git::{GitError, Staged};
use specrun_core::commit_scope::{CommitLimits, CommitScope, LeftOut};
use specrun_sandbox::safe_fs::{self, Entry, EntryKind, FileFacts, WalkError, WalkLimits};
use std::collections::BTreeMap;
use std::path::Path;

/// One change and what became of it, as commit.json lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: &'static str,
    /// `None`: committed.
    pub left_out: Option<LeftOut>,
}

/// Everything the agent changed, split into what is staged and what is not.
#[derive(Debug, Default)]
pub struct Changes {
    pub staged: Vec<Staged>,
    pub listed: Vec<Change>,
}

impl Changes {
    pub fn committed(&self) -> impl Iterator<Item = &Change> {
        self.listed.iter().filter(|c| c.left_out.is_none())
    }

    pub fn left_out(&self) -> impl Iterator<Item = &Change> {
        self.listed.iter().filter(|c| c.left_out.is_some())
    }
}

/// The changes could not be read or are more than a commit may hold.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{path} could not be read safely: {source}")]
    Unsafe {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    TooLarge(String),
}

/// What the base tree holds at a path.
struct Tracked {
    id: git2::Oid,
    mode: u32,
}

/// What the index (written by the checkout) knew of a file's stat, to skip hashing files
/// nobody touched.
struct Checked {
    size: u64,
    inode: u64,
    mtime: (i64, u32),
}

/// Compares the worktree with the checked-out commit.
pub fn collect(
    repo: &git2::Repository,
    worktree: &Path,
    scope: &CommitScope,
    limits: CommitLimits,
) -> Result<Changes, ChangesError> {
    let tracked = tracked_files(repo)?;
    let checked = checked_out_stats(repo);
    let entries = safe_fs::walk(worktree, WalkLimits::default())?;
    refuse_unreadable_ignore_files(&entries)?;
    let mut changes = Changes::default();
    let mut seen = std::collections::BTreeSet::new();
    for entry in &entries {
        seen.insert(entry.path.as_str());
        let base = tracked.get(&entry.path);
        // git ignores every `.git`; a nested one is still worth listing.
        if base.is_none() && entry.kind != EntryKind::NestedGit && is_ignored(repo, &entry.path) {
            continue;
        }
        let kind = if base.is_some() { "modified" } else { "added" };
        match entry.kind {
            EntryKind::File(facts) => {
                let fate = file_change(
                    worktree,
                    entry,
                    facts,
                    base,
                    checked.get(&entry.path),
                    scope,
                    limits,
                )?;
                match fate {
                    None => {}
                    Some(Fate::Stage(staged)) => {
                        changes.listed.push(Change {
                            path: entry.path.clone(),
                            kind,
                            left_out: None,
                        });
                        changes.staged.push(staged);
                    }
                    Some(Fate::LeaveOut(reason)) => changes.listed.push(left(entry, kind, reason)),
                }
            }
            EntryKind::Symlink if base.is_some_and(|b| b.mode == 0o120_000) => {
                // A tracked link the agent did not touch stays as it is; one it changed
                // is reported, never committed.
                if link_unchanged(repo, worktree, &entry.path, base) {
                    continue;
                }
                changes.listed.push(left(entry, kind, LeftOut::Symlink));
            }
            EntryKind::Symlink => changes.listed.push(left(entry, kind, LeftOut::Symlink)),
            EntryKind::Special => changes.listed.push(left(entry, kind, LeftOut::SpecialFile)),
            EntryKind::NestedGit => changes.listed.push(left(entry, kind, LeftOut::NestedGit)),
            EntryKind::BadName => changes
                .listed
                .push(left(entry, kind, LeftOut::UnreadableName)),
        }
    }
    for (path, base) in &tracked {
        if seen.contains(path.as_str()) || base.mode == 0o160_000 {
            continue;
        }
        let out = scope.decide(path).err();
        changes.listed.push(Change {
            path: path.clone(),
            kind: "deleted",
            left_out: out,
        });
        if out.is_none() {
            changes.staged.push(Staged::Delete { path: path.clone() });
        }
    }
    check_limits(&changes, limits)?;
    changes.listed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// The regular files in the worktree that the base commit does not have and git does
/// not ignore: after `specify init`, what it wrote.
pub fn created_files(
    repo: &git2::Repository,
    worktree: &Path,
) -> Result<Vec<String>, ChangesError> {
    let tracked = tracked_files(repo)?;
    let entries = safe_fs::walk(worktree, WalkLimits::default())?;
    refuse_unreadable_ignore_files(&entries)?;
    Ok(entries
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_)))
        .filter(|e| !tracked.contains_key(&e.path) && !is_ignored(repo, &e.path))
        .map(|e| e.path)
        .collect())
}

/// What becomes of one changed file.
enum Fate {
    Stage(Staged),
    LeaveOut(LeftOut),
}

/// The fate of a regular file: `None` when unchanged, else staged or left out.
fn file_change(
    worktree: &Path,
    entry: &Entry,
    facts: FileFacts,
    base: Option<&Tracked>,
    checked: Option<&Checked>,
    scope: &CommitScope,
    limits: CommitLimits,
) -> Result<Option<Fate>, ChangesError> {
    let untouched = checked
        .is_some_and(|c| c.size == facts.size && c.inode == facts.inode && c.mtime == facts.mtime);
    if base.is_some() && untouched {
        return Ok(None);
    }
    let decision = scope.decide(&entry.path);
    if let Err(reason) = decision {
        // Out of scope: reported only when its content really differs.
        if let Some(base) = base {
            if facts.size <= limits.max_file_bytes
                && !content_differs(worktree, entry, facts, base)?
            {
                return Ok(None);
            }
        }
        return Ok(Some(Fate::LeaveOut(reason)));
    }
    if facts.size > limits.max_file_bytes {
        return Err(ChangesError::TooLarge(format!(
            "{} is {} bytes, more than the {} bytes one committed file may have",
            entry.path, facts.size, limits.max_file_bytes
        )));
    }
    let content = read(worktree, &entry.path, limits.max_file_bytes)?;
    if let Some(base) = base {
        if blob_id(&content)? == base.id && crate::git::file_mode(facts.executable) == base.mode {
            return Ok(None);
        }
    }
    Ok(Some(Fate::Stage(Staged::Write {
        path: entry.path.clone(),
        content,
        executable: facts.executable,
    })))
}

fn content_differs(
    worktree: &Path,
    entry: &Entry,
    facts: FileFacts,
    base: &Tracked,
) -> Result<bool, ChangesError> {
    let content = read(worktree, &entry.path, facts.size)?;
    Ok(blob_id(&content)? != base.id)
}

/// The id git gives `content` as a blob.
fn blob_id(content: &[u8]) -> Result<git2::Oid, ChangesError> {
    git2::Oid::hash_object(git2::ObjectType::Blob, content).map_err(|source| {
        ChangesError::Git(GitError::Other {
            doing: "hashing a file",
            source,
        })
    })
}

fn read(worktree: &Path, path: &str, max: u64) -> Result<Vec<u8>, ChangesError> {
    let unsafe_read = |source| ChangesError::Unsafe {
        path: path.to_owned(),
        source,
    };
    safe_fs::read_file(worktree, path, max)
        .map_err(unsafe_read)?
        .ok_or_else(|| {
            unsafe_read(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "it disappeared while the worktree was read",
            ))
        })
}

fn link_unchanged(
    repo: &git2::Repository,
    worktree: &Path,
    path: &str,
    base: Option<&Tracked>,
) -> bool {
    let (Some(base), Ok(target)) = (base, safe_fs::read_link(worktree, path)) else {
        return false;
    };
    repo.find_blob(base.id)
        .is_ok_and(|blob| blob.content() == target.as_slice())
}

fn left(entry: &Entry, kind: &'static str, reason: LeftOut) -> Change {
    Change {
        path: entry.path.clone(),
        kind,
        left_out: Some(reason),
    }
}

fn check_limits(changes: &Changes, limits: CommitLimits) -> Result<(), ChangesError> {
    let files = changes.committed().count();
    let total: u64 = changes
        .staged
        .iter()
        .map(|staged| match staged {
            Staged::Write { content, .. } => content.len() as u64,
            Staged::Delete { .. } => 0,
        })
        .sum();
    if files > limits.max_files {
        return Err(ChangesError::TooLarge(format!(
            "the agent changed {files} files inside the commit paths, more than the {} one commit may hold",
            limits.max_files
        )));
    }
    if total > limits.max_total_bytes {
        return Err(ChangesError::TooLarge(format!(
            "the changed files add up to {total} bytes, more than the {} one commit may hold",
            limits.max_total_bytes
        )));
    }
    Ok(())
}

/// libgit2 reads each directory's `.gitignore` by path to answer "is this ignored": one
/// that is a link, a FIFO or a device would be followed or would block, so a worktree
/// holding one is refused before the question is asked.
fn refuse_unreadable_ignore_files(entries: &[Entry]) -> Result<(), ChangesError> {
    let bad = entries.iter().find(|e| {
        e.path.rsplit('/').next() == Some(".gitignore") && !matches!(e.kind, EntryKind::File(_))
    });
    match bad {
        Some(entry) => Err(ChangesError::Unsafe {
            path: entry.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a .gitignore that is not a plain file (a link, FIFO or device) cannot be read safely",
            ),
        }),
        None => Ok(()),
    }
}

fn is_ignored(repo: &git2::Repository, path: &str) -> bool {
    repo.is_path_ignored(path).unwrap_or(false)
}

fn tracked_files(repo: &git2::Repository) -> Result<BTreeMap<String, Tracked>, GitError> {
    let tree = crate::git::head_tree(repo)?;
    let mut files = BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() != Some(git2::ObjectType::Tree) {
            if let Some(name) = entry.name() {
                files.insert(
                    format!("{dir}{name}"),
                    Tracked {
                        id: entry.id(),
                        mode: u32::try_from(entry.filemode()).unwrap_or_default(),
                    },
                );
            }
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(|source| GitError::Other {
        doing: "reading the base tree",
        source,
    })?;
    Ok(files)
}

fn checked_out_stats(repo: &git2::Repository) -> BTreeMap<String, Checked> {
    let Ok(index) = repo.index() else {
        return BTreeMap::new();
    };
    index
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.path).into_owned(),
                Checked {
                    size: u64::from(e.file_size),
                    inode: u64::from(e.ino),
                    mtime: (i64::from(e.mtime.seconds()), e.mtime.nanoseconds()),
                },
            )
        })
        .collect()
}
