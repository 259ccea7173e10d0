//! The gateway between a real HTTP client and a real upstream server, both on loopback:
//! the key is swapped, answers come back byte for byte, usage is metered per phase,
//! budgets refuse calls, and a token works only for its own gateway while it is open.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use specrun_core::model_api::ModelApi;
use specrun_core::model_usage::{Budget, Limits, Price, PriceTable};
use specrun_core::Phase;
use specrun_gateway::{GatewayConfig, ModelGateway};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const REAL_KEY: &str = "sk-real-upstream-key-0af3";

/// What the upstream saw of each request: method, path and query, and its headers.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A Responses API answer streamed as server-sent events, with usage on the last event.
fn responses_sse(input: u64, output: u64) -> String {
    let events = [
        serde_json::json!({"type": "response.created", "response": {"id": "r1", "model": "gpt-test"}}),
        serde_json::json!({"type": "response.output_text.delta", "delta": "hello"}),
        serde_json::json!({"type": "response.completed", "response": {"id": "r1", "model": "gpt-test",
            "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": 10},
                      "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 3}}}}),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

/// An upstream on loopback that answers every request with [`responses_sse`] when it
/// carries the real key as OpenAI's bearer token, 401 otherwise, and records what it saw.
async fn upstream() -> anyhow::Result<(SocketAddr, Seen)> {
    upstream_of(
        "authorization",
        "Bearer sk-real-upstream-key-0af3",
        responses_sse(100, 42),
    )
    .await
}

/// An upstream that answers `answer` (an event stream) to requests whose `key_header`
/// is `key_value`, 401 to others, and records what it saw.
async fn upstream_of(
    key_header: &'static str,
    key_value: &'static str,
    answer: String,
) -> anyhow::Result<(SocketAddr, Seen)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let record = record.clone();
                    let answer = answer.clone();
                    async move {
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                            })
                            .collect::<Vec<_>>();
                        let target = request
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let authorised = request.headers().get(key_header)
                            == Some(&http::HeaderValue::from_static(key_value));
                        record
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((target, headers));
                        let mut response = if authorised {
                            Response::new(Full::new(Bytes::from(answer)))
                        } else {
                            Response::new(Full::new(Bytes::from("{}")))
                        };
                        if !authorised {
                            *response.status_mut() = StatusCode::UNAUTHORIZED;
                        }
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/event-stream"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, seen))
}

fn config(upstream: SocketAddr, budget: Budget) -> GatewayConfig {
    config_for(ModelApi::OpenAi, upstream, budget)
}

fn config_for(api: ModelApi, upstream: SocketAddr, budget: Budget) -> GatewayConfig {
    GatewayConfig {
        api,
        upstream: format!("http://{upstream}"),
        api_key: REAL_KEY.to_owned(),
        prices: PriceTable(
            [(
                "gpt-test".to_owned(),
                Price {
                    input: 1000.0,
                    cached_input: Some(100.0),
                    output: 2000.0,
                },
            )]
            .into_iter()
            .collect(),
        ),
        budget,
    }
}

async fn started(upstream: SocketAddr, budget: Budget) -> anyhow::Result<(ModelGateway, String)> {
    let gateway = ModelGateway::new(config(upstream, budget))?;
    gateway.listen("127.0.0.1".parse()?).await?;
    let url = gateway
        .url()
        .ok_or_else(|| anyhow::anyhow!("not listening"))?;
    Ok((gateway, url))
}

async fn call(url: &str, path: &str, token: &str) -> anyhow::Result<(StatusCode, String)> {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .body(r#"{"model":"gpt-test","stream":true}"#)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.text().await?))
}

#[tokio::test]
async fn the_key_is_swapped_the_answer_passes_unchanged_and_usage_is_metered() -> anyhow::Result<()>
{
    let (addr, seen) = upstream().await?;
    let (gateway, url) = started(addr, Budget::default()).await?;
    gateway.begin_phase(Phase::Specify);
    let (status, body) = call(&url, "/v1/responses", gateway.token()).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        responses_sse(100, 42),
        "the stream arrives byte for byte"
    );
    gateway.begin_phase(Phase::Plan);
    call(&url, "/v1/responses", gateway.token()).await?;
    call(&url, "/v1/responses", gateway.token()).await?;

    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 3);
    for (target, headers) in &seen {
        assert_eq!(target, "/v1/responses");
        let all = format!("{headers:?}");
        assert!(
            !all.contains(gateway.token()),
            "the token went upstream: {all}"
        );
        assert!(all.contains(REAL_KEY), "the real key went upstream");
    }
    let specify = gateway.phase_usage(Phase::Specify);
    assert_eq!(specify.requests, 1);
    assert_eq!(
        (
            specify.tokens.input,
            specify.tokens.cached_input,
            specify.tokens.output,
            specify.tokens.reasoning
        ),
        (100, 10, 42, 3)
    );
    assert_eq!(specify.models, ["gpt-test"]);
    // 90 fresh input at $1000/M, 10 cached at $100/M, 42 output at $2000/M.
    assert!((specify.cost_usd - (0.09 + 0.001 + 0.084)).abs() < 1e-9);
    assert_eq!(gateway.phase_usage(Phase::Plan).requests, 2);
    let run = gateway.run_usage();
    assert_eq!(
        (run.requests, run.tokens.input, run.tokens.output),
        (3, 300, 126)
    );
    Ok(())
}

#[tokio::test]
async fn a_token_works_only_for_its_own_run_and_only_while_it_runs() -> anyhow::Result<()> {
    let (addr, seen) = upstream().await?;
    let (first, first_url) = started(addr, Budget::default()).await?;
    let (second, second_url) = started(addr, Budget::default()).await?;
    assert_ne!(first.token(), second.token());

    let (status, body) = call(&second_url, "/v1/responses", first.token()).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let (status, _) = call(&first_url, "/v1/responses", "sk-guess").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&first_url, "/v1/responses", first.token()).await?;
    assert_eq!(status, StatusCode::OK);

    // The run ends: its token is refused, and nothing listens for it any more.
    let token = first.token().to_owned();
    first.close();
    let after = call(&first_url, "/v1/responses", &token).await;
    assert!(
        after.is_err()
            || after
                .as_ref()
                .is_ok_and(|(s, _)| *s == StatusCode::UNAUTHORIZED),
        "a closed run's token was served: {after:?}"
    );
    let (status, _) = call(&second_url, "/v1/responses", &token).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        seen.lock().map(|s| s.len()).unwrap_or_default(),
        1,
        "only the valid call reached the upstream"
    );
    Ok(())
}

