use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::consume::{ConsumerHealth, DeadLetterProducer};
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::ops::{self, Readiness};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::worker::Sidecars;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batch::{Applier, ApplyMode, Rejects};
use crate::live::{self, BatchSettings, Live, LiveConsumer, LiveEnd, PositionsContext};
use crate::metrics::ProjectorMetrics;
use crate::positions::{self, SharedPositions, StoredPositions};
use crate::{db, Config, ProjectorError, GROUP};

/// A built projector: its ops endpoint bound, not yet consuming.
pub struct Projector {
    consumer: Arc<LiveConsumer>,
    /// The live consumer's settings, to join again with a new client after a stall.
    consumer_config: ClientConfig,
    /// Reads the log's ends for the lag; a client of its own that never joins the group.
    lag_reader: LogReader,
    health: ConsumerHealth,
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
        let mut consumer_config = config.kafka.member_config("imgpipe-projector", GROUP);
        // Eager rebalancing: the callback assigns the whole assignment at stored positions.
        consumer_config.set("partition.assignment.strategy", "range,roundrobin");
        let consumer = create_consumer(&consumer_config, &positions)?;
        let lag_reader = LogReader::new(
            &config.kafka,
            "imgpipe-projector-lag",
            GROUP,
            &config.kafka.topics().events,
        )?;
        let dead_letters = DeadLetterProducer::new(&config.kafka, "imgpipe-projector", GROUP)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            consumer_config,
            lag_reader,
            health: ConsumerHealth::new(config.kafka.stall_after()),
            positions,
            applier: Applier {
                pool: config.database.pool()?,
                codec: EventCodec::reader(&config.registry),
                rejects: Rejects::DeadLetter(dead_letters),
                topic: config.kafka.topics().events,
                // One event at a time: the upload-to-ready histogram needs each first `ready`.
                mode: ApplyMode::PerEvent,
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
        let sidecars = Sidecars {
            ops_listener: self.ops_listener,
            readiness: Arc::new(DatabaseReadiness(pool.clone())),
            health: self.health.clone(),
            metrics: self.metrics.handle(),
            lag_reader: self.lag_reader,
            positions: StoredPositions {
                pool: pool.clone(),
                topic: self.applier.topic.clone(),
            },
        };
        let metrics = self.metrics.clone();
        let mut sidecars = sidecars.start(move |health| metrics.consumer_health(health), &shutdown);
        let orphan_sweep = self
            .orphan_sweep
            .map(|s| tokio::spawn(s.run(shutdown.clone())));
        let mut next = Some(self.consumer);
        while let Some(consumer) = next.take() {
            // The positions must be known before the first assignment, which seeks to them;
            // read again before each rejoin, since another instance may have moved them.
            if !load_positions(&self.applier, &self.positions, &shutdown).await {
                live::close(consumer).await;
                break;
            }
            if let Err(error) = consumer.subscribe(&[&self.applier.topic]) {
                live::close(consumer).await;
                return Err(imgpipe_infra::InfraError::from(error).into());
            }
            tracing::info!(positions = ?self.positions.snapshot(), "projector consuming");
            let live = Live {
                consumer: &consumer,
                applier: &self.applier,
                positions: &self.positions,
                batch: &self.batch,
                metrics: &self.metrics,
                health: &self.health,
            };
            let end = live::run(live, &shutdown).await;
            live::close(consumer).await;
            if end == LiveEnd::Rejoin {
                next = reconnect(&self.consumer_config, &self.positions, &shutdown).await;
            }
        }
        // The lag reporter and the sweep read the pool: they stop before it closes.
        sidecars.stop_lag().await;
        if let Some(Err(error)) = match orphan_sweep {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::warn!(error = %error, "orphan sweep task failed");
        }
        pool.close().await;
        sidecars.finish().await;
        tracing::info!("projector stopped");
        Ok(())
    }
}

/// A live consumer with the rebalance callback that assigns at `positions`; not subscribed.
fn create_consumer(
    config: &ClientConfig,
    positions: &SharedPositions,
) -> Result<LiveConsumer, imgpipe_infra::InfraError> {
    Ok(config.create_with_context(PositionsContext {
        positions: positions.clone(),
    })?)
}

/// A new consumer to rejoin the group with, retrying while it cannot be created; `None` if
/// `shutdown` came first.
async fn reconnect(
    config: &ClientConfig,
    positions: &SharedPositions,
    shutdown: &CancellationToken,
) -> Option<Arc<LiveConsumer>> {
    loop {
        match create_consumer(config, positions) {
            Ok(consumer) => return Some(Arc::new(consumer)),
            Err(error) => {
                tracing::error!(error = %error, "cannot create a consumer to rejoin, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
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

struct DatabaseReadiness(PgPool);

impl Readiness for DatabaseReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), ops::DependencyDown>> + Send + '_>> {
        Box::pin(async move {
            db::ping(&self.0)
                .await
                .map_err(|e| ops::DependencyDown::new(ops::Dependency::Database, e))
        })
    }
}
