//! The application state, and the parts of it an extractor takes through `FromRef` without
//! naming the whole.

use std::sync::Arc;

use axum::extract::FromRef;
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::KafkaConfig;
use imgpipe_webhooks::secret::SecretSealer;
use imgpipe_webhooks::target::AddressPolicy;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::IngestSettings;
use crate::rate_limit::RateLimits;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: ObjectStore,
    pub events: EventProducer,
    pub pool: PgPool,
    pub api_keys: Arc<ApiKeys>,
    pub settings: Arc<IngestSettings>,
    pub rate_limits: Arc<RateLimits>,
    pub webhooks: WebhookSetup,
    pub operator: OperatorSetup,
    /// Cancelled when ingest begins to shut down, so long requests (status streams) end then
    /// instead of holding the shutdown for its whole grace.
    pub stopping: CancellationToken,
}

/// What the webhook routes need from the deployment's `IMGPIPE_WEBHOOKS_*` settings.
#[derive(Clone)]
pub struct WebhookSetup {
    /// Seals each endpoint's signing secret before it is appended; `None` when no sealing key
    /// is configured, and then every webhook route answers 503 `webhooks-disabled`.
    pub sealer: Option<Arc<SecretSealer>>,
    /// Which endpoint URLs may be registered.
    pub policy: Arc<AddressPolicy>,
}

/// What the console's operator pages read besides the read models: the log itself.
#[derive(Clone)]
pub struct OperatorSetup {
    pub kafka: Arc<KafkaConfig>,
    /// The redrive's decoder (it reads a record's image id when a run is for one image).
    pub codec: EventCodec,
    /// One log query (lag, the dead letters, a redrive) at a time per instance: each opens
    /// broker clients of its own. Two redrives on two instances (or one beside the command
    /// line's) can still overlap; then records move twice and the position may step back,
    /// which moves them again later: duplicates, which consumers take, never a loss.
    pub log_queries: Arc<Semaphore>,
}

impl FromRef<AppState> for Arc<ApiKeys> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.api_keys)
    }
}

impl FromRef<AppState> for Arc<RateLimits> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.rate_limits)
    }
}
