//! The real Claude Code CLI in the real job image takes a run through specrun's pipeline:
//! specify, plan and tasks against the scripted Messages API server, on a Docker network
//! the test created (`--internal`: the gateway, where the server listens, is the only
//! host the container can reach), to a pull request on the fake forge.
//!
//! The agents file extends the built-in `claude` profile with the network and
//! `ANTHROPIC_BASE_URL`; the API key travels as the profile's secret, per exec only. Each
//! phase keeps the built-in command line, wrapped so Claude Code's own debug log (which
//! names every host it fails to reach) ends up in the phase's stderr log.
//!
//! Needs a Docker engine and the job image (`scripts/build-image.sh`).

use serde_json::Value;
use specrun_core::agent::AgentProfile;
use specrun_core::request::Publish;
use specrun_core::{Phase, RunStatus};
use specrun_runner::config::Secret;
use specrun_tests::anthropic_server::AnthropicServer;
use specrun_tests::harness::{authority, Harness, CANARY_TOKEN};
use specrun_tests::model_server::TestNetwork;

type TestResult = anyhow::Result<()>;

const API_KEY: &str = "sk-ant-specrun-canary-key-9d2f61";

const SPEC_TEXT: &str = "Add a photo album organiser that groups photos by date";

/// What Claude Code's debug log says when it tries a host it cannot reach (DNS fails on
/// the internal network) or exports telemetry.
const OTHER_HOST_SIGNS: [&str; 6] = [
    "EAI_AGAIN",
    "ENOTFOUND",
    "ECONNREFUSED",
    "anthropic.com",
    "statsig",
    "event logging export",
];

