use std::time::Duration;

use imgpipe_infra::breaker::BreakerSettings;
use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{FromEnv, InfraError, KafkaConfig, S3Config};
use serde::Deserialize;

use crate::render::{Limits, VariantSize, VariantSpec};
use crate::ProcessorError;

#[derive(Debug, Clone)]
pub struct Config {
    pub processor: ProcessorSettings,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProcessorSettings {
    /// Address of /healthz, /readyz and /metrics.
    #[serde(default = "default_ops_addr")]
    pub ops_addr: String,
    /// `name:longest-edge` pairs, comma-separated.
    #[serde(default = "default_variants")]
    pub variants: String,
    /// Goes into every result event; bump it when `variants` or `webp_quality` change.
    #[serde(default = "default_spec_version")]
    pub spec_version: i32,
    #[serde(default = "default_webp_quality")]
    pub webp_quality: f32,
    /// Images over this many pixels fail with `image-too-large` before they are decoded.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// Attempts for a transient failure (S3, broker) before the record is dead-lettered;
    /// 0 (the default) retries until it works, so an outage delays images but never strands
    /// them in the dead-letter topic.
    #[serde(default)]
    pub max_attempts: usize,
    /// Concurrent decode/resize/encode jobs; 0 means one per core.
    #[serde(default)]
    pub cpu_jobs: usize,
    /// The memory renders may hold at once, by their estimated peak: a render waits until its
    /// share is free, one estimated larger than all of it runs alone. Also the most the
    /// decoder may allocate for one image (over it: `image-too-large`).
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: u64,
    /// Object-store failures in a row that open the circuit breaker: consumption then pauses
    /// (no attempts spent, nothing dead-lettered) until a probe finds the store answering.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before it probes the store again.
    #[serde(default = "default_breaker_open_secs")]
    pub breaker_open_secs: u64,
}

impl FromEnv for ProcessorSettings {
    const PREFIX: &'static str = "IMGPIPE_PROCESSOR_";
}

fn default_ops_addr() -> String {
    "127.0.0.1:18081".into()
}
fn default_variants() -> String {
    "thumb:256,medium:1024,large:2048".into()
}
fn default_spec_version() -> i32 {
    1
}
fn default_webp_quality() -> f32 {
    80.0
}
fn default_max_pixels() -> u64 {
    50_000_000
}
fn default_max_side() -> u32 {
    20_000
}
/// Peak RSS stays under 600 MiB with renders of 48 MP 16-bit images, ICC and zTXt bombs and
/// long animations at once (SECURITY.md, `examples/memory_budget.rs`).
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 512 * 1024 * 1024;

fn default_memory_budget_bytes() -> u64 {
    DEFAULT_MEMORY_BUDGET_BYTES
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_secs() -> u64 {
    10
}

impl ProcessorSettings {
    pub fn spec(&self) -> Result<VariantSpec, ProcessorError> {
        let sizes = self
            .variants
            .split(',')
            .map(|pair| {
                let (name, edge) = pair
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| ProcessorError::Spec(format!("{pair:?} is not name:edge")))?;
                let max_edge = edge
                    .parse::<u32>()
                    .ok()
                    .filter(|edge| *edge > 0 && *edge <= 16_383)
                    .ok_or_else(|| ProcessorError::Spec(format!("{edge:?} is not 1..=16383")))?;
                Ok(VariantSize {
                    name: name.to_string(),
                    max_edge,
                })
            })
            .collect::<Result<Vec<_>, ProcessorError>>()?;
        let mut names: Vec<&str> = sizes
            .iter()
            .map(|s: &VariantSize| s.name.as_str())
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(ProcessorError::Spec(format!(
                "variant names repeat: {}",
                self.variants
            )));
        }
        if names.iter().any(|name| {
            name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(ProcessorError::Spec(format!(
                "variant names must be [A-Za-z0-9_-]+: {}",
                self.variants
            )));
        }
        if sizes.is_empty() {
            return Err(ProcessorError::Spec("no variants".into()));
        }
        if !(0.0..=100.0).contains(&self.webp_quality) {
            return Err(ProcessorError::Spec("webp_quality must be 0..=100".into()));
        }
        Ok(VariantSpec {
            version: self.spec_version,
            sizes,
            webp_quality: self.webp_quality,
        })
    }

    pub fn breaker(&self) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: self.breaker_failures.max(1),
            open_for: Duration::from_secs(self.breaker_open_secs),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_pixels: self.max_pixels,
            max_side: self.max_side,
            max_alloc: self.memory_budget_bytes,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, InfraError> {
        Ok(Self {
            processor: ProcessorSettings::from_env()?,
            kafka: KafkaConfig::from_env()?,
            s3: S3Config::from_env()?,
            registry: RegistryConfig::from_env()?,
            log: LogConfig::from_env()?,
        })
    }

    /// Every environment variable the processor reads.
    pub fn env_vars() -> Vec<String> {
        [
            ProcessorSettings::env_vars(),
            KafkaConfig::env_vars(),
            S3Config::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(variants: &str) -> ProcessorSettings {
        ProcessorSettings::from_iter([(
            "IMGPIPE_PROCESSOR_VARIANTS".to_string(),
            variants.to_string(),
        )])
        .unwrap()
    }

    #[test]
    fn parses_the_default_spec() {
        let spec = ProcessorSettings::from_iter(Vec::new())
            .unwrap()
            .spec()
            .unwrap();
        let edges: Vec<(&str, u32)> = spec
            .sizes
            .iter()
            .map(|s| (s.name.as_str(), s.max_edge))
            .collect();
        assert_eq!(edges, [("thumb", 256), ("medium", 1024), ("large", 2048)]);
        assert_eq!(spec.version, 1);
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "thumb:256,thumb:512",
            "thumb",
            "thumb:0",
            "thumb:99999",
            "a/b:10",
            ":10",
        ] {
            assert!(settings(bad).spec().is_err(), "{bad} must be rejected");
        }
    }
}
