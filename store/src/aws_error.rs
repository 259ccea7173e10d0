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
            StoreError::unavailable(key, DisplayErrorContext(e).to_string())
        }
        _ => StoreError::backend(key, DisplayErrorContext(e).to_string()),
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
