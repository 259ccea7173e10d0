//! The specrun runner: executes run requests through the nine phases in an ephemeral
//! Docker job container, with git2 on the host side of the workspace.
//!
//! Map: [`config`] (plain settings) → [`pipeline`] (order, state, cleanup) → `phases`
//! (one function per phase) → adapters [`docker`], [`git`], [`workspace`], [`artifacts`].
//! [`cli`] is the `specrun` command line; `main.rs` only wires it.

pub mod artifacts;
pub mod changes;
pub mod cli;
pub mod config;
pub mod docker;
pub mod egress;
mod failure;
pub mod forge;
pub mod git;
pub mod lease;
mod phases;
pub mod pipeline;
pub mod progress;
pub mod run_locks;
pub mod safe_fs;
pub mod serve;
pub mod stop;
pub mod sweep;
pub mod worker;
pub mod workspace;

pub use config::RunnerConfig;
pub use pipeline::Pipeline;
