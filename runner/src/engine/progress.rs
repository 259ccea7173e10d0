//! Progress of a run as it happens, for whoever watches: the CLI prints it, a worker logs
//! it.

use specrun_core::{Phase, PhaseStatus};

/// Something that happened in a run.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    RunStarted {
        run_id: String,
    },
    PhaseStarted {
        phase: Phase,
    },
    PhaseEnded {
        phase: Phase,
        status: PhaseStatus,
        duration_ms: Option<u64>,
        message: Option<String>,
    },
}

/// Receives progress events; must not block.
pub trait Progress: Send + Sync {
    fn event(&self, event: ProgressEvent);
}

/// Logs progress with `tracing`.
#[derive(Debug, Default)]
pub struct TracingProgress;

impl Progress for TracingProgress {
    fn event(&self, event: ProgressEvent) {
        match event {
            ProgressEvent::RunStarted { run_id } => tracing::info!(%run_id, "run started"),
            ProgressEvent::PhaseStarted { phase } => tracing::info!(%phase, "phase started"),
            ProgressEvent::PhaseEnded {
                phase,
                status,
                duration_ms,
                message,
            } => {
                tracing::info!(%phase, %status, ?duration_ms, message = message.as_deref().unwrap_or(""), "phase ended")
            }
        }
    }
}
