//! The imgpipe event contract.
//!
//! Every record on an imgpipe topic is one [`Event`]: an envelope (ids, time, correlation,
//! producer) around a [`Payload`]. The Avro schemas in `avro/vN/` are the source of truth; the
//! Rust types here mirror them and [`codec`] converts between the two. This crate does no IO.

pub mod codec;
mod error;
mod events;
mod json;
pub mod state;

pub use codec::{
    decode, decode_with, encode, encode_confluent, Framing, SchemaLookup, CONTENT_TYPE,
    CONTENT_TYPE_CONFLUENT, SCHEMA_VERSION,
};
pub use error::SchemaError;
pub use events::{
    Event, EventType, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted,
    OrphanRemoved, Payload, Producer, ReprocessRequested, Variant,
};
pub use state::{ImageHistory, ImageState};

/// Record header names every producer sets, so `rpk topic consume` shows what a record is.
pub mod headers {
    pub const EVENT_TYPE: &str = "event-type";
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const CONTENT_TYPE: &str = "content-type";
}
