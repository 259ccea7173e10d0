//! A run's workspace on the host: `files/repo/` (the worktree, the agent's to change),
//! `files/git/` (the git directory, read-only to the agent), `files/home/` (the agent's
//! HOME) and `logs/` (artifacts being written, never mounted). With a disk quota,
//! `files/` is a size-limited tmpfs of its own, so neither a large clone nor an agent
//! filling the disk can take the host's disk; logs stay outside it and keep working.
//! After the agent has run, everything under `repo/` and `home/` is hostile: it is read
//! only through [`crate::safe_fs`].

use crate::safe_fs;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The uid and gid the job image's user runs as.
pub const AGENT_UID: u32 = 1000;
pub const AGENT_GID: u32 = 1000;

/// Paths of one run's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub repo: PathBuf,
    pub git: PathBuf,
    pub home: PathBuf,
    pub logs: PathBuf,
    /// The tmpfs holding repo, git and home, when the workspace has a disk quota.
    quota: Option<PathBuf>,
}

/// The workspace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("could not create the workspace at {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "could not mount a {mib} MiB tmpfs for the workspace's disk quota at {path}: {source}"
    )]
    Quota {
        path: String,
        mib: u64,
        #[source]
        source: io::Error,
    },
}

impl Workspace {
    /// Creates a fresh, empty workspace for `run_id` under `work_root`; with
    /// `quota_bytes`, repo, git and home share a tmpfs of that size.
    pub fn create(
        work_root: &Path,
        run_id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<Self, WorkspaceError> {
        let root = work_root.join(run_id);
        let files = root.join("files");
        let create = |path: &Path, source: io::Error| WorkspaceError::Create {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(work_root).map_err(|e| create(work_root, e))?;
        // A workspace left by an earlier attempt whose runner died: start clean.
        unmount_quietly(&files);
        match fs::remove_dir_all(&root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(create(&root, e)),
            _ => {}
        }
        fs::create_dir(&root).map_err(|e| create(&root, e))?;
        fs::create_dir(&files).map_err(|e| create(&files, e))?;
        let quota = match quota_bytes {
            Some(bytes) => {
                mount_quota(&files, bytes)?;
                Some(files.clone())
            }
            None => None,
        };
        let workspace = Workspace {
            repo: files.join("repo"),
            git: files.join("git"),
            home: files.join("home"),
            logs: root.join("logs"),
            root,
            quota,
        };
        for dir in [
            &workspace.repo,
            &workspace.git,
            &workspace.home,
            &workspace.logs,
        ] {
            fs::create_dir(dir).map_err(|e| create(dir, e))?;
        }
        // The git directory is mounted over `repo/.git`; the mount point must exist.
        let mount_point = workspace.repo.join(".git");
        fs::create_dir(&mount_point).map_err(|e| create(&mount_point, e))?;
        Ok(workspace)
    }

    /// Gives `repo/` and `home/` to the agent's user, so the non-root agent can write.
    pub fn hand_to_agent(&self) -> Result<(), safe_fs::WalkError> {
        safe_fs::chown_tree(&self.repo, AGENT_UID, AGENT_GID)?;
        safe_fs::chown_tree(&self.home, AGENT_UID, AGENT_GID)
    }

    /// Takes `repo/` back for the runner's own user before git reads it.
    pub fn take_back(&self) -> Result<(), safe_fs::WalkError> {
        let owner = fs::metadata(&self.root).map_err(|source| safe_fs::WalkError::Io {
            path: self.root.display().to_string(),
            source,
        })?;
        safe_fs::chown_tree(&self.repo, owner.uid(), owner.gid())
    }

    /// Bytes still free for the agent; `None` without a quota.
    pub fn space_left(&self) -> Option<u64> {
        let quota = self.quota.as_ref()?;
        safe_fs::space_left(quota).ok()
    }

    /// Removes the whole workspace (unmounting its quota first).
    pub fn remove(&self) -> io::Result<()> {
        if let Some(quota) = &self.quota {
            rustix::mount::unmount(quota, rustix::mount::UnmountFlags::DETACH)?;
        }
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Reads a regular file at `relative` inside `repo/`, refusing symlinks anywhere on
    /// the path and anything larger than `max` bytes. `Ok(None)` when there is no file.
    pub fn read_repo_file(&self, relative: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        safe_fs::read_file(&self.repo, relative, max)
    }
}

fn mount_quota(files: &Path, bytes: u64) -> Result<(), WorkspaceError> {
    let mib = bytes.div_ceil(1024 * 1024).max(1);
    let options = std::ffi::CString::new(format!("size={mib}m,mode=0755")).unwrap_or_default();
    rustix::mount::mount(
        "specrun-workspace",
        files,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(options.as_c_str()),
    )
    .map_err(|e| WorkspaceError::Quota {
        path: files.display().to_string(),
        mib,
        source: e.into(),
    })
}

fn unmount_quietly(path: &Path) {
    // Nothing mounted there is the usual case; anything else surfaces when the removal
    // that follows fails.
    let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_made_and_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ws = Workspace::create(dir.path(), "run-0001", None)?;
        fs::create_dir_all(ws.repo.join("specs/001-x"))?;
        fs::write(ws.repo.join("specs/001-x/spec.md"), "# Spec")?;
        std::os::unix::fs::symlink("/etc/hostname", ws.repo.join("specs/001-x/plan.md"))?;
        assert_eq!(
            ws.read_repo_file("specs/001-x/spec.md", 100)?,
            Some(b"# Spec".to_vec())
        );
        assert!(ws.read_repo_file("specs/001-x/plan.md", 100).is_err());
        assert_eq!(ws.space_left(), None);
        ws.remove()?;
        assert!(!ws.root.exists());
        Ok(())
    }

    #[test]
    fn a_quota_bounds_what_the_workspace_holds() -> anyhow::Result<()> {
        if !rustix::process::geteuid().is_root() {
            return Ok(()); // mounting needs root; the end-to-end tests run as root
        }
        let dir = tempfile::tempdir()?;
        let ws = Workspace::create(dir.path(), "run-0002", Some(2 * 1024 * 1024))?;
        let left = ws.space_left().unwrap_or_default();
        assert!(left <= 2 * 1024 * 1024, "{left}");
        let filled = fs::write(ws.home.join("fill"), vec![0u8; 3 * 1024 * 1024]);
        assert!(
            filled.is_err_and(|e| e.raw_os_error() == Some(28)),
            "ENOSPC"
        );
        // The logs are outside the quota and still take writes.
        fs::write(ws.logs.join("log"), "still writable")?;
        ws.remove()?;
        assert!(!ws.root.exists());
        Ok(())
    }
}
