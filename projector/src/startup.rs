use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::consume::{self, DeadLetterProducer, RetryPolicy};
use imgpipe_infra::ops::{self, Readiness};
use imgpipe_infra::registry::EventCodec;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::projection::Projection;
use crate::{db, Config, ProjectorError};

pub(crate) const GROUP: &str = "imgpipe-projector";

/// A built projector: subscribed, its ops endpoint bound, not yet consuming.
pub struct Projector {
    consumer: StreamConsumer,
    codec: EventCodec,
    dead_letters: DeadLetterProducer,
    pool: PgPool,
    ops_listener: TcpListener,
    orphan_sweep: Option<crate::orphans::PeriodicSweep>,
}

impl Projector {
    pub async fn build(config: &Config) -> Result<Self, ProjectorError> {
        let consumer: StreamConsumer = config
            .kafka
            .consumer_config("imgpipe-projector", GROUP)
            .create()
            .map_err(imgpipe_infra::InfraError::from)?;
        consumer
            .subscribe(&[&config.kafka.topics().events])
            .map_err(imgpipe_infra::InfraError::from)?;
        let dead_letters = DeadLetterProducer::new(&config.kafka, "imgpipe-projector", GROUP)?;
        Ok(Self {
            consumer,
            codec: EventCodec::reader(&config.registry),
            dead_letters,
            pool: config.database.pool()?,
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
        let readiness = Arc::new(DatabaseReadiness(self.pool.clone()));
        let ops = tokio::spawn(ops::serve(
            self.ops_listener,
            ops::router(readiness),
            shutdown.clone(),
        ));
        // The database is the projector's only output; while it is down nothing can progress,
        // so retry until it is back rather than dead-letter.
        let retry = RetryPolicy {
            max_attempts: None,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        };
        let handler = Projection {
            pool: self.pool.clone(),
        };
        let orphan_sweep = self
            .orphan_sweep
            .map(|s| tokio::spawn(s.run(shutdown.clone())));
        tracing::info!("projector consuming");
        consume::run(
            self.consumer,
            self.codec,
            handler,
            self.dead_letters,
            retry,
            shutdown,
        )
        .await;
        if let Some(Err(error)) = match orphan_sweep {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::warn!(error = %error, "orphan sweep task failed");
        }
        self.pool.close().await;
        if let Ok(Err(error)) = ops.await {
            tracing::warn!(error = %error, "ops endpoint stopped with an error");
        }
        tracing::info!("projector stopped");
        Ok(())
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
