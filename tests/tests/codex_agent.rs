//! The real Codex CLI in the real job image completes Spec Kit's specify → plan → tasks
//! phases against the scripted model server (no real model, no traffic off the host).
//!
//! The test creates its own `--internal` Docker network, binds the model server to that
//! network's gateway address (the host's side of the bridge), starts a job container on
//! the network, writes Codex's `config.toml`, runs `specify init`, then runs
//! `codex exec` once per phase with the API key given only to that exec. It checks the
//! files each phase wrote, Codex's `--json` events, every request the server received,
//! and that Codex tried to connect to no other host.
//!
//! Needs a Docker engine and the job image (`scripts/build-image.sh`).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::Value;
use specrun_tests::harness::job_image;
use specrun_tests::model_server::{
    check_reachable_from, feature_dir_name, spec_markdown, ModelServer, TestNetwork, MODEL_KEY_ENV,
};
use tokio::process::Command;

/// The key the server expects; it must reach the server and nothing else.
const MODEL_KEY: &str = "sk-specrun-test-model-key-3b9e1f";

/// The feature description handed to `$speckit-specify`.
const SPEC_TEXT: &str = "Add a photo album organiser that groups photos by date";

/// Longest a single `docker exec` may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the job image keeps the repository and the agent's home.
const REPO: &str = "/workspace/repo";
const HOME: &str = "/workspace/home";
const CODEX_HOME: &str = "/workspace/home/.codex";

/// Prints the command line of every process in the container but itself.
const LIST_PROCESSES: &str = r"
import os
for pid in filter(str.isdigit, os.listdir('/proc')):
    if int(pid) == os.getpid():
        continue
    try:
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    cmd = cmd.replace(b'\0', b' ').decode(errors='replace').strip()
    if cmd:
        print(cmd)
";

/// Codex logs each new outbound connection at this level (`reqwest::connect`), which lets
/// the test list every host Codex tried to reach.
const CODEX_LOG: &str = "warn,reqwest::connect=debug";

#[tokio::test]
async fn codex_completes_the_three_phases_against_the_scripted_model() -> anyhow::Result<()> {
    let world = World::start().await?;
    let feature_dir = world
        .dirs
        .repo()
        .join("specs")
        .join(feature_dir_name(SPEC_TEXT));
    let phases = [
        (
            "specify",
            format!("$speckit-specify {SPEC_TEXT}"),
            "spec.md",
        ),
        ("plan", "$speckit-plan".to_owned(), "plan.md"),
        ("tasks", "$speckit-tasks".to_owned(), "tasks.md"),
    ];
    for (phase, prompt, file) in &phases {
        run_phase(&world, phase, prompt, &feature_dir.join(file)).await?;
    }
    check_documents(&world.dirs, &feature_dir)?;
    check_requests(&world.server)?;
    let leaks = files_containing(world.dirs.root.path(), MODEL_KEY.as_bytes())?;
    ensure!(leaks.is_empty(), "the model key was left in {leaks:?}");
    Ok(())
}

/// Runs one phase and checks its exit, events, connections, leftover processes, the file
/// it must write and its last message.
async fn run_phase(world: &World, phase: &str, prompt: &str, file: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let out = world.container.codex_exec(phase, prompt, MODEL_KEY).await?;
    eprintln!("codex {phase}: {:.2?}", started.elapsed());
    check_codex_run(phase, &out, &world.server)?;
    let left = world.container.processes().await?;
    ensure!(
        left == ["sleep infinity"],
        "{phase} left processes behind: {left:?}"
    );
    ensure!(file.is_file(), "{phase} did not write {}", file.display());
    let name = file
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let last = world.dirs.home().join(format!("last-message-{phase}.txt"));
    let last = std::fs::read_to_string(last)?;
    ensure!(
        last.contains(&format!("Wrote {name}")),
        "{phase}'s last message: {last}"
    );
    Ok(())
}

