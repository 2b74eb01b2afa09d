//! Streaming one object into the store without holding all of it: a plain put for a small
//! object, a multipart upload for a large one.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};

use super::client::ObjectStore;
use super::error::storage_error;
use crate::InfraError;

/// Parts of a multipart upload: S3's minimum is 5 MiB (all but the last); 8 MiB keeps the
/// request count low while bounding what one upload holds in memory.
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;

impl ObjectStore {
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

    /// Sends `body` as the next part, starting the multipart upload with the first.
    async fn upload_part(&mut self, body: Bytes) -> Result<(), InfraError> {
        if self.multipart.is_none() {
            self.multipart = Some(self.create_multipart().await?);
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        let part_number = i32::try_from(multipart.parts.len() + 1).unwrap_or(i32::MAX);
        let uploaded = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
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

    async fn create_multipart(&self) -> Result<Multipart, InfraError> {
        let created = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .content_type(&self.content_type)
            .send()
            .await
            .map_err(|error| storage_error("create-multipart", &self.key, error))?;
        Ok(Multipart {
            upload_id: created.upload_id().unwrap_or_default().to_string(),
            parts: Vec::new(),
        })
    }
}
