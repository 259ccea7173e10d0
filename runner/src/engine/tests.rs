//! The engine behind its job-environment port, with no Docker: a `Sandbox` of the test's
//! own that keeps the port's contract (a workspace on disk, commands that end as told)
//! shows that the phases use nothing but the port, and that the job is torn down exactly
//! once on every path. Everything else is real: the embedded store, git, the pipeline.

#![allow(clippy::unwrap_used)]

use crate::config::RunnerConfig;
use crate::engine::progress::TracingProgress;
use crate::engine::{Execution, Pipeline};
use async_trait::async_trait;
use specrun_core::redact::Redactor;
use specrun_core::repo::RepoPolicy;
use specrun_core::request::RunRequest;
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_sandbox::docker::DockerError;
use specrun_sandbox::{
    ExecEnd, ExecSpec, Job, JobFacts, JobRequest, OutputSink, Sandbox, SandboxError, Stream,
    Teardown, Workspace,
};
use specrun_store::FsBlobStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the test's sandbox does, and what it saw.
#[derive(Default)]
struct Script {
    /// `create` fails with an unreachable engine.
    engine_down: bool,
    /// Every command exits with this code.
    exit_code: i64,
    commands: Mutex<Vec<Vec<String>>>,
    torn_down: AtomicUsize,
}

struct ScriptedSandbox {
    work_root: PathBuf,
    script: Arc<Script>,
}

struct ScriptedJob {
    facts: JobFacts,
    workspace: Workspace,
    script: Arc<Script>,
}

