//! The AWS clients of the serverless deployment's adapters (`s3`, `sqs`), from the
//! standard AWS configuration with specrun's HTTP client.

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
