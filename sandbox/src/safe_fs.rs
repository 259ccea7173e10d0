//! Reading what the agent wrote without letting it choose what the runner reads. Every
//! path is resolved beneath a directory the runner opened, one handle at a time, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: a symlink, a `..`
//! or a mount point anywhere on the path is refused by the kernel, not by a check that a
//! rename could race. Files open with `O_NOFOLLOW | O_NONBLOCK` and are used only when
//! `fstat` on the open handle says they are regular files, so a FIFO or a device swapped
//! in never blocks a thread. These functions block: call them from `spawn_blocking`.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use std::ffi::CStr;
use std::io::{self, Read};
use std::path::{Component, Path};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One thing found under the walked directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the walked root, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
}

/// What kind of thing an [`Entry`] is, as `lstat` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File(FileFacts),
    Symlink,
    /// A FIFO, socket or device node.
    Special,
    /// A `.git` below the root: a nested repository or a gitlink.
    NestedGit,
    /// A name that is not UTF-8 (its path is shown lossily).
    BadName,
}

/// What `lstat` says of a regular file: enough to tell it unchanged from a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub size: u64,
    pub executable: bool,
    pub links: u64,
    pub inode: u64,
    pub mtime: (i64, u32),
}

/// The walk met more than it may hold.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("the worktree holds more than {0} files and directories")]
    TooMany(usize),
    #[error("the worktree is nested deeper than {0} directories")]
    TooDeep(usize),
    #[error("reading the worktree failed at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens `path` itself as a directory, refusing a symlink there.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, DIR_FLAGS, Mode::empty())?)
}

fn plain_relative(relative: &str) -> io::Result<()> {
    let plain = !relative.is_empty()
        && Path::new(relative)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{relative:?} is not a plain relative path"),
        ))
    }
}

/// Reads the regular file `root/relative`, refusing symlinks anywhere on the path, any
/// file type but a regular file, and anything larger than `max` bytes. `Ok(None)` when
/// nothing is there or it is a directory.
pub fn read_file(root: &Path, relative: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    plain_relative(relative)?;
    let dir = open_dir(root)?;
    let fd = match rustix::fs::openat2(&dir, relative, FILE_FLAGS, Mode::empty(), RESOLVE) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{relative:?} goes through a symbolic link or a mount point; not followed"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => read_bounded(fd, relative, max).map(Some),
        FileType::Directory => Ok(None),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{relative:?} is a {other:?}, not a regular file; not read"),
        )),
    }
}

fn read_bounded(fd: OwnedFd, relative: &str, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{relative:?} is larger than the {max} bytes allowed"),
        ));
    }
    Ok(bytes)
}

/// The target of the symlink `root/relative`, read without following it; every
/// directory on the way is resolved beneath `root` without links.
pub fn read_link(root: &Path, relative: &str) -> io::Result<Vec<u8>> {
    plain_relative(relative)?;
    let (parent, name) = match relative.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, relative),
    };
    let top = open_dir(root)?;
    let dir = match parent {
        Some(parent) => rustix::fs::openat2(&top, parent, DIR_FLAGS, Mode::empty(), RESOLVE)?,
        None => top,
    };
    Ok(rustix::fs::readlinkat(&dir, name, Vec::new())?.into_bytes())
}

/// True when `root/relative` is a directory reached without a symlink on the way.
pub fn is_dir(root: &Path, relative: &str) -> bool {
    plain_relative(relative).is_ok()
        && open_dir(root)
            .and_then(|top| {
                Ok(rustix::fs::openat2(
                    &top,
                    relative,
                    DIR_FLAGS,
                    Mode::empty(),
                    RESOLVE,
                )?)
            })
            .is_ok()
}

/// The names of the real directories (not links) directly inside `root/relative`.
pub fn subdirectories(root: &Path, relative: &str) -> io::Result<Vec<String>> {
    plain_relative(relative)?;
    let top = open_dir(root)?;
    let dir = rustix::fs::openat2(&top, relative, DIR_FLAGS, Mode::empty(), RESOLVE)?;
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(&dir)? {
        let item = item?;
        let name = item.file_name();
        let Ok(text) = name.to_str() else { continue };
        if text == "." || text == ".." {
            continue;
        }
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            names.push(text.to_owned());
        }
    }
    Ok(names)
}