#[async_trait]
impl Sandbox for ScriptedSandbox {
    async fn create(
        &self,
        request: JobRequest,
        on_workspace: &mut (dyn for<'w> FnMut(&'w Workspace) + Send),
    ) -> Result<Box<dyn Job>, SandboxError> {
        if self.script.engine_down {
            return Err(DockerError::Unreachable("no engine in this test".to_owned()).into());
        }
        let workspace = Workspace::create(&self.work_root, &request.run_id, None)?;
        on_workspace(&workspace);
        Ok(Box::new(ScriptedJob {
            facts: JobFacts {
                id: format!("job-{}", request.run_id),
                ..JobFacts::default()
            },
            workspace,
            script: self.script.clone(),
        }))
    }

    async fn kill_jobs(&self, _run_id: &str, _started_by: Option<&str>) -> usize {
        0
    }

    async fn remove_leftovers(&self, _run_id: &str) -> usize {
        0
    }

    async fn runs_with_jobs(&self) -> Result<Vec<String>, SandboxError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl Job for ScriptedJob {
    fn facts(&self) -> &JobFacts {
        &self.facts
    }

    fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    fn base_env(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn network_env(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    async fn exec(
        &self,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
        _limit: Duration,
    ) -> Result<ExecEnd, SandboxError> {
        self.script.commands.lock().unwrap().push(spec.argv.clone());
        let said = format!("{} said no\n", spec.argv.join(" "));
        sink.write(Stream::Stderr, said.as_bytes())
            .await
            .map_err(SandboxError::HomeFiles)?;
        Ok(ExecEnd::Exited(self.script.exit_code))
    }

    async fn stop_all(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    async fn tear_down(self: Box<Self>, _redactor: &Redactor) -> Teardown {
        self.script.torn_down.fetch_add(1, Ordering::SeqCst);
        let mut teardown = Teardown::default();
        match self.workspace.remove() {
            Ok(()) => teardown.done.push("workspace removed"),
            Err(e) => teardown.problems.push(e.to_string()),
        }
        teardown
    }
}

/// A bare repository with one commit on `main`.
fn remote(dir: &Path) -> PathBuf {
    let seed = dir.join("seed");
    let bare = dir.join("remote.git");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("README.md"), "# app\n").unwrap();
    let git = |args: &[&str]| {
        let done = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert!(done.status.success(), "git {args:?}: {done:?}");
    };
    let seed_str = seed.to_str().unwrap();
    git(&["init", "-q", "-b", "main", seed_str]);
    git(&["-C", seed_str, "add", "-A"]);
    git(&["-C", seed_str, "commit", "-q", "-m", "init"]);
    git(&["clone", "-q", "--bare", seed_str, bare.to_str().unwrap()]);
    bare
}

async fn run(script: Arc<Script>) -> (RunRecord, tempfile::TempDir) {
    run_with(script, |_, _| {}).await
}

/// [`run`] with the configuration and the request adjusted first.
async fn run_with(
    script: Arc<Script>,
    adjust: impl FnOnce(&mut RunnerConfig, &mut RunRequest),
) -> (RunRecord, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let repository = remote(dir.path()).display().to_string();
    let mut config = RunnerConfig::with_work_root(dir.path().join("work"));
    config.default_agent = "scripted".to_owned();
    config.workspace_quota_bytes = None;
    let store = Arc::new(FsBlobStore::new(dir.path().join("state")));
    let sandbox = Arc::new(ScriptedSandbox {
        work_root: config.work_root.clone(),
        script,
    });
    let mut request = RunRequest {
        repository,
        specify_text: "Add a logout button.".to_owned(),
        ..RunRequest::default()
    };
    adjust(&mut config, &mut request);
    let pipeline = Pipeline::with_sandbox(config, store, sandbox, Arc::new(TracingProgress));
    let request = request
        .validate(&RepoPolicy {
            allowed_hosts: Vec::new(),
            trusted: true,
            callbacks: Default::default(),
        })
        .unwrap();
    let run_id = specrun_store::runs::new_run_id();
    let record = pipeline.enqueue_record(&run_id, &request).await.unwrap();
    match pipeline.execute(record, request).await.unwrap() {
        Execution::Finished(record) => (*record, dir),
        Execution::Abandoned => panic!("nobody else writes this run"),
    }
}

#[tokio::test]
async fn an_engine_that_cannot_start_a_job_fails_prepare_and_has_nothing_to_tear_down() {
    let script = Arc::new(Script {
        engine_down: true,
        ..Script::default()
    });
    let (record, _dir) = run(script.clone()).await;
    assert_eq!(record.status, RunStatus::Failed);
    let error = record.error.clone().unwrap();
    assert_eq!(error.code.to_string(), "docker_unreachable");
    assert_eq!(error.phase, Some(Phase::Prepare));
    let cleanup = record.phase(Phase::Cleanup);
    assert_eq!(cleanup.status, PhaseStatus::Succeeded);
    assert_eq!(cleanup.message.as_deref(), Some("nothing to clean up"));
    assert_eq!(script.torn_down.load(Ordering::SeqCst), 0);
    assert!(script.commands.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_job_whose_commands_fail_is_torn_down_once_and_the_run_says_where() {
    let script = Arc::new(Script {
        exit_code: 3,
        ..Script::default()
    });
    let (record, dir) = run(script.clone()).await;
    assert_eq!(record.status, RunStatus::Failed, "{record:#?}");
    let error = record.error.clone().unwrap();
    // The agent's version command failing is not fatal; Spec Kit's init is.
    assert_eq!(error.code.to_string(), "speckit_init_failed");
    assert_eq!(error.phase, Some(Phase::Specify));
    assert_eq!(error.exit_code, Some(3));
    assert!(error.log_excerpt.unwrap().contains("specify init"));
    assert_eq!(record.phase(Phase::Clone).status, PhaseStatus::Succeeded);
    for later in [Phase::Plan, Phase::Tasks, Phase::Commit, Phase::Push] {
        assert_eq!(record.phase(later).status, PhaseStatus::Skipped, "{later}");
    }
    assert_eq!(record.phase(Phase::Cleanup).status, PhaseStatus::Succeeded);
    assert_eq!(script.torn_down.load(Ordering::SeqCst), 1);
    let commands = script.commands.lock().unwrap();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[1][..2], ["sh", "-c"]);
    assert!(
        commands[1][2].contains("specrun-speckit-init"),
        "{commands:?}"
    );
    assert!(!dir.path().join("work").join(&record.run_id).exists());
}

#[tokio::test]
async fn a_request_raising_the_operators_budget_fails_prepare_before_any_job() {
    use specrun_core::model_usage::{Budget, Limits};
    let limit = |usd| Budget {
        run: Limits {
            max_usd: Some(usd),
            ..Limits::default()
        },
        phase: Limits::default(),
    };
    let script = Arc::new(Script::default());
    let (record, _dir) = run_with(script.clone(), |config, request| {
        config.model_budget = limit(1.0);
        request.budget = Some(limit(5.0));
    })
    .await;
    let error = record.error.clone().unwrap();
    assert_eq!(error.code.to_string(), "invalid_request");
    assert_eq!(error.phase, Some(Phase::Prepare));
    assert!(
        error.message.contains("run.max_usd = 5"),
        "{}",
        error.message
    );
    assert!(script.commands.lock().unwrap().is_empty());
}
