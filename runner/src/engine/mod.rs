//! The engine: one run from `queued` to a final status. [`pipeline`] owns the order of the
//! phases, the persistence of run.json and the phase JSON, stopping and cleanup; each
//! phase lives in its own file under [`phases`] and gets only what it needs, typed by
//! where the run is (a job after prepare, a clone after clone, a feature and branch after
//! specify). [`artifacts`] stores redacted, hashed logs; [`failure`] turns what went
//! wrong into a stable code with its remediation; [`stop`] notices cancellation, the run
//! time limit and a lost lease.

mod agent_versions;
pub(crate) mod artifacts;
mod branch_wait;
mod failure;
pub(crate) mod live_log;
mod phases;
mod pipeline;
pub mod progress;
mod resume;
mod run;
mod stop;
#[cfg(test)]
mod tests;

pub use pipeline::{Execution, Pipeline};
