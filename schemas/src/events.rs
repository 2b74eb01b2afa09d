use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One entry of the log: the envelope every event shares plus what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// UUIDv7, so ids sort by creation time.
    pub event_id: Uuid,
    /// The record key; all events of one image stay in order on one partition.
    pub image_id: Uuid,
    pub occurred_at: OffsetDateTime,
    /// The request id of the API call that started this chain of events.
    pub correlation_id: String,
    /// The event this one reacts to, if any.
    pub causation_id: Option<Uuid>,
    pub producer: Producer,
    pub payload: Payload,
}

impl Event {
    /// A new event happening now, with a fresh UUIDv7 id.
    pub fn new(
        image_id: Uuid,
        correlation_id: impl Into<String>,
        causation_id: Option<Uuid>,
        producer: Producer,
        payload: impl Into<Payload>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            image_id,
            // Avro stores microseconds; truncate now so an encode/decode round trip is exact.
            occurred_at: truncate_to_micros(OffsetDateTime::now_utc()),
            correlation_id: correlation_id.into(),
            causation_id,
            producer,
            payload: payload.into(),
        }
    }

    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }
}

fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// Which service (and build) wrote an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct Producer {
    pub service: String,
    pub version: String,
}

/// Declares the events once, in payload-union order: [`Payload`] (what happened),
/// [`EventType`] (its name), `ALL`, and the conversions of every payload to and from Avro
/// values and JSON, so adding an event is one line here (plus its record below).
macro_rules! events {
    ($($ty:ident),+ $(,)?) => {
        /// What happened. The variant order is the order of the Avro union and must never
        /// change: new events are appended at the end.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload {
            $($ty($ty),)+
        }

        impl Payload {
            pub fn event_type(&self) -> EventType {
                match self {
                    $(Payload::$ty(_) => EventType::$ty,)+
                }
            }

            pub(crate) fn to_avro(&self) -> Result<apache_avro::types::Value, apache_avro::Error> {
                match self {
                    $(Payload::$ty(p) => apache_avro::to_value(p),)+
                }
            }

            pub(crate) fn from_avro(
                event_type: EventType,
                value: &apache_avro::types::Value,
            ) -> Result<Payload, apache_avro::Error> {
                Ok(match event_type {
                    $(EventType::$ty => Payload::$ty(apache_avro::from_value(value)?),)+
                })
            }

            pub(crate) fn to_json_value(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(Payload::$ty(p) => serde_json::to_value(p),)+
                }
            }

            pub(crate) fn from_json_value(
                event_type: EventType,
                value: serde_json::Value,
            ) -> Result<Payload, serde_json::Error> {
                Ok(match event_type {
                    $(EventType::$ty => Payload::$ty(serde_json::from_value(value)?),)+
                })
            }
        }

        /// The names of the payload records, as they appear in the `event-type` header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($ty,)+
        }

        impl EventType {
            /// In payload-union order.
            pub const ALL: [EventType; [$(stringify!($ty)),+].len()] = [$(EventType::$ty),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$ty => stringify!($ty),)+
                }
            }
        }

        $(
            impl From<$ty> for Payload {
                fn from(value: $ty) -> Self {
                    Payload::$ty(value)
                }
            }
        )+
    };
}

events!(
    ImageUploaded,
    ImageProcessed,
    ImageFailed,
    ImageDeleted,
    ObjectsDeleted,
    OrphanRemoved,
    ReprocessRequested,
    WebhookEndpointCreated,
    WebhookEndpointUpdated,
    WebhookSecretRotated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookDeliveryAttempted,
    WebhookRedeliveryRequested,
);

impl Payload {
    /// The webhook events: an endpoint's own (keyed by the endpoint's id) and delivery attempts
    /// (keyed by the image's id). Image folds, the processor and replay pass them by.
    pub fn is_webhook(&self) -> bool {
        self.event_type().is_webhook()
    }
}

impl EventType {
    /// See [`Payload::is_webhook`].
    pub fn is_webhook(self) -> bool {
        self.as_str().starts_with("Webhook")
    }

