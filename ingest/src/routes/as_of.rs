//! `GET /v1/images/{id}?as_of=T`: the image as it was at T, folded from the payloads its
//! timeline keeps (`imgpipe_schemas::state`, the projector's rules), not from the log.

use imgpipe_schemas::state::ImageState;
use imgpipe_schemas::{EventType, Payload};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::view::ImageStatus;
use crate::db::{self, StoredEvent};
use crate::error::{database_unavailable, IngestError};
use crate::state::AppState;

/// The `as_of` parameter. A `+` of an offset that the client did not percent-encode arrives as
/// a space (form decoding); the only space an RFC 3339 time may hold is that one, so it is
/// read back as `+`.
pub(super) fn parse(text: &str) -> Result<OffsetDateTime, IngestError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|error| {
            if text.contains(' ') {
                OffsetDateTime::parse(&text.replace(' ', "+"), &Rfc3339)
            } else {
                Err(error)
            }
        })
        .map_err(|_| {
            IngestError::InvalidQuery(format!(
                "as_of must be an RFC 3339 time such as 2026-11-22T19:30:00Z, not {text:?}"
            ))
        })
}

/// The image as its events up to `as_of` made it.
pub(super) async fn image_at(
    state: &AppState,
    image_id: Uuid,
    as_of: OffsetDateTime,
) -> Result<ImageStatus, IngestError> {
    let stored = db::events_until(&state.pool, image_id, as_of)
        .await
        .map_err(database_unavailable)?;
    let at = || as_of.format(&Rfc3339).unwrap_or_default();
    let events = decode(image_id, stored).ok_or_else(|| IngestError::AsOfUnavailable(at()))?;
    let folded = ImageState::fold(events.iter().map(|(t, p)| (*t, p)))
        .ok_or_else(|| IngestError::NotYetUploaded(at()))?;
    Ok(ImageStatus::as_of(image_id, folded, as_of))
}

/// The payloads, or `None` when one is missing (a row projected before payloads were kept)
/// or does not decode (logged: the projector wrote something this build cannot read).
fn decode(image_id: Uuid, stored: Vec<StoredEvent>) -> Option<Vec<(OffsetDateTime, Payload)>> {
    stored
        .into_iter()
        .map(|row| {
            let event_type = EventType::from_name(&row.event_type);
            match (event_type, row.payload) {
                (Some(event_type), Some(json)) => match Payload::from_json(event_type, json) {
                    Ok(payload) => Some((row.occurred_at, payload)),
                    Err(error) => {
                        tracing::error!(image_id = %image_id, error = %error, "stored payload does not decode");
                        None
                    }
                },
                (None, _) => {
                    tracing::error!(image_id = %image_id, event_type = %row.event_type, "unknown event type in the timeline");
                    None
                }
                (Some(_), None) => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn as_of_takes_rfc_3339_and_a_form_decoded_plus() {
        let utc = parse("2026-11-22T19:30:00Z").unwrap();
        assert_eq!(parse("2026-11-22T20:30:00+01:00").unwrap(), utc);
        assert_eq!(parse("2026-11-22T20:30:00 01:00").unwrap(), utc);
        assert_eq!(
            parse("2026-11-22T19:30:00.123456Z").unwrap().microsecond(),
            123_456
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-11-22 19:30:00",
            "1795000000",
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.code(), "invalid-query", "{bad}");
        }
    }

    #[test]
    fn a_row_without_its_payload_makes_the_fold_unavailable() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let uploaded = StoredEvent {
            event_type: "ImageUploaded".into(),
            occurred_at: at,
            payload: Some(json!({
                "owner": "client-a", "original_key": "originals/x", "format": "png",
                "bytes": 5, "sha256": "00", "width": 1, "height": 2, "metadata": {}
            })),
        };
        let legacy = StoredEvent {
            event_type: "ImageFailed".into(),
            occurred_at: at,
            payload: None,
        };
        let id = Uuid::now_v7();
        let events = decode(id, vec![uploaded]).unwrap();
        assert_eq!(events.len(), 1);
        let image = ImageStatus::as_of(
            id,
            ImageState::fold(events.iter().map(|(t, p)| (*t, p))).unwrap(),
            at,
        );
        let body = serde_json::to_value(&image).unwrap();
        assert_eq!(body["status"], "uploaded");
        assert_eq!(body["as_of"], "1970-01-01T00:00:00Z");
        assert!(body.get("urls_expire_at").is_none(), "{body}");
        assert_eq!(body["variants"], json!([]));
        assert_eq!(body["failure"], json!(null));

        let uploaded_again = StoredEvent {
            event_type: "ImageUploaded".into(),
            occurred_at: at,
            payload: Some(json!({})),
        };
        assert!(decode(id, vec![legacy]).is_none());
        assert!(decode(id, vec![uploaded_again]).is_none(), "undecodable");
    }
}
