//! What one run carries through its phases, whatever phase it is in. What exists only
//! from a given phase on (the job, the clone, the feature) is not here: it is carried in
//! the types the phases return (`phases::{Prepared, Cloned, Specified, Committed}`).

use crate::config::RunnerConfig;
use crate::engine::artifacts::ArtifactStore;
use specrun_core::keys::RunId;
use specrun_core::ports::BlobStore;
use specrun_core::redact::Redactor;
use specrun_core::request::ValidatedRequest;
use specrun_core::state::RunRecord;
use std::sync::Arc;

/// A run in progress.
pub(crate) struct Run {
    pub config: Arc<RunnerConfig>,
    pub store: Arc<dyn BlobStore>,
    pub run_id: RunId,
    pub request: ValidatedRequest,
    pub record: RunRecord,
    pub artifacts: ArtifactStore,
    pub redactor: Redactor,
    /// Where the repository is cloned from and pushed to: built from the request, never
    /// read back from the repository.
    pub clone_url: String,
    /// The version of run.json this runner last read or wrote: its next write is
    /// conditional on it.
    pub record_version: String,
    /// Another runner holds the run now: nothing more is recorded by this one.
    pub abandoned: bool,
    /// Phases changed in `record` since run.json was last written: their phase JSON and
    /// run.json are written together with the next phase's start or the final state.
    pub unstored: Vec<specrun_core::Phase>,
    /// The clone's transfer, started by prepare and awaited by clone (or, when the run
    /// ends before that, by cleanup before the workspace goes).
    pub fetch: Option<crate::engine::phases::clone::Fetch>,
    /// For a retried run: the earlier attempt's checkpoint its phases are restored from.
    pub restore: Option<crate::engine::phases::checkpoint::Restore>,
    /// The run's model gateway, from prepare on, for agents that use one.
    pub gateway: Option<Arc<specrun_gateway::ModelGateway>>,
}

impl Run {
    /// Copies what the model gateway metered into the record (`phase`'s calls and the
    /// run's so far).
    pub fn note_usage(&mut self, phase: specrun_core::Phase) {
        if let Some(gateway) = &self.gateway {
            let phase_usage = Some(gateway.phase_usage(phase)).filter(|u| u.requests > 0);
            self.record
                .set_usage(phase, phase_usage, gateway.run_usage());
        }
    }
}
