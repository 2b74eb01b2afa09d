use std::time::Duration;

use imgpipe_infra::breaker::BreakerSettings;
use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{FromEnv, InfraError, KafkaConfig, S3Config};
use serde::Deserialize;

use crate::render::{Limits, VariantSize, VariantSpec, WebpSettings};
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
    /// Comma-separated `name:longest-edge[:quality=Q][:method=M]`: each variant's size and,
    /// optionally, its own WebP quality (0-100) and method (0-6).
    #[serde(default = "default_variants")]
    pub variants: String,
    /// Goes into every result event; bump it when `variants` or the WebP settings change.
    #[serde(default = "default_spec_version")]
    pub spec_version: i32,
    /// The WebP quality of a variant that names none.
    #[serde(default = "default_webp_quality")]
    pub webp_quality: f32,
    /// The WebP method (effort) of a variant that names none.
    #[serde(default = "default_webp_method")]
    pub webp_method: u8,
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
/// Chosen by `scripts/bench-variants` (BENCHMARKS.md, issue #19): against libvips at Q80, as
/// fast as the encoder allows while output bytes stay within 5% and SSIMULACRA2 (mean and
/// worst image) no lower. Version 2: version 1 was every size at quality 80, method 4.
fn default_variants() -> String {
    "thumb:256:quality=82,medium:1024:quality=81:method=2,large:2048:quality=81:method=2".into()
}
fn default_spec_version() -> i32 {
    2
}
fn default_webp_quality() -> f32 {
    WebpSettings::default().quality
}
fn default_webp_method() -> u8 {
    WebpSettings::default().method
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
        let defaults = WebpSettings {
            quality: check_quality(self.webp_quality, "IMGPIPE_PROCESSOR_WEBP_QUALITY")?,
            method: check_method(self.webp_method, "IMGPIPE_PROCESSOR_WEBP_METHOD")?,
        };
        let sizes = self
            .variants
            .split(',')
            .map(|entry| parse_variant(entry.trim(), defaults))
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
        Ok(VariantSpec {
            version: self.spec_version,
            sizes,
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

/// One `name:edge[:quality=Q][:method=M]` entry of `IMGPIPE_PROCESSOR_VARIANTS`.
fn parse_variant(entry: &str, defaults: WebpSettings) -> Result<VariantSize, ProcessorError> {
    let mut fields = entry.split(':');
    let name = fields.next().unwrap_or_default();
    let edge = fields
        .next()
        .ok_or_else(|| ProcessorError::Spec(format!("{entry:?} is not name:edge")))?;
    let max_edge = edge
        .parse::<u32>()
        .ok()
        .filter(|edge| *edge > 0 && *edge <= 16_383)
        .ok_or_else(|| ProcessorError::Spec(format!("{edge:?} is not 1..=16383")))?;
    let mut webp = defaults;
    for setting in fields {
        let bad = || ProcessorError::Spec(format!("{setting:?} in {entry:?}"));
        match setting.split_once('=').ok_or_else(bad)? {
            ("quality", value) => {
                webp.quality = check_quality(value.parse().map_err(|_| bad())?, entry)?;
            }
            ("method", value) => {
                webp.method = check_method(value.parse().map_err(|_| bad())?, entry)?;
            }
            _ => {
                return Err(ProcessorError::Spec(format!(
                    "{setting:?} in {entry:?}: only quality=Q and method=M may follow name:edge"
                )))
            }
        }
    }
    Ok(VariantSize {
        name: name.to_string(),
        max_edge,
        webp,
    })
}

fn check_quality(quality: f32, what: &str) -> Result<f32, ProcessorError> {
    if (0.0..=100.0).contains(&quality) {
        Ok(quality)
    } else {
        Err(ProcessorError::Spec(format!(
            "{what}: WebP quality {quality} is not 0..=100"
        )))
    }
}

fn check_method(method: u8, what: &str) -> Result<u8, ProcessorError> {
    if method <= 6 {
        Ok(method)
    } else {
        Err(ProcessorError::Spec(format!(
            "{what}: WebP method {method} is not 0..=6"
        )))
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
        let webp: Vec<(f32, u8)> = spec
            .sizes
            .iter()
            .map(|s| (s.webp.quality, s.webp.method))
            .collect();
        assert_eq!(webp, [(82.0, 4), (81.0, 2), (81.0, 2)]);
        assert_eq!(spec.version, 2);
    }

    #[test]
    fn each_variant_may_name_its_own_webp_settings() {
        let spec = ProcessorSettings::from_iter([
            (
                "IMGPIPE_PROCESSOR_VARIANTS".to_string(),
                "thumb:256:quality=85,medium:1024:method=2,large:2048:quality=78:method=1"
                    .to_string(),
            ),
            (
                "IMGPIPE_PROCESSOR_WEBP_QUALITY".to_string(),
                "70".to_string(),
            ),
            ("IMGPIPE_PROCESSOR_WEBP_METHOD".to_string(), "5".to_string()),
        ])
        .unwrap()
        .spec()
        .unwrap();
        let settings: Vec<(f32, u8)> = spec
            .sizes
            .iter()
            .map(|s| (s.webp.quality, s.webp.method))
            .collect();
        assert_eq!(settings, [(85.0, 5), (70.0, 2), (78.0, 1)]);
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
            "thumb:256:quality=101",
            "thumb:256:method=7",
            "thumb:256:quality=high",
            "thumb:256:speed=2",
            "thumb:256:method",
        ] {
            assert!(settings(bad).spec().is_err(), "{bad} must be rejected");
        }
    }
}
