//! multipart/form-data uploads: a `file` field that streams like a raw body, and an optional
//! `metadata` field.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use futures::{StreamExt, TryStreamExt};
use multer::{Constraints, Field, Multipart, SizeLimit};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::RefOr;

use super::body::{body_error, discard, drain, receive, Received, DRAIN_LIMIT_FACTOR};
use super::framing::Framing;
use crate::error::IngestError;
use crate::state::AppState;

/// Room for the multipart boundaries and the metadata field on top of the file's own limit.
pub(super) const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// The `metadata` field's limits: what fits a label, not a document.
const METADATA_ENTRIES: usize = 32;
const METADATA_KEY_CHARS: usize = 64;
const METADATA_VALUE_CHARS: usize = 128;
/// The most bytes a `metadata` that keeps those limits takes as JSON, every value's characters
/// escaped (`\ud83d\ude00` is 12 bytes for one character) with room for quotes and separators:
/// a longer field is refused before it is parsed.
const METADATA_BYTES: usize =
    2 + METADATA_ENTRIES * (METADATA_KEY_CHARS + 12 * METADATA_VALUE_CHARS + 8);
/// What the document says of the `metadata` keys and values; `parse_metadata` checks the same.
const METADATA_KEY_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";
const METADATA_VALUE_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

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

/// The form's parser, reading the body through a limit on its size (the file's limit plus
/// [`MULTIPART_OVERHEAD`]) and a watch on its framing (see `framing`): a hostile form costs
/// at most that much memory, chunked or not.
fn open_form(request: Request, limit: u64) -> Result<Multipart<'static>, IngestError> {
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            IngestError::InvalidMultipart("the Content-Type has no valid boundary".into())
        })?;
    let max_body = limit + MULTIPART_OVERHEAD;
    let mut framing = Framing::new(&boundary, max_body, DRAIN_LIMIT_FACTOR * limit);
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(body_error)
        .map(move |chunk| match framing.pass(chunk?) {
            // Say the file's limit, as a raw body's refusal does.
            Err(IngestError::PayloadTooLarge { .. }) => Err(IngestError::PayloadTooLarge { limit }),
            passed => passed,
        });
    let constraints = Constraints::new().size_limit(
        SizeLimit::new()
            // Checked by the framing watch first, which then drains: a backstop.
            .whole_stream(max_body)
            .for_field("metadata", METADATA_BYTES as u64),
    );
    Ok(Multipart::with_constraints(body, boundary, constraints))
}

/// Reads a multipart/form-data upload: the `file` field streams like a raw body; `metadata`
/// is a small JSON object of strings. Anything else is refused, and an original already
/// stored for a refused form is removed again.
pub(super) async fn receive_form(
    state: &AppState,
    request: Request,
) -> Result<(Received, Option<Metadata>), IngestError> {
    let limit = state.settings.max_upload_bytes;
    let mut form = open_form(request, limit)?;
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

async fn read_small_field(mut field: Field<'static>, limit: u64) -> Result<Vec<u8>, IngestError> {
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
    // A NUL cannot be stored (Postgres text) and control characters are not labels: refused
    // here rather than dead-lettered by the projector after the 202.
    if let Some((key, _)) = metadata
        .iter()
        .find(|(_, value)| value.chars().any(char::is_control))
    {
        return Err(IngestError::InvalidMetadata(format!(
            "the value of {key:?} has a NUL or another control character"
        )));
    }
    if let Some((key, _)) = metadata
        .iter()
        .find(|(_, value)| value.chars().count() > METADATA_VALUE_CHARS)
    {
        return Err(IngestError::InvalidMetadata(format!(
            "the value of {key:?} is over {METADATA_VALUE_CHARS} characters"
        )));
    }
    Ok(metadata)
}

/// An image's bytes, the raw body or the form's `file`: at least one byte.
pub(super) fn image_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .min_length(Some(1))
        .description(Some(
            "The image; its format comes from the magic bytes, not from a Content-Type.",
        ))
}

/// The form as the document states it: `file` (required) and `metadata`, nothing else, with
/// the limits `parse_metadata` checks.
pub(super) fn form_schema() -> RefOr<Schema> {
    let file = image_schema();
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(METADATA_VALUE_CHARS))
        .pattern(Some(METADATA_VALUE_PATTERN));
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(METADATA_KEY_PATTERN));
    let metadata = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "Optional, kept with the image: a JSON object of up to {METADATA_ENTRIES} strings \
             of up to {METADATA_VALUE_CHARS} characters with no control character, keyed by \
             1-{METADATA_KEY_CHARS} letters, digits, `_`, `-` or `.`."
        )))
        .max_properties(Some(METADATA_ENTRIES))
        .property_names(Some(key))
        .additional_properties(Some(Schema::from(value)));
    ObjectBuilder::new()
        .property("file", file)
        .required("file")
        .property("metadata", metadata)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .into()
}

fn multipart_error(error: multer::Error, limit: u64) -> IngestError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => IngestError::PayloadTooLarge { limit },
        multer::Error::FieldSizeExceeded { .. } => {
            IngestError::InvalidMetadata(format!("over {METADATA_BYTES} bytes"))
        }
        // What the body stream itself refused (the framing watch, a broken connection).
        multer::Error::StreamReadFailed(source) => match source.downcast::<IngestError>() {
            Ok(error) => *error,
            Err(source) => IngestError::BodyRead(source.to_string()),
        },
        other => IngestError::InvalidMultipart(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_past_its_limits_is_refused() {
        let longest = "\u{1F600}".repeat(METADATA_VALUE_CHARS);
        assert!(parse_metadata(
            &serde_json::to_vec(&Metadata::from([("k".into(), longest.clone())])).unwrap()
        )
        .is_ok());
        let over = format!("{longest}x");
        assert!(matches!(
            parse_metadata(&serde_json::to_vec(&Metadata::from([("k".into(), over)])).unwrap()),
            Err(IngestError::InvalidMetadata(_))
        ));
        // The most the limits allow, every character escaped, fits the field's byte cap.
        let widest: String = (0..METADATA_ENTRIES)
            .map(|i| {
                format!(
                    "\"{i:0>64}\":\"{}\"",
                    "\\ud83d\\ude00".repeat(METADATA_VALUE_CHARS)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let widest = format!("{{{widest}}}");
        assert!(widest.len() <= METADATA_BYTES, "{}", widest.len());
        assert!(parse_metadata(widest.as_bytes()).is_ok());
    }

    #[test]
    fn metadata_values_with_control_characters_are_refused() {
        assert!(parse_metadata(br#"{"album":"Summer 2026 \u00e9t\u00e9"}"#).is_ok());
        for bad in [
            br#"{"album":"a\u0000b"}"#.as_slice(),
            br#"{"album":"line\nbreak"}"#,
            br#"{"album":"\u001b[31mred"}"#,
        ] {
            assert!(
                matches!(parse_metadata(bad), Err(IngestError::InvalidMetadata(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
