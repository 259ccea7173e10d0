//! The status Lambda: configuration from the environment, then the handler.

use specrun_status::Status;
use specrun_store::{aws_config, s3_client, S3BlobStore};
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
    let config = aws_config().await;
    let status = Arc::new(Status {
        store: Arc::new(S3BlobStore::new(s3_client(&config), bucket)),
        presign_expiry: Duration::from_secs(expiry),
        public_base: std::env::var("SPECRUN_STATUS_URL").unwrap_or_default(),
    });
    specrun_http::run_lambda(move |request| {
        let status = status.clone();
        async move { status.handle(request).await }
    })
    .await
}
