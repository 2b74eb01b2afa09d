//! The S3-compatible object store, and the layout of imgpipe's keys in it.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use crate::{InfraError, S3Config};

#[derive(Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    /// Signs URLs for clients: the same as `client` unless clients reach the store at a
    /// public endpoint of its own.
    presigning_client: aws_sdk_s3::Client,
    bucket: String,
    key_prefix: String,
}

impl ObjectStore {
    pub async fn connect(config: &S3Config) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.expose().to_string(),
                None,
                None,
                "imgpipe-config",
            ));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        // Bounded, so a hung object store turns into an error (503 in ingest, a retry in the
        // processor) instead of a request that never ends.
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(90))
                .build(),
        );
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .build();
        let client = aws_sdk_s3::Client::from_conf(s3_config);
        // Empty counts as unset, as `.env.example` leaves it.
        let public_endpoint = config.public_endpoint.as_deref().filter(|e| !e.is_empty());
        let presigning_client = match public_endpoint {
            Some(public) => aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&shared)
                    .endpoint_url(public)
                    .force_path_style(config.force_path_style)
                    .build(),
            ),
            None => client.clone(),
        };
        Self {
            client,
            presigning_client,
            bucket: config.bucket.clone(),
            key_prefix: config.key_prefix.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Where an upload's original bytes live.
    pub fn original_key(&self, image_id: Uuid) -> String {
        format!("{}{image_id}", self.originals_prefix())
    }

    /// Where a variant lives. Deterministic, so processing an event twice overwrites the same
    /// object instead of leaving a second one; the spec version keeps variants of different
    /// specs apart.
    pub fn variant_key(&self, image_id: Uuid, spec_version: i32, name: &str, ext: &str) -> String {
        format!(
            "{}v{spec_version}/{name}.{ext}",
            self.variants_prefix(image_id)
        )
    }

    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), InfraError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| storage_error("put", key, error))?;
        Ok(())
    }

    /// A writer that stores what it is given under `key` without holding the whole object:
    /// up to one part in memory, a plain put for a small object, a multipart upload for a
    /// large one. Nothing is visible under `key` until [`ObjectWriter::finish`] succeeds.
    pub fn writer(&self, key: &str, content_type: &str) -> ObjectWriter {
        ObjectWriter {
            store: self.clone(),
            key: key.to_string(),
            content_type: content_type.to_string(),
            part_size: MULTIPART_PART_BYTES,
            buffer: BytesMut::new(),
            multipart: None,
        }
    }

    /// Copies an object within the bucket (server-side: no bytes pass through us).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), InfraError> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(to)
            .send()
            .await
            .map_err(|error| storage_error("copy", from, error))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, InfraError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| storage_error("get", key, error))?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|error| InfraError::Storage {
                operation: "read",
                key: key.to_string(),
                message: error.to_string(),
                not_found: false,
            })?;
        Ok(body.into_bytes())
    }

    /// A URL anyone holding it can GET the object with, without credentials, until
    /// `expires_in` (at most 7 days) has passed. Signing is local: nothing is sent to the store,
    /// and the object's existence is not checked.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, InfraError> {
        let presign_error = |message: String| InfraError::Storage {
            operation: "presign",
            key: key.to_string(),
            message,
            not_found: false,
        };
        let presigning = PresigningConfig::expires_in(expires_in)
            .map_err(|error| presign_error(error.to_string()))?;
        let request = self
            .presigning_client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|error| presign_error(DisplayErrorContext(&error).to_string()))?;
        Ok(request.uri().to_string())
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, InfraError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) => {
                let error = storage_error("head", key, error);
                if error.is_not_found() {
                    Ok(false)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Removes an object; removing one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), InfraError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| storage_error("delete", key, error))?;
        Ok(())
    }

    /// Every key under `prefix`, fetched page by page. For one image's objects, not for a
    /// whole bucket.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, InfraError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| storage_error("list", prefix, error))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    /// One page of the objects under `prefix`, in key order (S3 sorts keys by their UTF-8
    /// bytes), at most `max_keys` of them; pass the page's `next` back as `continuation` for
    /// the next one. For walking a whole bucket without holding its keys: the caller keeps
    /// one page at a time.
    pub async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: i32,
    ) -> Result<ObjectPage, InfraError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(max_keys)
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|error| storage_error("list", prefix, error))?;
        let objects = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ObjectInfo {
                    key: object.key()?.to_string(),
                    bytes: object.size().unwrap_or(0),
                    last_modified_micros: object.last_modified().map(micros).unwrap_or(0),
                })
            })
            .collect();
        // A page that says it is truncated but gives no token would loop forever on the same
        // page; treat it as the last one.
        let next = if output.is_truncated() == Some(true) {
            output.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ObjectPage { objects, next })
    }

    /// An object's size and time of last write, or `None` when it is not there.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, InfraError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                bytes: output.content_length().unwrap_or(0),
                last_modified_micros: output.last_modified().map(micros).unwrap_or(0),
            })),
            Err(error) => {
                let error = storage_error("head", key, error);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Put in front of every key this deployment writes.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The prefix of every original (`originals/{image_id}`).
    pub fn originals_prefix(&self) -> String {
        format!("{}originals/", self.key_prefix)
    }

    /// The prefix of every variant (`variants/{image_id}/v{spec}/{name}.{ext}`).
    pub fn all_variants_prefix(&self) -> String {
        format!("{}variants/", self.key_prefix)
    }

    /// The prefix under which all of an image's variants live, whatever the spec version.
    pub fn variants_prefix(&self, image_id: Uuid) -> String {
        format!("{}{image_id}/", self.all_variants_prefix())
    }

    /// Checks the bucket answers.
    pub async fn ping(&self) -> Result<(), InfraError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|error| storage_error("head-bucket", &self.bucket, error))?;
        Ok(())
    }

    /// Creates the bucket unless it exists, retrying briefly: setup often runs right after
    /// the object store started.
    pub async fn ensure_bucket(&self) -> Result<(), InfraError> {
        use backon::{ExponentialBuilder, Retryable};
        (|| self.ensure_bucket_once())
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(6),
            )
            .notify(|error, delay| {
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "bucket setup failed, retrying");
            })
            .await
    }

    async fn ensure_bucket_once(&self) -> Result<(), InfraError> {
        if self.ping().await.is_ok() {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            // Someone else may have created it between our check and our create (parallel
            // setups do); if it answers now, it exists.
            Err(error) => match self.ping().await {
                Ok(()) => Ok(()),
                Err(_) => Err(storage_error("create-bucket", &self.bucket, error)),
            },
        }
    }
}

