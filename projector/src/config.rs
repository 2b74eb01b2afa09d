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
}

impl FromEnv for ProjectorSettings {
    const PREFIX: &'static str = "IMGPIPE_PROJECTOR_";
}

fn default_ops_addr() -> String {
    "127.0.0.1:18082".into()
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
