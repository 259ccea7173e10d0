//! Sorting the AWS SDK's errors into [`StoreError`]s. What matters to callers is whether
//! the object was missing, a condition failed, or the service was unreachable or busy
//! (worth retrying) rather than refusing the request for good.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use specrun_core::ports::StoreError;

/// Error codes S3 and SQS use for "slow down" or "try again".
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "KMS.ThrottlingException",
];

/// The [`StoreError`] for an SDK error about `key` in `bucket`: a missing bucket is told
/// apart from a missing object (S3 answers 404 to both).
pub(crate) fn classify_s3<E>(bucket: &str, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if e.code() == Some("NoSuchBucket") {
        return StoreError::NoSuchBucket(bucket.to_owned());
    }
    classify(key, e)
}

/// The [`StoreError`] for an SDK error about `key` (an object key or a queue URL).
pub(crate) fn classify<E>(key: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_owned);
    match (status, code.as_deref()) {
        (Some(404), _) | (_, Some("NoSuchKey" | "NotFound")) => {
            StoreError::NotFound(key.to_owned())
        }
        (Some(412 | 409), _) | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
            StoreError::PreconditionFailed(key.to_owned())
        }
        _ if is_transient(&e, status, code.as_deref()) => {
            StoreError::unavailable(key, short_reason(&e, status, code.as_deref()))
        }
        _ => StoreError::backend(key, DisplayErrorContext(e).to_string()),
    }
}

/// One line an operator can read: the root cause of a failed connection, or the status
/// and code of a busy answer (the SDK's full context runs to a screenful).
fn short_reason<E, R>(e: &SdkError<E, R>, status: Option<u16>, code: Option<&str>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("no answer: {cause}")
        }
        _ => format!(
            "answered HTTP {} {}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            code.unwrap_or_default()
        )
        .trim_end()
        .to_owned(),
    }
}

/// No answer at all (connection refused or reset, timeout, unreadable response), a 5xx,
/// or a throttling answer.
fn is_transient<E, R>(e: &SdkError<E, R>, status: Option<u16>, code: Option<&str>) -> bool {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ConstructionFailure(_) => false,
        _ => {
            matches!(status, Some(429 | 500..=599))
                || code.is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
    }
}
