//! The model gateway end to end: the real Codex CLI, Claude Code and Gemini CLI take runs
//! through specify, plan and tasks with `network = "egress"` and no model host on their
//! allow-list, holding only a run-scoped token; the runner's gateway swaps in the real key
//! (a canary) and forwards to the scripted model servers on the host's loopback. The
//! canary shows nowhere in the container (every process's environment and command line,
//! read by a probe while the agent runs; `docker inspect`), the logs, the artifacts or the
//! state; the token counts in run.json are what the servers reported, per phase. Budgets
//! end a run `budget_exceeded` mid-phase with its logs kept; a silent agent ends
//! `phase_stalled`.
//!
//! Needs a Docker engine, iptables and the job image (`scripts/build-image.sh`).

use serde_json::Value;
use specrun_core::agent::AgentProfile;
use specrun_core::model_usage::{Budget, Limits, Price, PriceTable};
use specrun_core::request::Publish;
use specrun_core::state::RunRecord;
use specrun_core::{Phase, RunStatus};
use specrun_runner::config::Secret;
use specrun_tests::anthropic_server::AnthropicServer;
use specrun_tests::emulator::SpecrunProcess;
use specrun_tests::gemini_server::{GeminiServer, GEMINI_TEST_MODEL, OUTPUT_TOKENS};
use specrun_tests::harness::{failed_with, watch_inspections, Harness, CANARY_TOKEN};
use specrun_tests::model_server::{ModelServer, MODEL, MODEL_KEY_ENV};
use specrun_tests::world::{post_runs, run_request, World};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// The real key: only the gateway (in the runner) may hold it.
const REAL_KEY: &str = "sk-specrun-gateway-canary-key-61e0b7";

const SPEC_TEXT: &str = "Add a photo album organiser that groups photos by date";

const AGENT_PHASES: [Phase; 3] = [Phase::Specify, Phase::Plan, Phase::Tasks];

/// Runs the agent's command (`"$@"`) in the background and, while it runs, prints the
/// environment and command line of every process in the container, then every file the
/// agent's HOME and /tmp hold, hex-encoded (so the runner's redaction, which would mask
/// the key, cannot hide a leak), between markers on stderr. The exit code is the agent's.
const PROBE: &str = r#""$@" & agent=$!
while kill -0 $agent 2>/dev/null; do
  sleep 0.3
  { printf 'PROBE-BEGIN '; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do od -An -tx1 -v "$f" 2>/dev/null; done | tr -d ' \n'; printf ' PROBE-END\n'; } >&2
done
wait $agent; rc=$?
{ printf 'PROBE-BEGIN '; find /workspace/home /tmp -type f -size -2M -exec od -An -tx1 -v {} + 2>/dev/null | tr -d ' \n'; printf ' PROBE-END\n'; } >&2
exit $rc"#;

/// `phase`'s built-in command of `profile`, with `options` after its first two words
/// (`codex exec`), wrapped in [`PROBE`], as a TOML array.
fn probed(profile: &AgentProfile, phase: Phase, options: &[&str]) -> anyhow::Result<String> {
    let argv = profile
        .phase_commands
        .get(&phase)
        .ok_or_else(|| anyhow::anyhow!("no {phase} command"))?;
    let mut wrapped = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        PROBE.to_owned(),
        "sh".to_owned(),
    ];
    let split = argv.len().min(2);
    wrapped.extend(argv[..split].iter().cloned());
    wrapped.extend(options.iter().map(|o| (*o).to_owned()));
    wrapped.extend(argv[split..].iter().cloned());
    // A JSON array of strings is a TOML array of basic strings.
    Ok(Value::from(wrapped).to_string())
}

