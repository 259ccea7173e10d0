//! The bucket: [`BlobStore`] on S3 (or any S3-compatible store). Endpoint, region and
//! credentials come from the standard AWS configuration chain, so an emulator is just
//! `AWS_ENDPOINT_URL`. Conditional creates use `If-None-Match: *`; files go up in one
//! request when small and as a multipart upload, part by part, when large.

use crate::aws_error::classify_s3;
use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use specrun_core::keys::is_safe_key;
use specrun_core::ports::{BlobStore, Bytes, KeyPage, StoreError};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Files up to this size go up in a single PUT; larger ones in parts of this size.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// A bucket of run state.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// Builds an S3 client from the standard AWS configuration. Path-style addressing is
/// used when a custom endpoint is configured, as emulators need.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder =
        aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

impl S3BlobStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3BlobStore {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn check(key: &str) -> Result<(), StoreError> {
        if is_safe_key(key) {
            Ok(())
        } else {
            Err(StoreError::InvalidKey(key.to_owned()))
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let uploaded = self.upload_parts(key, path, &upload_id).await;
        let parts = match uploaded {
            Ok(parts) => parts,
            Err(e) => {
                // Leave no half upload behind; the lifecycle rule would also catch it.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        Ok(())
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        let mut parts = Vec::new();
        let mut number = 1;
        loop {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            let read = (&mut file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(|e| StoreError::backend(key, e))?;
            if read == 0 && number > 1 {
                break;
            }
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| classify_s3(&self.bucket, key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            );
            if read < PART_SIZE {
                break;
            }
            number += 1;
        }
        Ok(parts)
    }
}

/// The precondition of a PUT.
enum Condition<'a> {
    None,
    /// `If-None-Match: *`: create only.
    IfAbsent,
    /// `If-Match: <etag>`: replace only this version.
    IfVersion(&'a str),
}

impl S3BlobStore {
    async fn put_object(
        &self,
        key: &str,
        body: ByteStream,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<(), StoreError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body);
        let request = match condition {
            Condition::None => request,
            Condition::IfAbsent => request.if_none_match("*"),
            Condition::IfVersion(version) => request.if_match(version),
        };
        request
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        Self::check(key)?;
        self.put_object(key, ByteStream::from(body), content_type, Condition::None)
            .await
    }

    async fn put_new(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        Self::check(key)?;
        self.put_object(
            key,
            ByteStream::from(body),
            content_type,
            Condition::IfAbsent,
        )
        .await
    }

    async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<(), StoreError> {
        Self::check(key)?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| StoreError::backend(key, e))?
            .len();
        if size > PART_SIZE as u64 {
            return self.put_multipart(key, path, content_type).await;
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        self.put_object(key, body, content_type, Condition::None)
            .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        Self::check(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        Self::check(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = start.saturating_add(len - 1);
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{last}"))
            .send()
            .await;
        let object = match answer {
            Ok(object) => object,
            // 416: the range starts at or past the object's end, which holds nothing there.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(classify_s3(&self.bucket, key, e)),
        };
        // A store that ignores Range answers the whole object, without Content-Range.
        let whole = object.content_range().is_none();
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        let mut bytes = bytes.into_bytes().to_vec();
        if whole {
            let from = usize::try_from(start)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes.drain(..from);
        }
        bytes.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(bytes)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        Self::check(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        let version = object.e_tag().unwrap_or_default().to_owned();
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        Ok((bytes.into_bytes().to_vec(), version))
    }

    async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        Self::check(key)?;
        self.put_object(
            key,
            ByteStream::from(body),
            content_type,
            Condition::IfVersion(version),
        )
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let max = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .max_keys(max)
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, prefix, e))?;
        let keys: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        let next = if page.is_truncated().unwrap_or(false) {
            keys.last().cloned()
        } else {
            None
        };
        Ok(KeyPage { keys, next })
    }

    async fn presign_get(
        &self,
        key: &str,
        expires: Duration,
    ) -> Result<Option<String>, StoreError> {
        Self::check(key)?;
        let config =
            PresigningConfig::expires_in(expires).map_err(|e| StoreError::backend(key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| classify_s3(&self.bucket, key, e))?;
        Ok(Some(request.uri().to_owned()))
    }
}

/// The lifecycle rules specrun keeps on its bucket: the same IDs and prefixes as
/// `infra/specrun.yaml` and `localstack/create-resources.sh`. A put replaces the bucket's
/// whole set, so [`S3BlobStore::ensure_retention`] puts these back beside every rule with
/// another ID, and all three places must agree on the IDs.
pub const RETENTION_RULES: [(&str, &str); 4] = [
    ("specrun-runs-retention", "runs/"),
    ("specrun-celery-retention", "celery/"),
    ("specrun-idempotency-retention", "idempotency/"),
    ("specrun-index-retention", "index/"),
];

/// The rule that aborts multipart uploads left half done.
pub const ABORT_MULTIPART_RULE: &str = "specrun-abort-incomplete-multipart";

/// Whether a lifecycle rule is one specrun puts (and may replace).
fn is_specrun_rule(rule: &aws_sdk_s3::types::LifecycleRule) -> bool {
    let id = rule.id().unwrap_or_default();
    id == ABORT_MULTIPART_RULE || RETENTION_RULES.iter().any(|(own, _)| *own == id)
}

impl S3BlobStore {
    /// The bucket's lifecycle rules; none when it has no lifecycle configuration.
    async fn lifecycle_rules(&self) -> Result<Vec<aws_sdk_s3::types::LifecycleRule>, StoreError> {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(config) => Ok(config.rules().to_vec()),
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
            Err(e) => Err(classify_s3(&self.bucket, &self.bucket, e)),
        }
    }

    /// Days after which the bucket expires run objects (`runs/`), or `None` when no
    /// enabled rule expires them.
    pub async fn retention_days(&self) -> Result<Option<u32>, StoreError> {
        let rules = self.lifecycle_rules().await?;
        let days = rules.iter().filter_map(|rule| {
            let enabled = rule.status() == &aws_sdk_s3::types::ExpirationStatus::Enabled;
            let prefix = rule.filter().and_then(|f| f.prefix()).unwrap_or("");
            let covers_runs = "runs/".starts_with(prefix);
            let days = rule
                .expiration()
                .and_then(|e| e.days())
                .and_then(|d| u32::try_from(d).ok());
            (enabled && covers_runs).then_some(days).flatten()
        });
        Ok(days.min())
    }

    /// Puts specrun's lifecycle rules: each prefix expires after `days`, and incomplete
    /// multipart uploads are aborted after a day. The bucket's other rules (an operator's
    /// own, by ID) are read first and put back as they were: the put replaces the set.
    pub async fn ensure_retention(&self, days: u32) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{
            AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
            LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
        };
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        let build = |e: aws_sdk_s3::error::BuildError| StoreError::backend(&self.bucket, e);
        let mut rules = self.lifecycle_rules().await?;
        rules.retain(|rule| !is_specrun_rule(rule));
        for (id, prefix) in RETENTION_RULES {
            rules.push(
                LifecycleRule::builder()
                    .id(id)
                    .status(ExpirationStatus::Enabled)
                    .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
                    .expiration(LifecycleExpiration::builder().days(days).build())
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(days)
                            .build(),
                    )
                    .build()
                    .map_err(build)?,
            );
        }
        rules.push(
            LifecycleRule::builder()
                .id(ABORT_MULTIPART_RULE)
                .status(ExpirationStatus::Enabled)
                .filter(LifecycleRuleFilter::builder().prefix("").build())
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(1)
                        .build(),
                )
                .build()
                .map_err(build)?,
        );
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(build)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| classify_s3(&self.bucket, &self.bucket, e))?;
        Ok(())
    }
}