#[tokio::test]
async fn codex_with_a_wrong_key_is_refused_and_fails() -> anyhow::Result<()> {
    let world = World::start().await?;
    let prompt = format!("$speckit-specify {SPEC_TEXT}");
    let out = world
        .container
        .codex_exec("specify", &prompt, "sk-wrong")
        .await?;
    ensure!(
        !out.status.success(),
        "codex succeeded with a wrong key: {}",
        describe(&out)
    );
    ensure!(!world.server.saw_key(), "the server saw the right key");
    ensure!(
        world.server.unauthorized_requests() >= 1,
        "no request was refused"
    );
    let spec = world.dirs.repo().join("specs");
    ensure!(!spec.exists(), "a phase ran without the model");
    Ok(())
}

/// One test's world: its network, the server on the gateway, the workspace and a job
/// container with Codex configured and Spec Kit initialised. Fields drop in order, so the
/// container goes before the network it is attached to.
struct World {
    container: JobContainer,
    server: ModelServer,
    dirs: Workspace,
    _network: TestNetwork,
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let started = Instant::now();
        let network = TestNetwork::create()?;
        let server = ModelServer::start(network.gateway(), MODEL_KEY).await?;
        let dirs = Workspace::create()?;
        let container = JobContainer::start(network.name(), &dirs).await?;
        check_reachable_from(container.id(), server.addr())?;
        write_codex_config(&dirs, &server)?;
        container.specify_init().await?;
        eprintln!(
            "set-up (network, server, container, specify init): {:.2?}",
            started.elapsed()
        );
        Ok(Self {
            container,
            server,
            dirs,
            _network: network,
        })
    }
}

/// The host directories bind-mounted as the repository and the agent's home.
struct Workspace {
    root: tempfile::TempDir,
}

impl Workspace {
    /// Creates `repo` (a git repository with one commit) and `home`, owned by uid 1000.
    fn create() -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("specrun-codex-agent-")
            .tempdir()?;
        let workspace = Self { root };
        std::fs::create_dir(workspace.repo())?;
        std::fs::create_dir(workspace.home())?;
        init_repo(&workspace.repo())?;
        give_to_job_user(workspace.root.path())?;
        Ok(workspace)
    }

    fn repo(&self) -> std::path::PathBuf {
        self.root.path().join("repo")
    }

    fn home(&self) -> std::path::PathBuf {
        self.root.path().join("home")
    }
}

/// `git init` with one commit holding a README.
fn init_repo(repo: &Path) -> anyhow::Result<()> {
    std::fs::write(repo.join("README.md"), "# Photos\n")?;
    for args in [
        &["init", "--quiet", "-b", "main"][..],
        &["add", "README.md"],
        &["commit", "--quiet", "-m", "Initial commit"],
    ] {
        let status = std::process::Command::new("git")
            .current_dir(repo)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "specrun test")
            .env("GIT_AUTHOR_EMAIL", "test@specrun.invalid")
            .env("GIT_COMMITTER_NAME", "specrun test")
            .env("GIT_COMMITTER_EMAIL", "test@specrun.invalid")
            .status()?;
        ensure!(status.success(), "git {} failed", args.join(" "));
    }
    Ok(())
}

/// Makes everything under `root` writable by the image's user (uid/gid 1000): chown when
/// running as root, else open the permissions.
fn give_to_job_user(root: &Path) -> anyhow::Result<()> {
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")?;
    let (program, args): (&str, Vec<&str>) = if as_root {
        ("chown", vec!["-R", "1000:1000"])
    } else {
        ("chmod", vec!["-R", "a+rwX"])
    };
    let status = std::process::Command::new(program)
        .args(args)
        .arg(root)
        .status()?;
    ensure!(status.success(), "{program} on {} failed", root.display());
    Ok(())
}

/// Writes `$CODEX_HOME/config.toml` pointing Codex at the server.
fn write_codex_config(dirs: &Workspace, server: &ModelServer) -> anyhow::Result<()> {
    let codex_home = dirs.home().join(".codex");
    std::fs::create_dir_all(&codex_home)?;
    std::fs::write(codex_home.join("config.toml"), server.codex_config_toml())?;
    give_to_job_user(&codex_home)
}

/// A job container on the test network; removed (forcibly) when dropped.
struct JobContainer {
    id: String,
}

