//! The serverless deployment's bucket (S3) and queues (SQS), as the command line opens
//! them. A specrun built without the `aws` feature (the demo's build,
//! `--no-default-features`: no AWS SDK to compile) refuses them, saying how to get them.

#[cfg(feature = "aws")]
pub(super) use sdk::*;
#[cfg(not(feature = "aws"))]
pub(super) use without_sdk::*;

#[cfg(feature = "aws")]
mod sdk {
    use anyhow::Context as _;
    use specrun_core::ports::{BlobStore, Queue};
    use specrun_store::{aws_config, s3_client, sqs_client, S3BlobStore, SdkConfig, SqsQueue};
    use std::sync::Arc;

    /// The bucket, for reading and changing runs (`status`, `logs`, `cancel`, `retry`).
    pub async fn bucket(bucket: &str) -> anyhow::Result<Arc<dyn BlobStore>> {
        Ok(Arc::new(S3BlobStore::new(
            s3_client(&aws_config().await),
            bucket,
        )))
    }

    /// The SQS queue at `url`.
    pub async fn queue(url: &str) -> anyhow::Result<Arc<dyn Queue>> {
        Ok(Arc::new(SqsQueue::new(
            sqs_client(&aws_config().await),
            url.to_owned(),
        )))
    }

    /// A runner's bucket (with a queue on a broker): its lifecycle rules put or checked.
    pub async fn runner_bucket(
        bucket: &str,
        ensure_retention: bool,
        retention_days: u32,
    ) -> anyhow::Result<Arc<dyn BlobStore>> {
        let config = aws_config().await;
        Ok(Arc::new(
            s3_store(&config, bucket, ensure_retention, retention_days).await?,
        ))
    }

    /// A runner's bucket and SQS run queue, from one AWS configuration.
    pub async fn runner_bucket_and_queue(
        bucket: &str,
        queue_url: &str,
        ensure_retention: bool,
        retention_days: u32,
    ) -> anyhow::Result<(Arc<dyn BlobStore>, Arc<dyn Queue>)> {
        let config = aws_config().await;
        let store = s3_store(&config, bucket, ensure_retention, retention_days).await?;
        Ok((
            Arc::new(store),
            Arc::new(SqsQueue::new(sqs_client(&config), queue_url.to_owned())),
        ))
    }

    /// SC-002: run objects stay readable for at least seven days and then expire. The
    /// bucket's lifecycle rule does the expiring; say so when it is missing or disagrees.
    async fn check_retention(store: &S3BlobStore, ensure: bool, days: u32) -> anyhow::Result<()> {
        if ensure {
            store.ensure_retention(days).await.with_context(|| {
                format!("putting the lifecycle rules on bucket {}", store.bucket())
            })?;
            eprintln!(
                "specrun: bucket {}: run objects expire after {days} days",
                store.bucket()
            );
            return Ok(());
        }
        match store.retention_days().await {
            Ok(None) => eprintln!(
                "specrun: warning: bucket {} has no lifecycle rule expiring runs/: artifacts are kept forever and their recorded expires_at is not enforced. Fix: specrun runner --ensure-retention, or deploy infra/specrun.yaml",
                store.bucket()
            ),
            Ok(Some(found)) if found < crate::config::MIN_RETENTION_DAYS => eprintln!(
                "specrun: warning: bucket {} expires runs/ after {found} days, less than the 7 days operators are promised. Fix: specrun runner --ensure-retention",
                store.bucket()
            ),
            Ok(Some(found)) if found != days => eprintln!(
                "specrun: warning: bucket {} expires runs/ after {found} days but this runner records {days} (SPECRUN_RETENTION_DAYS); make them agree",
                store.bucket()
            ),
            Ok(Some(_)) => {}
            Err(e) => eprintln!("specrun: warning: could not read bucket {}'s lifecycle rules: {e}", store.bucket()),
        }
        Ok(())
    }

    /// The state bucket; its lifecycle rules put (`--ensure-retention`) or checked.
    async fn s3_store(
        config: &SdkConfig,
        bucket: &str,
        ensure: bool,
        retention_days: u32,
    ) -> anyhow::Result<S3BlobStore> {
        let store = S3BlobStore::new(s3_client(config), bucket.to_owned());
        if ensure {
            check_retention(&store, true, retention_days).await?;
        } else {
            // Only a warning: read in the background, so that serving (the status
            // function's first answer) does not wait for a store round trip.
            let store = store.clone();
            tokio::spawn(async move { check_retention(&store, false, retention_days).await });
        }
        Ok(store)
    }
}

#[cfg(not(feature = "aws"))]
mod without_sdk {
    use specrun_core::ports::{BlobStore, Queue};
    use std::sync::Arc;

    /// Why a command that names a bucket or queue cannot run, and the remedy.
    fn built_without_aws() -> anyhow::Error {
        anyhow::anyhow!(
            "this specrun was built without S3/SQS support (--bucket, --queue-url, \
             --dead-letter-queue-url): build it with --features aws (a default feature), \
             e.g. cargo build -p specrun-runner"
        )
    }

    pub async fn bucket(_bucket: &str) -> anyhow::Result<Arc<dyn BlobStore>> {
        Err(built_without_aws())
    }

    pub async fn queue(_url: &str) -> anyhow::Result<Arc<dyn Queue>> {
        Err(built_without_aws())
    }

    pub async fn runner_bucket(
        _bucket: &str,
        _ensure_retention: bool,
        _retention_days: u32,
    ) -> anyhow::Result<Arc<dyn BlobStore>> {
        Err(built_without_aws())
    }

    pub async fn runner_bucket_and_queue(
        _bucket: &str,
        _queue_url: &str,
        _ensure_retention: bool,
        _retention_days: u32,
    ) -> anyhow::Result<(Arc<dyn BlobStore>, Arc<dyn Queue>)> {
        Err(built_without_aws())
    }
}
