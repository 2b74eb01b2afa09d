//! The delivering service: a member of its own consumer group on the events topic (the
//! schedule side, `handler.rs`) and the delivery loop (`deliver.rs`), with `/healthz`,
//! `/readyz` and `/metrics` on its ops address.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgpipe_infra::consume::lag::CommittedOffsets;
use imgpipe_infra::consume::{self, ConsumerHealth, Consumption, DeadLetterProducer, RetryPolicy};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::ops::{Dependency, DependencyDown, Readiness};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::worker::Sidecars;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deliver::Deliverer;
use crate::handler::ScheduleHandler;
use crate::metrics::WebhookMetrics;
use crate::target::http_client;
use crate::{WebhookError, GROUP};

/// How long the producer may take on shutdown to deliver the events still queued.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// A built service: subscribed, its ops endpoint bound, not yet consuming or delivering.
pub struct Webhooks {
    consumer: StreamConsumer,
    codec: EventCodec,
    dead_letters: DeadLetterProducer,
    handler: ScheduleHandler,
    deliverer: Arc<Deliverer>,
    ops_listener: TcpListener,
    lag_reader: LogReader,
    kafka: imgpipe_infra::KafkaConfig,
    health: ConsumerHealth,
    metrics: WebhookMetrics,
}

fn connect(
    kafka: &imgpipe_infra::KafkaConfig,
) -> Result<StreamConsumer, imgpipe_infra::InfraError> {
    let consumer: StreamConsumer = kafka.member_config("imgpipe-webhooks", GROUP).create()?;
    consumer.subscribe(&[&kafka.topics().events])?;
    Ok(consumer)
}

impl Webhooks {
    pub async fn build(config: &Config) -> Result<Self, WebhookError> {
        let settings = &config.delivery;
        let sealer = config.security.sealer()?.ok_or_else(|| {
            WebhookError::Config(
                "IMGPIPE_WEBHOOKS_SEALING_KEY is empty: set it (the same as ingest's) to deliver webhooks"
                    .into(),
            )
        })?;
        let policy = config.security.policy()?;
        let schedule = settings.schedule()?;
        let timeout = Duration::from_secs(settings.timeout_secs.max(1));
        let consumer = connect(&config.kafka)?;
        let codec = EventCodec::connect(&config.registry, &config.kafka.topics().events).await?;
        let pool = config.database.pool()?;
        let metrics = WebhookMetrics::new();
        let dead_letters = DeadLetterProducer::new(&config.kafka, "imgpipe-webhooks", GROUP)?
            .on_sent({
                let metrics = metrics.clone();
                Arc::new(move |class| metrics.dead_lettered(class))
            });
        let deliverer = Arc::new(Deliverer {
            pool: pool.clone(),
            store: ObjectStore::connect(&config.s3).await,
            events: EventProducer::new(&config.kafka, "imgpipe-webhooks", codec.clone())?,
            client: http_client(policy.clone(), timeout)?,
            policy,
            sealer,
            metrics: metrics.clone(),
            schedule,
            timeout,
            disable_after: Duration::from_secs(settings.disable_after_secs),
            url_ttl: Duration::from_secs(settings.url_ttl_secs.clamp(60, 7 * 24 * 3600)),
            poll: Duration::from_millis(settings.poll_ms.max(10)),
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            per_endpoint: settings.per_endpoint.max(1),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            log_down_until: Mutex::new(None),
            disabling: Mutex::new(Default::default()),
        });
        Ok(Self {
            consumer,
            codec,
            dead_letters,
            handler: ScheduleHandler { pool },
            deliverer,
            ops_listener: TcpListener::bind(&settings.ops_addr).await?,
            lag_reader: LogReader::new(
                &config.kafka,
                "imgpipe-webhooks-lag",
                GROUP,
                &config.kafka.topics().events,
            )?,
            kafka: config.kafka.clone(),
            health: ConsumerHealth::new(config.kafka.stall_after()),
            metrics,
        })
    }

    pub fn ops_port(&self) -> u16 {
        self.ops_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Schedules and delivers until `shutdown` is cancelled; attempts in flight finish and are
    /// recorded first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebhookError> {
        let readiness = Arc::new(Dependencies {
            pool: self.handler.pool.clone(),
            events: self.deliverer.events.clone(),
        });
        let sidecars = Sidecars {
            ops_listener: self.ops_listener,
            readiness,
            health: self.health.clone(),
            metrics: self.metrics.handle(),
            lag_reader: self.lag_reader.clone(),
            positions: CommittedOffsets(self.lag_reader),
        };
        let metrics = self.metrics.clone();
        let sidecars = sidecars.start(move |health| metrics.consumer_health(health), &shutdown);
        let events = self.deliverer.events.clone();
        let delivering = tokio::spawn(Arc::clone(&self.deliverer).run(shutdown.clone()));
        tracing::info!("webhooks consuming and delivering");
        let kafka = self.kafka;
        consume::run(
            Consumption {
                consumer: self.consumer,
                reconnect: move || connect(&kafka),
                codec: self.codec,
                handler: self.handler,
                dead_letters: self.dead_letters,
                retry: RetryPolicy {
                    // A database outage is waited out (`Unavailable`: no attempt counted); an
                    // image whose owner is nowhere (the read models were dropped and not rebuilt
                    // yet) is dead-lettered after a few minutes, for a redrive once they are
                    // back.
                    max_attempts: Some(30),
                    min_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(10),
                },
                health: self.health,
            },
            shutdown,
        )
        .await;
        if let Err(error) = delivering.await {
            tracing::warn!(error = %error, "the delivery loop ended abnormally");
        }
        events.flush(SHUTDOWN_FLUSH).await;
        sidecars.finish().await;
        tracing::info!("webhooks stopped");
        Ok(())
    }
}

struct Dependencies {
    pool: PgPool,
    events: EventProducer,
}

impl Readiness for Dependencies {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), DependencyDown>> + Send + '_>> {
        Box::pin(async move {
            imgpipe_projector::db::ping(&self.pool)
                .await
                .map_err(|e| DependencyDown::new(Dependency::Database, e))?;
            self.events
                .ping()
                .await
                .map_err(|e| DependencyDown::new(Dependency::Broker, e))
        })
    }
}
