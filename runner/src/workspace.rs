//! A run's workspace on the host: `repo/` (the worktree, the agent's to change), `git/`
//! (the git directory, read-only to the agent), `home/` (the agent's HOME) and `logs/`
//! (artifacts being written, never mounted). After the agent has run, everything under
//! `repo/` and `home/` is hostile: it is read without following symlinks.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{lchown, MetadataExt};
use std::path::{Component, Path, PathBuf};

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
}

impl Workspace {
    /// Creates a fresh, empty workspace for `run_id` under `work_root`.
    pub fn create(work_root: &Path, run_id: &str) -> io::Result<Self> {
        fs::create_dir_all(work_root)?;
        let root = work_root.join(run_id);
        // A workspace left by an earlier attempt whose runner died: start clean.
        match fs::remove_dir_all(&root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir(&root)?;
        let workspace = Workspace {
            repo: root.join("repo"),
            git: root.join("git"),
            home: root.join("home"),
            logs: root.join("logs"),
            root,
        };
        for dir in [
            &workspace.repo,
            &workspace.git,
            &workspace.home,
            &workspace.logs,
        ] {
            fs::create_dir(dir)?;
        }
        // The git directory is mounted over `repo/.git`; the mount point must exist.
        fs::create_dir(workspace.repo.join(".git"))?;
        Ok(workspace)
    }

    /// Gives `repo/` and `home/` to the agent's user, so the non-root agent can write.
    pub fn hand_to_agent(&self) -> io::Result<()> {
        chown_tree(&self.repo, AGENT_UID, AGENT_GID)?;
        chown_tree(&self.home, AGENT_UID, AGENT_GID)
    }

    /// Takes `repo/` back for the runner's own user before git reads it.
    pub fn take_back(&self) -> io::Result<()> {
        let owner = fs::metadata(&self.root)?;
        chown_tree(&self.repo, owner.uid(), owner.gid())
    }

    /// Removes the whole workspace.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Reads a regular file at `relative` inside `repo/`, refusing symlinks anywhere on
    /// the path and anything larger than `max` bytes. `Ok(None)` when there is no file.
    pub fn read_repo_file(&self, relative: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        read_inside(&self.repo, relative, max)
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    lchown(path, Some(uid), Some(gid))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Opens `root/relative` only if no component is a symlink and the target is a regular
/// file; a hostile agent cannot make the runner read a host file this way.
pub fn read_inside(root: &Path, relative: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut path = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{relative:?} is not a plain relative path"),
                ))
            }
        }
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{relative:?} goes through a symbolic link; not followed"),
                ))
            }
            Ok(_) => {}
        }
    }
    let meta = fs::symlink_metadata(&path)?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{relative:?} is {} bytes, more than the {max} allowed",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(&path)?.take(max).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_but_not_through_symlinks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let ws = Workspace::create(dir.path(), "run-0001")?;
        fs::create_dir_all(ws.repo.join("specs/001-x"))?;
        fs::write(ws.repo.join("specs/001-x/spec.md"), "# Spec")?;
        std::os::unix::fs::symlink("/etc", ws.repo.join("specs/002-y"))?;
        std::os::unix::fs::symlink("/etc/hostname", ws.repo.join("specs/001-x/plan.md"))?;
        assert_eq!(
            ws.read_repo_file("specs/001-x/spec.md", 100)?,
            Some(b"# Spec".to_vec())
        );
        assert!(ws.read_repo_file("specs/002-y/hostname", 100).is_err());
        assert!(ws.read_repo_file("specs/001-x/plan.md", 100).is_err());
        assert!(ws.read_repo_file("../../etc/hostname", 100).is_err());
        assert!(ws.read_repo_file("specs/001-x/spec.md", 3).is_err());
        assert_eq!(ws.read_repo_file("specs/missing.md", 100)?, None);
        ws.remove()?;
        assert!(!ws.root.exists());
        Ok(())
    }
}
