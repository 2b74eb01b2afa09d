//! The ingest service: the REST API apps upload to. It validates an upload, stores the
//! original in object storage, appends `ImageUploaded` to the event log and answers 202; it
//! answers status queries from the projector's read model.

pub mod auth;
pub mod config;
mod db;
mod error;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod routes;
mod server;
mod slots;
pub mod sniff;
pub mod startup;
pub mod state;

pub use config::Config;
pub use error::IngestError;
pub use startup::Application;
