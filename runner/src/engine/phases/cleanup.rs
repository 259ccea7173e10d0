//! cleanup: removes the run's job (container, network, firewall rules, workspace) on
//! every path, closes the model gateway (the run's token is refused from then on), keeps
//! the egress proxy's log, and says whether everything went.

use crate::engine::run::Run;
use specrun_core::state::PhaseOutcome;
use specrun_core::PhaseStatus;
use specrun_sandbox::Job;

pub(crate) async fn run(run: &Run, job: Option<Box<dyn Job>>) -> (PhaseStatus, PhaseOutcome) {
    // The run's token is worthless from here on, whatever still holds it.
    if let Some(gateway) = &run.gateway {
        gateway.close();
    }
    let Some(job) = job else {
        return (
            PhaseStatus::Succeeded,
            super::message("nothing to clean up"),
        );
    };
    let mut teardown = job.tear_down(&run.redactor).await;
    let mut artifacts = Vec::new();
    if let Some(log) = teardown.egress_log.take() {
        match run
            .artifacts
            .put_bytes(None, "egress.log", log.into_bytes(), "text/plain")
            .await
        {
            Ok(artifact) => artifacts.push(artifact),
            Err(e) => teardown
                .problems
                .push(format!("egress.log not stored: {e}")),
        }
    }
    let (status, message) = if teardown.problems.is_empty() {
        (PhaseStatus::Succeeded, teardown.done.join(", "))
    } else {
        (PhaseStatus::Failed, teardown.problems.join("; "))
    };
    let outcome = PhaseOutcome {
        message: Some(message),
        artifacts,
        ..Default::default()
    };
    (status, outcome)
}
