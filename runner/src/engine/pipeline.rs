//! The pipeline: one run from `queued` to a final status. It walks the nine phases in
//! order, handing each what the earlier ones made, persists run.json and the phase JSON
//! at every change, stops early on a failure or an outcome that publishes nothing, and
//! always runs cleanup.
//!
//! Architecture invariant: the only place a run's status changes is here, through the
//! transition methods of [`RunRecord`]; every change is written to the store before the
//! next phase starts, so a reader never sees a phase that ran but was not recorded.

use crate::config::RunnerConfig;
use crate::engine::artifacts::ArtifactStore;
use crate::engine::failure;
use crate::engine::phases::checkpoint::Restore;
use crate::engine::phases::{self, Failure, Step};
use crate::engine::progress::{Progress, ProgressEvent};
use crate::engine::run::Run;
use crate::engine::stop::{StopReason, StopWatch, StopWatchConfig};
use specrun_core::keys::{self, RunId};
use specrun_core::ports::{BlobStore, Bytes, StoreError};
use specrun_core::redact::Redactor;
use specrun_core::request::{Publish, ValidatedRequest};
use specrun_core::state::{AgentConfiguration, ArtifactRef, PhaseOutcome, RunRecord};
use specrun_core::{ErrorCode, Phase, PhaseStatus, RunStatus};
use specrun_sandbox::{DockerSandbox, Job, Sandbox};
use specrun_store::runs::{self, now};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Runs pipelines against one store and one job environment with one configuration.
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) config: Arc<RunnerConfig>,
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    progress: Arc<dyn Progress>,
    /// Where the run's metrics go (`crate::metrics`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// How executing a run ended for this runner.
#[derive(Debug)]
pub enum Execution {
    /// The run reached this final state, recorded in run.json.
    Finished(Box<RunRecord>),
    /// Another runner holds the run now (this one lost its lease, or found run.json
    /// written by someone else): this runner stopped and recorded nothing more.
    Abandoned,
}

/// What a phase's end means for the run.
enum Flow<T> {
    /// Go on, with what the phase made.
    Next(T),
    /// The run is over, with this status and reason.
    Over(RunStatus, Option<String>),
}

/// Runs one phase: stops the run when asked to, records the phase's start, awaits
/// `$work`, records its end, and gives what it made, or returns from the enclosing
/// function with how the run ends.
macro_rules! phase {
    ($pipeline:expr, $run:expr, $stop:expr, $phase:expr, $work:expr) => {{
        if let Some(over) = $pipeline.start($run, $stop, $phase).await {
            return over;
        }
        let result = $work.await;
        match $pipeline.finish($run, $stop, $phase, result).await {
            Flow::Next(made) => made,
            Flow::Over(status, reason) => return (status, reason),
        }
    }};
}

impl Pipeline {
    /// A pipeline whose jobs run on the Docker engine the configuration names.
    pub fn new(
        config: RunnerConfig,
        store: Arc<dyn BlobStore>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        let sandbox = DockerSandbox {
            docker_host: config.docker_host.clone(),
            docker_timeout: config.docker_timeout,
            work_root: config.work_root.clone(),
            workspace_quota_bytes: config.workspace_quota_bytes,
            limits: config.limits,
        };
        Self::with_sandbox(config, store, Arc::new(sandbox), progress)
    }