/// Bounds on a walk, so a worktree of millions of files cannot hold the runner.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_entries: usize,
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_entries: 200_000,
            max_depth: 64,
        }
    }
}

/// One directory entry as the walk meets it.
struct Visit<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    path: &'a str,
    stat: &'a Stat,
}

/// Everything under `root` except a top-level `.git`, depth first, sorted by path.
pub fn walk(root: &Path, limits: WalkLimits) -> Result<Vec<Entry>, WalkError> {
    let mut entries = Vec::new();
    visit_tree(root, limits, &mut |visit| {
        if let Some(kind) = kind_of(visit) {
            entries.push(Entry {
                path: visit.path.to_owned(),
                kind,
            });
        }
        Ok(())
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// What an entry is; `None` for a directory the walk goes into.
fn kind_of(visit: &Visit<'_>) -> Option<EntryKind> {
    if visit.name.to_str().is_err() {
        return Some(EntryKind::BadName);
    }
    if visit.name.to_bytes() == b".git" {
        return Some(EntryKind::NestedGit);
    }
    let stat = visit.stat;
    Some(match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => EntryKind::File(FileFacts {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            executable: stat.st_mode & 0o111 != 0,
            links: stat.st_nlink,
            inode: stat.st_ino,
            mtime: (
                stat.st_mtime,
                u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ),
        }),
        FileType::Symlink => EntryKind::Symlink,
        FileType::Directory => return None,
        _ => EntryKind::Special,
    })
}

/// Gives every entry under `root` (and `root`) to `uid:gid`, never through a symlink.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), WalkError> {
    let (uid, gid) = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    let io_at = |path: &str| {
        let path = path.to_owned();
        move |e: rustix::io::Errno| WalkError::Io {
            path,
            source: e.into(),
        }
    };
    let top = open_dir(root).map_err(|source| WalkError::Io {
        path: root.display().to_string(),
        source,
    })?;
    rustix::fs::fchown(&top, uid, gid).map_err(io_at("."))?;
    visit_tree(root, WalkLimits::default(), &mut |visit| {
        rustix::fs::chownat(visit.dir, visit.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_at(visit.path))
    })
}

/// Calls `each` for every entry under `root` (directories before what they hold),
/// descending only into real directories and never into a top-level `.git`.
fn visit_tree(
    root: &Path,
    limits: WalkLimits,
    each: &mut dyn FnMut(&Visit<'_>) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    let top = open_dir(root).map_err(|source| WalkError::Io {
        path: root.display().to_string(),
        source,
    })?;
    let mut seen = 0;
    visit_dir(top.as_fd(), "", 0, limits, &mut seen, each)
}

fn visit_dir(
    dir: BorrowedFd<'_>,
    prefix: &str,
    depth: usize,
    limits: WalkLimits,
    seen: &mut usize,
    each: &mut dyn FnMut(&Visit<'_>) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    if depth > limits.max_depth {
        return Err(WalkError::TooDeep(limits.max_depth));
    }
    let io_at = |path: &str, e: rustix::io::Errno| WalkError::Io {
        path: path.to_owned(),
        source: e.into(),
    };
    let shown = if prefix.is_empty() { "." } else { prefix };
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(dir).map_err(|e| io_at(shown, e))? {
        let item = item.map_err(|e| io_at(shown, e))?;
        let name = item.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if prefix.is_empty() && name.to_bytes() == b".git" {
            continue;
        }
        names.push(name.to_owned());
    }
    for name in names {
        *seen += 1;
        if *seen > limits.max_entries {
            return Err(WalkError::TooMany(limits.max_entries));
        }
        let lossy = name.to_string_lossy();
        let path = if prefix.is_empty() {
            lossy.into_owned()
        } else {
            format!("{prefix}/{lossy}")
        };
        let stat = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_at(&path, e))?;
        let visit = Visit {
            dir,
            name: name.as_c_str(),
            path: &path,
            stat: &stat,
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if is_dir && kind_of(&visit).is_none() {
            each(&visit)?;
            let sub = rustix::fs::openat2(dir, name.as_c_str(), DIR_FLAGS, Mode::empty(), RESOLVE)
                .map_err(|e| io_at(&path, e))?;
            visit_dir(sub.as_fd(), &path, depth + 1, limits, seen, each)?;
        } else {
            each(&visit)?;
        }
    }
    Ok(())
}

