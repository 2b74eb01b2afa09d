//! Webhooks: delivering `image.ready`, `image.failed` and `image.deleted` to the endpoints the
//! clients registered, signed as Standard Webhooks, retried on a schedule without blocking other
//! endpoints, every attempt recorded as an event.
//!
//! The IO-free parts (signing, secrets, the address policy, the message body) are used by ingest
//! too, which registers the endpoints.

pub mod attempt;
pub mod config;
mod deliver;
pub mod error;
mod handler;
pub mod message;
pub mod metrics;
mod schedule;
pub mod secret;
pub mod signature;
pub mod startup;
pub mod target;

pub use config::Config;
pub use error::WebhookError;
pub use startup::Webhooks;

/// The consumer group of the delivering service (after the deployment's prefix); it also labels
/// its consumer metrics.
pub const GROUP: &str = imgpipe_infra::kafka::groups::WEBHOOKS;
