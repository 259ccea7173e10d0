//! A webhook receiver on loopback: records every request it gets (headers and body) and
//! answers `500` to the first N, then `204`. It checks nothing itself; tests verify the
//! signatures with their own implementation of the documented scheme.

use crate::http_thread::{HttpResponse, HttpThread};
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::Response;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path_and_query: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub answered: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the webhook body is not JSON")
    }
}

/// The receiver; stops when dropped.
pub struct WebhookReceiver {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    _server: HttpThread,
}

impl WebhookReceiver {
    /// Answers the first `failures` requests with 500, every later one with 204.
    pub fn start(failures: usize) -> anyhow::Result<Self> {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let recorded = deliveries.clone();
        let server = HttpThread::bind(
            "127.0.0.1:0".parse()?,
            "webhook-receiver",
            move |request: hyper::Request<hyper::body::Incoming>| {
                let recorded = recorded.clone();
                let seen = seen.clone();
                async move {
                    let path_and_query = request
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_ascii_lowercase(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    let body = match request.into_body().collect().await {
                        Ok(body) => body.to_bytes().to_vec(),
                        Err(_) => Vec::new(),
                    };
                    let answered = if seen.fetch_add(1, Ordering::SeqCst) < failures {
                        500
                    } else {
                        204
                    };
                    if let Ok(mut list) = recorded.lock() {
                        list.push(Delivery {
                            path_and_query,
                            headers,
                            body,
                            answered,
                        });
                    }
                    respond(answered)
                }
            },
        )?;
        Ok(WebhookReceiver {
            deliveries,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self._server.addr())
    }

    /// `127.0.0.1:PORT`, for an allow-list.
    pub fn host(&self) -> String {
        self._server.addr().to_string()
    }

    /// Everything received so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }
}

fn respond(status: u16) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}
