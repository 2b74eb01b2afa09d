//! Payloads as JSON: what the projector stores in the timeline (so state at a past time can be
//! rebuilt from the read model without the log) and what `imgpipe events` prints. One
//! conversion, so both agree on field names: the Avro record's own.

use serde_json::Value;

use crate::events::{EventType, Payload};
use crate::SchemaError;

impl EventType {
    /// The type named `name` (as [`EventType::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl Payload {
    /// The payload's fields as a JSON object, named as in the Avro record.
    pub fn to_json(&self) -> Value {
        let value = self.to_json_value();
        // These are plain structs of strings, numbers and string-keyed maps: serde_json has
        // nothing to refuse in them.
        value.unwrap_or(Value::Null)
    }

    /// The payload of an event of type `event_type` back from [`Payload::to_json`]'s JSON.
    pub fn from_json(event_type: EventType, value: Value) -> Result<Payload, SchemaError> {
        let malformed = |e: serde_json::Error| {
            SchemaError::Malformed(format!("{event_type} payload as JSON: {e}"))
        };
        Payload::from_json_value(event_type, value).map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;
    use crate::events::*;

    fn samples() -> Vec<Payload> {
        vec![
            ImageUploaded {
                owner: "client-a".into(),
                original_key: "originals/x".into(),
                format: "jpeg".into(),
                bytes: 12,
                sha256: "ab".repeat(32),
                width: 3,
                height: 4,
                metadata: HashMap::from([("album".into(), "kites".into())]),
            }
            .into(),
            ImageProcessed {
                spec_version: 2,
                original_width: 4,
                original_height: 3,
                variants: vec![Variant {
                    name: "thumb".into(),
                    key: "variants/x/v2/thumb.webp".into(),
                    format: "webp".into(),
                    width: 4,
                    height: 3,
                    bytes: 9,
                    sha256: "cd".repeat(32),
                }],
                dominant_color: Some("#102030".into()),
                blurhash: None,
                animated: true,
            }
            .into(),
            ImageFailed {
                reason_code: "undecodable".into(),
                message: "bad".into(),
            }
            .into(),
            ImageDeleted {
                requested_by: "client-a".into(),
                original_key: "originals/x".into(),
                variant_keys: vec!["variants/x/v2/thumb.webp".into()],
            }
            .into(),
            ObjectsDeleted {
                keys: vec!["originals/x".into()],
                missing_keys: vec![],
            }
            .into(),
            OrphanRemoved {
                key: "originals/y".into(),
                bytes: 1,
                last_modified_micros: 2,
                reason: "no-event".into(),
            }
            .into(),
            ReprocessRequested {
                requested_by: "ops".into(),
                reason: "spec v2".into(),
                original_key: "originals/x".into(),
                format: "jpeg".into(),
            }
            .into(),
            WebhookEndpointCreated {
                endpoint_id: "e".into(),
                owner: "client-a".into(),
                url: "https://hooks.example.com/".into(),
                event_types: vec!["image.ready".into()],
                sealed_secret: "v1.x".into(),
            }
            .into(),
            WebhookEndpointUpdated {
                endpoint_id: "e".into(),
                requested_by: "client-a".into(),
                url: None,
                event_types: None,
                enabled: Some(false),
            }
            .into(),
            WebhookSecretRotated {
                endpoint_id: "e".into(),
                requested_by: "client-a".into(),
                sealed_secret: "v1.y".into(),
                previous_valid_until_micros: 3,
            }
            .into(),
            WebhookEndpointDeleted {
                endpoint_id: "e".into(),
                requested_by: "client-a".into(),
            }
            .into(),
            WebhookEndpointDisabled {
                endpoint_id: "e".into(),
                reason: "failing".into(),
                failing_since_micros: 4,
            }
            .into(),
            WebhookDeliveryAttempted {
                endpoint_id: "e".into(),
                message_id: "m".into(),
                message_type: "image.ready".into(),
                attempt: 1,
                redelivery: false,
                url: "https://hooks.example.com/".into(),
                status_code: None,
                duration_ms: 5,
                error_class: Some("timeout".into()),
                next_attempt_micros: Some(6),
            }
            .into(),
            WebhookRedeliveryRequested {
                endpoint_id: "e".into(),
                requested_by: "ops".into(),
                message_id: Some("m".into()),
                since_micros: None,
            }
            .into(),
        ]
    }

    #[test]
    fn every_payload_round_trips_through_json() {
        let samples = samples();
        assert_eq!(samples.len(), EventType::ALL.len());
        for payload in samples {
            let event_type = payload.event_type();
            assert_eq!(EventType::from_name(event_type.as_str()), Some(event_type));
            let json = payload.to_json();
            assert!(json.is_object(), "{json}");
            assert_eq!(Payload::from_json(event_type, json).unwrap(), payload);
        }
        assert_eq!(EventType::from_name("ImageExploded"), None);
    }

    #[test]
    fn json_of_another_type_is_refused() {
        let deleted = samples()[3].to_json();
        assert!(matches!(
            Payload::from_json(EventType::ImageProcessed, deleted),
            Err(SchemaError::Malformed(_))
        ));
    }

    #[test]
    fn uploads_stored_before_metadata_existed_read_as_empty_metadata() {
        let mut json = samples()[0].to_json();
        json.as_object_mut().unwrap().remove("metadata");
        let Payload::ImageUploaded(uploaded) =
            Payload::from_json(EventType::ImageUploaded, json).unwrap()
        else {
            panic!("not an upload");
        };
        assert!(uploaded.metadata.is_empty());
    }
}
