//! The optional sweep inside the projector service: the same sweep as `imgpipe orphans`, every
//! `IMGPIPE_PROJECTOR_ORPHAN_SWEEP_SECS`.

use std::time::Duration;

use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::FromEnv;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{sweep, Finding, StoreBackend, SweepOptions};
use crate::{Config, ProjectorError};

#[derive(Debug, Clone, Deserialize)]
pub struct OrphanSweepSettings {
    /// Seconds between sweeps; 0 = no periodic sweep.
    #[serde(default)]
    pub sweep_secs: u64,
    /// Only objects written longer ago than this can be orphans.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// Remove the orphans found (with an `OrphanRemoved` event each); otherwise only report.
    #[serde(default)]
    pub sweep_delete: bool,
}

impl FromEnv for OrphanSweepSettings {
    const PREFIX: &'static str = "IMGPIPE_PROJECTOR_ORPHAN_";
}

impl Default for OrphanSweepSettings {
    fn default() -> Self {
        Self {
            sweep_secs: 0,
            grace_secs: default_grace_secs(),
            sweep_delete: false,
        }
    }
}

fn default_grace_secs() -> u64 {
    3600
}

/// A sweep every interval until shutdown, each logged with its counts.
pub struct PeriodicSweep {
    backend: StoreBackend,
    options: SweepOptions,
    every: Duration,
}

impl PeriodicSweep {
    /// `None` when the configuration turns the sweep off.
    pub async fn from_config(config: &Config) -> Result<Option<Self>, ProjectorError> {
        let settings = &config.orphans;
        if settings.sweep_secs == 0 {
            return Ok(None);
        }
        // A pool of its own, so a long sweep never holds the connections projection needs.
        let mut database = config.database.clone();
        database.max_connections = 2;
        let codec = EventCodec::connect(&config.registry, &config.kafka.topics().events).await?;
        let backend = StoreBackend::new(
            database.pool()?,
            ObjectStore::connect(&config.s3).await,
            &config.kafka,
            codec,
            "imgpipe-projector-orphans",
        )?;
        Ok(Some(Self::new(
            backend,
            SweepOptions::new(
                Duration::from_secs(settings.grace_secs),
                settings.sweep_delete,
                "imgpipe-projector",
            ),
            Duration::from_secs(settings.sweep_secs),
        )))
    }

    pub fn new(backend: StoreBackend, options: SweepOptions, every: Duration) -> Self {
        Self {
            backend,
            options,
            every,
        }
    }

    /// Sweeps every interval (the first one interval after start) until `shutdown`. A failed
    /// sweep is logged and tried again at the next interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let mut log_finding = |finding: &Finding| match finding {
                Finding::Orphan(orphan) => tracing::info!(
                    key = %orphan.key, kind = orphan.kind.as_str(), reason = orphan.reason.as_str(),
                    bytes = orphan.bytes, outcome = orphan.outcome.as_str(),
                    detail = orphan.outcome.detail().unwrap_or_default(),
                    "orphaned object"
                ),
                Finding::Missing(missing) => tracing::warn!(
                    key = %missing.key, kind = missing.kind.as_str(), image_id = %missing.image_id,
                    image_status = %missing.image_status, "object missing from storage"
                ),
            };
            let swept = tokio::select! {
                () = shutdown.cancelled() => break,
                swept = sweep(&self.backend, &self.options, &mut log_finding) => swept,
            };
            match swept {
                Ok(summary) => tracing::info!(
                    objects = summary.objects_scanned,
                    references = summary.references_scanned,
                    orphans = summary.orphans(),
                    orphans_no_event = summary.orphans_no_event,
                    orphans_unreferenced = summary.orphans_unreferenced,
                    orphan_bytes = summary.orphan_bytes,
                    removed = summary.removed,
                    delete_failed = summary.delete_failed,
                    missing = summary.missing(),
                    recent_unreferenced = summary.recent_unreferenced,
                    read_model_lag = summary.read_model_lag,
                    "orphan sweep done"
                ),
                Err(error) => {
                    tracing::warn!(error = %error, "orphan sweep failed; trying again at the next interval")
                }
            }
        }
    }
}
