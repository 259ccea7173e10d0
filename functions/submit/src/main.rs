//! The submit Lambda: configuration from the environment, then the handler.

use specrun_store::{aws_config, s3_client, sqs_client, S3BlobStore, SqsQueue};
use specrun_submit::Submit;
use std::sync::Arc;

fn env(name: &str) -> Result<String, lambda_http::Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set; the deployment must set it").into())
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = aws_config().await;
    let submit = Submit::from_env(
        Arc::new(S3BlobStore::new(s3_client(&config), env("SPECRUN_BUCKET")?)),
        Arc::new(SqsQueue::new(
            sqs_client(&config),
            env("SPECRUN_QUEUE_URL")?,
        )),
    )?;
    let submit = Arc::new(submit);
    specrun_http::run_lambda(move |request| {
        let submit = submit.clone();
        async move { submit.handle(request).await }
    })
    .await
}