    /// A pipeline whose jobs run in `sandbox`.
    pub fn with_sandbox(
        config: RunnerConfig,
        store: Arc<dyn BlobStore>,
        sandbox: Arc<dyn Sandbox>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::from_config(&config.metrics));
        Pipeline {
            config: Arc::new(config),
            store,
            sandbox,
            progress,
            metrics,
        }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// The agent configuration a request asks for, before the run starts.
    pub fn agent_for(&self, request: &ValidatedRequest) -> AgentConfiguration {
        AgentConfiguration::requested(request, &self.config.default_agent, &self.config.image)
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

    /// Executes a queued run to its final status, without a lease (`specrun run`). An
    /// `Err` means the store could not be written.
    pub async fn execute(
        &self,
        record: RunRecord,
        request: ValidatedRequest,
    ) -> Result<Execution, StoreError> {
        self.execute_leased(record, request, None, None).await
    }

    /// [`Pipeline::execute`] under a lease: once `lease_lost` is set, the run is stopped
    /// and abandoned without recording anything more, so that the runner that took it
    /// over is the only one that pushes and writes its state.
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
    ) -> Result<Execution, StoreError> {
        let run_id = runs::run_id(&record)?;
        let (record, version) = match version {
            Some(version) => (record, version),
            None => match runs::load_run_versioned(self.store.as_ref(), &run_id).await? {
                Some(stored) => stored,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "run {run_id} has no run.json to execute"
                    )))
                }
            },
        };
        if record.status.is_final() {
            tracing::info!(%run_id, status = %record.status, "the run is finished already; not running it again");
            return Ok(Execution::Finished(Box::new(record)));
        }
        let secrets: Vec<String> = self
            .config
            .forge_token
            .iter()
            .map(|t| t.expose().to_owned())
            .collect();
        let mut run = Run {
            config: self.config.clone(),
            store: self.store.clone(),
            artifacts: ArtifactStore::new(
                self.store.clone(),
                run_id.clone(),
                // A queued run's attempt is counted when it starts, just below; a retried
                // run's earlier attempt keeps its artifacts.
                match record.status {
                    RunStatus::Queued => record.attempt.saturating_add(1),
                    _ => record.attempt,
                },
                self.config.retention_days,
            ),
            redactor: Redactor::new(&secrets),
            clone_url: request.repository.clone_url(&self.config.forge_git_base),
            run_id,
            request,
            record,
            record_version: version,
            abandoned: false,
            unstored: Vec::new(),
            fetch: None,
            gateway: None,
            restore: None,
        };
        self.progress.event(ProgressEvent::RunStarted {
            run_id: run.run_id.to_string(),
        });
        // A restarted run (see `RunRecord::restart`) is running already.
        if run.record.status == RunStatus::Queued {
            if let Err(e) = run.record.start(&self.config.runner_id, now()) {
                tracing::warn!(error = %e, "unexpected start transition");
            }
        }
        let stop = StopWatch::start(StopWatchConfig {
            store: self.store.clone(),
            sandbox: self.sandbox.clone(),
            run_id: run.run_id.clone(),
            run_timeout: Some(self.config.run_timeout),
            poll: std::time::Duration::from_secs(1),
            runner_id: self.config.runner_id.clone(),
            lease_lost,
        });
        let mut job = None;
        let (status, reason) = match self.persist(&mut run).await {
            Ok(()) => {
                if !run.abandoned {
                    self.metrics
                        .emit(&specrun_core::metrics::run_started(&run.record));
                }
                self.run_phases(&mut run, &stop, &mut job).await
            }
            Err(e) => {
                run.record.error = Some(failure::store(Phase::Prepare, &e));
                (RunStatus::Failed, Some(e.to_string()))
            }
        };
        self.cleanup(&mut run, job).await;
        if run.abandoned {
            tracing::warn!(run_id = %run.run_id, "another runner took this run over; this runner stopped and recorded nothing more");
            return Ok(Execution::Abandoned);
        }
        if let Err(e) = run.record.finish(status, reason, now()) {
            tracing::warn!(error = %e, "unexpected final transition");
        }
        self.store_changes(&mut run).await?;
        if run.abandoned {
            return Ok(Execution::Abandoned);
        }
        self.metrics
            .emit(&specrun_core::metrics::run_finished(&run.record));
        Ok(Execution::Finished(Box::new(run.record)))
    }

    /// Removes the jobs an earlier attempt of `run_id` left behind; returns how many.
    pub async fn remove_orphans(&self, run_id: &RunId) -> usize {
        self.sandbox.remove_leftovers(run_id.as_str()).await
    }

    /// The phases in order, each given what the earlier ones made. The job is left in
    /// `job` for cleanup, however the phases end.
    async fn run_phases(
        &self,
        run: &mut Run,
        stop: &StopWatch,
        job: &mut Option<Box<dyn Job>>,
    ) -> (RunStatus, Option<String>) {
        let sandbox = self.sandbox.clone();
        if let Some(resume) = run.record.resume.clone() {
            run.restore = Restore::load(run, &resume).await;
        }
        let prepared = phase!(
            self,
            run,
            stop,
            Phase::Prepare,
            phases::prepare::run(run, sandbox.as_ref(), job)
        );
        let cloned = phase!(
            self,
            run,
            stop,
            Phase::Clone,
            self.clone_and_restore(run, prepared.job)
        );
        let restored = self.restored_phases(run).await;
        let answered = run.restore.as_ref().is_some_and(|r| r.resume.answered);
        let specified = match restored {
            Some(specified) if answered => phase!(
                self,
                run,
                stop,
                Phase::Specify,
                self.answer(run, &prepared, specified)
            ),
            Some(specified) => specified,
            None => phase!(
                self,
                run,
                stop,
                Phase::Specify,
                self.specify_and_keep(run, &prepared, &cloned)
            ),
        };
        for phase in [Phase::Plan, Phase::Tasks] {
            if run.record.phase(phase).restored_from_attempt.is_none() {
                phase!(
                    self,
                    run,
                    stop,
                    phase,
                    self.document_and_keep(run, &prepared, &specified, phase)
                );
            }
        }
        let committed = phase!(
            self,
            run,
            stop,
            Phase::Commit,
            phases::commit::run(run, &prepared, &specified)
        );
        let publish = run.request.publish;
        if let Some(reason) = skip_reason(Phase::Push, publish) {
            self.skip(run, Phase::Push, reason).await;
        } else {
            phase!(
                self,
                run,
                stop,
                Phase::Push,
                self.push_under_lock(run, stop, &prepared, &specified, &committed)
            );
        }
        if let Some(reason) = skip_reason(Phase::PullRequest, publish) {
            self.skip(run, Phase::PullRequest, reason).await;
        } else {
            phase!(
                self,
                run,
                stop,
                Phase::PullRequest,
                phases::pull_request::run(run, &specified)
            );
        }
        (
            RunStatus::Succeeded,
            Some(success_reason(run, &specified.branch.to_string())),
        )
    }

    /// Before a phase: ends the run if it was stopped or abandoned, else records the
    /// phase's start. `Some` is how the run ends.
    async fn start(
        &self,
        run: &mut Run,
        stop: &StopWatch,
        phase: Phase,
    ) -> Option<(RunStatus, Option<String>)> {
        if let Some(reason) = stop.reason() {
            return Some(self.stopped(run, None, reason).await);
        }
        if run.abandoned {
            // Another runner wrote the run (see `persist`): nothing more is done here.
            return Some((
                RunStatus::Failed,
                Some("another runner recorded the run".to_owned()),
            ));
        }
        if self.begin(run, phase).await.is_err() {
            return Some((
                RunStatus::Failed,
                Some("the state store could not be written".to_owned()),
            ));
        }
        // Recording the start found run.json written by another runner.
        run.abandoned.then(|| {
            (
                RunStatus::Failed,
                Some("another runner recorded the run".to_owned()),
            )
        })
    }

    /// After a phase: records how it ended and whether the run goes on.
    async fn finish<T>(
        &self,
        run: &mut Run,
        stop: &StopWatch,
        phase: Phase,
        result: Result<Step<T>, Failure>,
    ) -> Flow<T> {
        if let Some(reason) = stop.reason() {
            // The interrupted phase's logs are what an operator needs: keep them.
            let artifacts = match result {
                Ok(Step::Continue(outcome, _) | Step::Stop { outcome, .. }) => outcome.artifacts,
                Ok(Step::Skip(..)) => Vec::new(),
                Err(failure) => failure.artifacts,
            };
            let (status, reason) = self.stopped(run, Some((phase, artifacts)), reason).await;
            return Flow::Over(status, reason);
        }
        match result {
            Ok(Step::Continue(outcome, made)) => {
                self.end(run, phase, PhaseStatus::Succeeded, outcome).await;
                Flow::Next(made)
            }
            Ok(Step::Skip(reason, made)) => {
                let outcome = PhaseOutcome {
                    message: Some(reason),
                    ..Default::default()
                };
                self.end(run, phase, PhaseStatus::Skipped, outcome).await;
                Flow::Next(made)
            }
            Ok(Step::Stop {
                outcome,
                status,
                reason,
            }) => {
                self.end(run, phase, PhaseStatus::Succeeded, outcome).await;
                self.skip_rest(run, &format!("skipped: {reason}")).await;
                Flow::Over(status, Some(reason))
            }
            Err(failure) => {
                let outcome = PhaseOutcome {
                    exit_code: failure.error.exit_code,
                    message: Some(failure.error.message.clone()),
                    artifacts: failure.artifacts,
                };
                self.end(run, phase, PhaseStatus::Failed, outcome).await;
                let reason = format!("{phase} failed: {}", failure.error.message);
                run.record.error = Some(failure.error);
                self.skip_rest(run, &format!("skipped: the {phase} phase failed"))
                    .await;
                Flow::Over(RunStatus::Failed, Some(reason))
            }
        }
    }

    /// A phase the request's publish mode leaves out.
    async fn skip(&self, run: &mut Run, phase: Phase, reason: String) {
        let _ = run.record.skip_phase(phase, &reason, now());
        self.phase_ended(run, phase).await;
    }

    /// Ends a run that was cancelled or ran out of time; `phase` was interrupted.
    async fn stopped(
        &self,
        run: &mut Run,
        interrupted: Option<(Phase, Vec<ArtifactRef>)>,
        reason: StopReason,
    ) -> (RunStatus, Option<String>) {
        let phase = interrupted.as_ref().map(|(phase, _)| *phase);
        let (status, text) = match &reason {
            StopReason::LeaseLost => {
                run.abandoned = true;
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
            self.end(run, phase, PhaseStatus::Failed, outcome).await;
        }
        if let StopReason::TimedOut(_) = reason {
            run.record.error = Some(failure::error(
                phase.unwrap_or(Phase::Prepare),
                ErrorCode::RunTimeout,
                text.clone(),
                "Raise the run's time limit (SPECRUN_RUN_TIMEOUT_SECS) or make the specification smaller.",
            ));
        }
        self.skip_rest(run, &format!("skipped: {text}")).await;
        (status, Some(text))
    }

    async fn skip_rest(&self, run: &mut Run, reason: &str) {
        let pending: Vec<Phase> = Phase::ALL
            .into_iter()
            .filter(|p| *p != Phase::Cleanup && run.record.phase(*p).status == PhaseStatus::Pending)
            .collect();
        run.record.skip_pending(reason, &[Phase::Cleanup], now());
        for phase in pending {
            self.phase_ended(run, phase).await;
        }
    }

    /// Removes the job on every path, recording whether it worked.
    async fn cleanup(&self, run: &mut Run, job: Option<Box<dyn Job>>) {
        if self.begin(run, Phase::Cleanup).await.is_err() {
            tracing::warn!("could not record the cleanup phase's start");
        }
        // A clone still transferring (the run ended in prepare) must not write into the
        // workspace while it is removed.
        if let Some(fetch) = run.fetch.take() {
            fetch.settle().await;
        }
        let (status, outcome) = phases::cleanup::run(run, job).await;
        self.end(run, Phase::Cleanup, status, outcome).await;
    }

    /// Records a phase's start, and stores it with what changed since the last write (the
    /// earlier phases' ends) before the phase's work begins.
    async fn begin(&self, run: &mut Run, phase: Phase) -> Result<(), StoreError> {
        let _ = run.record.begin_phase(phase, now());
        self.progress.event(ProgressEvent::PhaseStarted { phase });
        run.unstored.push(phase);
        self.store_changes(run).await
    }

    async fn end(&self, run: &mut Run, phase: Phase, status: PhaseStatus, outcome: PhaseOutcome) {
        run.note_usage(phase);
        if let Err(e) = run.record.end_phase(phase, status, outcome, now()) {
            tracing::warn!(error = %e, "unexpected phase transition");
        }
        self.phase_ended(run, phase).await;
    }

    /// A phase ended (or was skipped or restored) in the record. It is stored with the
    /// next write, which comes before anything else is done: the next phase's start, or
    /// the run's final state (`store_changes`). One write per phase boundary instead of
    /// two, and the same record at every point where work happens.
    pub(super) async fn phase_ended(&self, run: &mut Run, phase: Phase) {
        let state = run.record.phase(phase);
        self.progress.event(ProgressEvent::PhaseEnded {
            phase,
            status: state.status,
            duration_ms: state.duration_ms,
            message: state.message.clone(),
        });
        run.unstored.push(phase);
        if !run.abandoned {
            self.metrics
                .emit(&specrun_core::metrics::phase_ended(&run.record, phase));
        }
    }

    /// Writes the phase JSON of every phase changed since the last write, and run.json,
    /// at once. A phase JSON that could not be written stays to be written next time.
    pub(super) async fn store_changes(&self, run: &mut Run) -> Result<(), StoreError> {
        if run.abandoned {
            return Ok(());
        }
        let mut phases = std::mem::take(&mut run.unstored);
        phases.sort();
        phases.dedup();
        let bodies: Vec<(Phase, String, Bytes)> = phases
            .iter()
            .map(|&phase| {
                let key = keys::phase_json(&run.run_id, phase);
                (phase, key, runs::to_json(run.record.phase(phase)))
            })
            .collect();
        let store = self.store.clone();
        let phase_writes = futures_util::future::join_all(
            bodies
                .iter()
                .map(|(_, key, body)| store.put(key, body.clone(), "application/json")),
        );
        let (written, persisted) = tokio::join!(phase_writes, self.persist(run));
        let mut failed = None;
        for ((phase, _, _), result) in bodies.into_iter().zip(written) {
            if let Err(e) = result {
                run.unstored.push(phase);
                failed.get_or_insert(e);
            }
        }
        persisted?;
        failed.map_or(Ok(()), Err)
    }

    /// Writes run.json, conditional on the version this runner last read or wrote; a
    /// refusal means another runner wrote it, and this one abandons the run.
    pub(super) async fn persist(&self, run: &mut Run) -> Result<(), StoreError> {
        if run.abandoned {
            return Ok(());
        }
        match runs::save_run_fenced(self.store.as_ref(), &run.record, &run.record_version).await {
            Ok(version) => {
                run.record_version = version;
                Ok(())
            }
            Err(StoreError::PreconditionFailed(why)) => {
                tracing::error!(run_id = %run.run_id, %why, "run.json was written by another runner; this runner stops and records nothing more");
                run.abandoned = true;
                Ok(())
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

fn success_reason(run: &Run, branch: &str) -> String {
    match (run.request.publish, &run.record.pull_request_url) {
        (Publish::None, _) => {
            format!("dry run: committed {branch} in the workspace, nothing pushed")
        }
        (_, Some(url)) => format!("pushed branch {branch}; pull request {url}"),
        _ => format!("pushed branch {branch}"),
    }
}
