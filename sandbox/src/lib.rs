//! The job environment: where a run's agent executes, and all of specrun's code that
//! needs root. The engine sees only the port ([`Sandbox`], [`Job`]); [`docker`] implements
//! it on one Docker engine, with the run's [`workspace`] (a quota'd tmpfs handed to the
//! agent's user and back), its [`egress`] network, firewall rules and proxy, and
//! [`safe_fs`], the only way the runner reads what the agent wrote.
//!
//! Architecture invariant: no other crate talks to Docker, mounts, chowns, or sets
//! firewall rules.

pub mod docker;
pub mod egress;
mod port;
pub mod safe_fs;
pub mod workspace;

pub use docker::DockerSandbox;
pub use port::{
    ExecEnd, ExecSpec, HostService, Job, JobFacts, JobRequest, OutputSink, Sandbox, SandboxError,
    Stream, Teardown,
};
pub use workspace::Workspace;
