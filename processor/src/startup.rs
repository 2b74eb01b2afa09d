use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::breaker::CircuitBreaker;
use imgpipe_infra::consume::lag::CommittedOffsets;
use imgpipe_infra::consume::{self, ConsumerHealth, Consumption, DeadLetterProducer, RetryPolicy};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::ops::{Dependency, DependencyDown, Readiness};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::worker::Sidecars;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::handler::VariantHandler;
use crate::memory::MemoryBudget;
use crate::metrics::ProcessorMetrics;
use crate::{Config, ProcessorError, GROUP};

/// How long the producer may take on shutdown to deliver the events still queued, after the
/// consume loop stopped (its record in hand had up to `consume::FINISH_GRACE`). A pod's
/// termination grace must exceed the two together (`deploy/base/processor.yaml`).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// A built processor: subscribed, its ops endpoint bound, not yet consuming.
pub struct Processor {
    consumer: StreamConsumer,
    codec: EventCodec,
    dead_letters: DeadLetterProducer,
    handler: VariantHandler,
    retry: RetryPolicy,
    ops_listener: TcpListener,
    /// Reads the group's committed offsets and the log's ends for the lag. A client of its own
    /// that never subscribes, so it never joins the group and cannot disturb the consuming one.
    lag_reader: LogReader,
    kafka: imgpipe_infra::KafkaConfig,
    health: ConsumerHealth,
}

/// A consumer in the processor group, subscribed to the events topic.
fn connect(
    kafka: &imgpipe_infra::KafkaConfig,
) -> Result<StreamConsumer, imgpipe_infra::InfraError> {
    let consumer: StreamConsumer = kafka
        .member_config("imgpipe-processor", GROUP)
        // An image can take seconds; give slow ones room before the group evicts us.
        .set("max.poll.interval.ms", "600000")
        .create()?;
    consumer.subscribe(&[&kafka.topics().events])?;
    Ok(consumer)
}

impl Processor {
    pub async fn build(config: &Config) -> Result<Self, ProcessorError> {
        let settings = &config.processor;
        let spec = settings.spec()?;
        let consumer = connect(&config.kafka)?;
        let codec = EventCodec::connect(&config.registry, &config.kafka.topics().events).await?;
        let cpu_jobs = match settings.cpu_jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let metrics = ProcessorMetrics::new();
        let store_breaker = CircuitBreaker::new("object-store", settings.breaker(), {
            let metrics = metrics.clone();
            Arc::new(move |to| metrics.breaker_transition(to))
        });
        let dead_letters = DeadLetterProducer::new(&config.kafka, "imgpipe-processor", GROUP)?
            .on_sent({
                let metrics = metrics.clone();
                Arc::new(move |class| metrics.dead_lettered(class))
            });
        let handler = VariantHandler {
            store: ObjectStore::connect(&config.s3).await,
            store_breaker,
            metrics,
            events: EventProducer::new(&config.kafka, "imgpipe-processor", codec.clone())?,
            spec: Arc::new(spec),
            limits: settings.limits(),
            cpu: Arc::new(Semaphore::new(cpu_jobs)),
            memory: MemoryBudget::new(settings.memory_budget_bytes),
        };
        Ok(Self {
            consumer,
            codec,
            dead_letters,
            handler,
            retry: RetryPolicy {
                max_attempts: (settings.max_attempts > 0).then_some(settings.max_attempts),
                min_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(10),
            },
            ops_listener: TcpListener::bind(&settings.ops_addr).await?,
            lag_reader: LogReader::new(
                &config.kafka,
                "imgpipe-processor-lag",
                GROUP,
                &config.kafka.topics().events,
            )?,
            kafka: config.kafka.clone(),
            health: ConsumerHealth::new(config.kafka.stall_after()),
        })
    }

    pub fn ops_port(&self) -> u16 {
        self.ops_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Consumes until `shutdown` is cancelled; the image in flight is finished or left for a
    /// redelivery, never half-announced.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let readiness = Arc::new(Dependencies {
            store: self.handler.store.clone(),
            events: self.handler.events.clone(),
        });
        let sidecars = Sidecars {
            ops_listener: self.ops_listener,
            readiness,
            health: self.health.clone(),
            metrics: self.handler.metrics.handle(),
            lag_reader: self.lag_reader.clone(),
            positions: CommittedOffsets(self.lag_reader),
        };
        let metrics = self.handler.metrics.clone();
        let sidecars = sidecars.start(move |health| metrics.consumer_health(health), &shutdown);
        let events = self.handler.events.clone();
        tracing::info!(
            spec_version = self.handler.spec.version,
            "processor consuming"
        );
        let kafka = self.kafka;
        consume::run(
            Consumption {
                consumer: self.consumer,
                reconnect: move || connect(&kafka),
                codec: self.codec,
                handler: self.handler,
                dead_letters: self.dead_letters,
                retry: self.retry,
                health: self.health,
            },
            shutdown,
        )
        .await;
        events.flush(SHUTDOWN_FLUSH).await;
        sidecars.finish().await;
        tracing::info!("processor stopped");
        Ok(())
    }
}

struct Dependencies {
    store: ObjectStore,
    events: EventProducer,
}

impl Readiness for Dependencies {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), DependencyDown>> + Send + '_>> {
        Box::pin(async move {
            self.store
                .ping()
                .await
                .map_err(|e| DependencyDown::new(Dependency::Storage, e))?;
            self.events
                .ping()
                .await
                .map_err(|e| DependencyDown::new(Dependency::Broker, e))
        })
    }
}
