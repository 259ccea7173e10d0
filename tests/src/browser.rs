//! The console's browser tests' driver: runs a scenario of tests/browser/console.mjs
//! (playwright-core driving Debian's headless `chromium`, both installed by
//! `scripts/setup.sh --tests`) and hands back what it reports.

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The longest one scenario may take (a run from submission to its end included).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(420);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Where the scenarios write their screenshots: `target/console-screenshots/`.
pub fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// Runs `scenario` with `env`; its `RESULT` JSON, or its output when it failed.
pub async fn run_scenario(
    scenario: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let dir = browser_dir();
    if !dir.join("node_modules/playwright-core").is_dir()
        || !Path::new("/usr/bin/chromium").exists()
    {
        bail!("the browser tests need chromium and tests/browser/node_modules: run scripts/setup.sh --tests");
    }
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join("console.mjs"))
        .arg(scenario)
        .current_dir(&dir)
        .env("SHOTS_DIR", screenshots_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, command.output())
        .await
        .with_context(|| format!("browser scenario {scenario} took over {SCENARIO_TIMEOUT:?}"))?
        .context("running node (scripts/setup.sh --tests installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "browser scenario {scenario} failed ({}):\n{stderr}\n{stdout}",
            output.status
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("scenario {scenario} printed no RESULT:\n{stdout}\n{stderr}"))?;
    Ok(serde_json::from_str(line)?)
}
