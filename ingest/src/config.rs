use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, InfraError, KafkaConfig, S3Config};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Config {
    pub ingest: IngestSettings,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// `client-id=sha256-hex-of-key[;option=value...]` entries, comma-separated (the options,
    /// a key's scope and its client's own rate limits, are in `auth.rs`). Only hashes are
    /// configured; the keys themselves are never stored.
    #[serde(default)]
    pub api_keys: String,
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_max_side")]
    pub max_side: u64,
    /// Uploads each client may start per minute (bursts up to the same number); 0 = no limit.
    /// A client's entry in `api_keys` may override this and `bytes_per_minute`.
    #[serde(default = "default_uploads_per_minute")]
    pub uploads_per_minute: u32,
    /// Upload bytes each client may send per minute; 0 = no limit. At least max_upload_bytes.
    #[serde(default = "default_bytes_per_minute")]
    pub bytes_per_minute: u64,
}

impl Default for IngestSettings {
    /// The documented defaults (the same as an empty environment).
    fn default() -> Self {
        Self {
            listen_addr: default_listen_addr(),
            api_keys: String::new(),
            max_upload_bytes: default_max_upload_bytes(),
            max_pixels: default_max_pixels(),
            max_side: default_max_side(),
            uploads_per_minute: default_uploads_per_minute(),
            bytes_per_minute: default_bytes_per_minute(),
        }
    }
}

impl FromEnv for IngestSettings {
    const PREFIX: &'static str = "IMGPIPE_INGEST_";
}

fn default_listen_addr() -> String {
    "127.0.0.1:18080".into()
}
fn default_max_upload_bytes() -> u64 {
    25_000_000
}
fn default_max_pixels() -> u64 {
    50_000_000
}
fn default_max_side() -> u64 {
    20_000
}
fn default_uploads_per_minute() -> u32 {
    600
}
fn default_bytes_per_minute() -> u64 {
    2_000_000_000
}

impl Config {
    pub fn from_env() -> Result<Self, InfraError> {
        Ok(Self {
            ingest: IngestSettings::from_env()?,
            kafka: KafkaConfig::from_env()?,
            s3: S3Config::from_env()?,
            database: DatabaseConfig::from_env()?,
            registry: RegistryConfig::from_env()?,
            log: LogConfig::from_env()?,
        })
    }

    /// Every environment variable ingest reads.
    pub fn env_vars() -> Vec<String> {
        [
            IngestSettings::env_vars(),
            KafkaConfig::env_vars(),
            S3Config::env_vars(),
            DatabaseConfig::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
        ]
        .concat()
    }
}
