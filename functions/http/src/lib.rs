//! What the submit and status functions share: JSON responses, error bodies that say
//! what to fix, query-string parsing, and the adapter that runs a handler as a Lambda
//! behind a function URL (feature `lambda`). Handlers take `http::Request<Bytes>` so that `specrun serve`
//! runs exactly the same code as the Lambda.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use serde::Serialize;

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
    error_with(status, code, message, field, serde_json::Map::new())
}

/// 400 `invalid_request` naming the refused `field` and why.
pub fn invalid_request(field: &str, message: &str) -> ApiResponse {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        message,
        Some(field),
    )
}

/// An error answer with more members in `error` (e.g. the `run_id` a conflict is with).
pub fn error_with(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> ApiResponse {
    let mut detail = serde_json::json!({ "code": code, "message": message });
    if let Some(field) = field {
        detail["field"] = serde_json::Value::from(field);
    }
    if let serde_json::Value::Object(members) = &mut detail {
        members.extend(extra);
    }
    json(status, &serde_json::json!({ "error": detail }))
}

/// The only media type a request body may have.
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// Refuses (415, the answer boxed: it is large) a request whose body is not declared `application/json`. Browsers send
/// `text/plain`, form and multipart bodies to any origin without asking first (a CORS
/// "simple request"); requiring JSON means a web page cannot post runs through its
/// visitors' browsers. Parameters are allowed, but a `charset` must be UTF-8, the only
/// encoding JSON has.
pub fn require_json(request: &ApiRequest) -> Result<(), Box<ApiResponse>> {
    let mut values = request.headers().get_all(header::CONTENT_TYPE).iter();
    let given = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().unwrap_or("(not text)")),
        (Some(_), Some(_)) => Some("(more than one Content-Type header)"),
    };
    if given.is_some_and(is_json_media_type) {
        return Ok(());
    }
    let message = format!(
        "send the body as JSON with Content-Type: {JSON_MEDIA_TYPE} (parameters allowed, charset=utf-8 only); got {}",
        given.unwrap_or("no Content-Type")
    );
    let mut extra = serde_json::Map::new();
    extra.insert("required".to_owned(), JSON_MEDIA_TYPE.into());
    Err(Box::new(error_with(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &message,
        None,
        extra,
    )))
}

fn is_json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(JSON_MEDIA_TYPE)
        && parts.all(|parameter| {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
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
    unavailable_with(message, serde_json::Map::new())
}

/// [`unavailable`] with more members in `error`, e.g. the `run_id` a retry will get.
pub fn unavailable_with(
    message: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> ApiResponse {
    let mut response = error_with(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        message,
        None,
        extra,
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

/// A setting of this deployment is wrong (500): retrying cannot help, an operator must
/// fix what `message` names.
pub fn misconfigured(message: &str) -> ApiResponse {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "misconfigured",
        message,
        None,
    )
}

/// The value of `name` in the request's query string, percent-decoded.
pub fn query_param(request: &ApiRequest, name: &str) -> Option<String> {
    form_param(request.uri().query()?, name)
}

/// The value of `name` in `form` (a query string or an
/// `application/x-www-form-urlencoded` body), percent-decoded.
pub fn form_param(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// The value of `name`, refusing (400, naming it) a query string that gives it twice:
/// which one a cache, a proxy and this function read would be anyone's guess.
pub fn single_query_param(
    request: &ApiRequest,
    name: &str,
) -> Result<Option<String>, Box<ApiResponse>> {
    let given = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(key, _)| key) == name)
        .count();
    if given > 1 {
        return Err(Box::new(invalid_request(
            name,
            &format!("{name} is given {given} times; give it once"),
        )));
    }
    Ok(query_param(request, name))
}

/// Form decoding: `+` is a space and `%2B` a plus, so the spaces go in before the
/// escapes come out; a `%` that starts no escape stays as it is.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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
#[cfg(feature = "lambda")]
pub async fn run_lambda<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(ApiRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ApiResponse> + Send,
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
    fn query_values_are_form_decoded() {
        for (raw, decoded) in [
            ("a+b", "a b"),
            ("a%2Bb", "a+b"),
            ("a%20b%2fc", "a b/c"),
            ("caf%C3%A9", "café"),
            ("100%", "100%"),
            ("%4", "%4"),
            ("%zz1", "%zz1"),
            ("%%41", "%A"),
            ("%FF", "\u{FFFD}"),
        ] {
            assert_eq!(percent_decode(raw), decoded, "{raw}");
        }
    }

    fn with_content_type(values: &[&str]) -> ApiRequest {
        let mut request = Request::post("/runs");
        for value in values {
            request = request.header(header::CONTENT_TYPE, *value);
        }
        request.body(Bytes::new()).unwrap_or_default()
    }

    #[test]
    fn only_json_bodies_are_taken() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; foo=bar",
        ] {
            assert!(require_json(&with_content_type(&[ok])).is_ok(), "{ok}");
        }
        for refused in [
            &[][..],
            &["text/plain"],
            &["text/plain; charset=utf-8"],
            &["application/x-www-form-urlencoded"],
            &["multipart/form-data; boundary=x"],
            &["application/json; charset=utf-16"],
            &["application/jsonp"],
            &["application/json", "text/plain"],
        ] {
            let answer = require_json(&with_content_type(refused)).err();
            let status = answer.as_ref().map(|a| a.status());
            assert_eq!(
                status,
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{refused:?}"
            );
            let body: serde_json::Value = answer
                .map(|a| serde_json::from_slice(a.body()).unwrap_or_default())
                .unwrap_or_default();
            assert_eq!(body["error"]["code"], "unsupported_media_type");
            assert_eq!(body["error"]["required"], "application/json");
        }
    }

    #[test]
    fn a_query_parameter_given_twice_is_refused() {
        let request = Request::get("/runs?limit=5&limit=500").body(Bytes::new());
        let request = request.unwrap_or_default();
        let answer = single_query_param(&request, "limit").err();
        assert_eq!(answer.map(|a| a.status()), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            single_query_param(&request, "cursor").ok(),
            Some(None),
            "an absent one is fine"
        );
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
