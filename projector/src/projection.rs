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
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let applied = db::apply(&mut tx, event, position)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        tracing::debug!(
            image_id = %event.image_id, event_type = %event.event_type(),
            offset = position.offset, applied, "projected event"
        );
        Ok(())
    }
}

/// Data errors (SQLSTATE class 22) and constraint violations (23) come back the same on every
/// attempt: dead-letter the record rather than stall every partition behind it. Everything
/// else (connection lost, database down, serialization failure) is worth retrying.
fn classify(error: sqlx::Error) -> HandlerError {
    let permanent = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"));
    if permanent {
        HandlerError::permanent("database-rejected", error)
    } else {
        HandlerError::transient("database", error)
    }
}
