use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, InfraError, KafkaConfig, S3Config};
use serde::Deserialize;

use crate::orphans::OrphanSweepSettings;

#[derive(Debug, Clone)]
pub struct Config {
    pub projector: ProjectorSettings,
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
    /// The periodic orphan sweep (off unless `IMGPIPE_PROJECTOR_ORPHAN_SWEEP_SECS` is set).
    pub orphans: OrphanSweepSettings,
    /// The bucket, for the orphan sweep only.
    pub s3: S3Config,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProjectorSettings {
    /// Address of /healthz and /readyz.
    #[serde(default = "default_ops_addr")]
    pub ops_addr: String,
    /// Most records applied in one Postgres transaction.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a batch waits for more records after its first one, in milliseconds.
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            ops_addr: default_ops_addr(),
            batch_max: default_batch_max(),
            batch_linger_ms: default_batch_linger_ms(),
        }
    }
}

impl ProjectorSettings {
    pub fn batch_linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.batch_linger_ms)
    }
}

impl FromEnv for ProjectorSettings {
    const PREFIX: &'static str = "IMGPIPE_PROJECTOR_";
}

fn default_ops_addr() -> String {
    "127.0.0.1:18082".into()
}

fn default_batch_max() -> usize {
    500
}

// Short: the API reads what the projector wrote, so a batch waiting for company delays every
// read-after-upload.
fn default_batch_linger_ms() -> u64 {
    10
}

impl Config {
    pub fn from_env() -> Result<Self, InfraError> {
        Ok(Self {
            projector: ProjectorSettings::from_env()?,
            kafka: KafkaConfig::from_env()?,
            database: DatabaseConfig::from_env()?,
            registry: RegistryConfig::from_env()?,
            log: LogConfig::from_env()?,
            orphans: OrphanSweepSettings::from_env()?,
            s3: S3Config::from_env()?,
        })
    }

    /// Every environment variable the projector reads.
    pub fn env_vars() -> Vec<String> {
        [
            ProjectorSettings::env_vars(),
            KafkaConfig::env_vars(),
            DatabaseConfig::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
            OrphanSweepSettings::env_vars(),
            S3Config::env_vars(),
        ]
        .concat()
    }
}
