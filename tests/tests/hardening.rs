//! The job container and the workspace under hostile conditions: the live container's
//! hardening as `docker inspect` shows it, an agent that plants symbolic links, secrets
//! the agent prints in encoded forms, and a container killed from outside mid-phase.

use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_runner::config::Secret;
use specrun_tests::harness::{failed_with, Harness};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// An agents file with one agent, `probe`, that runs `script` (sh) in the specify phase
/// before the scripted agent writes the spec; the text is `$1`.
fn probe_agent(h: &mut Harness, script: &str, extra: &str) -> anyhow::Result<()> {
    h.use_shell_agent("probe", &[("specify", script)], extra)
}

fn probe_request(h: &Harness, url: &str) -> specrun_core::request::RunRequest {
    let mut request = h.request(url, "Record the hardening of the job container");
    request.agent = Some("probe".to_owned());
    request
}

/// `docker inspect` of the first job container of `runner` that appears within `wait`.
async fn inspect_first_job_container(
    runner: String,
    wait: Duration,
) -> anyhow::Result<serde_json::Value> {
    let label = format!("label=io.specrun.runner-id={runner}");
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        let out = tokio::process::Command::new("docker")
            .args(["ps", "-q", "--filter", &label])
            .output()
            .await?;
        if let Some(id) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
        {
            let out = tokio::process::Command::new("docker")
                .args(["inspect", id])
                .output()
                .await?;
            let parsed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            return Ok(parsed[0].clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no job container appeared within {wait:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_job_container_is_hardened() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("hard", "# Hard\n")?;
    probe_agent(
        &mut h,
        "echo uid=$(id -u); touch .git/probe 2>/dev/null && echo git=writable || echo git=read-only; \
         touch /usr/probe 2>/dev/null && echo root=writable || echo root=read-only; \
         test -e /var/run/docker.sock && echo docker=socket || echo docker=none; sleep 3; \
         exec specrun-scripted-agent specify \"$1\"",
        "",
    )?;
    let inspect = tokio::spawn(inspect_first_job_container(
        h.config.runner_id.clone(),
        Duration::from_secs(60),
    ));
    let record = h.run(probe_request(&h, &url)).await?;
    let container = inspect.await??;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);

    let host = &container["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host["SecurityOpt"]
        .as_array()
        .is_some_and(|o| o.iter().any(|v| v == "no-new-privileges")));
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["PidsLimit"], 512);
    assert_eq!(host["Memory"], 4_i64 * 1024 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 2_000_000_000_i64);
    assert_eq!(
        host["NetworkMode"], "none",
        "the scripted agent gets no network"
    );
    assert_eq!(container["Config"]["User"], "1000:1000");
    assert_eq!(
        container["Config"]["Labels"]["io.specrun.run-id"],
        record.run_id.as_str()
    );
    let mounts = container["Mounts"].as_array().cloned().unwrap_or_default();
    assert!(mounts
        .iter()
        .all(|m| !m["Source"].as_str().unwrap_or("").contains("docker.sock")));
    let git_mount = mounts
        .iter()
        .find(|m| m["Destination"] == "/workspace/repo/.git");
    assert_eq!(
        git_mount.map(|m| m["RW"].clone()),
        Some(serde_json::json!(false))
    );
    let env = container["Config"]["Env"].to_string();
    assert!(!env.contains("SPECRUN_GIT_TOKEN") && !env.contains("x-access-token"));

    // What the agent saw from inside.
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    for seen in ["uid=1000", "git=read-only", "root=read-only", "docker=none"] {
        assert!(log.contains(seen), "{seen} in {log}");
    }
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_by_the_agent_are_not_followed() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("links", "# Links\n")?;
    probe_agent(
        &mut h,
        "mkdir -p specs/001-links && ln -s /etc/passwd specs/001-links/spec.md && \
         printf '{\"feature_directory\": \"specs/001-links\"}' > .specify/feature.json",
        "",
    )?;
    let record = h.run(probe_request(&h, &url)).await?;
    let error = failed_with(&record, "unsafe_output", Phase::Specify)?;
    assert!(error.message.contains("symbolic link"), "{}", error.message);
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert!(
            !text.contains("root:x:0:0"),
            "a host file leaked into {}",
            file.display()
        );
    }
    assert_eq!(h.git().branches("links")?, vec!["main".to_owned()]);
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_to_a_host_file_is_left_out_of_the_commit() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("linked", "# Linked\n")?;
    probe_agent(
        &mut h,
        "specrun-scripted-agent specify \"$1\" && d=$(sed -n 's/.*\"\\(specs\\/[^\"]*\\)\".*/\\1/p' .specify/feature.json) && ln -s /etc/passwd \"$d/passwd\"",
        "",
    )?;
    let record = h.run(probe_request(&h, &url)).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    let linked = h
        .git()
        .read_file("linked", &branch, &format!("specs/{branch}/passwd"))?;
    assert_eq!(linked, None, "a symbolic link is never committed");
    assert!(h
        .git()
        .read_file("linked", &branch, &format!("specs/{branch}/spec.md"))?
        .is_some());
    let commit: serde_json::Value = serde_json::from_str(
        &h.artifact(&record, Some(Phase::Commit), "commit.json")
            .await?,
    )?;
    assert_eq!(
        commit["left_out"],
        serde_json::json!([{"path": format!("specs/{branch}/passwd"), "change": "added", "reason": "symbolic_link"}])
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_the_agent_prints_are_masked_in_every_form() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("masked", "# Masked\n")?;
    let secret = "agent-canary/secret+value=42";
    h.config
        .agent_secrets
        .insert("PROBE_SECRET".to_owned(), Secret::new(secret));
    probe_agent(
        &mut h,
        "printf 'raw %s\\n' \"$PROBE_SECRET\"; printf '%s' \"$PROBE_SECRET\" | base64; printf 'x%s' \"$PROBE_SECRET\" | base64; \
         python3 -c 'import os,urllib.parse,json; s=os.environ[\"PROBE_SECRET\"]; print(urllib.parse.quote(s, safe=\"\")); print(json.dumps(s))'; \
         printf 'split %s' \"${PROBE_SECRET%%/*}\"; sleep 0.3; printf '/%s\\n' \"${PROBE_SECRET#*/}\"; \
         printf 'err %s\\n' \"$PROBE_SECRET\" >&2; exec specrun-scripted-agent specify \"$1\"",
        "secret_env = [\"PROBE_SECRET\"]",
    )?;
    let record = h.run(probe_request(&h, &url)).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let stdout = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    let stderr = h
        .artifact(&record, Some(Phase::Specify), "agent.stderr.log")
        .await?;
    assert!(
        stdout.contains("raw ***") && stdout.contains("split ***") && stderr.contains("err ***"),
        "{stdout}\n{stderr}"
    );
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let url_encoded = "agent-canary%2Fsecret%2Bvalue%3D42";
    for leaked in [secret, &encoded[..20], url_encoded, "agent-canary"] {
        assert!(
            !stdout.contains(leaked) && !stderr.contains(leaked),
            "{leaked:?} in {stdout}"
        );
    }
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert!(!text.contains(secret), "secret in {}", file.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_from_outside_fails_the_run_and_keeps_its_logs() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("killed", "# Killed\n")?;
    probe_agent(&mut h, "echo started; sleep 60", "")?;
    let runner = h.config.runner_id.clone();
    let killer = tokio::spawn(async move {
        let container = inspect_first_job_container(runner, Duration::from_secs(60)).await?;
        let id = container["Id"].as_str().unwrap_or_default().to_owned();
        // Pull the rug once the agent itself runs (its `sleep 60`), not merely the
        // container: on a loaded machine the phases before it take a while.
        for _ in 0..600 {
            let top = tokio::process::Command::new("docker")
                .args(["top", &id])
                .output()
                .await?;
            if String::from_utf8_lossy(&top.stdout).contains("sleep 60") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::process::Command::new("docker")
            .args(["kill", &id])
            .output()
            .await?;
        anyhow::Ok(())
    });
    let record = h.run(probe_request(&h, &url)).await?;
    killer.await??;
    assert_eq!(record.status, RunStatus::Failed);
    let error = record
        .error
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no error"))?;
    assert_eq!(error.phase, Some(Phase::Specify));
    assert!(
        matches!(
            error.code.to_string().as_str(),
            "container_crashed" | "agent_phase_failed"
        ),
        "{error:#?}"
    );
    assert!(!error.remediation.is_empty());
    assert!(h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?
        .contains("started"));
    assert_eq!(record.phase(Phase::Cleanup).status, PhaseStatus::Succeeded);
    h.assert_clean(&record).await
}
