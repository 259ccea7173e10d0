//! Continuing a retried run from its last good phase: clone, then the earlier attempt's
//! checkpoint written into the clone; the phases it covers are recorded as restored (with
//! that attempt's times and artifacts, `restored_from_attempt`) and not run again. Each
//! agent phase that succeeds leaves the checkpoint a later retry restores.

use crate::engine::phases::checkpoint;
use crate::engine::phases::{self, Cloned, Prepared, Specified, Step, StepResult};
use crate::engine::pipeline::Pipeline;
use crate::engine::run::Run;
use specrun_core::state::PhaseOutcome;
use specrun_core::{Phase, PhaseStatus};
use specrun_sandbox::Job;

impl Pipeline {
    /// clone, then, for a retried run, the checkpoint written into the clone.
    pub(super) async fn clone_and_restore(
        &self,
        run: &mut Run,
        job: &dyn Job,
    ) -> StepResult<Cloned> {
        let step = phases::clone::run(run, job).await?;
        let Some(restore) = &run.restore else {
            return Ok(step);
        };
        let Step::Continue(mut outcome, cloned) = step else {
            return Ok(step);
        };
        let restored = restore.apply(run, job).await.map_err(|mut f| {
            f.artifacts.splice(0..0, outcome.artifacts.clone());
            f
        })?;
        outcome.artifacts.extend(restored);
        outcome.message = Some(format!(
            "{}; restored the output of the phases up to {} from attempt {}",
            outcome.message.unwrap_or_default(),
            restore.resume.after,
            restore.resume.from_attempt
        ));
        Ok(Step::Continue(outcome, cloned))
    }

    /// For a retried run whose checkpoint was restored: records specify (and plan, tasks,
    /// as far as the checkpoint goes) as restored, and gives what they made. `None`: the
    /// run starts from specify.
    pub(super) async fn restored_phases(&self, run: &mut Run) -> Option<Specified> {
        let restore = run.restore.as_ref()?;
        let (after, answered) = (restore.resume.after, restore.resume.answered);
        let specified = restore.specified();
        run.record.branch_name = Some(specified.branch.to_string());
        for phase in [Phase::Specify, Phase::Plan, Phase::Tasks] {
            // An answered run's asking phase records the answers instead (`answer`).
            if phase > after || (phase == after && answered) {
                break;
            }
            // The latest attempt in which the phase succeeded (one taken over midway may
            // have left it pending).
            let earlier = run.record.previous_attempts.iter().rev().find_map(|a| {
                a.phases
                    .iter()
                    .find(|p| p.phase == phase && p.status == PhaseStatus::Succeeded)
                    .map(|p| (p.clone(), a.attempt))
            });
            let Some((state, attempt)) = earlier else {
                break;
            };
            if let Err(e) = run.record.restore_phase(&state, attempt) {
                tracing::warn!(error = %e, "unexpected restore transition");
            }
            self.phase_ended(run, phase).await;
        }
        Some(specified)
    }

    /// For an answered run, in place of specify: the answers are in the restored
    /// specification (recorded as Spec Kit's clarify step does); it is checked for open
    /// questions again, and the run goes on only when none is left.
    pub(super) async fn answer(
        &self,
        run: &mut Run,
        prepared: &Prepared<'_>,
        specified: Specified,
    ) -> StepResult<Specified> {
        let spec_path = specified.feature.file("spec.md");
        let mut artifacts = Vec::new();
        let Some(spec) = phases::output::read_output(
            prepared.job.workspace(),
            Phase::Specify,
            &spec_path,
            &mut artifacts,
        )
        .await?
        else {
            return Err(phases::output::output_missing(
                Phase::Specify,
                &spec_path,
                artifacts,
            ));
        };
        if let Some(mut stop) = phases::output::clarification_stop(
            run,
            Phase::Specify,
            &spec_path,
            &spec,
            &mut artifacts,
        )
        .await?
        {
            if let Step::Stop { outcome, .. } = &mut stop {
                checkpoint::keep(run, prepared, &specified, Phase::Specify, outcome).await;
            }
            return Ok(stop);
        }
        let mut outcome = PhaseOutcome {
            artifacts,
            message: Some(format!(
                "recorded {} answer(s) in {spec_path} (## Clarifications); no open questions left; not run again",
                run.record.answers.len()
            )),
            ..Default::default()
        };
        checkpoint::keep(run, prepared, &specified, Phase::Specify, &mut outcome).await;
        Ok(Step::Continue(outcome, specified))
    }

    /// specify, leaving a checkpoint when it succeeds.
    pub(super) async fn specify_and_keep(
        &self,
        run: &mut Run,
        prepared: &Prepared<'_>,
        cloned: &Cloned,
    ) -> StepResult<Specified> {
        let mut step = phases::specify::run(run, prepared, cloned).await?;
        if let Step::Continue(outcome, specified) = &mut step {
            checkpoint::keep(run, prepared, specified, Phase::Specify, outcome).await;
        }
        Ok(step)
    }

    /// plan or tasks, leaving a checkpoint when it succeeds.
    pub(super) async fn document_and_keep(
        &self,
        run: &mut Run,
        prepared: &Prepared<'_>,
        specified: &Specified,
        phase: Phase,
    ) -> StepResult<()> {
        let mut step = match phase {
            Phase::Plan => phases::plan::run(run, prepared, specified).await?,
            _ => phases::tasks::run(run, prepared, specified).await?,
        };
        if let Step::Continue(outcome, ()) = &mut step {
            checkpoint::keep(run, prepared, specified, phase, outcome).await;
        }
        Ok(step)
    }
}
