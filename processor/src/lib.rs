//! The processor: a stateless consumer-group member that turns each `ImageUploaded` event into
//! stored variants and an `ImageProcessed` (or `ImageFailed`) event.

pub mod color;
pub mod config;
pub mod descriptors;
mod error;
mod handler;
pub mod memory;
pub mod metrics;
pub mod render;
pub mod startup;

pub use config::Config;
pub use error::ProcessorError;
pub use startup::Processor;

/// The consumer group the processors share (after the deployment's prefix); it also labels
/// their consumer metrics.
pub const GROUP: &str = imgpipe_infra::kafka::groups::PROCESSOR;