/// Every probe's dump in a log, decoded.
fn probe_dumps(log: &str) -> Vec<Vec<u8>> {
    log.lines()
        .filter_map(|line| line.strip_prefix("PROBE-BEGIN "))
        .filter_map(|rest| rest.strip_suffix(" PROBE-END"))
        .map(|hex| {
            (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An agents file whose default, `NAME`, extends the built-in `base` with the gateway's
/// upstream and the runner's key variable, each agent phase probed and given `options`;
/// `extra` is more TOML. The built-in's own gateway configuration (home files, variables)
/// is what the agent gets.
fn gateway_agents_file(
    base: &str,
    name: &str,
    upstream: &str,
    extra: &str,
    options: &[&str],
) -> anyhow::Result<String> {
    let builtin = AgentProfile::builtin(base)?;
    let mut text = format!(
        "default = \"{name}\"\n\n[agents.{name}]\nextends = \"{base}\"\n\n\
         [agents.{name}.gateway]\nupstream = \"{upstream}\"\nkey_env = \"{MODEL_KEY_ENV}\"\n\n{extra}\n\
         [agents.{name}.phases]\n"
    );
    for phase in AGENT_PHASES {
        text.push_str(&format!(
            "{phase} = {}\n",
            probed(&builtin, phase, options)?
        ));
    }
    Ok(text)
}

/// What the tests add to the built-in codex profile's gateway configuration, on the
/// command line: the scripted model, no retries, nothing that calls other hosts (see
/// `ModelServer::codex_config_toml`).
const CODEX_TEST_OPTIONS: [&str; 12] = [
    "-c",
    "model=\"gpt-test\"",
    "-c",
    "web_search=\"disabled\"",
    "-c",
    "analytics.enabled=false",
    "-c",
    "features.plugins=false",
    "-c",
    "model_providers.specrun-gateway.request_max_retries=0",
    "-c",
    "model_providers.specrun-gateway.stream_max_retries=0",
];

/// A price for the scripted model, so cost is counted.
fn test_prices() -> PriceTable {
    PriceTable(
        [(
            MODEL.to_owned(),
            Price {
                input: 2.0,
                cached_input: None,
                output: 8.0,
            },
        )]
        .into_iter()
        .collect(),
    )
}

/// A harness whose runner holds the real key and runs the codex-gw agent.
async fn codex_harness(model: &ModelServer) -> anyhow::Result<Harness> {
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "album", "# Album\n")?;
    let upstream = format!("http://{}", model.addr());
    let agents = gateway_agents_file("codex", "codex-gw", &upstream, "", &CODEX_TEST_OPTIONS)?;
    h.use_agents_file(&agents)?;
    h.config
        .agent_secrets
        .insert(MODEL_KEY_ENV.to_owned(), Secret::new(REAL_KEY));
    h.config.model_prices = test_prices();
    Ok(h)
}

fn pr_request(h: &Harness) -> specrun_core::RunRequest {
    let mut request = h.request("octo/album", SPEC_TEXT);
    request.agent = None;
    request.publish = Some(Publish::Pr);
    request
}

/// Runs `request`, inspecting every job container while it runs; returns the record and
/// what `docker inspect` showed.
async fn run_inspected(
    h: &Harness,
    request: specrun_core::RunRequest,
) -> anyhow::Result<(RunRecord, Vec<String>)> {
    let stop = Arc::new(Mutex::new(false));
    let watcher = watch_inspections(h.config.runner_id.clone(), stop.clone());
    let record = h.run(request).await;
    *stop
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    let inspections = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
    Ok((record?, inspections))
}

/// The real key shows in no process of the container while the agent ran (and the probe
/// did see the agent, with the token in place of the key), in no `docker inspect`, in no
/// file of the state store (logs, artifacts, run and phase JSON).
async fn assert_key_nowhere(
    h: &Harness,
    record: &RunRecord,
    inspections: &[String],
    token_variable: &str,
    phases: &[Phase],
) -> TestResult {
    for phase in phases {
        let log = h.artifact(record, Some(*phase), "agent.stderr.log").await?;
        let dumps = probe_dumps(&log);
        anyhow::ensure!(
            !dumps.is_empty(),
            "{phase}: the probe printed nothing:\n{log}"
        );
        let token_set = format!("{token_variable}=specrun-gw-");
        anyhow::ensure!(
            dumps.iter().any(|d| contains(d, token_set.as_bytes())),
            "{phase}: the probe never saw the agent's token in an environment"
        );
        for dump in &dumps {
            anyhow::ensure!(
                !contains(dump, REAL_KEY.as_bytes()),
                "{phase}: the real key is in a process of the container"
            );
        }
    }
    anyhow::ensure!(
        !inspections.is_empty(),
        "the live container was never inspected"
    );
    for inspection in inspections {
        anyhow::ensure!(
            !inspection.contains(REAL_KEY) && !inspection.contains(CANARY_TOKEN),
            "a secret shows in docker inspect"
        );
    }
    for file in h.state_files() {
        let bytes = std::fs::read(&file)?;
        anyhow::ensure!(
            !contains(&bytes, REAL_KEY.as_bytes()) && !contains(&bytes, CANARY_TOKEN.as_bytes()),
            "secret in {}",
            file.display()
        );
    }
    Ok(())
}

/// The last phase's probe read `needle` in the agent's files (so they were searched for
/// the key).
async fn assert_probe_read(h: &Harness, record: &RunRecord, needle: &[u8]) -> TestResult {
    let log = h
        .artifact(record, Some(Phase::Tasks), "agent.stderr.log")
        .await?;
    anyhow::ensure!(
        probe_dumps(&log).iter().any(|d| contains(d, needle)),
        "the probe never read the agent's files"
    );
    Ok(())
}

/// What a scripted server reported for `requests` (its records, in order): input tokens
/// are the body's JSON length / 4 (both servers), output 42 per answer.
fn reported_input(requests: &[Value]) -> u64 {
    requests
        .iter()
        .map(|r| (r["body"].to_string().len() / 4) as u64)
        .sum()
}

/// The run's usage, after checking that its input tokens are what the scripted server
/// reported for `requests`, in the record and as stored in run.json under the
/// OpenTelemetry name.
fn run_usage_as_reported(
    h: &Harness,
    record: &RunRecord,
    requests: &[Value],
) -> anyhow::Result<specrun_core::model_usage::Usage> {
    let run = record
        .usage
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no run usage"))?;
    assert_eq!(run.tokens.input, reported_input(requests));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(
        h.state
            .path()
            .join(format!("runs/{}/run.json", record.run_id)),
    )?)?;
    assert_eq!(
        json["usage"]["gen_ai.usage.input_tokens"],
        reported_input(requests)
    );
    Ok(run)
}

/// The run succeeded with one pull request, and spec.md, plan.md and tasks.md are on its
/// branch.
fn assert_one_pull_request_with_the_documents(h: &Harness, record: &RunRecord) -> TestResult {
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(h.forge.pulls("octo", "album").len(), 1);
    let branch = record.branch_name.clone().unwrap_or_default();
    for file in ["spec.md", "plan.md", "tasks.md"] {
        let path = format!("specs/{branch}/{file}");
        assert!(
            h.git().read_file("octo/album", &branch, &path)?.is_some(),
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_codex_cli_runs_through_the_gateway_to_a_pull_request() -> TestResult {
    let model = ModelServer::start("127.0.0.1".parse()?, REAL_KEY).await?;
    let h = codex_harness(&model).await?;
    let (record, inspections) = run_inspected(&h, pr_request(&h)).await?;
    assert_one_pull_request_with_the_documents(&h, &record)?;
    assert!(model.saw_key(), "the gateway sent the real key upstream");
    assert_eq!(model.unauthorized_requests(), 0);

    // Usage per phase is what the server reported: two answers a phase, in order.
    let requests = model.requests();
    assert_eq!(requests.len(), 6, "two model turns a phase");
    let mut cost = 0.0;
    for (index, phase) in AGENT_PHASES.into_iter().enumerate() {
        let usage = record
            .phase(phase)
            .usage
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{phase} has no usage"))?;
        let input = reported_input(&requests[2 * index..2 * index + 2]);
        assert_eq!(usage.requests, 2, "{phase}");
        assert_eq!(usage.tokens.input, input, "{phase}");
        assert_eq!(usage.tokens.output, 84, "{phase}");
        assert_eq!(usage.models, [MODEL], "{phase}");
        let expected = input as f64 * 2.0 / 1e6 + 84.0 * 8.0 / 1e6;
        assert!(
            (usage.cost_usd - expected).abs() < 1e-9,
            "{phase}: {}",
            usage.cost_usd
        );
        cost += expected;
    }
    let run = run_usage_as_reported(&h, &record, &requests)?;
    assert_eq!(run.requests, 6);
    assert_eq!(run.tokens.output, 6 * 42);
    assert!((run.cost_usd - cost).abs() < 1e-9);
    let pr = &h.forge.pulls("octo", "album")[0];
    let body = pr.body.clone().unwrap_or_default();
    assert!(
        body.contains("model request"),
        "the PR body shows usage: {body}"
    );

    // No model host on the allow-list: the proxy saw no request at all.
    let egress = h
        .artifact(&record, None, "egress.log")
        .await
        .unwrap_or_default();
    assert!(!egress.contains("allowed"), "{egress}");

    assert_key_nowhere(&h, &record, &inspections, "CODEX_API_KEY", &AGENT_PHASES).await?;
    assert_probe_read(&h, &record, b"env_key = \"CODEX_API_KEY\"").await?;
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_claude_code_cli_runs_through_the_gateway_to_a_pull_request() -> TestResult {
    let model = AnthropicServer::start("127.0.0.1".parse()?, REAL_KEY).await?;
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "album", "# Album\n")?;
    let agents = gateway_agents_file("claude", "claude-gw", &model.base_url(), "", &[])?;
    h.use_agents_file(&agents)?;
    h.config
        .agent_secrets
        .insert(MODEL_KEY_ENV.to_owned(), Secret::new(REAL_KEY));
    let (record, inspections) = run_inspected(&h, pr_request(&h)).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(h.forge.pulls("octo", "album").len(), 1);
    assert!(model.saw_key());
    assert_eq!(model.unauthorized_requests(), 0);

    // Token usage: what the server reported for its /v1/messages answers, per phase.
    let requests = model.requests();
    let messages: Vec<Value> = requests
        .iter()
        .filter(|r| r["path"] == "/v1/messages")
        .cloned()
        .collect();
    let run = record
        .usage
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no run usage"))?;
    assert_eq!(run.requests as usize, requests.len());
    assert_eq!(run.tokens.input, reported_input(&messages));
    assert_eq!(run.tokens.output, 42 * messages.len() as u64);
    let per_phase: u64 = AGENT_PHASES
        .iter()
        .filter_map(|p| record.phase(*p).usage.as_ref())
        .map(|u| u.tokens.input)
        .sum();
    assert_eq!(per_phase, run.tokens.input, "the phases add up to the run");
    for phase in AGENT_PHASES {
        let usage = record.phase(phase).usage.clone().unwrap_or_default();
        assert!(
            usage.requests > 0 && usage.tokens.output > 0,
            "{phase}: {usage:?}"
        );
    }

    assert_key_nowhere(
        &h,
        &record,
        &inspections,
        "ANTHROPIC_API_KEY",
        &AGENT_PHASES,
    )
    .await?;
    h.assert_clean(&record).await
}

/// A run whose budget is spent in its first phase: the gateway refuses the next call,
/// Codex fails, the run ends `budget_exceeded` in specify with the logs kept and nothing
/// pushed.
async fn assert_budget_ends_the_run(budget: Budget, name: &str) -> TestResult {
    let model = ModelServer::start("127.0.0.1".parse()?, REAL_KEY).await?;
    let mut h = codex_harness(&model).await?;
    h.config.model_budget = budget;
    let record = h.run(pr_request(&h)).await?;
    let error = failed_with(&record, "budget_exceeded", Phase::Specify)?;
    assert!(
        error
            .message
            .contains(&format!("run budget {name} is spent")),
        "{}",
        error.message
    );
    assert_eq!(
        model.requests().len(),
        1,
        "the second call never reached the model"
    );
    let log = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    assert!(log.contains("budget"), "codex showed the refusal: {log}");
    let usage = record
        .phase(Phase::Specify)
        .usage
        .clone()
        .unwrap_or_default();
    assert_eq!(usage.requests, 1, "the partial usage is kept");
    assert!(
        h.forge.pulls("octo", "album").is_empty(),
        "nothing was published"
    );
    assert_eq!(record.pull_request_url, None);
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_its_token_budget_ends_budget_exceeded_mid_phase() -> TestResult {
    let budget = Budget {
        run: Limits {
            max_tokens: Some(100),
            ..Limits::default()
        },
        phase: Limits::default(),
    };
    assert_budget_ends_the_run(budget, "max_tokens").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_its_usd_budget_ends_budget_exceeded_mid_phase() -> TestResult {
    let budget = Budget {
        run: Limits {
            max_usd: Some(0.000_001),
            ..Limits::default()
        },
        phase: Limits::default(),
    };
    assert_budget_ends_the_run(budget, "max_usd").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_ends_phase_stalled_and_its_container_goes() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("stall", "# Stall\n")?;
    h.use_shell_agent("sleeper", &[("plan", "echo thinking; sleep 120")], "")?;
    h.config.stall_timeout = Duration::from_secs(3);
    let mut request = h.request(&url, "Let members pin notes");
    request.agent = Some("sleeper".to_owned());
    let record = h.run(request).await?;
    let error = failed_with(&record, "phase_stalled", Phase::Plan)?;
    assert!(
        error.message.contains("printed nothing"),
        "{}",
        error.message
    );
    let log = h
        .artifact(&record, Some(Phase::Plan), "agent.stdout.log")
        .await?;
    assert!(log.contains("thinking"), "the phase's log is kept: {log}");
    assert_eq!(
        record.phase(Phase::Specify).status,
        specrun_core::PhaseStatus::Succeeded
    );
    h.assert_clean(&record).await
}

/// Over HTTP to the real `specrun serve`: a request may lower the operator's budget
/// (202), never raise it (400 naming the field and the figures, nothing stored).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_asking_for_more_budget_than_the_operator_allows_is_a_400() -> TestResult {
    let world = World::start(3).await?;
    let budget = r#"{"run": {"max_usd": 2, "max_tokens": 100000}}"#;
    let serve =
        SpecrunProcess::serve(&world.env, &["--no-runner", "--model-budget", budget]).await?;
    let base = serve.base_url()?;
    let url = world.git().repo_url("web");

    let mut raised = run_request(&url, "Add a login page");
    raised["budget"] = serde_json::json!({"run": {"max_usd": 20}});
    let response = post_runs(base, &raised).await?;
    let answer = response.json()?;
    assert_eq!(response.status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "budget", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("run.max_usd = 20 is above the operator's maximum of 2"),
        "{message}"
    );
    world.assert_nothing_stored("a raised budget").await?;

    let mut lowered = run_request(&url, "Add a login page");
    lowered["budget"] = serde_json::json!({"run": {"max_usd": 0.5}, "phase": {"max_requests": 10}});
    let response = post_runs(base, &lowered).await?;
    assert_eq!(response.status, 202, "{}", response.json()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_gemini_cli_runs_through_the_gateway_to_a_pull_request() -> TestResult {
    let model = GeminiServer::start("127.0.0.1".parse()?, REAL_KEY).await?;
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "album", "# Album\n")?;
    // The one thing added to the built-in profile: the scripted model, so the CLI does
    // not ask the API to route each turn (`auto`).
    let pin_model = format!("[agents.gemini-gw.env]\nGEMINI_MODEL = \"{GEMINI_TEST_MODEL}\"\n");
    let agents = gateway_agents_file("gemini", "gemini-gw", &model.base_url(), &pin_model, &[])?;
    h.use_agents_file(&agents)?;
    h.config
        .agent_secrets
        .insert(MODEL_KEY_ENV.to_owned(), Secret::new(REAL_KEY));
    let (record, inspections) = run_inspected(&h, pr_request(&h)).await?;
    assert_one_pull_request_with_the_documents(&h, &record)?;
    assert!(model.saw_key(), "the gateway sent the real key upstream");
    assert_eq!(model.unauthorized_requests(), 0);

    // Usage per phase is what the server reported: the phases took the server's
    // answers in order, at least a tool turn and a final turn each.
    let requests = model.requests();
    let mut taken = 0;
    for phase in AGENT_PHASES {
        let usage = record
            .phase(phase)
            .usage
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{phase} has no usage"))?;
        let count = usage.requests as usize;
        assert!(count >= 2, "{phase}: {usage:?}");
        let mine = requests
            .get(taken..taken + count)
            .ok_or_else(|| anyhow::anyhow!("{phase}: more requests than the server saw"))?;
        assert_eq!(usage.tokens.input, reported_input(mine), "{phase}");
        assert_eq!(usage.tokens.output, OUTPUT_TOKENS * count as u64, "{phase}");
        assert_eq!(usage.models, [GEMINI_TEST_MODEL], "{phase}");
        taken += count;
    }
    assert_eq!(taken, requests.len(), "every request belongs to a phase");
    run_usage_as_reported(&h, &record, &requests)?;

    // No host on the allow-list and none asked for: the CLI called only the gateway.
    let egress = h
        .artifact(&record, None, "egress.log")
        .await
        .unwrap_or_default();
    assert!(!egress.contains("allowed"), "{egress}");
    assert!(!egress.contains("refused"), "{egress}");

    assert_key_nowhere(&h, &record, &inspections, "GEMINI_API_KEY", &AGENT_PHASES).await?;
    assert_probe_read(&h, &record, b"\"selectedType\": \"gemini-api-key\"").await?;
    h.assert_clean(&record).await
}
