use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::breaker::CircuitBreaker;
use imgpipe_infra::consume::{self, DeadLetterProducer, RetryPolicy};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::ops::{self, Readiness};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::handler::VariantHandler;
use crate::metrics::{self, ProcessorMetrics};
use crate::{Config, ProcessorError};

const GROUP: &str = "imgpipe-processor";

/// A built processor: subscribed, its ops endpoint bound, not yet consuming.
pub struct Processor {
    consumer: StreamConsumer,
    codec: EventCodec,
    dead_letters: DeadLetterProducer,
    handler: VariantHandler,
    retry: RetryPolicy,
    ops_listener: TcpListener,
}

impl Processor {
    pub async fn build(config: &Config) -> Result<Self, ProcessorError> {
        let settings = &config.processor;
        let spec = settings.spec()?;
        let consumer: StreamConsumer = config
            .kafka
            .consumer_config("imgpipe-processor", GROUP)
            // An image can take seconds; give slow ones room before the group evicts us.
            .set("max.poll.interval.ms", "600000")
            .create()
            .map_err(imgpipe_infra::InfraError::from)?;
        consumer
            .subscribe(&[&config.kafka.topics().events])
            .map_err(imgpipe_infra::InfraError::from)?;
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
        let handler = VariantHandler {
            store: ObjectStore::connect(&config.s3).await,
            store_breaker,
            metrics,
            events: EventProducer::new(&config.kafka, "imgpipe-processor", codec.clone())?,
            spec: Arc::new(spec),
            limits: settings.limits(),
            cpu: Arc::new(Semaphore::new(cpu_jobs)),
        };
        Ok(Self {
            consumer,
            codec,
            dead_letters: DeadLetterProducer::new(&config.kafka, "imgpipe-processor", GROUP)?,
            handler,
            retry: RetryPolicy {
                max_attempts: (settings.max_attempts > 0).then_some(settings.max_attempts),
                min_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(10),
            },
            ops_listener: TcpListener::bind(&settings.ops_addr).await?,
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
        let metrics_handle = self.handler.metrics.handle();
        let ops = tokio::spawn(ops::serve(
            self.ops_listener,
            ops::router(readiness).merge(metrics::router(metrics_handle.clone())),
            shutdown.clone(),
        ));
        // Histograms buffer samples until drained; without scrapes that would grow unbounded.
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut upkeep = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = upkeep.tick() => metrics_handle.run_upkeep(),
                    }
                }
            }
        });
        let events = self.handler.events.clone();
        tracing::info!(
            spec_version = self.handler.spec.version,
            "processor consuming"
        );
        consume::run(
            self.consumer,
            self.codec,
            self.handler,
            self.dead_letters,
            self.retry,
            shutdown,
        )
        .await;
        events.flush(Duration::from_secs(10)).await;
        if let Ok(Err(error)) = ops.await {
            tracing::warn!(error = %error, "ops endpoint stopped with an error");
        }
        tracing::info!("processor stopped");
        Ok(())
    }
}

struct Dependencies {
    store: ObjectStore,
    events: EventProducer,
}

impl Readiness for Dependencies {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.store.ping().await.map_err(|e| e.to_string())?;
            self.events.ping().await.map_err(|e| e.to_string())
        })
    }
}
