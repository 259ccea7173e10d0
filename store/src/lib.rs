//! Adapters for the [`specrun_core::ports`] traits. `fs` is the embedded default: a
//! directory that mirrors the bucket's key layout, and a spool-directory queue. `s3` and
//! `sqs` are the serverless deployment's bucket and queue.

mod aws_error;
pub mod batches;
pub mod branch_locks;
pub mod fs;
pub mod retry;
pub mod runs;
pub mod s3;
pub mod sqs;

pub use fs::{FsBlobStore, FsQueue};
pub use retry::{RetryingQueue, RetryingStore};
pub use s3::{s3_client, S3BlobStore};
pub use sqs::SqsQueue;

pub use aws_config::SdkConfig;

/// An SQS client from the standard AWS configuration.
pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// Loads the standard AWS configuration (environment, profile, instance role;
/// `AWS_ENDPOINT_URL` for emulators).
pub async fn aws_config() -> SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