/// One stored object, as a listing or a HEAD describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub bytes: i64,
    /// When the object was last written, microseconds since the Unix epoch (0 if the store
    /// did not say).
    pub last_modified_micros: i64,
}

/// A page of [`ObjectStore::list_page`].
#[derive(Debug, Clone, Default)]
pub struct ObjectPage {
    pub objects: Vec<ObjectInfo>,
    /// The continuation token of the next page; `None` on the last.
    pub next: Option<String>,
}

fn micros(at: &aws_sdk_s3::primitives::DateTime) -> i64 {
    at.secs()
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(at.subsec_nanos() / 1_000))
}

/// Parts of a multipart upload: S3's minimum is 5 MiB (all but the last); 8 MiB keeps the
/// request count low while bounding what one upload holds in memory.
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;

/// Streams one object into the store; see [`ObjectStore::writer`]. Call [`finish`] to make it
/// visible or [`abort`] to leave nothing behind; dropping it unfinished can leave an
/// incomplete multipart upload for the bucket's lifecycle rule to clean.
///
/// [`finish`]: ObjectWriter::finish
/// [`abort`]: ObjectWriter::abort
pub struct ObjectWriter {
    store: ObjectStore,
    key: String,
    content_type: String,
    part_size: usize,
    buffer: BytesMut,
    multipart: Option<Multipart>,
}

struct Multipart {
    upload_id: String,
    parts: Vec<CompletedPart>,
}

