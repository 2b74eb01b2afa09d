//! The projector: consumes every event and keeps the Postgres read models that answer status
//! queries and hold each image's timeline.

pub mod config;
pub mod db;
mod error;
pub mod orphans;
mod projection;
pub mod startup;

pub use config::Config;
pub use error::ProjectorError;
pub use startup::Projector;
