//! Adapters for the [`specrun_core::ports`] traits. `fs` is the embedded default: a
//! directory that mirrors the bucket's key layout, and a spool-directory queue. `s3` and
//! `sqs` are the serverless deployment's bucket and queue (feature `aws`). `amqp` is the
//! run queue on RabbitMQ and `postgres_results` Celery's database result backend, for
//! operators whose Celery runs on those (feature `brokers`). Both features are default;
//! without them (the demo's build) the crate builds without the AWS SDK and the broker
//! clients.

#[cfg(feature = "brokers")]
pub mod amqp;
#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "aws")]
mod aws_error;
pub mod batches;
pub mod branch_locks;
pub mod counting;
pub mod fs;
pub mod log_tail;
#[cfg(feature = "brokers")]
pub mod postgres_results;
pub mod retry;
pub mod runs;
#[cfg(feature = "aws")]
pub mod s3;
#[cfg(feature = "aws")]
pub mod sqs;

#[cfg(feature = "brokers")]
pub use amqp::AmqpQueue;
#[cfg(feature = "aws")]
pub use aws::{aws_config, https_client, sqs_client, SdkConfig};
pub use counting::{CountingStore, StoreCounts};
pub use fs::{FsBlobStore, FsQueue};
#[cfg(feature = "brokers")]
pub use postgres_results::PostgresCeleryResults;
pub use retry::{RetryingQueue, RetryingStore};
#[cfg(feature = "aws")]
pub use s3::{s3_client, S3BlobStore};
#[cfg(feature = "aws")]
pub use sqs::SqsQueue;
