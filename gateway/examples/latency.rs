//! What the gateway adds to a model call: time to the first byte and to the end of a
//! streamed answer, direct to an upstream versus through the gateway, both on loopback.
//! The upstream streams a Responses-API answer of `EVENTS` events, `GAP` apart, like a
//! model producing tokens. Then four runs' gateways stream at once, and the process's
//! memory is read before and after (it holds the upstream and the clients too, so the
//! figures bound the gateways' from above). Run by `scripts/bench-gateway.sh`; prints one
//! JSON object.
//!
//! Usage: latency [REQUESTS]

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use specrun_core::model_api::ModelApi;
use specrun_core::model_usage::{Budget, PriceTable};
use specrun_gateway::{GatewayConfig, ModelGateway};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const EVENTS: usize = 50;
const GAP: Duration = Duration::from_millis(2);
const KEY: &str = "sk-bench";

fn event(i: usize) -> Bytes {
    let data = if i + 1 == EVENTS {
        serde_json::json!({"type": "response.completed", "response": {"model": "gpt-bench",
            "usage": {"input_tokens": 1000, "output_tokens": EVENTS}}})
    } else {
        serde_json::json!({"type": "response.output_text.delta", "delta": "token "})
    };
    Bytes::from(format!("data: {data}\n\n"))
}

async fn upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<Incoming>| async {
                    let events = futures_util::stream::iter(0..EVENTS).then(|i| async move {
                        if i > 0 {
                            tokio::time::sleep(GAP).await;
                        }
                        Ok::<_, std::io::Error>(Frame::data(event(i)))
                    });
                    let mut response = Response::new(StreamBody::new(events));
                    response.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One call's time to the first body byte and to the end.
async fn call(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/responses"))
        .bearer_auth(token)
        .body(r#"{"model":"gpt-bench","stream":true}"#)
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    let mut body = response.bytes_stream();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        chunk?;
        first.get_or_insert_with(|| started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(first.unwrap_or_default()), ms(started.elapsed())))
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or_default()
}

async fn measure(url: &str, token: &str, requests: usize) -> anyhow::Result<serde_json::Value> {
    // A fresh connection per call, as the agents' CLIs mostly make.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    call(&client, url, token).await?;
    let (mut ttfb, mut total) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let (first, whole) = call(&client, url, token).await?;
        ttfb.push(first);
        total.push(whole);
    }
    Ok(serde_json::json!({
        "ttfb_ms_p50": percentile(&mut ttfb, 0.5),
        "ttfb_ms_p95": percentile(&mut ttfb, 0.95),
        "total_ms_p50": percentile(&mut total, 0.5),
        "total_ms_p95": percentile(&mut total, 0.95),
    }))
}

/// The process's resident memory now and at its peak, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn gateway_to(addr: SocketAddr) -> anyhow::Result<ModelGateway> {
    Ok(ModelGateway::new(GatewayConfig {
        api: ModelApi::OpenAi,
        upstream: format!("http://{addr}"),
        api_key: KEY.to_owned(),
        prices: PriceTable::builtin(),
        budget: Budget::default(),
    })?)
}

/// `runs` gateways, each streaming `requests` answers to its own client, all at once.
async fn runs_at_once(
    addr: SocketAddr,
    runs: usize,
    requests: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut gateways = Vec::new();
    for _ in 0..runs {
        let gateway = gateway_to(addr)?;
        gateway.listen("127.0.0.1".parse()?).await?;
        gateways.push(gateway);
    }
    let (rss_before, _) = rss_mib();
    let started = Instant::now();
    let streams: Vec<_> = gateways
        .iter()
        .map(|gateway| {
            let (url, token) = (
                gateway.url().unwrap_or_default(),
                gateway.token().to_owned(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::builder().no_proxy().build()?;
                for _ in 0..requests {
                    call(&client, &url, &token).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for stream in streams {
        stream.await??;
    }
    let (rss_after, peak) = rss_mib();
    Ok(serde_json::json!({
        "runs": runs,
        "requests_per_run": requests,
        "wall_ms": started.elapsed().as_secs_f64() * 1000.0,
        "rss_mib_before": rss_before,
        "rss_mib_after": rss_after,
        "process_peak_rss_mib": peak,
        "metered_output_tokens": gateways.iter().map(|g| g.run_usage().tokens.output).sum::<u64>(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let addr = upstream().await?;
    let gateway = gateway_to(addr)?;
    gateway.listen("127.0.0.1".parse()?).await?;
    let via = gateway.url().unwrap_or_default();
    let direct = measure(&format!("http://{addr}"), KEY, requests).await?;
    let through = measure(&via, gateway.token(), requests).await?;
    let added = |field: &str| {
        through[field].as_f64().unwrap_or_default() - direct[field].as_f64().unwrap_or_default()
    };
    let report = serde_json::json!({
        "requests": requests,
        "events_per_answer": EVENTS,
        "event_gap_ms": GAP.as_millis() as u64,
        "direct": direct,
        "through_gateway": through,
        "added_ttfb_ms_p50": added("ttfb_ms_p50"),
        "added_total_ms_p50": added("total_ms_p50"),
        "metered_output_tokens": gateway.run_usage().tokens.output,
        "four_runs_streaming_at_once": runs_at_once(addr, 4, requests).await?,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
