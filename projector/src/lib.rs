//! The projector: consumes every event and keeps the Postgres read models that answer status
//! queries and hold each image's timeline. Each batch of records and the partitions' positions
//! commit in one transaction (exactly-once); `rebuild` replays the log into new tables and
//! swaps them in.

pub mod batch;
pub mod config;
pub mod db;
mod error;
mod live;
pub mod metrics;
pub mod orphans;
pub mod positions;
pub mod rebuild;
pub mod startup;

pub use batch::BatchReport;
pub use config::Config;
pub use error::ProjectorError;
pub use startup::Projector;

/// The consumer group the projectors share (after the deployment's prefix); it also labels
/// their consumer metrics.
pub const GROUP: &str = imgpipe_infra::kafka::groups::PROJECTOR;
