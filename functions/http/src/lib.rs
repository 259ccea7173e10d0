//! What the submit and status functions share: JSON responses, error bodies that say
//! what to fix, query-string parsing, and the adapter that runs a handler as a Lambda
//! behind a function URL. Handlers take `http::Request<Bytes>` so that `specrun serve`
//! runs exactly the same code as the Lambda.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use serde::Serialize;
use std::future::Future;

/// A request as every handler sees it.
pub type ApiRequest = Request<Bytes>;
/// A response as every handler returns it.
pub type ApiResponse = Response<Bytes>;

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> ApiResponse {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer: `{"error": {"code", "message", "field"?}}`.
pub fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> ApiResponse {
    let mut detail = serde_json::json!({ "code": code, "message": message });
    if let Some(field) = field {
        detail["field"] = serde_json::Value::from(field);
    }
    json(status, &serde_json::json!({ "error": detail }))
}

pub fn not_found(what: &str) -> ApiResponse {
    error(StatusCode::NOT_FOUND, "not_found", what, None)
}

pub fn method_not_allowed(allowed: &str) -> ApiResponse {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allowed}"),
        None,
    );
    if let Ok(value) = header::HeaderValue::from_str(allowed) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// How long a client should wait before retrying after a storage or queue failure.
const RETRY_AFTER_SECS: &str = "5";

/// A storage or queue failure: the client may retry, after `Retry-After` seconds.
pub fn unavailable(message: &str) -> ApiResponse {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        message,
        None,
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

/// The value of `name` in the request's query string, percent-decoded.
pub fn query_param(request: &ApiRequest, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request path without a trailing slash (`/` stays `/`).
pub fn path(request: &ApiRequest) -> &str {
    let path = request.uri().path();
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Runs `handler` as a Lambda behind a function URL, logging to stderr (CloudWatch).
pub async fn run_lambda<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(ApiRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiResponse> + Send,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPECRUN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .init();
    let handler = &handler;
    lambda_http::run(lambda_http::service_fn(
        move |request: lambda_http::Request| async move {
            let (parts, body) = request.into_parts();
            let response = handler(Request::from_parts(
                parts,
                Bytes::copy_from_slice(body.as_ref()),
            ))
            .await;
            let (parts, body) = response.into_parts();
            let body = match String::from_utf8(body.to_vec()) {
                Ok(text) => lambda_http::Body::Text(text),
                Err(binary) => lambda_http::Body::Binary(binary.into_bytes()),
            };
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, body))
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_answer_says_when_to_retry() {
        let response = unavailable("storage unavailable at runs/x/run.json: no answer");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
        assert_eq!(body["error"]["code"], "unavailable");
    }

    #[test]
    fn reads_query_parameters() {
        let request = Request::get("/runs?limit=5&cursor=index%2Fruns%2F1-a&x").body(Bytes::new());
        let request = request.ok();
        let get = |name| request.as_ref().and_then(|r| query_param(r, name));
        assert_eq!(get("limit").as_deref(), Some("5"));
        assert_eq!(get("cursor").as_deref(), Some("index/runs/1-a"));
        assert_eq!(get("x").as_deref(), Some(""));
        assert_eq!(get("y"), None);
    }

    #[test]
    fn errors_name_the_field() {
        let response = error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad",
            Some("repository"),
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
        assert_eq!(body["error"]["field"], "repository");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
