use super::*;
use time::macros::datetime;

const TOKEN: &str = "operator-token-0123456789";
const NOW: OffsetDateTime = datetime!(2026-12-03 12:00 UTC);

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> ApiRequest {
    let mut builder = http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Bytes::copy_from_slice(body.as_bytes()))
        .unwrap_or_default()
}

fn answer(console: &Console, request: ApiRequest) -> Option<ApiResponse> {
    match console.gate(request, NOW) {
        Gate::Answer(response) => Some(response),
        Gate::Pass(_) => None,
    }
}

fn status(console: &Console, request: ApiRequest) -> u16 {
    answer(console, request).map_or(0, |r| r.status().as_u16())
}

/// Logs in through the form; returns the `Cookie` header value and the CSRF token.
fn log_in(console: &Console) -> (String, String) {
    let body = format!("token={TOKEN}");
    let response = answer(
        console,
        request(
            "POST",
            "/console/login",
            &[("host", "h"), ("origin", "http://h")],
            &body,
        ),
    )
    .unwrap_or_default();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    let session = answer(
        console,
        request("GET", "/console/session", &[("cookie", &cookie)], ""),
    )
    .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(session.body()).unwrap_or_default();
    (
        cookie,
        body["csrf_token"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn without_a_token_the_console_is_off_and_the_api_open() -> Result<(), TokenError> {
    let console = Console::new(None)?;
    assert_eq!(status(&console, request("GET", "/", &[], "")), 404);
    assert_eq!(
        status(&console, request("GET", "/runs", &[], "")),
        0,
        "passes"
    );
    Ok(())
}

#[test]
fn nothing_gets_through_without_the_credential() -> Result<(), TokenError> {
    let console = Console::new(Some(TOKEN))?;
    for (method, path) in [
        ("GET", "/runs"),
        ("GET", "/runs/run-x"),
        ("POST", "/runs"),
        ("POST", "/runs/run-x/cancel"),
        ("GET", "/console/session"),
        ("POST", "/console/logout"),
    ] {
        assert_eq!(
            status(&console, request(method, path, &[], "")),
            401,
            "{method} {path}"
        );
    }
    let page = answer(&console, request("GET", "/", &[], "")).unwrap_or_default();
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(page.body().as_ref(), assets::LOGIN_PAGE.body.as_bytes());
    let forged = "specrun_session=9999999999.abc.00";
    assert_eq!(
        status(&console, request("GET", "/runs", &[("cookie", forged)], "")),
        401
    );
    let wrong = answer(
        &console,
        request("POST", "/console/login", &[], "token=nope"),
    )
    .unwrap_or_default();
    assert_eq!(wrong.status(), StatusCode::SEE_OTHER);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    Ok(())
}

#[test]
fn a_session_reads_and_acts_only_with_its_csrf_token() -> Result<(), TokenError> {
    let console = Console::new(Some(TOKEN))?;
    let (cookie, csrf) = log_in(&console);
    assert!(!csrf.is_empty());
    assert_eq!(
        status(&console, request("GET", "/", &[("cookie", &cookie)], "")),
        200
    );
    assert_eq!(
        status(
            &console,
            request("GET", "/runs", &[("cookie", &cookie)], "")
        ),
        0
    );
    let post = |headers: &[(&str, &str)]| status(&console, request("POST", "/runs", headers, "{}"));
    assert_eq!(post(&[("cookie", &cookie)]), 403, "no CSRF token");
    assert_eq!(post(&[("cookie", &cookie), (auth::CSRF_HEADER, "00")]), 403);
    let cross_site = [
        ("cookie", cookie.as_str()),
        (auth::CSRF_HEADER, csrf.as_str()),
        ("host", "h"),
        ("origin", "http://evil.example"),
    ];
    assert_eq!(post(&cross_site), 403, "another origin");
    assert_eq!(
        post(&[("cookie", &cookie), (auth::CSRF_HEADER, &csrf)]),
        0,
        "passes"
    );
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        post(&[("authorization", &bearer)]),
        0,
        "a bearer needs no CSRF token"
    );
    Ok(())
}

#[test]
fn pages_carry_a_strict_policy() -> Result<(), TokenError> {
    let console = Console::new(Some(TOKEN))?;
    let script =
        answer(&console, request("GET", "/console/assets/app.js", &[], "")).unwrap_or_default();
    assert_eq!(script.status(), StatusCode::OK);
    let csp = script.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(script.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    for asset in [&assets::APP_PAGE, &assets::LOGIN_PAGE] {
        assert!(
            !asset.body.contains("<script>"),
            "no inline script in {}",
            asset.name
        );
    }
    let api = console.finish(specrun_http::json(StatusCode::OK, &serde_json::json!({})));
    assert!(api.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap_or_default()
        .contains("sandbox"));
    Ok(())
}

#[test]
fn a_login_posted_from_another_site_gets_no_session() -> Result<(), TokenError> {
    let console = Console::new(Some(TOKEN))?;
    let body = format!("token={TOKEN}");
    // `Origin: null` is what a browser sends for a form on an opaque or hidden origin.
    for origin in ["http://evil.example", "null"] {
        let response = answer(
            &console,
            request(
                "POST",
                "/console/login",
                &[("host", "h"), ("origin", origin)],
                &body,
            ),
        )
        .unwrap_or_default();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{origin}");
        assert!(
            response.headers().get(header::SET_COOKIE).is_none(),
            "{origin}"
        );
    }
    Ok(())
}