impl JobContainer {
    /// `docker run -d` the job image as uid 1000 with the workspace mounted.
    async fn start(network: &str, dirs: &Workspace) -> anyhow::Result<Self> {
        let repo_mount = format!("{}:{REPO}", dirs.repo().display());
        let home_mount = format!("{}:{HOME}", dirs.home().display());
        let image = job_image();
        let out = docker(&[
            "run",
            "-d",
            "--network",
            network,
            "--user",
            "1000:1000",
            "-v",
            &repo_mount,
            "-v",
            &home_mount,
            "--label",
            "io.specrun.test=1",
            &image,
            "sleep",
            "infinity",
        ])
        .await?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(!id.is_empty(), "docker run printed no container id");
        Ok(Self { id })
    }

    fn id(&self) -> &str {
        &self.id
    }

    /// Initialises Spec Kit for Codex in the repository (offline, bundled templates).
    async fn specify_init(&self) -> anyhow::Result<()> {
        docker(&[
            "exec",
            "-w",
            REPO,
            &self.id,
            "specify",
            "init",
            "--here",
            "--force",
            "--integration",
            "codex",
            "--script",
            "sh",
            "--non-interactive",
            "--ignore-agent-tools",
        ])
        .await?;
        Ok(())
    }

    /// Runs one phase: `codex exec --json ... '<prompt>' </dev/null` in the repository,
    /// with model key `key` given to this exec only (from the docker CLI's environment, so
    /// it is not on any command line either).
    async fn codex_exec(&self, phase: &str, prompt: &str, key: &str) -> anyhow::Result<Output> {
        let last_message = format!("{HOME}/last-message-{phase}.txt");
        let script = r#"exec codex exec --json --dangerously-bypass-approvals-and-sandbox --ephemeral --skip-git-repo-check -o "$1" "$2" </dev/null"#;
        let codex_home = format!("CODEX_HOME={CODEX_HOME}");
        let rust_log = format!("RUST_LOG={CODEX_LOG}");
        let args = [
            "exec",
            "-w",
            REPO,
            "-e",
            MODEL_KEY_ENV,
            "-e",
            &codex_home,
            "-e",
            &rust_log,
            &self.id,
            "sh",
            "-c",
            script,
            "codex",
            &last_message,
            prompt,
        ];
        let mut cmd = Command::new("docker");
        cmd.args(args).env(MODEL_KEY_ENV, key);
        run(cmd, &format!("codex exec ({phase})")).await
    }
}

impl JobContainer {
    /// The command lines of the container's processes (besides the one listing them).
    async fn processes(&self) -> anyhow::Result<Vec<String>> {
        let out = docker(&["exec", &self.id, "python3", "-c", LIST_PROCESSES]).await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for JobContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.id])
            .output();
    }
}

/// Runs the docker CLI with `args`, failing on a non-zero exit.
async fn docker(args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    let what = format!("docker {}", args.first().unwrap_or(&""));
    let out = run(cmd, &what).await?;
    ensure!(out.status.success(), "{what} failed: {}", describe(&out));
    Ok(out)
}

/// Runs `cmd` with stdin closed, within [`EXEC_TIMEOUT`].
async fn run(mut cmd: Command, what: &str) -> anyhow::Result<Output> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(EXEC_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("running {what}"))
}

/// Exit status, stdout and stderr, for error messages.
fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks one `codex exec`: exit 0, the events on stdout, and (from its log on stderr)
/// that it opened connections to the server only.
fn check_codex_run(phase: &str, out: &Output, server: &ModelServer) -> anyhow::Result<()> {
    ensure!(
        out.status.success(),
        "codex {phase} failed: {}",
        describe(out)
    );
    let events = parse_events(&out.stdout)?;
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|event| event.get("type").and_then(Value::as_str))
        .collect();
    ensure!(
        kinds.first() == Some(&"thread.started") && kinds.contains(&"turn.completed"),
        "{phase}: unexpected event sequence {kinds:?}"
    );
    let command = events
        .iter()
        .filter(|event| event["type"] == "item.completed")
        .map(|event| &event["item"])
        .find(|item| item["type"] == "command_execution")
        .with_context(|| format!("{phase}: no completed command_execution in {kinds:?}"))?;
    ensure!(
        command["exit_code"] == 0 && command["status"] == "completed",
        "{phase}: the command failed: {command}"
    );
    let usage = &events
        .iter()
        .find(|event| event["type"] == "turn.completed")
        .context("no turn.completed")?["usage"];
    ensure!(
        usage["input_tokens"].as_u64().unwrap_or(0) > 0 && usage["output_tokens"] == 84,
        "{phase}: usage {usage} is not the two responses' usage"
    );
    check_connections(phase, &String::from_utf8_lossy(&out.stderr), server)
}

