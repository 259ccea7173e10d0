//! Adapters for the [`specrun_core::ports`] traits. `fs` is the embedded default: a
//! directory that mirrors the bucket's key layout, and a spool-directory queue.

pub mod fs;

pub use fs::{FsBlobStore, FsQueue};
