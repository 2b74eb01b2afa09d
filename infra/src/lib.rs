//! How imgpipe services reach their infrastructure, so each service crate only holds its own
//! logic: typed env config, Kafka clients and the topic definitions, the S3 object store,
//! telemetry, and the `/healthz` `/readyz` endpoints of the workers.

pub mod breaker;
pub mod config;
pub mod consume;
pub mod db;
mod error;
pub mod kafka;
pub mod log_reader;
pub mod metrics;
pub mod ops;
pub mod redrive;
pub mod registry;
pub mod storage;
pub mod telemetry;
pub mod topics;
pub mod worker;

pub use config::{FromEnv, KafkaConfig, S3Config, Secret};
pub use db::DatabaseConfig;
pub use error::{BoxError, InfraError};
