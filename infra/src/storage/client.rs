//! The connection to the store and its single-request calls.

use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use super::error::{local_error, storage_error};
use crate::{InfraError, S3Config};

#[derive(Clone)]
pub struct ObjectStore {
    pub(super) client: aws_sdk_s3::Client,
    /// Signs URLs for clients: the same as `client` unless clients reach the store at a
    /// public endpoint of its own.
    presigning_client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) key_prefix: String,
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
            .map_err(|error| local_error("read", key, error))?;
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
        let presigning = PresigningConfig::expires_in(expires_in)
            .map_err(|error| local_error("presign", key, error))?;
        let request = self
            .presigning_client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|error| storage_error("presign", key, error))?;
        Ok(request.uri().to_string())
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, InfraError> {
        Ok(self.head(key).await?.is_some())
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

    /// Removes up to [`DELETE_MANY_MAX_KEYS`] objects with one `DeleteObjects` request, in
    /// quiet mode: the answer names only the keys it could not remove, and those come back
    /// here. A key that is not there is not an error. `Err` means the request failed as a
    /// whole, and then any of the keys may or may not be gone (a store can have removed some
    /// before the answer was lost); HEAD them to know.
    pub async fn delete_many(&self, keys: &[String]) -> Result<Vec<KeyNotDeleted>, InfraError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        // Named by its first key and its size, for the error.
        let batch = format!("{first} and {} more", keys.len() - 1);
        if keys.len() > DELETE_MANY_MAX_KEYS {
            return Err(local_error(
                "delete-many",
                &batch,
                format!(
                    "{} keys, over the {DELETE_MANY_MAX_KEYS} one request takes",
                    keys.len()
                ),
            ));
        }
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| local_error("delete-many", &batch, error))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|error| local_error("delete-many", &batch, error))?;
        let output = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|error| storage_error("delete-many", &batch, error))?;
        Ok(output
            .errors()
            .iter()
            .filter_map(|error| {
                Some(KeyNotDeleted {
                    key: error.key()?.to_string(),
                    code: error.code().map(str::to_string),
                    message: error.message().map(str::to_string),
                })
            })
            .collect())
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

/// The most keys one `DeleteObjects` request takes (S3's limit).
pub const DELETE_MANY_MAX_KEYS: usize = 1000;

/// A key a `DeleteObjects` request could not remove, with what the store said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyNotDeleted {
    pub key: String,
    /// The S3 error code (`AccessDenied`, `InternalError`, ...).
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for KeyNotDeleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delete {}: {}",
            self.key,
            self.code.as_deref().unwrap_or("error")
        )?;
        if let Some(message) = &self.message {
            write!(f, " ({message})")?;
        }
        Ok(())
    }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::storage) fn config(endpoint: &str, public_endpoint: Option<&str>) -> S3Config {
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
