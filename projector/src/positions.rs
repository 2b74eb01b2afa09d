//! The projection's position in each partition of the log, stored in Postgres beside the read
//! models: the offset of the next record to apply.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::{PgConnection, PgPool};

/// Partition -> next offset to apply. A partition without an entry starts at the beginning.
pub type PositionMap = BTreeMap<i32, i64>;

/// The positions the projector stored with its read models (the same for every instance:
/// what the projection has not applied is its lag).
pub struct StoredPositions {
    pub pool: PgPool,
    pub topic: String,
}

impl imgpipe_infra::consume::lag::Positions for StoredPositions {
    async fn load(&self) -> Result<PositionMap, Box<dyn std::error::Error + Send + Sync>> {
        Ok(load(&self.pool, &self.topic).await?)
    }
}

/// Every stored position of `topic`.
pub async fn load(db: &PgPool, topic: &str) -> Result<PositionMap, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM projection_positions WHERE topic = $1")
            .bind(topic)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Moves a partition's position from `expected` to `next` (compare-and-set); false when the
/// stored position is not `expected` (`None`: no position stored yet), and then nothing is
/// written. Called first in a batch's transaction, so a conflicting writer waits on the row
/// lock here before touching the read models.
pub(crate) async fn advance(
    tx: &mut PgConnection,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    next: i64,
) -> Result<bool, sqlx::Error> {
    let written = match expected {
        Some(expected) => {
            sqlx::query(
                "UPDATE projection_positions SET next_offset = $3, updated_at = now()
                 WHERE topic = $1 AND partition = $2 AND next_offset = $4",
            )
            .bind(topic)
            .bind(partition)
            .bind(next)
            .bind(expected)
            .execute(&mut *tx)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO projection_positions (topic, partition, next_offset)
                 VALUES ($1, $2, $3) ON CONFLICT (topic, partition) DO NOTHING",
            )
            .bind(topic)
            .bind(partition)
            .bind(next)
            .execute(&mut *tx)
            .await?
        }
    };
    Ok(written.rows_affected() == 1)
}

/// The positions as this process last read or wrote them, shared with the rebalance callback
/// (which cannot wait for Postgres) so a partition is assigned at its stored position.
#[derive(Clone, Default)]
pub(crate) struct SharedPositions(Arc<Mutex<PositionMap>>);

impl SharedPositions {
    pub(crate) fn snapshot(&self) -> PositionMap {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn replace(&self, positions: PositionMap) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = positions;
    }

    pub(crate) fn update(&self, advanced: &PositionMap) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(advanced);
    }
}
