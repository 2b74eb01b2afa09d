//! Settings: [`WebhookSecurity`] is read by ingest (which registers endpoints) and the
//! delivering service alike, so both refuse the same targets and seal with the same key;
//! [`DeliverySettings`] only by the delivering service.

use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, KafkaConfig, S3Config, Secret};
use serde::Deserialize;

use crate::secret::SecretSealer;
use crate::target::{parse_allow_list, AddressPolicy};
use crate::WebhookError;

/// What ingest and the delivering service agree on.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhookSecurity {
    /// Base64 of 32 random bytes: seals the endpoints' signing secrets in the log
    /// (ChaCha20-Poly1305). Empty: webhooks are off (ingest answers `webhooks-disabled`, the
    /// delivering service refuses to start). Losing it makes every endpoint's secret unreadable.
    #[serde(default)]
    pub sealing_key: Secret,
    /// Allow `http://` endpoint URLs (development only; production endpoints must be https).
    #[serde(default)]
    pub allow_http: bool,
    /// Comma-separated CIDRs (or addresses) of private networks endpoints may be in. Empty:
    /// only public addresses.
    #[serde(default)]
    pub allow_private: String,
}

impl FromEnv for WebhookSecurity {
    const PREFIX: &'static str = "IMGPIPE_WEBHOOKS_";
}

impl WebhookSecurity {
    /// The sealer, or `None` when webhooks are off.
    pub fn sealer(&self) -> Result<Option<Arc<SecretSealer>>, WebhookError> {
        let key = self.sealing_key.expose();
        if key.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(SecretSealer::from_base64(key)?)))
    }

    pub fn policy(&self) -> Result<Arc<AddressPolicy>, WebhookError> {
        Ok(Arc::new(AddressPolicy::new(
            self.allow_http,
            parse_allow_list(&self.allow_private)?,
        )))
    }
}

/// The delivering service's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    /// Address of /healthz, /readyz and /metrics.
    #[serde(default = "default_ops_addr")]
    pub ops_addr: String,
    /// The waits before each retry, comma-separated (`5s`, `5m`, `2h`, `1d`); after the last
    /// one fails the message is given up for that endpoint.
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule: String,
    /// Seconds an attempt may take, connect to last byte read.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// An endpoint whose every attempt failed for this long is disabled (seconds; 3 days).
    #[serde(default = "default_disable_after_secs")]
    pub disable_after_secs: u64,
    /// Attempts in flight at once, over all endpoints.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts in flight at once to one endpoint (per instance).
    #[serde(default = "default_per_endpoint")]
    pub per_endpoint: usize,
    /// How long the variant URLs in a delivery stay valid (seconds).
    #[serde(default = "default_url_ttl_secs")]
    pub url_ttl_secs: u64,
    /// Milliseconds between looks for due deliveries while none is due.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl FromEnv for DeliverySettings {
    const PREFIX: &'static str = "IMGPIPE_WEBHOOKS_DELIVERY_";
}

fn default_ops_addr() -> String {
    "127.0.0.1:18083".into()
}
/// Standard Webhooks' suggestion (and Svix's): about 27 hours of retries in 8 attempts.
fn default_retry_schedule() -> String {
    "5s,5m,30m,2h,5h,10h,10h".into()
}
fn default_timeout_secs() -> u64 {
    15
}
fn default_disable_after_secs() -> u64 {
    3 * 24 * 3600
}
fn default_concurrency() -> usize {
    64
}
fn default_per_endpoint() -> usize {
    4
}
fn default_url_ttl_secs() -> u64 {
    3600
}
fn default_poll_ms() -> u64 {
    500
}

impl DeliverySettings {
    /// The retry waits, parsed.
    pub fn schedule(&self) -> Result<Vec<Duration>, WebhookError> {
        self.retry_schedule
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_duration)
            .collect()
    }
}

/// `5s`, `250ms`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, WebhookError> {
    let bad = || WebhookError::Config(format!("{text:?} is not a duration like 5s, 5m, 2h"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(seconds))
}

/// Everything the delivering service reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub delivery: DeliverySettings,
    pub security: WebhookSecurity,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, imgpipe_infra::InfraError> {
        Ok(Self {
            delivery: DeliverySettings::from_env()?,
            security: WebhookSecurity::from_env()?,
            kafka: KafkaConfig::from_env()?,
            s3: S3Config::from_env()?,
            database: DatabaseConfig::from_env()?,
            registry: RegistryConfig::from_env()?,
            log: LogConfig::from_env()?,
        })
    }

    /// Every environment variable the service reads (compose and the manifests are checked
    /// against it).
    pub fn env_vars() -> Vec<String> {
        [
            DeliverySettings::env_vars(),
            WebhookSecurity::env_vars(),
            KafkaConfig::env_vars(),
            S3Config::env_vars(),
            DatabaseConfig::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_parse_and_the_default_schedule_is_the_documented_one() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "5", "m5", "5 m", "5w", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let settings = DeliverySettings::from_iter(Vec::new()).unwrap();
        let hours: Vec<u64> = settings
            .schedule()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(hours, [5, 300, 1800, 7200, 18_000, 36_000, 36_000]);
    }
}