/// Parses Codex's JSON Lines stdout.
fn parse_events(stdout: &[u8]) -> anyhow::Result<Vec<Value>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// Every `starting new connection: URL` Codex logged must be to the server.
fn check_connections(phase: &str, stderr: &str, server: &ModelServer) -> anyhow::Result<()> {
    let ours = format!("http://{}/", server.addr());
    let attempts: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split("starting new connection: ").nth(1))
        .map(str::trim)
        .collect();
    ensure!(
        !attempts.is_empty(),
        "{phase}: no connection logged:\n{stderr}"
    );
    let others: Vec<&&str> = attempts.iter().filter(|url| **url != ours).collect();
    ensure!(others.is_empty(), "{phase}: codex connected to {others:?}");
    Ok(())
}

/// The three documents hold the scripted contents; feature.json names the directory.
fn check_documents(dirs: &Workspace, feature_dir: &Path) -> anyhow::Result<()> {
    let read = |file: &str| std::fs::read_to_string(feature_dir.join(file));
    ensure!(
        read("spec.md")? == spec_markdown(SPEC_TEXT),
        "spec.md differs"
    );
    let name = feature_dir_name(SPEC_TEXT);
    let plan = read("plan.md")?;
    ensure!(
        plan.starts_with(&format!("# Implementation Plan: {name}\n"))
            && plan.contains("## Summary"),
        "plan.md: {plan}"
    );
    let tasks = read("tasks.md")?;
    ensure!(
        tasks.starts_with(&format!("# Tasks: {name}\n")) && tasks.contains("- [ ] T001"),
        "tasks.md: {tasks}"
    );
    let feature: Value = serde_json::from_str(&std::fs::read_to_string(
        dirs.repo().join(".specify/feature.json"),
    )?)?;
    ensure!(feature["feature_directory"] == format!("specs/{name}"));
    Ok(())
}

/// Two `POST /v1/responses` per phase, all authorised, the key never recorded; the first
/// of each pair carries the skill Codex injected for the prompt, the second the tool output.
fn check_requests(server: &ModelServer) -> anyhow::Result<()> {
    let requests = server.requests();
    ensure!(server.saw_key(), "the server never saw the key");
    ensure!(
        server.unauthorized_requests() == 0,
        "some requests were refused"
    );
    ensure!(
        requests.len() == 6,
        "expected 6 requests, got {}",
        requests.len()
    );
    for (index, request) in requests.iter().enumerate() {
        ensure!(
            request["method"] == "POST" && request["path"] == "/v1/responses",
            "request {index}: {} {}",
            request["method"],
            request["path"]
        );
        ensure!(request["body"]["stream"] == true && request["body"]["model"] == "gpt-test");
        ensure!(
            !request.to_string().contains(MODEL_KEY),
            "request {index} recorded the key"
        );
        let tools = tool_names(&request["body"]);
        ensure!(
            tools.contains(&"exec_command".to_owned()),
            "tools: {tools:?}"
        );
        let input = request["body"]["input"].to_string();
        let skill = ["speckit-specify", "speckit-plan", "speckit-tasks"][index / 2];
        ensure!(
            input.contains(&format!("<name>{skill}</name>")),
            "request {index} lacks the {skill} skill"
        );
        let has_output = input.contains("\"function_call_output\"");
        ensure!(
            has_output == (index % 2 == 1),
            "request {index}: tool output misplaced"
        );
    }
    Ok(())
}

/// The names of the function tools offered in a request body.
fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|tool| tool.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir` (not following symlinks) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            found.extend(files_containing(&entry.path(), needle)?);
        } else if kind.is_file() {
            let bytes = std::fs::read(entry.path())?;
            if bytes.windows(needle.len()).any(|window| window == needle) {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}
