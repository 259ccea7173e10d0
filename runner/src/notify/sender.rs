//! Sending one signed event: the port ([`EventSender`]) and its HTTP adapter.

use specrun_core::notify::NotifyUrl;
use std::time::Duration;

/// POSTs an event body with its headers; the receiver's HTTP status, or why there was
/// none (said without the URL's query, which may hold a token).
#[async_trait::async_trait]
pub trait EventSender: Send + Sync {
    async fn post(
        &self,
        url: &NotifyUrl,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<u16, String>;
}

/// Sends with reqwest: no redirects followed (a redirect could lead off the allow-list),
/// a time limit per attempt.
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        // reqwest takes the process's rustls provider; ring unless the process chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("specrun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        Ok(HttpSender { client })
    }
}

#[async_trait::async_trait]
impl EventSender for HttpSender {
    async fn post(
        &self,
        url: &NotifyUrl,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let mut request = self
            .client
            .post(url.expose())
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.body(body).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            // reqwest's message names the URL, query and all: say what failed without it.
            Err(e) => Err(describe(&e)),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirected"
    } else if e.is_body() || e.is_request() {
        "the request failed"
    } else {
        "failed"
    };
    let mut cause = std::error::Error::source(e);
    let mut causes = Vec::new();
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    match causes.last() {
        Some(root) => format!("{what}: {root}"),
        None => what.to_owned(),
    }
}
