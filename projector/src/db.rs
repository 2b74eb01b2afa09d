//! The read models: schema migrations and applying one event ([`bulk`]: a batch of them at
//! once, for a rebuild).

pub mod bulk;
pub mod webhooks;

use imgpipe_infra::consume::RecordPosition;
use imgpipe_infra::DatabaseConfig;
use imgpipe_schemas::{Event, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted, Payload};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

use crate::ProjectorError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies pending migrations. An explicit step (`imgpipe migrate`), never run implicitly by
/// every replica at start.
pub async fn migrate(config: &DatabaseConfig) -> Result<(), ProjectorError> {
    let pool = config.pool()?;
    config.ensure_schema(&pool).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The event was applied before (its id is already in the timeline): nothing changed.
    Duplicate,
    /// The read models changed.
    Changed,
    /// The read models changed and an uploaded image turned ready for the first time, this
    /// long after its upload was accepted (by the database's clock, at the apply).
    FirstReady { after_upload: Duration },
}

impl Outcome {
    pub fn changed(self) -> bool {
        self != Outcome::Duplicate
    }
}

/// Applies one event inside the caller's transaction.
pub async fn apply(
    tx: &mut PgConnection,
    event: &Event,
    position: &RecordPosition,
) -> Result<Outcome, sqlx::Error> {
    // Webhook events have their own tables; an image's timeline holds the image's events.
    if event.payload.is_webhook() {
        return webhooks::apply(tx, event).await;
    }
    if !record_in_timeline(tx, event, position).await? {
        return Ok(Outcome::Duplicate);
    }
    match &event.payload {
        Payload::ImageUploaded(uploaded) => apply_uploaded(tx, event, uploaded).await?,
        Payload::ImageProcessed(processed) => return apply_processed(tx, event, processed).await,
        Payload::ImageFailed(failed) => apply_failed(tx, event, failed).await?,
        Payload::ImageDeleted(_) => apply_deleted(tx, event).await?,
        Payload::ObjectsDeleted(deleted) => apply_objects_deleted(tx, event, deleted).await?,
        Payload::ReprocessRequested(_) => apply_reprocess_requested(tx, event).await?,
        // An audit record: the timeline row is all it changes.
        Payload::OrphanRemoved(_) => {}
        // Applied above.
        _ => {}
    }
    Ok(Outcome::Changed)
}

/// Adds the event to the timeline; false when its id is there already.
async fn record_in_timeline(
    tx: &mut PgConnection,
    event: &Event,
    position: &RecordPosition,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        r#"INSERT INTO image_events
               (event_id, image_id, event_type, topic, partition, "offset", occurred_at,
                correlation_id, causation_id, payload)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (event_id) DO NOTHING"#,
    )
    .bind(event.event_id)
    .bind(event.image_id)
    .bind(event.event_type().as_str())
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .bind(event.occurred_at)
    .bind(&event.correlation_id)
    .bind(event.causation_id)
    .bind(event.payload.to_json())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

async fn apply_uploaded(
    tx: &mut PgConnection,
    event: &Event,
    uploaded: &ImageUploaded,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO images
             (image_id, owner, status, format, bytes, sha256, width, height,
              original_key, uploaded_at, updated_at, metadata)
         VALUES ($1, $2, 'uploaded', $3, $4, $5, $6, $7, $8, $9, $9, $10)
         ON CONFLICT (image_id) DO NOTHING",
    )
    .bind(event.image_id)
    .bind(&uploaded.owner)
    .bind(&uploaded.format)
    .bind(uploaded.bytes)
    .bind(&uploaded.sha256)
    .bind(uploaded.width)
    .bind(uploaded.height)
    .bind(&uploaded.original_key)
    .bind(event.occurred_at)
    .bind(sqlx::types::Json(&uploaded.metadata))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The image becomes ready with exactly the announced variants, unless it is unknown or
/// deleted (a result that was in flight when the deletion was appended).
async fn apply_processed(
    tx: &mut PgConnection,
    event: &Event,
    processed: &ImageProcessed,
) -> Result<Outcome, sqlx::Error> {
    // The status before the update (the CTE reads the row as it was), and the time since the
    // upload: an image that was `uploaded` until now turned ready for the first time.
    let updated: Option<(bool, f64)> = sqlx::query_as(
        "WITH before AS (SELECT status FROM images WHERE image_id = $1)
         UPDATE images
         SET status = 'ready', spec_version = $2, width = $3, height = $4,
             dominant_color = $5, blurhash = $6, animated = $8,
             failure_code = NULL, failure_reason = NULL, updated_at = $7
         WHERE image_id = $1 AND status <> 'deleted'
         RETURNING (SELECT status FROM before) = 'uploaded',
                   extract(epoch FROM clock_timestamp() - uploaded_at)::float8",
    )
    .bind(event.image_id)
    .bind(processed.spec_version)
    .bind(processed.original_width)
    .bind(processed.original_height)
    .bind(&processed.dominant_color)
    .bind(&processed.blurhash)
    .bind(event.occurred_at)
    .bind(processed.animated)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((first_ready, seconds_since_upload)) = updated else {
        tracing::warn!(image_id = %event.image_id, "ImageProcessed for an unknown or deleted image");
        return Ok(Outcome::Changed);
    };
    sqlx::query("DELETE FROM variants WHERE image_id = $1")
        .bind(event.image_id)
        .execute(&mut *tx)
        .await?;
    for variant in &processed.variants {
        sqlx::query(
            "INSERT INTO variants
                 (image_id, name, object_key, format, width, height, bytes, sha256,
                  spec_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(event.image_id)
        .bind(&variant.name)
        .bind(&variant.key)
        .bind(&variant.format)
        .bind(variant.width)
        .bind(variant.height)
        .bind(variant.bytes)
        .bind(&variant.sha256)
        .bind(processed.spec_version)
        .execute(&mut *tx)
        .await?;
    }
    Ok(if first_ready {
        Outcome::FirstReady {
            // Clocks of different hosts may disagree a little: never a negative duration.
            after_upload: Duration::from_secs_f64(seconds_since_upload.max(0.0)),
        }
    } else {
        Outcome::Changed
    })
}

async fn apply_failed(
    tx: &mut PgConnection,
    event: &Event,
    failed: &ImageFailed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE images
         SET status = 'failed', failure_code = $2, failure_reason = $3, updated_at = $4
         WHERE image_id = $1 AND status <> 'deleted'",
    )
    .bind(event.image_id)
    .bind(&failed.reason_code)
    .bind(&failed.message)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_deleted(tx: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE images SET status = 'deleted', updated_at = $2 WHERE image_id = $1")
        .bind(event.image_id)
        .bind(event.occurred_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The variants whose objects are gone (removed now, or already missing) leave the read model.
async fn apply_objects_deleted(
    tx: &mut PgConnection,
    event: &Event,
    deleted: &ObjectsDeleted,
) -> Result<(), sqlx::Error> {
    let gone: Vec<&str> = deleted
        .keys
        .iter()
        .chain(&deleted.missing_keys)
        .map(String::as_str)
        .collect();
    sqlx::query("DELETE FROM variants WHERE image_id = $1 AND object_key = ANY($2)")
        .bind(event.image_id)
        .bind(&gone)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn apply_reprocess_requested(
    tx: &mut PgConnection,
    event: &Event,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE images SET status = 'processing', updated_at = $2
         WHERE image_id = $1 AND status <> 'deleted'",
    )
    .bind(event.image_id)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Checks the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
