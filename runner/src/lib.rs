//! The specrun runner: executes run requests through the nine phases in a job
//! environment (a Docker container by default), with git on the host side of the
//! workspace.
//!
//! Map: [`config`] (plain settings) → [`engine`] (the pipeline, one file per phase under
//! `engine/phases/`, typed by where the run is) → the job environment
//! (`specrun-sandbox`) and publishing (`specrun-publish`). [`worker`] takes runs from a
//! queue under a lease; [`serve`] answers the functions' HTTP API; [`cli`] is the
//! `specrun` command line; `main.rs` only wires it.

pub mod cli;
pub mod config;
mod engine;
pub mod metrics;
pub mod notify;
mod serve;
mod worker;

pub use config::RunnerConfig;
pub use engine::progress;
pub use engine::{Execution, Pipeline};
