//! The status Lambda: configuration from the environment, then the handler. With
//! SPECRUN_CONSOLE_TOKEN set it also serves the web console at `/`, every request then
//! needing the console credential; with SPECRUN_QUEUE_URL too it takes the console's
//! submissions and cancellations (POSTs) with the submit library, so the console works
//! from this one function URL.

use specrun_console::{Console, Gate};
use specrun_status::Status;
use specrun_store::{aws_config, s3_client, sqs_client, S3BlobStore, SqsQueue};
use specrun_submit::Submit;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let bucket = std::env::var("SPECRUN_BUCKET")
        .map_err(|_| "SPECRUN_BUCKET is not set; the deployment must set it")?;
    let expiry = std::env::var("SPECRUN_PRESIGN_EXPIRY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let console = Arc::new(Console::from_env().map_err(|e| format!("SPECRUN_CONSOLE_TOKEN: {e}"))?);
    let config = aws_config().await;
    let store = Arc::new(S3BlobStore::new(s3_client(&config), bucket));
    let status = Arc::new(Status {
        store: store.clone(),
        presign_expiry: Duration::from_secs(expiry),
        public_base: std::env::var("SPECRUN_STATUS_URL").unwrap_or_default(),
    });
    let submit = match std::env::var("SPECRUN_QUEUE_URL") {
        Ok(queue_url) if console.is_enabled() => Some(Arc::new(Submit::from_env(
            store,
            Arc::new(SqsQueue::new(sqs_client(&config), queue_url)),
        )?)),
        _ => None,
    };
    specrun_http::run_lambda(move |request| {
        let (status, submit, console) = (status.clone(), submit.clone(), console.clone());
        async move {
            let request = match console.gate(request, time::OffsetDateTime::now_utc()) {
                Gate::Answer(answer) => return answer,
                Gate::Pass(request) => request,
            };
            let response = match &submit {
                Some(submit) if request.method() == http::Method::POST => {
                    submit.handle(request).await
                }
                _ => status.handle(request).await,
            };
            console.finish(response)
        }
    })
    .await
}
