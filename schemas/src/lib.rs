//! The imgpipe event contract.
//!
//! Every record on an imgpipe topic is one [`Event`]: an envelope (ids, time, correlation,
//! producer) around a [`Payload`]. The Avro schemas in `avro/vN/` are the source of truth; the
//! Rust types here mirror them and [`codec`] converts between the two. This crate does no IO.

#[macro_use]
pub mod words;

pub mod codec;
mod error;
mod events;
pub mod headers;
mod json;
mod reason;
pub mod state;
mod webhook;

pub use codec::{
    decode, decode_with, encode, encode_confluent, Framing, SchemaLookup, CONTENT_TYPE,
    CONTENT_TYPE_CONFLUENT, SCHEMA_VERSION,
};
pub use error::SchemaError;
pub use events::{
    Event, EventType, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted,
    OrphanRemoved, Payload, Producer, ReprocessRequested, Variant, WebhookDeliveryAttempted,
    WebhookEndpointCreated, WebhookEndpointDeleted, WebhookEndpointDisabled,
    WebhookEndpointUpdated, WebhookRedeliveryRequested, WebhookSecretRotated,
};
pub use reason::ReasonCode;
pub use state::{ImageHistory, ImageState};
pub use webhook::{DisableReason, WebhookErrorClass, WebhookEventType};
