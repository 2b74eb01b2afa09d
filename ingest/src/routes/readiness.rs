use std::future::Future;
use std::pin::Pin;

use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::ops::{Dependency, DependencyDown, Readiness};
use imgpipe_infra::storage::ObjectStore;
use sqlx::PgPool;

use crate::db;
use crate::state::AppState;

/// Ready when the broker, the bucket and the database all answer.
pub(super) struct Dependencies {
    store: ObjectStore,
    events: EventProducer,
    pool: PgPool,
}

impl From<&AppState> for Dependencies {
    fn from(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            events: state.events.clone(),
            pool: state.pool.clone(),
        }
    }
}

impl Readiness for Dependencies {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), DependencyDown>> + Send + '_>> {
        Box::pin(async move {
            let (broker, storage, database) =
                tokio::join!(self.events.ping(), self.store.ping(), db::ping(&self.pool));
            broker.map_err(|e| DependencyDown::new(Dependency::Broker, e))?;
            storage.map_err(|e| DependencyDown::new(Dependency::Storage, e))?;
            database.map_err(|e| DependencyDown::new(Dependency::Database, e))
        })
    }
}
