//! The pipeline: one run from `queued` to a final status. It walks the nine phases in
//! order, persists run.json and the phase JSON at every change, stops early on a failure
//! or an outcome that publishes nothing, and always runs cleanup.
//!
//! Architecture invariant: the only place a run's status changes is here, through the
//! transition methods of [`RunRecord`]; every change is written to the store before the
//! next phase starts, so a reader never sees a phase that ran but was not recorded.

use crate::artifacts::ArtifactStore;
use crate::config::RunnerConfig;
use crate::docker::DockerClient;
use crate::egress::RunEgress;
use crate::phases;
use crate::progress::{Progress, ProgressEvent};
use crate::stop::{StopReason, StopWatch, StopWatchConfig};
use crate::workspace::Workspace;
use specrun_core::agent::AgentProfile;
use specrun_core::branch::BranchName;
use specrun_core::feature::FeatureDir;
use specrun_core::keys::{self, RunId};
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::redact::Redactor;
use specrun_core::request::{Publish, ValidatedRequest};
use specrun_core::state::{AgentConfiguration, ArtifactRef, PhaseOutcome, RunError, RunRecord};
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_store::runs;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use time::OffsetDateTime;

/// Runs pipelines against one store with one configuration.
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) config: Arc<RunnerConfig>,
    pub(crate) store: Arc<dyn BlobStore>,
    progress: Arc<dyn Progress>,
}

/// How a phase that did its work ended.
pub(crate) enum Step {
    /// Go on with the next phase.
    Continue(PhaseOutcome),
    /// The phase had nothing to do, for the reason given; go on.
    Skip(String),
    /// The run is over, successfully, with nothing more to do (no changes, questions).
    Stop {
        outcome: PhaseOutcome,
        status: RunStatus,
        reason: String,
    },
}

/// A phase failed: why, and the artifacts it left for investigation.
pub(crate) struct Failure {
    pub error: RunError,
    pub artifacts: Vec<ArtifactRef>,
}

impl From<RunError> for Failure {
    fn from(error: RunError) -> Self {
        Failure {
            error,
            artifacts: Vec::new(),
        }
    }
}

pub(crate) type StepResult = Result<Step, Failure>;

