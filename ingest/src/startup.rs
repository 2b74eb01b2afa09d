use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::InfraError;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::{Config, ConfigError};
use crate::rate_limit::RateLimits;
use crate::routes;
use crate::state::{AppState, OperatorSetup, WebhookSetup};

/// How long in-flight requests may run on after shutdown begins: longer than a healthy upload
/// takes, shorter than the 60 s body timeout a stalled client could otherwise hold out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long the producer may then take to deliver the events still queued. A pod's termination
/// grace must exceed the two together (`deploy/base/ingest.yaml`).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// A built ingest service: its listener bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz` apart from the public listener, when configured.
    ops_listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, BuildError> {
        let api_keys = ApiKeys::parse(&config.ingest.api_keys).map_err(BuildError::ApiKeys)?;
        if api_keys.is_empty() {
            tracing::warn!("IMGPIPE_INGEST_API_KEYS is empty: every upload will be refused");
        }
        let webhooks = WebhookSetup {
            sealer: config.webhooks.sealer().map_err(BuildError::Webhooks)?,
            policy: config.webhooks.policy().map_err(BuildError::Webhooks)?,
        };
        if webhooks.sealer.is_none() {
            tracing::info!(
                "IMGPIPE_WEBHOOKS_SEALING_KEY is empty: the webhook routes answer 503 webhooks-disabled"
            );
        }
        let codec = EventCodec::connect(&config.registry, &config.kafka.topics().events).await?;
        let operator = OperatorSetup {
            kafka: Arc::new(config.kafka.clone()),
            codec: codec.clone(),
            log_queries: Arc::new(Semaphore::new(1)),
        };
        let state = AppState {
            store: ObjectStore::connect(&config.s3).await,
            events: EventProducer::new(&config.kafka, "imgpipe-ingest", codec)?,
            pool: config.database.pool()?,
            api_keys: Arc::new(api_keys),
            settings: Arc::new(config.ingest.clone()),
            rate_limits: Arc::new(RateLimits::new(&config.ingest).map_err(BuildError::RateLimits)?),
            webhooks,
            operator,
            stopping: CancellationToken::new(),
        };
        crate::metrics::handle();
        let listener = TcpListener::bind(&config.ingest.listen_addr).await?;
        let ops_listener = match &config.ingest.ops_addr {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        Ok(Self {
            listener,
            ops_listener,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port of the separate ops address, when one is configured.
    pub fn ops_port(&self) -> Option<u16> {
        let listener = self.ops_listener.as_ref()?;
        listener.local_addr().ok().map(|a| a.port())
    }

    /// Serves until `shutdown` is cancelled: stops accepting, lets in-flight requests finish
    /// for up to [`SHUTDOWN_GRACE`] (an upload that outlasts it gets no 202 and its client
    /// retries), then flushes the producer.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let events = self.state.events.clone();
        let pool = self.state.pool.clone();
        let address = self.listener.local_addr()?;
        tracing::info!(%address, "ingest listening");
        let header_read_timeout = Duration::from_secs(self.state.settings.header_read_timeout_secs);
        let stopping = self.state.stopping.clone();
        let shutdown_begins = shutdown.clone();
        tokio::spawn(async move {
            shutdown_begins.cancelled().await;
            stopping.cancel();
        });
        let forgetting = tokio::spawn(forget_idle_addresses(
            Arc::clone(&self.state.rate_limits),
            shutdown.clone(),
        ));
        let pruning = tokio::spawn(prune_idempotency_keys(
            pool.clone(),
            self.state.settings.idempotency_ttl(),
            shutdown.clone(),
        ));
        let ops = self.ops_listener.map(|listener| {
            tokio::spawn(imgpipe_infra::ops::serve(
                listener,
                routes::ops_router(&self.state),
                shutdown.clone(),
            ))
        });
        let api = crate::openapi::with_document(routes::v1());
        let serving = crate::server::serve(
            self.listener,
            routes::router(api, self.state),
            header_read_timeout,
            shutdown.clone(),
        );
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            served = serving => served?,
            () = grace_over => {
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "in-flight requests outlasted the shutdown grace; closing them"
                );
            }
        }
        forgetting.abort();
        pruning.abort();
        if let Some(ops) = ops {
            ops.abort();
        }
        events.flush(SHUTDOWN_FLUSH).await;
        pool.close().await;
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// Every minute, drops the per-IP limiter's addresses whose budget is full again, so a flood
/// from many addresses does not grow it for good.
async fn forget_idle_addresses(rate_limits: Arc<RateLimits>, shutdown: CancellationToken) {
    let mut every_minute = tokio::time::interval(Duration::from_secs(60));
    while shutdown
        .run_until_cancelled(every_minute.tick())
        .await
        .is_some()
    {
        rate_limits.forget_idle();
    }
}

/// Every few minutes, forgets Idempotency-Keys older than their time to live, a batch at a
/// time (several ingest instances doing it at once only share the work).
async fn prune_idempotency_keys(pool: sqlx::PgPool, ttl: Duration, shutdown: CancellationToken) {
    const BATCH: i64 = 1000;
    let mut every_few_minutes = tokio::time::interval(Duration::from_secs(300));
    while shutdown
        .run_until_cancelled(every_few_minutes.tick())
        .await
        .is_some()
    {
        loop {
            match crate::db::prune_idempotency_keys(&pool, ttl, BATCH).await {
                Ok(forgotten) if forgotten == BATCH as u64 => continue,
                Ok(forgotten) => {
                    if forgotten > 0 {
                        tracing::info!(forgotten, "expired idempotency keys pruned");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "could not prune idempotency keys");
                    break;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("IMGPIPE_INGEST_API_KEYS")]
    ApiKeys(#[source] ConfigError),
    #[error("rate limits")]
    RateLimits(#[source] ConfigError),
    #[error("IMGPIPE_WEBHOOKS_ settings")]
    Webhooks(#[source] imgpipe_webhooks::WebhookError),
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error("binding the listener: {0}")]
    Bind(#[from] std::io::Error),
}