    /// Position of this type's record in the payload union.
    pub(crate) fn union_index(self) -> u32 {
        // ALL is in union order and short; the position cannot overflow.
        Self::ALL
            .iter()
            .position(|t| *t == self)
            .unwrap_or_default() as u32
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The original is durable in object storage and the upload was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ImageUploaded {
    /// Client id of the API key that uploaded the image.
    pub owner: String,
    pub original_key: String,
    /// Format sniffed from the magic bytes (`jpeg`, `png`, ...).
    pub format: String,
    pub bytes: i64,
    /// Lowercase hex sha256 of the original.
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    /// The uploader's labels (the upload form's `metadata`). Empty in records written before
    /// schema v2.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// Every variant of the spec is durable in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ImageProcessed {
    pub spec_version: i32,
    /// Dimensions after EXIF orientation was applied.
    pub original_width: i32,
    pub original_height: i32,
    pub variants: Vec<Variant>,
    /// `#rrggbb`, lowercase. `None` in records written before schema v2.
    pub dominant_color: Option<String>,
    /// A BlurHash placeholder for clients to paint before a variant loads. `None` in records
    /// written before schema v2.
    pub blurhash: Option<String>,
    /// The original is an animation (GIF or WebP with more than one frame); the variants show
    /// its first frame. `false` in records written before schema v3.
    #[serde(default)]
    #[avro(default = "false")]
    pub animated: bool,
}

/// One stored rendition of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct Variant {
    pub name: String,
    pub key: String,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub sha256: String,
}

/// Processing ended for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ImageFailed {
    /// Stable kebab-case code, e.g. `undecodable`.
    pub reason_code: String,
    pub message: String,
}

/// The owner deleted the image; its objects are to be removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ImageDeleted {
    pub requested_by: String,
    pub original_key: String,
    pub variant_keys: Vec<String>,
}

/// Objects of an image were removed from storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ObjectsDeleted {
    pub keys: Vec<String>,
    /// Keys that were already gone.
    pub missing_keys: Vec<String>,
}

/// The orphan sweep removed an object no event accounts for (audit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct OrphanRemoved {
    pub key: String,
    pub bytes: i64,
    pub last_modified_micros: i64,
    /// `no-event` or `unreferenced`.
    pub reason: String,
}

/// An operator asked for the image's variants to be made again with the current spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct ReprocessRequested {
    pub requested_by: String,
    pub reason: String,
    pub original_key: String,
    pub format: String,
}

/// A client registered a webhook endpoint. Keyed by the endpoint's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookEndpointCreated {
    pub endpoint_id: String,
    /// Client id of the API key that registered it.
    pub owner: String,
    pub url: String,
    /// `image.ready`, `image.failed`, `image.deleted`.
    pub event_types: Vec<String>,
    /// The signing secret sealed with the deployment's sealing key, so reading the log does not
    /// reveal it.
    pub sealed_secret: String,
}

/// The owner changed an endpoint; `None` fields are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookEndpointUpdated {
    pub endpoint_id: String,
    pub requested_by: String,
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// The endpoint's signing secret was replaced; the previous one also signs until
/// `previous_valid_until_micros`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookSecretRotated {
    pub endpoint_id: String,
    pub requested_by: String,
    pub sealed_secret: String,
    pub previous_valid_until_micros: i64,
}

/// The owner deleted an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookEndpointDeleted {
    pub endpoint_id: String,
    pub requested_by: String,
}

/// The delivering service disabled an endpoint that kept failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookEndpointDisabled {
    pub endpoint_id: String,
    /// Stable code (`failing`).
    pub reason: String,
    pub failing_since_micros: i64,
}

/// One attempt to deliver a message to an endpoint. Keyed by the image's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookDeliveryAttempted {
    pub endpoint_id: String,
    /// The `webhook-id`: the id of the event the message is about.
    pub message_id: String,
    /// `image.ready`, `image.failed` or `image.deleted`.
    pub message_type: String,
    /// 1 for the first attempt of a delivery or of a redelivery.
    pub attempt: i32,
    pub redelivery: bool,
    pub url: String,
    pub status_code: Option<i32>,
    pub duration_ms: i64,
    /// Why it failed (`timeout`, `connect`, `address-refused`, `tls`, `redirect`, `status`,
    /// `request`); `None` when delivered.
    pub error_class: Option<String>,
    /// When the next attempt is due; `None` when delivered or given up.
    pub next_attempt_micros: Option<i64>,
}

/// An owner or operator asked for one message, or every message since a time, to be delivered
/// to the endpoint again. Keyed by the endpoint's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "imgpipe.events")]
pub struct WebhookRedeliveryRequested {
    pub endpoint_id: String,
    pub requested_by: String,
    pub message_id: Option<String>,
    pub since_micros: Option<i64>,
}
