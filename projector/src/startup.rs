use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::consume::DeadLetterProducer;
use imgpipe_infra::ops::{self, Readiness};
use imgpipe_infra::registry::EventCodec;
use rdkafka::consumer::Consumer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batch::{Applier, Rejects};
use crate::live::{self, BatchSettings, LiveConsumer, PositionsContext};
use crate::metrics::{self, ProjectorMetrics};
use crate::positions::{self, SharedPositions};
use crate::{db, Config, ProjectorError};

pub(crate) const GROUP: &str = "imgpipe-projector";
/// How often the consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A built projector: its ops endpoint bound, not yet consuming.
pub struct Projector {
    consumer: Arc<LiveConsumer>,
    positions: SharedPositions,
    applier: Applier,
    batch: BatchSettings,
    metrics: ProjectorMetrics,
    ops_listener: TcpListener,
    orphan_sweep: Option<crate::orphans::PeriodicSweep>,
}

impl Projector {
    pub async fn build(config: &Config) -> Result<Self, ProjectorError> {
        let positions = SharedPositions::default();
        let consumer: LiveConsumer = config
            .kafka
            .consumer_config("imgpipe-projector", GROUP)
            // Eager rebalancing: the callback assigns the whole assignment at stored positions.
            .set("partition.assignment.strategy", "range,roundrobin")
            .create_with_context(PositionsContext {
                positions: positions.clone(),
            })
            .map_err(imgpipe_infra::InfraError::from)?;
        let dead_letters = DeadLetterProducer::new(&config.kafka, "imgpipe-projector", GROUP)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            positions,
            applier: Applier {
                pool: config.database.pool()?,
                codec: EventCodec::reader(&config.registry),
                rejects: Rejects::DeadLetter(dead_letters),
                topic: config.kafka.topics().events,
            },
            batch: BatchSettings {
                max: config.projector.batch_max.max(1),
                linger: config.projector.batch_linger(),
            },
            metrics: ProjectorMetrics::new(),
            ops_listener: TcpListener::bind(&config.projector.ops_addr).await?,
            orphan_sweep: crate::orphans::PeriodicSweep::from_config(config).await?,
        })
    }

    pub fn ops_port(&self) -> u16 {
        self.ops_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Consumes until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let pool = self.applier.pool.clone();
        let readiness = Arc::new(DatabaseReadiness(pool.clone()));
        let metrics_handle = self.metrics.handle();
        let ops = tokio::spawn(ops::serve(
            self.ops_listener,
            ops::router(readiness).merge(metrics::router(metrics_handle.clone())),
            shutdown.clone(),
        ));
        let upkeep = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = tick.tick() => metrics_handle.run_upkeep(),
                    }
                }
            }
        });

        let orphan_sweep = self
            .orphan_sweep
            .map(|s| tokio::spawn(s.run(shutdown.clone())));

        // The positions must be known before the first assignment, which seeks to them.
        if load_positions(&self.applier, &self.positions, &shutdown).await {
            self.consumer
                .subscribe(&[&self.applier.topic])
                .map_err(imgpipe_infra::InfraError::from)?;
            let stop_lag = shutdown.child_token();
            let lag = tokio::spawn(report_lag(
                Arc::clone(&self.consumer),
                pool.clone(),
                self.applier.topic.clone(),
                self.metrics.clone(),
                stop_lag.clone(),
            ));
            tracing::info!(positions = ?self.positions.snapshot(), "projector consuming");
            live::run(
                &self.consumer,
                self.applier,
                self.positions,
                self.batch,
                self.metrics,
                shutdown.clone(),
            )
            .await;
            stop_lag.cancel();
            let _ = lag.await;
        }
        live::close(self.consumer).await;
        if let Some(Err(error)) = match orphan_sweep {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::warn!(error = %error, "orphan sweep task failed");
        }
        pool.close().await;
        let _ = upkeep.await;
        if let Ok(Err(error)) = ops.await {
            tracing::warn!(error = %error, "ops endpoint stopped with an error");
        }
        tracing::info!("projector stopped");
        Ok(())
    }
}

/// Reads the stored positions, retrying while the database is down; false if `shutdown` came
/// first.
async fn load_positions(
    applier: &Applier,
    positions: &SharedPositions,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = live::Backoff::default();
    loop {
        match positions::load(&applier.pool, &applier.topic).await {
            Ok(stored) => {
                positions.replace(stored);
                return true;
            }
            Err(error) => {
                let delay = backoff.next();
                tracing::warn!(
                    error = %error, retry_in_ms = delay.as_millis() as u64,
                    "cannot read the stored positions, retrying"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Every [`LAG_INTERVAL`], sets each partition's lag: its high watermark minus the position
/// stored in Postgres (the same for every instance: what the projection has not applied).
async fn report_lag(
    consumer: Arc<LiveConsumer>,
    pool: PgPool,
    topic: String,
    metrics: ProjectorMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stored = match positions::load(&pool, &topic).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::debug!(error = %error, "could not read positions for the lag");
                continue;
            }
        };
        let watermarks = tokio::task::spawn_blocking({
            let consumer = Arc::clone(&consumer);
            let topic = topic.clone();
            move || crate::watermarks(consumer.client(), &topic)
        })
        .await;
        match watermarks {
            Ok(Ok(watermarks)) => {
                for (partition, (low, high)) in watermarks {
                    let position = stored.get(&partition).copied().unwrap_or(0).max(low);
                    metrics.lag(partition, (high - position).max(0));
                }
            }
            Ok(Err(error)) => tracing::debug!(error = %error, "could not measure consumer lag"),
            Err(error) => tracing::warn!(error = %error, "consumer lag task failed"),
        }
    }
}

struct DatabaseReadiness(PgPool);

impl Readiness for DatabaseReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            db::ping(&self.0)
                .await
                .map_err(|e| format!("database: {e}"))
        })
    }
}
