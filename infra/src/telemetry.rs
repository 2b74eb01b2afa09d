//! Logging: JSON lines in services (one object per event, structured fields), or a readable
//! format for a terminal. The filter comes from `RUST_LOG` (default `info`).

use serde::Deserialize;
use tracing_subscriber::{fmt, EnvFilter};

use crate::FromEnv;

#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// `json` (default) or `pretty`.
    #[serde(default = "default_format")]
    pub format: String,
}

impl FromEnv for LogConfig {
    const PREFIX: &'static str = "IMGPIPE_LOG_";
}

fn default_format() -> String {
    "json".into()
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (e.g. two services in one test process) keeps the first subscriber.
    let _ = if config.format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
