//! A job container's cgroup freezer, written by the runner itself: the same freeze
//! `docker pause` makes (runc writes the same file), without a request to dockerd and a
//! runc process per freeze and thaw. A run freezes and thaws its container around every
//! command, so this is most of what the engine otherwise spends on a run besides the
//! commands themselves.
//!
//! Used only where it can be found for certain: cgroup v1's freezer hierarchy, the
//! container's init visible in this host's /proc (the runner on the engine's host, as
//! root), and its freezer cgroup named after the container's id. Otherwise the engine
//! pauses and unpauses the container (`DockerClient::freeze`/`thaw`).
//!
//! The engine does not know about a freeze made here: it still sees the container
//! running. Killing and removing it work the same (the kernel delivers SIGKILL to
//! frozen tasks), and an exec is only ever started after [`Freezer::thaw`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup v1's freezer hierarchy is mounted.
const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer";

/// How long a freeze may take before it counts as stuck (a task in an uninterruptible
/// sleep, e.g. writing to a full disk, can keep the cgroup FREEZING).
const FREEZE_LIMIT: Duration = Duration::from_secs(2);

/// One container's freezer.state file.
#[derive(Debug, Clone)]
pub struct Freezer {
    state: PathBuf,
}

impl Freezer {
    /// The freezer of the container `id` whose init has host pid `pid`; `None` when it
    /// cannot be found for certain (then the engine's pause is used).
    pub fn find(id: &str, pid: i64) -> Option<Freezer> {
        if pid <= 0 || id.is_empty() {
            return None;
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::from_proc_cgroup(Path::new(FREEZER_ROOT), id, &cgroups)
    }

    /// The freezer named in `/proc/<pid>/cgroup`'s text, under `root`, if it is the
    /// container's own (its last path element names `id`) and exists.
    fn from_proc_cgroup(root: &Path, id: &str, cgroups: &str) -> Option<Freezer> {
        let path = cgroups.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == "freezer")
                .then_some(path)
        })?;
        let relative = path.strip_prefix('/')?;
        let last = Path::new(relative).file_name()?.to_str()?;
        if !last.contains(id) || relative.split('/').any(|part| part == "..") {
            return None;
        }
        let state = root.join(relative).join("freezer.state");
        state.is_file().then_some(Freezer { state })
    }

    /// Freezes every task of the container and waits until the kernel says all are
    /// frozen. On an error (stuck past the limit) the cgroup is thawed again.
    pub fn freeze(&self) -> io::Result<()> {
        let started = Instant::now();
        let mut wait = Duration::from_micros(200);
        loop {
            std::fs::write(&self.state, "FROZEN")?;
            if self.read()? == "FROZEN" {
                return Ok(());
            }
            if started.elapsed() > FREEZE_LIMIT {
                let _ = self.thaw();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} stayed FREEZING for {FREEZE_LIMIT:?}",
                        self.state.display()
                    ),
                ));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(20));
        }
    }

    /// Lets the container's tasks run again.
    pub fn thaw(&self) -> io::Result<()> {
        std::fs::write(&self.state, "THAWED")?;
        match self.read()?.as_str() {
            "THAWED" => Ok(()),
            other => Err(io::Error::other(format!(
                "{} is {other} after a thaw",
                self.state.display()
            ))),
        }
    }

    fn read(&self) -> io::Result<String> {
        Ok(std::fs::read_to_string(&self.state)?.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ID: &str = "131d33fb70c0f0635de96cf5d5504f586760a6d6efdec11bd984a8888395b44d";

    fn root_with(relative: &str) -> io::Result<tempfile::TempDir> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join(relative);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("freezer.state"), "THAWED\n")?;
        Ok(root)
    }

    #[test]
    fn the_freezer_is_the_one_named_for_the_container() -> TestResult {
        let root = root_with(&format!("docker/{ID}"))?;
        let cgroups = format!(
            "9:name=systemd:/docker/{ID}\n6:freezer:/docker/{ID}\n4:memory:/docker/{ID}\n0::/\n"
        );
        let found = Freezer::from_proc_cgroup(root.path(), ID, &cgroups).ok_or("not found")?;
        assert_eq!(
            found.state,
            root.path().join(format!("docker/{ID}/freezer.state"))
        );
        Ok(())
    }

    #[test]
    fn another_process_or_a_missing_hierarchy_is_not_taken() -> TestResult {
        let root = root_with(&format!("docker/{ID}"))?;
        let find = |cgroups: &str| Freezer::from_proc_cgroup(root.path(), ID, cgroups);
        // A pid that is someone else's (another pid namespace, a reused pid).
        assert!(find("6:freezer:/\n").is_none());
        assert!(find("6:freezer:/user.slice/other\n").is_none());
        // cgroup v2 only: no freezer line.
        assert!(find(&format!("0::/system.slice/docker-{ID}.scope\n")).is_none());
        // Named right but not there, or climbing out.
        assert!(find(&format!("6:freezer:/elsewhere/{ID}\n")).is_none());
        assert!(find(&format!("6:freezer:/docker/../docker/{ID}\n")).is_none());
        Ok(())
    }
}
