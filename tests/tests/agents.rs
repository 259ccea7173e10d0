//! Agents from configuration (FR-010) and the real Codex CLI end to end: the agents file
//! is read at the start of every run, and the real `codex` binary in the job image takes
//! a run through specify, plan and tasks against the scripted model server, on a Docker
//! network the test created, to a pull request on the fake forge.

use specrun_core::request::Publish;
use specrun_core::{Phase, RunStatus};
use specrun_runner::config::Secret;
use specrun_tests::harness::{
    authority, failed_with, watch_inspections, write_agents_file, Harness, CANARY_TOKEN,
};
use specrun_tests::model_server::{ModelServer, TestNetwork, MODEL_KEY_ENV};
use std::sync::{Arc, Mutex};

type TestResult = anyhow::Result<()>;

const MODEL_KEY: &str = "sk-specrun-canary-model-key-7c41d0";

#[tokio::test(flavor = "multi_thread")]
async fn the_real_codex_cli_takes_a_run_to_a_pull_request() -> TestResult {
    let mut h = Harness::start().await?;
    h.forge.create_repo("octo", "album", "# Album\n")?;
    let network = TestNetwork::create()?;
    let model = ModelServer::start(network.gateway(), MODEL_KEY).await?;
    let config = model.codex_config_toml().replace("'''", "");
    let agents = format!(
        "default = \"codex-test\"\n\n[agents.codex-test]\nextends = \"codex\"\nnetwork = \"network:{}\"\nsecret_env = [\"{MODEL_KEY_ENV}\"]\n\n[agents.codex-test.home_files]\n\".codex/config.toml\" = '''\n{config}'''\n",
        network.name()
    );
    h.config.agents_file = Some(write_agents_file(h.work.path(), &agents)?);
    h.config
        .agent_secrets
        .insert(MODEL_KEY_ENV.to_owned(), Secret::new(MODEL_KEY));

    let stop = Arc::new(Mutex::new(false));
    let watcher = watch_inspections(h.config.runner_id.clone(), stop.clone());
    let mut request = h.request(
        "octo/album",
        "Add a photo album organiser that groups photos by date",
    );
    request.agent = None;
    request.publish = Some(Publish::Pr);
    let record = h.run(request).await?;
    *stop
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    let inspections = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    assert_eq!(
        record.agent.name, "codex-test",
        "the agents file's default was used"
    );
    assert!(
        record
            .agent
            .version
            .as_deref()
            .unwrap_or("")
            .contains("codex"),
        "{:?}",
        record.agent.version
    );
    assert_eq!(record.agent.integration, "codex");
    let branch = record.branch_name.clone().unwrap_or_default();
    for file in ["spec.md", "plan.md", "tasks.md"] {
        let path = format!("specs/{branch}/{file}");
        assert!(
            h.git().read_file("octo/album", &branch, &path)?.is_some(),
            "codex wrote {path}"
        );
    }
    assert!(
        h.git()
            .read_file(
                "octo/album",
                &branch,
                ".agents/skills/speckit-specify/SKILL.md"
            )?
            .is_some(),
        "Spec Kit was initialised for codex"
    );
    assert_eq!(h.forge.pulls("octo", "album").len(), 1);

    // Codex's events are kept and summarised per phase.
    for phase in [Phase::Specify, Phase::Plan, Phase::Tasks] {
        let summary: serde_json::Value = serde_json::from_str(
            &h.artifact(&record, Some(phase), "agent-summary.json")
                .await?,
        )?;
        assert!(
            summary["commands"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            "{phase}: {summary}"
        );
        assert!(
            summary["input_tokens"].as_u64().unwrap_or(0) > 0,
            "{phase}: {summary}"
        );
        let message = record.phase(phase).message.clone().unwrap_or_default();
        assert!(message.contains("codex ran"), "{phase}: {message}");
    }
    assert_eq!(model.requests().len(), 6, "two model turns a phase");
    assert!(model.saw_key());

    // Neither the model key nor the forge token shows anywhere.
    assert!(!inspections.is_empty(), "the live container was inspected");
    for inspection in &inspections {
        assert!(
            !inspection.contains(MODEL_KEY) && !inspection.contains(CANARY_TOKEN),
            "a secret shows in docker inspect"
        );
    }
    for file in h.state_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
        assert!(
            !text.contains(MODEL_KEY) && !text.contains(CANARY_TOKEN),
            "secret in {}",
            file.display()
        );
    }
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_agents_file_changes_the_next_run() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("swap", "# Swap\n")?;
    let file = |default: &str| {
        format!(
            "default = \"{default}\"\n\
             [agents.alpha]\nextends = \"scripted\"\n\
             [agents.beta]\nextends = \"scripted\"\n\
             [agents.beta.phases]\nspecify = [\"specrun-scripted-agent\", \"specify\", \"{{text}} (written by adapter beta)\"]\n"
        )
    };
    let path = write_agents_file(h.work.path(), &file("alpha"))?;
    h.config.agents_file = Some(path.clone());
    let request = |h: &Harness| {
        let mut request = h.request(&url, "Tag photos with places");
        request.agent = None;
        request
    };
    let first = h.run(request(&h)).await?;
    assert_eq!(
        (first.status, first.agent.name.as_str()),
        (RunStatus::Succeeded, "alpha"),
        "{:#?}",
        first.error
    );

    // Same runner configuration, no rebuild, no restart: only the file changes.
    std::fs::write(&path, file("beta"))?;
    let second = h.run(request(&h)).await?;
    assert_eq!(
        (second.status, second.agent.name.as_str()),
        (RunStatus::Succeeded, "beta"),
        "{:#?}",
        second.error
    );
    let branch = second.branch_name.clone().unwrap_or_default();
    let spec = h
        .git()
        .read_file("swap", &branch, &format!("specs/{branch}/spec.md"))?
        .unwrap_or_default();
    assert!(
        spec.contains("(written by adapter beta)"),
        "the new adapter ran the specify phase"
    );

    // A broken file fails the next run at prepare, saying what is wrong.
    std::fs::write(&path, "default = \"ghost\"\n")?;
    let third = h.run(request(&h)).await?;
    let error = failed_with(&third, "agents_file_invalid", Phase::Prepare)?;
    assert!(error.message.contains("ghost"), "{}", error.message);
    h.assert_clean(&third).await
}