/// Bytes still free on the filesystem holding `path`.
pub fn space_left(path: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_files_but_never_through_a_symlink_or_a_fifo() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("specs/001-x"))?;
        fs::write(root.join("specs/001-x/spec.md"), "# Spec")?;
        symlink("/etc", root.join("specs/002-y"))?;
        symlink("/etc/hostname", root.join("specs/001-x/plan.md"))?;
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("fifo"), Mode::RUSR | Mode::WUSR)?;
        assert_eq!(
            read_file(root, "specs/001-x/spec.md", 100)?,
            Some(b"# Spec".to_vec())
        );
        assert!(read_file(root, "specs/002-y/hostname", 100).is_err());
        assert!(read_file(root, "specs/001-x/plan.md", 100).is_err());
        assert!(read_file(root, "../../etc/hostname", 100).is_err());
        assert!(read_file(root, "/etc/hostname", 100).is_err());
        assert!(read_file(root, "specs/001-x/spec.md", 3).is_err());
        assert_eq!(read_file(root, "specs/missing.md", 100)?, None);
        assert_eq!(read_file(root, "specs", 100)?, None);
        // A FIFO with no writer would block an ordinary open forever.
        let fifo = read_file(root, "fifo", 100);
        assert!(fifo.is_err_and(|e| e.to_string().contains("not a regular file")));
        Ok(())
    }

    #[test]
    fn a_walk_reports_links_and_special_files_without_entering_them() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join(".git/objects"))?;
        fs::create_dir_all(root.join("a/b"))?;
        fs::create_dir_all(root.join("vendor/lib/.git"))?;
        fs::write(root.join("a/b/file.txt"), "x")?;
        fs::write(root.join("run.sh"), "#!/bin/sh")?;
        fs::set_permissions(
            root.join("run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        fs::hard_link(root.join("a/b/file.txt"), root.join("a/hard"))?;
        symlink("/", root.join("a/root"))?;
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("pipe"), Mode::RUSR)?;
        let entries = walk(root, WalkLimits::default())?;
        let kinds: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| {
                let kind = match e.kind {
                    EntryKind::File(f) if f.executable => "exec",
                    EntryKind::File(f) if f.links > 1 => "linked",
                    EntryKind::File(_) => "file",
                    EntryKind::Symlink => "symlink",
                    EntryKind::Special => "special",
                    EntryKind::NestedGit => "nested-git",
                    EntryKind::BadName => "bad-name",
                };
                (e.path.as_str(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a/b/file.txt", "linked"),
                ("a/hard", "linked"),
                ("a/root", "symlink"),
                ("pipe", "special"),
                ("run.sh", "exec"),
                ("vendor/lib/.git", "nested-git"),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_walk_is_bounded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for i in 0..20 {
            fs::write(dir.path().join(format!("f{i}")), "x")?;
        }
        let limits = WalkLimits {
            max_entries: 10,
            max_depth: 4,
        };
        assert!(matches!(
            walk(dir.path(), limits),
            Err(WalkError::TooMany(10))
        ));
        let deep = dir.path().join("d/d/d/d/d/d");
        fs::create_dir_all(&deep)?;
        let limits = WalkLimits {
            max_entries: 1000,
            max_depth: 3,
        };
        assert!(matches!(
            walk(dir.path(), limits),
            Err(WalkError::TooDeep(3))
        ));
        Ok(())
    }
}
