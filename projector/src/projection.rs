use imgpipe_infra::consume::{EventHandler, HandlerError, RecordPosition};
use imgpipe_schemas::Event;
use sqlx::PgPool;

use crate::db;

/// Applies each event to the read models in its own transaction.
pub(crate) struct Projection {
    pub(crate) pool: PgPool,
}

impl EventHandler for Projection {
    async fn handle(&self, event: &Event, position: &RecordPosition) -> Result<(), HandlerError> {
        let transient = |error: sqlx::Error| HandlerError::transient("database", error);
        let mut tx = self.pool.begin().await.map_err(transient)?;
        let applied = db::apply(&mut tx, event, position)
            .await
            .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        tracing::debug!(
            image_id = %event.image_id, event_type = %event.event_type(),
            offset = position.offset, applied, "projected event"
        );
        Ok(())
    }
}
