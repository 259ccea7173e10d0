//! The web console and the gate in front of the API. [`Console::gate`] takes every
//! request first: it answers the console's own paths (`/`, `/console/...`) and, when a
//! console token is configured, lets an API request through only with the operator
//! credential (and, for a cookie-borne request that changes state, its CSRF token).
//! The status function and `specrun serve` both put it in front of their handlers, so
//! the console and the API it calls are guarded the same way everywhere.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use specrun_http::{ApiRequest, ApiResponse};
use time::OffsetDateTime;

pub mod assets;
pub mod auth;

pub use auth::{Caller, Credential, TokenError};

/// The environment variable (and deployment secret) holding the console token.
pub const TOKEN_ENV: &str = "SPECRUN_CONSOLE_TOKEN";

/// The console pages' policy: scripts, styles and requests from this origin only; no
/// inline script, no framing, forms post here only.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// The API's answers (JSON, artifacts) are never a page that runs: an artifact someone
/// opens from the console (an HTML file an agent wrote) cannot script this origin.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// What the gate decided.
pub enum Gate {
    /// The gate answered (a console page, a login, a refusal).
    Answer(ApiResponse),
    /// An API request the handlers should answer.
    Pass(ApiRequest),
}

/// The console; off (every request passes, `/` says how to turn it on) without a token.
#[derive(Clone, Default)]
pub struct Console {
    credential: Option<Credential>,
}

impl Console {
    /// A console guarded by `token`; off when `token` is `None` or empty.
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        let credential = match token.filter(|t| !t.is_empty()) {
            Some(token) => Some(Credential::new(token)?),
            None => None,
        };
        Ok(Console { credential })
    }

    /// The console as [`TOKEN_ENV`] configures it.
    pub fn from_env() -> Result<Self, TokenError> {
        Self::new(std::env::var(TOKEN_ENV).ok().as_deref())
    }

    pub fn is_enabled(&self) -> bool {
        self.credential.is_some()
    }

    /// Decides `request` at `now`.
    pub fn gate(&self, request: ApiRequest, now: OffsetDateTime) -> Gate {
        let Some(credential) = &self.credential else {
            return match specrun_http::path(&request) {
                "/" | "/console" => Gate::Answer(specrun_http::not_found(&format!(
                    "the web console is off: set {TOKEN_ENV} (a secret of at least {} characters) where specrun serve or the status function runs, then open / and log in with it",
                    auth::MIN_TOKEN_LEN
                ))),
                _ => Gate::Pass(request),
            };
        };
        let (parts, body) = request.into_parts();
        let caller = credential.caller(&parts, now);
        let path = parts.uri.path().to_owned();
        let answer = match (&parts.method, path.as_str()) {
            (&Method::GET | &Method::HEAD, "/" | "/console" | "/console/") => {
                if caller == Caller::Anonymous {
                    page(StatusCode::UNAUTHORIZED, &assets::LOGIN_PAGE)
                } else {
                    page(StatusCode::OK, &assets::APP_PAGE)
                }
            }
            (&Method::GET | &Method::HEAD, "/console/login") => {
                page(StatusCode::OK, &assets::LOGIN_PAGE)
            }
            (&Method::POST, "/console/login") => login(credential, &parts, &body, now),
            (&Method::GET, "/console/session") => session(&caller),
            (&Method::POST, "/console/logout") => match checked(&caller, &parts) {
                Ok(()) => logout(&parts),
                Err(refused) => *refused,
            },
            (&Method::GET | &Method::HEAD, asset) if asset.starts_with("/console/assets/") => {
                match assets::file(asset.trim_start_matches("/console/assets/")) {
                    Some(file) => page(StatusCode::OK, file),
                    None => specrun_http::not_found(&format!("the console has no file {asset}")),
                }
            }
            (_, "/" | "/console" | "/console/login" | "/console/session" | "/console/logout") => {
                specrun_http::method_not_allowed("GET")
            }
            _ => match checked(&caller, &parts) {
                Ok(()) => return Gate::Pass(http::Request::from_parts(parts, body)),
                Err(refused) => *refused,
            },
        };
        Gate::Answer(answer)
    }

    /// Adds the API's security headers to a handler's answer when the console is on.
    pub fn finish(&self, mut response: ApiResponse) -> ApiResponse {
        if self.is_enabled() {
            let headers = response.headers_mut();
            set_headers(
                headers,
                &[
                    (header::CONTENT_SECURITY_POLICY, API_CSP),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
            );
            headers
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
        }
        response
    }
}

