//! What a delivery says. [`Message`] is its stable part, made from the image's event when the
//! delivering service consumes it (kept in the schedule, and made again from the timeline's
//! stored payload for a redelivery); [`Message::body`] is the JSON sent, with the variants'
//! URLs presigned afresh for each attempt. The body follows Standard Webhooks' suggested shape:
//! `{"type", "timestamp", "data"}`.

use std::collections::HashMap;

use imgpipe_schemas::state::Status;
use imgpipe_schemas::{Event, Payload, WebhookEventType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A message about one image, as scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `image.ready`, `image.failed` or `image.deleted`.
    #[serde(rename = "type")]
    pub message_type: String,
    pub image_id: Uuid,
    /// When the event it is about happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub status: String,
    pub variants: Vec<MessageVariant>,
    pub failure: Option<Failure>,
}

/// A variant of a ready image; its URL is presigned per attempt from `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageVariant {
    pub name: String,
    pub key: String,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
}

/// Why processing failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Message {
    /// The message an image's event makes, if it makes one.
    pub fn from_event(event: &Event) -> Option<Message> {
        Self::from_payload(event.image_id, event.occurred_at, &event.payload)
    }

    pub fn from_payload(
        image_id: Uuid,
        occurred_at: OffsetDateTime,
        payload: &Payload,
    ) -> Option<Message> {
        let message_type = WebhookEventType::of(payload)?;
        let mut message = Message {
            message_type: message_type.as_str().to_string(),
            image_id,
            occurred_at,
            status: String::new(),
            variants: Vec::new(),
            failure: None,
        };
        match payload {
            Payload::ImageProcessed(processed) => {
                message.status = Status::Ready.as_str().into();
                message.variants = processed
                    .variants
                    .iter()
                    .map(|v| MessageVariant {
                        name: v.name.clone(),
                        key: v.key.clone(),
                        format: v.format.clone(),
                        width: v.width,
                        height: v.height,
                        bytes: v.bytes,
                    })
                    .collect();
            }
            Payload::ImageFailed(failed) => {
                message.status = Status::Failed.as_str().into();
                message.failure = Some(Failure {
                    code: failed.reason_code.clone(),
                    message: failed.message.clone(),
                });
            }
            _ => message.status = Status::Deleted.as_str().into(),
        }
        Some(message)
    }

    /// The keys whose URLs the body needs.
    pub fn variant_keys(&self) -> impl Iterator<Item = &str> {
        self.variants.iter().map(|v| v.key.as_str())
    }

    /// The JSON body of one attempt: `urls` maps each variant key to its presigned URL (a key
    /// without one gets `null`, which a receiver can fetch later through the API).
    pub fn body(&self, urls: &HashMap<String, String>) -> Vec<u8> {
        let variants: Vec<BodyVariant<'_>> = self
            .variants
            .iter()
            .map(|v| BodyVariant {
                name: &v.name,
                url: urls.get(&v.key).map(String::as_str),
                format: &v.format,
                width: v.width,
                height: v.height,
                bytes: v.bytes,
            })
            .collect();
        let body = Body {
            message_type: &self.message_type,
            timestamp: self.occurred_at,
            data: BodyData {
                image_id: self.image_id,
                status: &self.status,
                variants,
                failure: self.failure.as_ref(),
            },
        };
        // Strings, numbers and a time: nothing serde_json refuses.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    message_type: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
    data: BodyData<'a>,
}

#[derive(Serialize)]
struct BodyData<'a> {
    image_id: Uuid,
    status: &'a str,
    variants: Vec<BodyVariant<'a>>,
    failure: Option<&'a Failure>,
}

#[derive(Serialize)]
struct BodyVariant<'a> {
    name: &'a str,
    url: Option<&'a str>,
    format: &'a str,
    width: i32,
    height: i32,
    bytes: i64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use imgpipe_schemas::{ImageFailed, ImageProcessed, ObjectsDeleted, Producer, Variant};

    use super::*;

    fn event(payload: Payload) -> Event {
        let producer = Producer {
            service: "test".into(),
            version: "0".into(),
        };
        Event::new(Uuid::now_v7(), "req", None, producer, payload)
    }

    #[test]
    fn a_ready_image_is_sent_with_its_variants_urls() {
        let processed = event(
            ImageProcessed {
                spec_version: 2,
                original_width: 40,
                original_height: 30,
                variants: vec![Variant {
                    name: "thumb".into(),
                    key: "variants/a/v2/thumb.webp".into(),
                    format: "webp".into(),
                    width: 4,
                    height: 3,
                    bytes: 10,
                    sha256: "ab".repeat(32),
                }],
                dominant_color: None,
                blurhash: None,
                animated: false,
            }
            .into(),
        );
        let message = Message::from_event(&processed).unwrap();
        assert_eq!(message.message_type, "image.ready");
        let urls = HashMap::from([(
            "variants/a/v2/thumb.webp".to_string(),
            "https://s3/x".into(),
        )]);
        let body: serde_json::Value = serde_json::from_slice(&message.body(&urls)).unwrap();
        assert_eq!(body["type"], "image.ready");
        assert_eq!(body["data"]["status"], "ready");
        assert_eq!(body["data"]["image_id"], processed.image_id.to_string());
        assert_eq!(body["data"]["variants"][0]["url"], "https://s3/x");
        assert_eq!(body["data"]["variants"][0]["width"], 4);
        assert!(body["data"]["failure"].is_null());
        // The stored form round-trips (the schedule keeps it as JSON).
        let stored = serde_json::to_value(&message).unwrap();
        assert_eq!(serde_json::from_value::<Message>(stored).unwrap(), message);
    }

    #[test]
    fn failures_carry_their_code_and_other_events_make_no_message() {
        let failed = event(
            ImageFailed {
                reason_code: "undecodable".into(),
                message: "not an image".into(),
            }
            .into(),
        );
        let body: serde_json::Value =
            serde_json::from_slice(&Message::from_event(&failed).unwrap().body(&HashMap::new()))
                .unwrap();
        assert_eq!(body["type"], "image.failed");
        assert_eq!(body["data"]["failure"]["code"], "undecodable");
        let objects = event(
            ObjectsDeleted {
                keys: vec![],
                missing_keys: vec![],
            }
            .into(),
        );
        assert_eq!(Message::from_event(&objects), None);
    }
}
