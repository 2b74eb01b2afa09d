use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, InfraError, KafkaConfig};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Config {
    pub projector: ProjectorSettings,
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
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
        ]
        .concat()
    }
}