/// The default way out for a model-calling agent: `network = "egress"`. The real Codex CLI
/// has no route anywhere and reaches the model server (on the host's loopback, listed in
/// the agent's allow-list) only through the runner's egress proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_codex_cli_reaches_its_model_only_through_the_egress_proxy() -> TestResult {
    let mut h = Harness::start().await?;
    let model = ModelServer::start("127.0.0.1".parse()?, MODEL_KEY).await?;
    let model_host = authority(&model.base_url());
    let config = model.codex_config_toml().replace("'''", "");
    let agents = format!(
        "[agents.codex-egress]\nextends = \"codex\"\nnetwork = \"egress\"\negress = [\"{model_host}\"]\nsecret_env = [\"{MODEL_KEY_ENV}\"]\n\n[agents.codex-egress.gateway]\nenabled = false\n\n[agents.codex-egress.home_files]\n\".codex/config.toml\" = '''\n{config}'''\n"
    );
    h.config.agents_file = Some(write_agents_file(h.work.path(), &agents)?);
    h.config
        .agent_secrets
        .insert(MODEL_KEY_ENV.to_owned(), Secret::new(MODEL_KEY));
    let url = h.git().create_repo("egress-codex", "# Notes\n")?;
    let mut request = h.request(&url, "Let members pin notes to the top of a list");
    request.agent = Some("codex-egress".to_owned());
    let record = h.run(request).await?;
    h.assert_model_reached_through_proxy(&record, &model_host)
        .await?;
    Ok(())
}