/// Lets a credentialed request through: a bearer request as it is, a cookie-borne one
/// when it only reads or carries the session's CSRF token from this origin.
fn checked(caller: &Caller, parts: &http::request::Parts) -> Result<(), Box<ApiResponse>> {
    match caller {
        Caller::Anonymous => Err(Box::new(unauthorized())),
        Caller::Bearer => Ok(()),
        Caller::Session { .. } if matches!(parts.method, Method::GET | Method::HEAD) => Ok(()),
        Caller::Session { csrf } => {
            let given = parts
                .headers
                .get(auth::CSRF_HEADER)
                .and_then(|v| v.to_str().ok());
            if auth::csrf_matches(csrf, given) && same_origin(parts) {
                Ok(())
            } else {
                Err(Box::new(specrun_http::error(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "this request changes state but does not carry the console session's CSRF token from this origin; reload the console and try again",
                    None,
                )))
            }
        }
    }
}

/// 401 with nothing of the API's data: how to get in, and nothing else.
fn unauthorized() -> ApiResponse {
    let mut response = specrun_http::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &format!("send Authorization: Bearer <the console token ({TOKEN_ENV})>, or log in at /"),
        None,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"specrun\""),
    );
    response
}

/// A browser's `Origin`, when it sends one, names this host: a form on another site
/// cannot post here even before SameSite cookies are considered.
fn same_origin(parts: &http::request::Parts) -> bool {
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return true;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn over_https(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `POST /console/login` with the form's `token`: a session cookie and back to the
/// console, or back to the form saying the token was wrong.
fn login(
    credential: &Credential,
    parts: &http::request::Parts,
    body: &Bytes,
    now: OffsetDateTime,
) -> ApiResponse {
    let form = std::str::from_utf8(body).unwrap_or_default();
    let given = specrun_http::form_param(form, "token").unwrap_or_default();
    if !same_origin(parts) || !credential.is_token(given.trim()) {
        return redirect("/console/login?failed=1", None);
    }
    let secure = if over_https(parts) { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        auth::COOKIE,
        credential.new_session(now),
        auth::SESSION_SECS
    );
    redirect("/", Some(cookie))
}

fn logout(parts: &http::request::Parts) -> ApiResponse {
    let secure = if over_https(parts) { "; Secure" } else { "" };
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
        auth::COOKIE
    );
    let mut response = specrun_http::json(StatusCode::OK, &serde_json::json!({"logged_out": true}));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    with_page_headers(response)
}

/// `GET /console/session`: the CSRF token the console's scripts send with their POSTs.
fn session(caller: &Caller) -> ApiResponse {
    let csrf = match caller {
        Caller::Anonymous => return unauthorized(),
        Caller::Bearer => serde_json::Value::Null,
        Caller::Session { csrf } => csrf.as_str().into(),
    };
    with_page_headers(specrun_http::json(
        StatusCode::OK,
        &serde_json::json!({ "csrf_token": csrf, "csrf_header": auth::CSRF_HEADER }),
    ))
}

fn redirect(location: &'static str, cookie: Option<String>) -> ApiResponse {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, value);
    }
    with_page_headers(response)
}

fn page(status: StatusCode, asset: &assets::Asset) -> ApiResponse {
    let mut response = Response::new(Bytes::from_static(asset.body.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    with_page_headers(response)
}

fn with_page_headers(mut response: ApiResponse) -> ApiResponse {
    set_headers(
        response.headers_mut(),
        &[
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
    );
    response
}

fn set_headers(headers: &mut http::HeaderMap, values: &[(header::HeaderName, &'static str)]) {
    for (name, value) in values {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests;
