//! multipart/form-data uploads: a `file` field that streams like a raw body, and an optional
//! `metadata` field.

use std::collections::BTreeMap;

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use futures::TryStreamExt;

use super::body::{discard, drain, receive, Received, DRAIN_LIMIT_FACTOR};
use crate::routes::AppState;
use crate::IngestError;

/// Room for the multipart boundaries and the metadata field on top of the file's own limit.
pub(super) const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// The `metadata` field's limits: what fits a label, not a document.
const METADATA_BYTES: usize = 8 * 1024;
const METADATA_ENTRIES: usize = 32;
const METADATA_KEY_CHARS: usize = 64;

pub(super) type Metadata = BTreeMap<String, String>;

pub(super) fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// Reads a multipart/form-data upload: the `file` field streams like a raw body; `metadata`
/// is a small JSON object of strings. Anything else is refused, and an original already
/// stored for a refused form is removed again.
pub(super) async fn receive_form(
    state: &AppState,
    request: Request,
) -> Result<(Received, Option<Metadata>), IngestError> {
    let limit = state.settings.max_upload_bytes;
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| IngestError::InvalidMultipart(rejection.body_text()))?;
    let mut original: Option<Received> = None;
    let mut metadata = None;
    let read: Result<(), IngestError> = async {
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| multipart_error(e, limit))?
        {
            match field.name() {
                Some("file") if original.is_none() => {
                    let body = field.map_err(|e| multipart_error(e, limit));
                    let mut body = std::pin::pin!(body);
                    match receive(state, body.as_mut()).await {
                        Ok(received) => original = Some(received),
                        Err(error) => {
                            drain(body, limit).await;
                            return Err(error);
                        }
                    }
                }
                Some("metadata") if metadata.is_none() => {
                    metadata = Some(parse_metadata(&read_small_field(field, limit).await?)?);
                }
                Some(name @ ("file" | "metadata")) => {
                    return Err(IngestError::InvalidMultipart(format!(
                        "the field {name:?} is there twice"
                    )))
                }
                name => {
                    return Err(IngestError::InvalidMultipart(format!(
                        "unexpected field {:?}: the form takes `file` and optional `metadata`",
                        name.unwrap_or_default()
                    )))
                }
            }
        }
        Ok(())
    }
    .await;
    match (read, original) {
        (Ok(()), Some(original)) => Ok((original, metadata)),
        (Ok(()), None) => Err(IngestError::MissingFile),
        (Err(error), original) => {
            if let Some(original) = original {
                discard(state, &original.key).await;
            }
            // Read the rest of the form so the client gets this answer (see `drain`).
            let mut drained = 0u64;
            while let Ok(Some(mut field)) = form.next_field().await {
                while let Ok(Some(chunk)) = field.chunk().await {
                    drained += chunk.len() as u64;
                    if drained > DRAIN_LIMIT_FACTOR * limit {
                        return Err(error);
                    }
                }
            }
            Err(error)
        }
    }
}

async fn read_small_field(mut field: Field<'_>, limit: u64) -> Result<Vec<u8>, IngestError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > METADATA_BYTES {
            return Err(IngestError::InvalidMetadata(format!(
                "over {METADATA_BYTES} bytes"
            )));
        }
    }
    Ok(bytes)
}

/// `metadata` is a flat JSON object of short string values: labels an app wants back, kept
/// with the image's events.
fn parse_metadata(bytes: &[u8]) -> Result<Metadata, IngestError> {
    let metadata: Metadata = serde_json::from_slice(bytes).map_err(|error| {
        IngestError::InvalidMetadata(format!("not a JSON object of strings: {error}"))
    })?;
    if metadata.len() > METADATA_ENTRIES {
        return Err(IngestError::InvalidMetadata(format!(
            "{} entries, at most {METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    if let Some(key) = metadata.keys().find(|key| {
        key.is_empty()
            || key.len() > METADATA_KEY_CHARS
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }) {
        return Err(IngestError::InvalidMetadata(format!(
            "key {key:?}: 1 to {METADATA_KEY_CHARS} letters, digits, '_', '-' or '.'"
        )));
    }
    Ok(metadata)
}

fn multipart_error(error: MultipartError, limit: u64) -> IngestError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        IngestError::PayloadTooLarge { limit }
    } else {
        IngestError::InvalidMultipart(error.body_text())
    }
}
