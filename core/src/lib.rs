//! The specrun domain, free of I/O: what a run request is and how it is validated, the run
//! and phase model with its state machine, the versioned state JSON, the bucket key layout,
//! agent profiles, secret redaction and the small traits (ports) adapters implement.
//!
//! Architecture invariant: nothing in this crate touches the network, the filesystem, a
//! clock or a process. Callers pass time and bytes in; adapters live in other crates.

pub mod agent;
pub mod agents_file;
pub mod backoff;
pub mod batch;
pub mod branch;
pub mod branch_lock;
pub mod celery;
pub mod checkpoint;
pub mod clarify;
pub mod claude_events;
pub mod codex_events;
pub mod commit_scope;
pub mod egress;
pub mod error_code;
pub mod event_summary;
pub mod exec_protocol;
pub mod feature;
pub mod invisible;
pub mod keys;
pub mod lease;
pub mod live_log;
pub mod message;
pub mod metrics;
pub mod model_api;
pub mod model_usage;
pub mod notify;
pub mod phase;
pub mod pickle;
pub mod ports;
pub mod publish;
pub mod quote;
pub mod redact;
pub mod repo;
pub mod request;
pub mod service_url;
pub mod state;
pub mod strict_json;
pub mod trailer;

pub use error_code::ErrorCode;
pub use phase::{Phase, PhaseStatus, RunStatus};
pub use request::{RunRequest, ValidatedRequest};
