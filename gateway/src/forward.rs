//! Serving the agent: each request is checked (the run's token, a model call of the
//! configured API, the budget), its credential replaced by the real key, sent to the
//! upstream, and the answer streamed back through the meter.

use crate::meter::Metered;
use crate::Shared;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use specrun_core::model_api::{presented_credential, query_without_key, CREDENTIAL_HEADERS};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest request body forwarded (a long conversation with its tool outputs).
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Connections one run's agent may hold open at once.
const MAX_CONNECTIONS: usize = 64;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Headers that describe one hop, not the message; never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    while let Ok((stream, _)) = listener.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(request, &shared).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An error in the API's own shape.
fn refuse(shared: &Shared, status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = shared.config.api.error_body(status.as_u16(), kind, message);
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(request: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    shared.touch();
    let (parts, body) = request.into_parts();
    let credential = presented_credential(
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
        parts.uri.query(),
    );
    if !shared.admits(credential) {
        return refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "specrun model gateway: this token is not valid (it belongs to no running run)",
        );
    }
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    if !shared.config.api.allows(method, path) {
        return refuse(
            shared,
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!(
                "specrun model gateway: {method} {path} is not a {} model call",
                shared.config.api
            ),
        );
    }
    if let Some(spent) = shared.spent() {
        tracing::warn!(target: "specrun::gateway", %spent, "model call refused");
        return refuse(
            shared,
            StatusCode::FORBIDDEN,
            "budget_exceeded",
            &format!(
                "specrun model gateway: {spent}; no further model calls are allowed in this run"
            ),
        );
    }
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return refuse(
                shared,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                &format!("specrun model gateway: request body: {e}"),
            )
        }
    };
    let asked_model = requested_model(&body, path);
    let mut url = format!("{}{path}", shared.config.upstream);
    let query = parts.uri.query().map(query_without_key).unwrap_or_default();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let (key_name, key_value) = shared.config.api.key_header(&shared.config.api_key);
    let mut headers = forwardable(&parts.headers);
    headers.remove(http::header::ACCEPT_ENCODING);
    headers.remove(http::header::CONTENT_LENGTH);
    if let Ok(value) = HeaderValue::from_str(&key_value) {
        let mut value = value;
        value.set_sensitive(true);
        headers.insert(HeaderName::from_static(key_name), value);
    }
    let sent = shared
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            // The error names the upstream URL, never the key (it is in a header).
            tracing::warn!(target: "specrun::gateway", error = %e, "upstream unreachable");
            return refuse(
                shared,
                StatusCode::BAD_GATEWAY,
                "api_error",
                &format!("specrun model gateway: the model API could not be reached: {e}"),
            );
        }
    };
    let status = answer.status();
    let event_stream = answer
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut headers = forwardable(answer.headers());
    // Chunked to the agent: the final chunk goes out only after the answer was metered,
    // so the next call's budget check sees this one.
    headers.remove(http::header::CONTENT_LENGTH);
    let metered = Metered::new(
        answer.bytes_stream().boxed(),
        event_stream,
        asked_model,
        shared.clone(),
    );
    let mut response = Response::new(http_body_util::BodyExt::boxed_unsync(StreamBody::new(
        metered,
    )));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The model a request asks for (`gen_ai.request.model`): the body's `model`, or
/// Gemini's `models/NAME:verb` path; counted for an answer that does not name its model.
fn requested_model(body: &[u8], path: &str) -> Option<String> {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned));
    let from_path = || {
        let (_, rest) = path.split_once("/models/")?;
        rest.split(':').next().map(str::to_owned)
    };
    from_body
        .or_else(from_path)
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().take(128).collect())
}

/// `headers` without hop-by-hop fields and without any credential.
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || CREDENTIAL_HEADERS.contains(&lower) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}
