//! Adapters for the [`specrun_core::ports`] traits. `fs` is the embedded default: a
//! directory that mirrors the bucket's key layout, and a spool-directory queue. `s3` and
//! `sqs` are the serverless deployment's bucket and queue. `amqp` is the run queue on
//! RabbitMQ and `postgres_results` Celery's database result backend, for operators whose
//! Celery runs on those.

pub mod amqp;
mod aws_error;
pub mod batches;
pub mod branch_locks;
pub mod counting;
pub mod fs;
pub mod log_tail;
pub mod postgres_results;
pub mod retry;
pub mod runs;
pub mod s3;
pub mod sqs;

pub use amqp::AmqpQueue;
pub use counting::{CountingStore, StoreCounts};
pub use fs::{FsBlobStore, FsQueue};
pub use postgres_results::PostgresCeleryResults;
pub use retry::{RetryingQueue, RetryingStore};
pub use s3::{s3_client, S3BlobStore};
pub use sqs::SqsQueue;

pub use aws_config::SdkConfig;

/// An SQS client from the standard AWS configuration.
pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// Loads the standard AWS configuration (environment, profile, instance role;
/// `AWS_ENDPOINT_URL` for emulators), with specrun's HTTP client.
pub async fn aws_config() -> SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .load()
        .await
}

/// The HTTP client of every AWS client: rustls on ring, the system's trusted roots (so an
/// operator's CA bundle works), loaded when the first client uses it.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
