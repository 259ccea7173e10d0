//! Agent versions remembered per image: an image is immutable (its id is the digest of
//! its content), so what an agent's version command prints in it is asked once, by the
//! first run on that image, and read by later runs from `<work root>/agent-versions/`
//! instead of starting the agent's CLI in every run's prepare phase.
//!
//! The directory belongs to the runner: workspaces sit beside it, and no job mounts it.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The longest version line kept (an agent's version is a short line).
const MAX_VERSION_BYTES: usize = 256;

/// The versions remembered under one work root.
#[derive(Debug, Clone)]
pub(crate) struct AgentVersions {
    dir: PathBuf,
}

impl AgentVersions {
    pub(crate) fn under(work_root: &Path) -> Self {
        Self {
            dir: work_root.join("agent-versions"),
        }
    }

    /// What `command` printed in `image_id` when a run asked, if one did.
    pub(crate) async fn get(&self, image_id: &str, command: &[String]) -> Option<String> {
        let text = tokio::fs::read_to_string(self.file(image_id, command))
            .await
            .ok()?;
        let line = text.trim();
        (!line.is_empty() && line.len() <= MAX_VERSION_BYTES).then(|| line.to_owned())
    }

    /// Remembers `version`; a failure to is only logged (the next run asks again).
    pub(crate) async fn put(&self, image_id: &str, command: &[String], version: &str) {
        if image_id.is_empty() || version.is_empty() || version.len() > MAX_VERSION_BYTES {
            return;
        }
        let file = self.file(image_id, command);
        // Written aside and renamed: a concurrent run reads the old file or the new one.
        let aside = file.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        let written = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(&aside, version).await?;
            tokio::fs::rename(&aside, &file).await
        };
        if let Err(e) = written.await {
            let _ = tokio::fs::remove_file(&aside).await;
            tracing::warn!(error = %e, file = %file.display(), "could not remember the agent's version");
        }
    }

    fn file(&self, image_id: &str, command: &[String]) -> PathBuf {
        self.dir.join(key(image_id, command))
    }
}

/// A file name for the image and the command: the hash of both, NUL-separated (neither
/// an image id nor an argument holds a NUL).
fn key(image_id: &str, command: &[String]) -> String {
    let mut hash = Sha256::new();
    hash.update(image_id.as_bytes());
    for arg in command {
        hash.update([0]);
        hash.update(arg.as_bytes());
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_key_tells_images_and_commands_apart() {
        let version = argv(&["agent", "--version"]);
        assert_eq!(key("sha256:a", &version), key("sha256:a", &version));
        assert_ne!(key("sha256:a", &version), key("sha256:b", &version));
        assert_ne!(
            key("sha256:a", &argv(&["agent", "--version"])),
            key("sha256:a", &argv(&["agent--", "version"]))
        );
        assert_ne!(
            key("sha256:a", &argv(&["a"])),
            key("sha256:", &argv(&["", "a"]))
        );
    }

    #[tokio::test]
    async fn a_version_is_remembered_per_image_and_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let versions = AgentVersions::under(dir.path());
        let command = argv(&["agent", "--version"]);
        assert_eq!(versions.get("sha256:a", &command).await, None);
        versions.put("sha256:a", &command, "agent 1.2.3").await;
        assert_eq!(
            versions.get("sha256:a", &command).await.as_deref(),
            Some("agent 1.2.3")
        );
        assert_eq!(versions.get("sha256:b", &command).await, None);
        assert_eq!(
            versions.get("sha256:a", &argv(&["agent", "-V"])).await,
            None
        );
        // Nothing is remembered for an image without an id, nor a version too long.
        versions.put("", &command, "agent 1").await;
        assert_eq!(versions.get("", &command).await, None);
        versions.put("sha256:c", &command, &"x".repeat(1000)).await;
        assert_eq!(versions.get("sha256:c", &command).await, None);
    }
}