#[tokio::test]
async fn calls_other_than_model_calls_are_not_forwarded() -> anyhow::Result<()> {
    let (addr, seen) = upstream().await?;
    let (gateway, url) = started(addr, Budget::default()).await?;
    for path in [
        "/v1/files",
        "/v1/organization/api_keys",
        "/v1/responses/../files",
    ] {
        let (status, _) = call(&url, path, gateway.token()).await?;
        assert_ne!(status, StatusCode::OK, "{path}");
    }
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 0);
    Ok(())
}

#[tokio::test]
async fn a_spent_budget_refuses_further_calls_with_an_error_the_client_shows() -> anyhow::Result<()>
{
    let (addr, seen) = upstream().await?;
    let budget = Budget {
        run: Limits {
            max_tokens: Some(200),
            ..Limits::default()
        },
        phase: Limits::default(),
    };
    let (gateway, url) = started(addr, budget).await?;
    gateway.begin_phase(Phase::Specify);
    assert_eq!(
        call(&url, "/v1/responses", gateway.token()).await?.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&url, "/v1/responses", gateway.token()).await?.0,
        StatusCode::OK
    );
    let (status, body) = call(&url, "/v1/responses", gateway.token()).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(error["error"]["code"], "budget_exceeded");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the run budget max_tokens is spent: used 284 of 200"),
        "{message}"
    );
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 2);
    assert!(gateway.spent().is_some());

    // A phase budget on requests.
    let (addr, _) = upstream().await?;
    let budget = Budget {
        run: Limits::default(),
        phase: Limits {
            max_requests: Some(1),
            ..Limits::default()
        },
    };
    let (gateway, url) = started(addr, budget).await?;
    gateway.begin_phase(Phase::Plan);
    assert_eq!(
        call(&url, "/v1/responses", gateway.token()).await?.0,
        StatusCode::OK
    );
    let (status, body) = call(&url, "/v1/responses", gateway.token()).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("phase budget max_requests"), "{body}");
    Ok(())
}

#[tokio::test]
async fn anthropic_and_gemini_calls_get_their_own_key_header_and_are_metered() -> anyhow::Result<()>
{
    let sse = |events: &[serde_json::Value]| -> String {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    };
    // Anthropic Messages: the token arrives as x-api-key, the key leaves as x-api-key.
    let answer = sse(&[
        serde_json::json!({"type": "message_start", "message": {"model": "claude-test",
            "usage": {"input_tokens": 70, "output_tokens": 1}}}),
        serde_json::json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
    ]);
    let (addr, seen) = upstream_of("x-api-key", REAL_KEY, answer.clone()).await?;
    let gateway = ModelGateway::new(config_for(ModelApi::Anthropic, addr, Budget::default()))?;
    gateway.listen("127.0.0.1".parse()?).await?;
    let url = gateway.url().unwrap_or_default();
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", gateway.token())
        .body(r#"{"model":"claude-test","stream":true}"#)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await?, answer);
    let usage = gateway.run_usage();
    assert_eq!((usage.tokens.input, usage.tokens.output), (70, 42));
    assert_eq!(usage.models, ["claude-test"]);
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1);

    // Gemini: the token arrives in the `key` query parameter, which does not go
    // upstream; the key leaves as x-goog-api-key; the model is named by the path.
    let answer = sse(&[
        serde_json::json!({"usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 5}}),
        serde_json::json!({"usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12}}),
    ]);
    let (addr, seen) = upstream_of("x-goog-api-key", REAL_KEY, answer.clone()).await?;
    let gateway = ModelGateway::new(config_for(ModelApi::Gemini, addr, Budget::default()))?;
    gateway.listen("127.0.0.1".parse()?).await?;
    let url = gateway.url().unwrap_or_default();
    let response = reqwest::Client::new()
        .post(format!(
            "{url}/v1beta/models/gemini-test:streamGenerateContent?alt=sse&key={}",
            gateway.token()
        ))
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await?, answer);
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen.first().map(|(target, _)| target.as_str()),
        Some("/v1beta/models/gemini-test:streamGenerateContent?alt=sse"),
        "the token stays out of the upstream URL"
    );
    let usage = gateway.run_usage();
    assert_eq!((usage.tokens.input, usage.tokens.output), (30, 12));
    assert_eq!(usage.models, ["gemini-test"]);
    Ok(())
}