impl ObjectWriter {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Sets the part size (at least S3's 5 MiB minimum in production; tests use less to
    /// exercise the multipart path with small bodies on servers that allow it).
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size.max(1);
        self
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), InfraError> {
        self.buffer.extend_from_slice(chunk);
        while self.buffer.len() >= self.part_size {
            let part = self.buffer.split_to(self.part_size).freeze();
            self.upload_part(part).await?;
        }
        Ok(())
    }

    /// Stores the object: one put if it never reached a part's size, else the last part and
    /// the completion of the multipart upload.
    pub async fn finish(mut self) -> Result<(), InfraError> {
        if self.multipart.is_none() {
            let body = std::mem::take(&mut self.buffer).freeze();
            return self.store.put(&self.key, body, &self.content_type).await;
        }
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer).freeze();
            self.upload_part(last).await?;
        }
        let Some(multipart) = self.multipart.take() else {
            return Ok(());
        };
        let completed = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&multipart.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(multipart.parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| storage_error("complete-multipart", &self.key, error));
        if completed.is_err() {
            self.store
                .abort_multipart(&self.key, &multipart.upload_id)
                .await;
        }
        completed.map(|_| ())
    }

    /// Drops what was written; nothing stays under the key.
    pub async fn abort(mut self) {
        if let Some(multipart) = self.multipart.take() {
            self.store
                .abort_multipart(&self.key, &multipart.upload_id)
                .await;
        }
    }

    async fn upload_part(&mut self, body: Bytes) -> Result<(), InfraError> {
        let store = &self.store;
        if self.multipart.is_none() {
            let created = store
                .client
                .create_multipart_upload()
                .bucket(&store.bucket)
                .key(&self.key)
                .content_type(&self.content_type)
                .send()
                .await
                .map_err(|error| storage_error("create-multipart", &self.key, error))?;
            let upload_id = created.upload_id().unwrap_or_default().to_string();
            self.multipart = Some(Multipart {
                upload_id,
                parts: Vec::new(),
            });
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        let part_number = i32::try_from(multipart.parts.len() + 1).unwrap_or(i32::MAX);
        let uploaded = store
            .client
            .upload_part()
            .bucket(&store.bucket)
            .key(&self.key)
            .upload_id(&multipart.upload_id)
            .part_number(part_number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| storage_error("upload-part", &self.key, error))?;
        multipart.parts.push(
            CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }
}

impl ObjectStore {
    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        if let Err(error) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            let error = storage_error("abort-multipart", key, error);
            tracing::warn!(error = %error, "could not abort a multipart upload");
        }
    }
}

fn storage_error<E>(
    operation: &'static str,
    key: &str,
    error: SdkError<E, HttpResponse>,
) -> InfraError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let not_found = status == Some(404)
        || matches!(
            error.code(),
            Some("NoSuchKey" | "NotFound" | "NoSuchBucket")
        );
    InfraError::Storage {
        operation,
        key: key.to_string(),
        message: DisplayErrorContext(&error).to_string(),
        not_found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, public_endpoint: Option<&str>) -> S3Config {
        S3Config {
            endpoint: Some(endpoint.into()),
            public_endpoint: public_endpoint.map(str::to_string),
            region: "us-east-1".into(),
            bucket: "pictures".into(),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            key_prefix: "ns/".into(),
            force_path_style: true,
        }
    }

    #[tokio::test]
    async fn presigned_urls_point_at_the_public_endpoint_when_there_is_one() {
        let store =
            ObjectStore::connect(&config("http://minio:9000", Some("http://localhost:9000"))).await;
        let url = store
            .presigned_get("ns/variants/x/v1/thumb.webp", Duration::from_secs(900))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://localhost:9000/pictures/ns/variants/x/v1/thumb.webp?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");

        for unset in [None, Some("")] {
            let internal = ObjectStore::connect(&config("http://minio:9000", unset)).await;
            let url = internal
                .presigned_get("ns/originals/x", Duration::from_secs(60))
                .await
                .unwrap();
            assert!(
                url.starts_with("http://minio:9000/pictures/ns/originals/x?"),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn an_expiry_over_a_week_is_refused() {
        let store = ObjectStore::connect(&config("http://minio:9000", None)).await;
        let eight_days = Duration::from_secs(8 * 24 * 3600);
        assert!(store.presigned_get("k", eight_days).await.is_err());
    }
}
