//! `specrun serve`: the submit and status handlers as one plain HTTP server on the
//! function URL paths (`POST /runs`, `GET /runs`, `GET /runs/{id}`, ...), so the
//! serverless API runs locally with the embedded store or against S3 and SQS. The web
//! console's gate takes every request first (see specrun-console).

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use specrun_console::{Console, Gate};
use specrun_http::ApiResponse;
use specrun_status::Status;
use specrun_submit::Submit;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Both handlers behind one listener, and the console's gate in front of them.
#[derive(Clone)]
pub struct Api {
    pub submit: Arc<Submit>,
    pub status: Arc<Status>,
    pub console: Arc<Console>,
}

impl Api {
    async fn route(&self, request: http::Request<Bytes>) -> ApiResponse {
        let request = match self.console.gate(request, time::OffsetDateTime::now_utc()) {
            Gate::Answer(answer) => return answer,
            Gate::Pass(request) => request,
        };
        let response = if request.method() == Method::POST {
            self.submit.handle(request).await
        } else {
            self.status.handle(request).await
        };
        self.console.finish(response)
    }
}

/// Serves `api` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, api: Api, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let api = api.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    // One byte over the submit limit is enough to answer 413.
                    let limit = specrun_submit::MAX_BODY + 1;
                    let bytes = match Limited::new(body, limit).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(_) => Bytes::from(vec![0u8; limit]),
                    };
                    let response = api.route(http::Request::from_parts(parts, bytes)).await;
                    Ok::<_, std::convert::Infallible>(response.map(Full::new))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