/// Everything one run carries between phases.
pub(crate) struct RunContext {
    pub config: Arc<RunnerConfig>,
    pub store: Arc<dyn BlobStore>,
    pub run_id: RunId,
    pub request: ValidatedRequest,
    pub record: RunRecord,
    pub artifacts: ArtifactStore,
    pub redactor: Redactor,
    pub clone_url: String,
    pub profile: Option<AgentProfile>,
    /// Variables every agent exec gets, secrets included; never persisted.
    pub agent_env: BTreeMap<String, String>,
    pub docker: Option<DockerClient>,
    pub container: Option<String>,
    pub workspace: Option<Workspace>,
    pub specs_before: Vec<String>,
    pub feature: Option<FeatureDir>,
    pub branch: Option<BranchName>,
    /// Another runner holds the run now: nothing more is recorded by this one.
    pub abandoned: bool,
    /// The run's network, firewall rules and proxy, for agents with `network = "egress"`.
    pub egress: Option<RunEgress>,
    /// The job container's processes are frozen: the runner may read the worktree.
    pub frozen: bool,
    /// Files `specify init` created: part of what the commit may hold.
    pub init_files: Vec<String>,
    /// The remote's default branch, which no run may push to.
    pub default_branch: Option<String>,
    /// The version of run.json this runner last read or wrote: its next write is
    /// conditional on it.
    pub record_version: String,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Pipeline {
    pub fn new(
        config: RunnerConfig,
        store: Arc<dyn BlobStore>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        Pipeline {
            config: Arc::new(config),
            store,
            progress,
        }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// A new run id: time-ordered, so listings sort by creation.
    pub fn new_run_id() -> RunId {
        // A UUIDv7's text form is always a valid run id.
        RunId::parse(&uuid::Uuid::now_v7().to_string()).unwrap_or_else(|_| unreachable!())
    }

    /// The agent configuration a request asks for, before the run starts.
    pub fn agent_for(&self, request: &ValidatedRequest) -> AgentConfiguration {
        AgentConfiguration {
            name: request
                .agent
                .clone()
                .unwrap_or_else(|| self.config.default_agent.clone()),
            image: self.config.image.clone(),
            overrides: request.agent_options.clone(),
            ..Default::default()
        }
    }

    /// Records a request as a queued run and returns the record.
    pub async fn enqueue_record(
        &self,
        run_id: &RunId,
        request: &ValidatedRequest,
    ) -> Result<RunRecord, StoreError> {
        let record =
            RunRecord::for_request(run_id.as_str(), request, self.agent_for(request), now());
        runs::create_run(self.store.as_ref(), &record).await?;
        Ok(record)
    }

    /// Executes a queued run to its final status. The returned record is what run.json
    /// holds; an `Err` means the store could not be written at the end.
    pub async fn execute(
        &self,
        record: RunRecord,
        request: ValidatedRequest,
    ) -> Result<RunRecord, StoreError> {
        self.execute_leased(record, request, None, None).await
    }

    /// [`Pipeline::execute`] under a lease: once `lease_lost` is set, the run is stopped
    /// and abandoned without recording anything more (`PreconditionFailed`), so that the
    /// runner that took it over is the only one that pushes and writes its state.
    ///
    /// Every write of run.json is conditional on the version this runner last read or
    /// wrote (`version`, read here when `None`): a runner that was cut off while another
    /// took the run over finds its next write refused, and stops.
    pub async fn execute_leased(
        &self,
        record: RunRecord,
        request: ValidatedRequest,
        lease_lost: Option<Arc<AtomicBool>>,
        version: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        let run_id = runs::run_id(&record)?;
        let (record, version) = match version {
            Some(version) => (record, version),
            None => match runs::load_run_versioned(self.store.as_ref(), &run_id).await? {
                Some((stored, version)) => (stored, version),
                None => {
                    return Err(StoreError::NotFound(format!(
                        "run {run_id} has no run.json to execute"
                    )))
                }
            },
        };
        if record.status.is_final() {
            tracing::info!(%run_id, status = %record.status, "the run is finished already; not running it again");
            return Ok(record);
        }
        let secrets: Vec<String> = self
            .config
            .forge_token
            .iter()
            .map(|t| t.expose().to_owned())
            .collect();
        let mut ctx = RunContext {
            config: self.config.clone(),
            store: self.store.clone(),
            artifacts: ArtifactStore::new(
                self.store.clone(),
                run_id.clone(),
                record.attempt,
                self.config.retention_days,
            ),
            redactor: Redactor::new(&secrets),
            clone_url: request.repository.clone_url(&self.config.forge_git_base),
            run_id,
            request,
            record,
            profile: None,
            agent_env: BTreeMap::new(),
            docker: None,
            container: None,
            workspace: None,
            specs_before: Vec::new(),
            feature: None,
            branch: None,
            abandoned: false,
            egress: None,
            frozen: false,
            init_files: Vec::new(),
            default_branch: None,
            record_version: version,
        };
        self.progress.event(ProgressEvent::RunStarted {
            run_id: ctx.run_id.to_string(),
        });
        // A restarted run (see `RunRecord::restart`) is running already.
        if ctx.record.status == RunStatus::Queued {
            if let Err(e) = ctx.record.start(&self.config.runner_id, now()) {
                tracing::warn!(error = %e, "unexpected start transition");
            }
        }
        let stop = StopWatch::start(StopWatchConfig {
            store: self.store.clone(),
            run_id: ctx.run_id.clone(),
            run_timeout: Some(self.config.run_timeout),
            docker_host: self.config.docker_host.clone(),
            docker_timeout: self.config.docker_timeout,
            poll: std::time::Duration::from_secs(1),
            runner_id: self.config.runner_id.clone(),
            lease_lost,
        });
        let (status, reason) = match self.persist(&mut ctx).await {
            Ok(()) => self.run_phases(&mut ctx, &stop).await,
            Err(e) => {
                ctx.record.error = Some(crate::failure::store(Phase::Prepare, &e));
                (RunStatus::Failed, Some(e.to_string()))
            }
        };
        self.cleanup(&mut ctx).await;
        if ctx.abandoned {
            tracing::warn!(run_id = %ctx.run_id, "another runner took this run over; this runner stopped and recorded nothing more");
            return Err(StoreError::PreconditionFailed(format!(
                "run {}: the lease went to another runner",
                ctx.run_id
            )));
        }
        if let Err(e) = ctx.record.finish(status, reason, now()) {
            tracing::warn!(error = %e, "unexpected final transition");
        }
        self.persist(&mut ctx).await?;
        Ok(ctx.record)
    }

    /// Removes job containers an earlier attempt of `run_id` left behind; returns how many.
    pub async fn remove_orphans(&self, run_id: &RunId) -> usize {
        let Ok(docker) = DockerClient::connect(
            self.config.docker_host.as_deref(),
            self.config.docker_timeout,
        )
        .await
        else {
            return 0;
        };
        let mut removed = 0;
        for container in docker
            .containers_of(Some(run_id.as_str()))
            .await
            .unwrap_or_default()
        {
            match docker.remove(&container).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, %container, "could not remove an orphaned job container")
                }
            }
        }
        crate::egress::remove_orphaned(&docker, run_id.as_str()).await;
        removed
    }

    async fn run_phases(
        &self,
        ctx: &mut RunContext,
        stop: &StopWatch,
    ) -> (RunStatus, Option<String>) {
        for phase in Phase::ALL {
            if phase == Phase::Cleanup {
                break;
            }
            if let Some(reason) = stop.reason() {
                return self.stopped(ctx, None, reason).await;
            }
            if ctx.abandoned {
                // Another runner wrote the run (see `persist`): nothing more is done here.
                return (
                    RunStatus::Failed,
                    Some("another runner recorded the run".to_owned()),
                );
            }
            if let Some(reason) = skip_reason(phase, ctx.request.publish) {
                let _ = ctx.record.skip_phase(phase, &reason, now());
                self.phase_ended(ctx, phase).await;
                continue;
            }
            if self.begin(ctx, phase).await.is_err() {
                return (
                    RunStatus::Failed,
                    Some("the state store could not be written".to_owned()),
                );
            }
            let result = match phase {
                Phase::Prepare => phases::prepare(ctx).await,
                Phase::Clone => phases::clone(ctx).await,
                Phase::Specify => phases::specify(ctx).await,
                Phase::Plan | Phase::Tasks => phases::plan_or_tasks(ctx, phase).await,
                Phase::Commit => phases::commit(ctx).await,
                Phase::Push => phases::push(ctx).await,
                Phase::PullRequest => phases::pull_request(ctx).await,
                Phase::Cleanup => Ok(Step::Continue(PhaseOutcome::default())),
            };
            if let Some(reason) = stop.reason() {
                // The interrupted phase's logs are what an operator needs: keep them.
                let artifacts = match result {
                    Ok(Step::Continue(outcome) | Step::Stop { outcome, .. }) => outcome.artifacts,
                    Ok(Step::Skip(_)) => Vec::new(),
                    Err(failure) => failure.artifacts,
                };
                return self.stopped(ctx, Some((phase, artifacts)), reason).await;
            }
            match result {
                Ok(Step::Continue(outcome)) => {
                    self.end(ctx, phase, PhaseStatus::Succeeded, outcome).await
                }
                Ok(Step::Skip(reason)) => {
                    let outcome = PhaseOutcome {
                        message: Some(reason),
                        ..Default::default()
                    };
                    self.end(ctx, phase, PhaseStatus::Skipped, outcome).await
                }

                Ok(Step::Stop {
                    outcome,
                    status,
                    reason,
                }) => {
                    self.end(ctx, phase, PhaseStatus::Succeeded, outcome).await;
                    self.skip_rest(ctx, &format!("skipped: {reason}")).await;
                    return (status, Some(reason));
                }
                Err(failure) => {
                    let outcome = PhaseOutcome {
                        exit_code: failure.error.exit_code,
                        message: Some(failure.error.message.clone()),
                        artifacts: failure.artifacts,
                    };
                    self.end(ctx, phase, PhaseStatus::Failed, outcome).await;
                    let reason = format!("{phase} failed: {}", failure.error.message);
                    ctx.record.error = Some(failure.error);
                    self.skip_rest(ctx, &format!("skipped: the {phase} phase failed"))
                        .await;
                    return (RunStatus::Failed, Some(reason));
                }
            }
        }
        (RunStatus::Succeeded, Some(success_reason(ctx)))
    }

    /// Ends a run that was cancelled or ran out of time; `phase` was interrupted.
    async fn stopped(
        &self,
        ctx: &mut RunContext,
        interrupted: Option<(Phase, Vec<ArtifactRef>)>,
        reason: StopReason,
    ) -> (RunStatus, Option<String>) {
        let phase = interrupted.as_ref().map(|(phase, _)| *phase);
        let (status, text) = match &reason {
            StopReason::LeaseLost => {
                ctx.abandoned = true;
                return (
                    RunStatus::Failed,
                    Some("the lease went to another runner".to_owned()),
                );
            }
            StopReason::Cancelled => (RunStatus::Cancelled, "cancelled by an operator".to_owned()),
            StopReason::TimedOut(limit) => (
                RunStatus::Failed,
                format!("the run did not finish within its time limit of {limit:?}"),
            ),
        };
        if let Some((phase, artifacts)) = interrupted {
            let outcome = PhaseOutcome {
                message: Some(format!("stopped: {text}")),
                artifacts,
                ..Default::default()
            };
            self.end(ctx, phase, PhaseStatus::Failed, outcome).await;
        }
        if let StopReason::TimedOut(_) = reason {
            let error = crate::failure::error(
                phase.unwrap_or(Phase::Prepare),
                "run_timeout",
                text.clone(),
                "Raise the run's time limit (SPECRUN_RUN_TIMEOUT_SECS) or make the specification smaller.",
            );
            ctx.record.error = Some(error);
        }
        self.skip_rest(ctx, &format!("skipped: {text}")).await;
        (status, Some(text))
    }

    async fn skip_rest(&self, ctx: &mut RunContext, reason: &str) {
        let pending: Vec<Phase> = Phase::ALL
            .into_iter()
            .filter(|p| *p != Phase::Cleanup && ctx.record.phase(*p).status == PhaseStatus::Pending)
            .collect();
        ctx.record.skip_pending(reason, &[Phase::Cleanup], now());
        for phase in pending {
            self.phase_ended(ctx, phase).await;
        }
    }

    /// Removes the container and the workspace on every path, recording whether it worked.
    async fn cleanup(&self, ctx: &mut RunContext) {
        if self.begin(ctx, Phase::Cleanup).await.is_err() {
            tracing::warn!("could not record the cleanup phase's start");
        }
        let mut problems = Vec::new();
        let mut done = Vec::new();
        if let (Some(docker), Some(container)) = (&ctx.docker, ctx.container.take()) {
            match docker.remove(&container).await {
                Ok(()) => done.push("container removed"),
                Err(e) => problems.push(format!("container {container} not removed: {e}")),
            }
        }
        let mut artifacts = Vec::new();
        if let (Some(docker), Some(mut egress)) = (&ctx.docker, ctx.egress.take()) {
            match egress.tear_down(docker).await[..] {
                [] => done.push("network removed"),
                ref failed => problems.push(format!("network not removed: {}", failed.join("; "))),
            }
            let log = egress.proxy.log(&ctx.redactor);
            match ctx
                .artifacts
                .put_bytes(None, "egress.log", log.into_bytes(), "text/plain")
                .await
            {
                Ok(artifact) => artifacts.push(artifact),
                Err(e) => problems.push(format!("egress.log not stored: {e}")),
            }
        }
        if let Some(workspace) = ctx.workspace.take() {
            let removed = tokio::task::spawn_blocking(move || workspace.remove()).await;
            match removed {
                Ok(Ok(())) => done.push("workspace removed"),
                Ok(Err(e)) => problems.push(format!("workspace not removed: {e}")),
                Err(e) => problems.push(format!("workspace not removed: {e}")),
            }
        }
        let (status, message) = if problems.is_empty() {
            let message = if done.is_empty() {
                "nothing to clean up".to_owned()
            } else {
                done.join(", ")
            };
            (PhaseStatus::Succeeded, message)
        } else {
            (PhaseStatus::Failed, problems.join("; "))
        };
        let outcome = PhaseOutcome {
            message: Some(message),
            artifacts,
            ..Default::default()
        };
        self.end(ctx, Phase::Cleanup, status, outcome).await;
    }

    async fn begin(&self, ctx: &mut RunContext, phase: Phase) -> Result<(), StoreError> {
        let _ = ctx.record.begin_phase(phase, now());
        self.progress.event(ProgressEvent::PhaseStarted { phase });
        self.persist_phase(ctx, phase).await
    }

    async fn end(
        &self,
        ctx: &mut RunContext,
        phase: Phase,
        status: PhaseStatus,
        outcome: PhaseOutcome,
    ) {
        if let Err(e) = ctx.record.end_phase(phase, status, outcome, now()) {
            tracing::warn!(error = %e, "unexpected phase transition");
        }
        self.phase_ended(ctx, phase).await;
    }

    async fn phase_ended(&self, ctx: &mut RunContext, phase: Phase) {
        let state = ctx.record.phase(phase);
        self.progress.event(ProgressEvent::PhaseEnded {
            phase,
            status: state.status,
            duration_ms: state.duration_ms,
            message: state.message.clone(),
        });
        if let Err(e) = self.persist_phase(ctx, phase).await {
            tracing::warn!(error = %e, %phase, "could not record the phase");
        }
    }

    async fn persist_phase(&self, ctx: &mut RunContext, phase: Phase) -> Result<(), StoreError> {
        if ctx.abandoned {
            return Ok(());
        }
        let key = keys::phase_json(&ctx.run_id, phase);
        let state = runs::to_json(ctx.record.phase(phase));
        self.store.put(&key, state, "application/json").await?;
        self.persist(ctx).await
    }

    async fn persist(&self, ctx: &mut RunContext) -> Result<(), StoreError> {
        if ctx.abandoned {
            return Ok(());
        }
        match runs::save_run_fenced(self.store.as_ref(), &ctx.record, &ctx.record_version).await {
            Ok(version) => {
                ctx.record_version = version;
                Ok(())
            }
            Err(StoreError::PreconditionFailed(why)) => {
                tracing::error!(run_id = %ctx.run_id, %why, "run.json was written by another runner; this runner stops and records nothing more");
                ctx.abandoned = true;
                Err(StoreError::PreconditionFailed(why))
            }
            Err(e) => Err(e),
        }
    }
}

fn skip_reason(phase: Phase, publish: Publish) -> Option<String> {
    match (phase, publish) {
        (Phase::Push, Publish::None) => {
            Some("dry run (publish: none): nothing is pushed".to_owned())
        }
        (Phase::PullRequest, Publish::None) => {
            Some("dry run (publish: none): no pull request".to_owned())
        }
        (Phase::PullRequest, Publish::Branch) => {
            Some("publish: branch: the branch is pushed without a pull request".to_owned())
        }
        _ => None,
    }
}

fn success_reason(ctx: &RunContext) -> String {
    let branch = ctx
        .branch
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    match (ctx.request.publish, &ctx.record.pull_request_url) {
        (Publish::None, _) => {
            format!("dry run: committed {branch} in the workspace, nothing pushed")
        }
        (_, Some(url)) => format!("pushed branch {branch}; pull request {url}"),
        _ => format!("pushed branch {branch}"),
    }
}