/// The built-in `claude` command of `phase`, run by `sh` so that Claude Code's debug log
/// for the phase is printed on stderr afterwards; the exit code is Claude Code's.
fn phase_with_debug_log(profile: &AgentProfile, phase: Phase) -> anyhow::Result<Value> {
    let argv = profile
        .phase_commands
        .get(&phase)
        .ok_or_else(|| anyhow::anyhow!("no {phase} command"))?;
    let log = "/workspace/home/claude-debug-{phase}.log";
    let script = format!(
        "\"$@\" --debug-file {log}; rc=$?; echo '--- claude debug log' >&2; cat {log} >&2; exit $rc"
    );
    let mut wrapped = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned()];
    wrapped.extend(argv.iter().cloned());
    Ok(Value::from(wrapped))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_claude_code_cli_takes_a_run_to_a_pull_request() -> TestResult {
    let started = std::time::Instant::now();
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "album", "# Album\n")?;
    let network = TestNetwork::create()?;
    let model = AnthropicServer::start(network.gateway(), API_KEY).await?;

    let builtin = AgentProfile::builtin("claude")?;
    let mut agents = format!(
        "default = \"claude-test\"\n\n[agents.claude-test]\nextends = \"claude\"\n\
         network = \"network:{}\"\nenv = {{ ANTHROPIC_BASE_URL = \"{}\" }}\n\n\
         [agents.claude-test.phases]\n",
        network.name(),
        model.base_url()
    );
    for phase in [Phase::Specify, Phase::Plan, Phase::Tasks] {
        // A JSON array of strings is a TOML array of basic strings.
        agents.push_str(&format!(
            "{phase} = {}\n",
            phase_with_debug_log(&builtin, phase)?
        ));
    }
    h.use_agents_file(&agents)?;
    h.config
        .agent_secrets
        .insert("ANTHROPIC_API_KEY".to_owned(), Secret::new(API_KEY));

    let mut request = h.request("octo/album", SPEC_TEXT);
    request.agent = None;
    request.publish = Some(Publish::Pr);
    let record = h.run(request).await?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(record.agent.name, "claude-test");
    assert_eq!(record.agent.integration, "claude");
    let version = record.agent.version.clone().unwrap_or_default();
    assert!(version.contains("(Claude Code)"), "{version:?}");

    let branch = record.branch_name.clone().unwrap_or_default();
    assert_eq!(branch, "001-add-photo-album-organiser");
    for file in ["spec.md", "plan.md", "tasks.md"] {
        let path = format!("specs/{branch}/{file}");
        let text = h.git().read_file("octo/album", &branch, &path)?;
        assert!(
            text.as_deref()
                .is_some_and(|t| t.contains("photo album") || t.contains(&branch)),
            "claude wrote {path}: {text:?}"
        );
    }
    assert!(
        h.git()
            .read_file(
                "octo/album",
                &branch,
                ".claude/skills/speckit-specify/SKILL.md"
            )?
            .is_some(),
        "Spec Kit was initialised for claude"
    );
    assert_eq!(h.forge.pulls("octo", "album").len(), 1);

    // Claude Code's stream-json events are kept and summarised per phase; its debug log
    // shows it talked to the scripted API and tried no other host.
    for (phase, tool) in [
        (Phase::Specify, "Write"),
        (Phase::Plan, "Bash"),
        (Phase::Tasks, "Bash"),
    ] {
        let summary: Value = serde_json::from_str(
            &h.artifact(&record, Some(phase), "agent-summary.json")
                .await?,
        )?;
        let tools = summary["tools"].as_array().cloned().unwrap_or_default();
        assert!(
            tools.iter().any(|t| t["tool"] == tool),
            "{phase}: {summary}"
        );
        assert!(
            tools.iter().all(|t| t["is_error"] == false),
            "{phase}: {summary}"
        );
        assert_eq!(summary["outcome"], "success", "{phase}: {summary}");
        assert!(
            summary["input_tokens"].as_u64().unwrap_or(0) > 0,
            "{phase}: {summary}"
        );
        let message = record.phase(phase).message.clone().unwrap_or_default();
        assert!(message.contains("claude made"), "{phase}: {message}");

        let stderr = h.artifact(&record, Some(phase), "agent.stderr.log").await?;
        assert!(
            stderr.contains("[API REQUEST] /v1/messages"),
            "{phase}: no debug log on stderr:\n{stderr}"
        );
        for sign in OTHER_HOST_SIGNS {
            assert!(
                !stderr.contains(sign),
                "{phase}: Claude Code tried another host ({sign}):\n{stderr}"
            );
        }
    }

    // What Claude Code sent: streamed Messages API turns with the key, two per phase.
    let requests = model.requests();
    assert!(model.saw_key());
    assert_eq!(model.unauthorized_requests(), 0, "{requests:#?}");
    for request in &requests {
        assert_eq!(
            (request["method"].as_str(), request["path"].as_str()),
            (Some("POST"), Some("/v1/messages")),
            "only the Messages API is called"
        );
        assert_eq!(request["body"]["stream"], true);
        assert!(
            request["headers"]["user-agent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("claude-cli/")),
            "{}",
            request["headers"]
        );
    }
    assert_eq!(requests.len(), 6, "two model turns a phase");
    let bodies = serde_json::to_string(&requests)?;
    for command in ["/speckit-specify", "/speckit-plan", "/speckit-tasks"] {
        assert!(
            bodies.contains(&format!("<command-name>{command}</command-name>")),
            "{command} reached the model as an expanded skill"
        );
    }
    assert!(
        !bodies.contains(API_KEY),
        "the key only travels in x-api-key"
    );

    // Neither the API key nor the forge token shows in the state or the artifacts.
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert!(
            !text.contains(API_KEY) && !text.contains(CANARY_TOKEN),
            "secret in {}",
            file.display()
        );
    }
    eprintln!("claude run took {:?}", started.elapsed());
    h.assert_clean(&record).await
}

/// Claude Code's default network, `egress`: no route anywhere, the Messages API (here the
/// scripted server on the host's loopback, the one allowed destination) reached only
/// through the runner's egress proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_claude_code_cli_reaches_its_model_only_through_the_egress_proxy() -> TestResult {
    let mut h = Harness::start().await?;
    let model = AnthropicServer::start("127.0.0.1".parse()?, API_KEY).await?;
    let base_url = model.base_url();
    let model_host = authority(&base_url);
    let agents = format!(
        "[agents.claude-egress]\nextends = \"claude\"\nnetwork = \"egress\"\negress = [\"{model_host}\"]\nenv = {{ ANTHROPIC_BASE_URL = \"{base_url}\" }}\n\n[agents.claude-egress.gateway]\nenabled = false\n"
    );
    h.use_agents_file(&agents)?;
    h.config
        .agent_secrets
        .insert("ANTHROPIC_API_KEY".to_owned(), Secret::new(API_KEY));
    let url = h.git().create_repo("egress-claude", "# Album\n")?;
    let mut request = h.request(&url, SPEC_TEXT);
    request.agent = Some("claude-egress".to_owned());
    let record = h.run(request).await?;
    h.assert_model_reached_through_proxy(&record, &model_host)
        .await?;
    Ok(())
}
