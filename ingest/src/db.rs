//! Queries against the projector's read models, and ingest's own tables. The rows are what
//! the tables hold; what the API answers is made of them in `routes`.

pub mod operator;
pub mod webhooks;

use std::collections::BTreeMap;
use std::time::Duration;

use imgpipe_schemas::state::Status;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct ImageRow {
    pub owner: String,
    pub original_key: String,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub format: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    pub spec_version: Option<i32>,
    pub dominant_color: Option<String>,
    pub blurhash: Option<String>,
    pub animated: bool,
    pub metadata: sqlx::types::Json<BTreeMap<String, String>>,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub uploaded_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, sqlx::FromRow)]
pub struct VariantRow {
    pub name: String,
    #[sqlx(rename = "object_key")]
    pub key: String,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub sha256: String,
}

/// The image as the read model has it or, until the projector has applied its
/// `ImageUploaded`, as ingest accepted it (status `uploaded`): read-your-writes.
pub async fn image(pool: &PgPool, image_id: Uuid) -> Result<Option<ImageRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner, original_key, status, format, bytes, sha256, width, height, spec_version,
                dominant_color, blurhash, animated, metadata, failure_code, failure_reason,
                uploaded_at, updated_at
         FROM images WHERE image_id = $1
         UNION ALL
         SELECT owner, original_key, 'uploaded', format, bytes, sha256, width, height, NULL,
                NULL, NULL, false, metadata, NULL, NULL, accepted_at, accepted_at
         FROM accepted_uploads a
         WHERE a.image_id = $1
           AND a.accepted_at > now() - interval '1 day'
           AND NOT EXISTS (SELECT 1 FROM images i WHERE i.image_id = $1)",
    )
    .bind(image_id)
    .fetch_optional(pool)
    .await
}

/// An upload ingest answered 202 for, as `ImageUploaded` described it.
#[derive(Debug)]
pub struct AcceptedUpload<'a> {
    pub image_id: Uuid,
    pub owner: &'a str,
    pub original_key: &'a str,
    pub format: &'a str,
    pub bytes: i64,
    pub sha256: &'a str,
    pub width: i32,
    pub height: i32,
    pub metadata: &'a BTreeMap<String, String>,
    pub accepted_at: OffsetDateTime,
}

/// How long ingest answers for an accepted upload the read model does not have (also spelled
/// out in `image`): a projector that far behind is an outage, not a lag.
const ACCEPTED_UPLOAD_TTL: &str = "1 day";
/// The most rows one upload prunes, so pruning stays a small cost on each upload.
const PRUNE_BATCH: i64 = 100;

/// Records an accepted upload (a replayed upload's record is already there), and prunes up to
/// [`PRUNE_BATCH`] records the read model has caught up with or that are older than
/// [`ACCEPTED_UPLOAD_TTL`].
pub async fn record_accepted_upload(
    pool: &PgPool,
    upload: &AcceptedUpload<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accepted_uploads
             (image_id, owner, original_key, format, bytes, sha256, width, height, metadata,
              accepted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (image_id) DO NOTHING",
    )
    .bind(upload.image_id)
    .bind(upload.owner)
    .bind(upload.original_key)
    .bind(upload.format)
    .bind(upload.bytes)
    .bind(upload.sha256)
    .bind(upload.width)
    .bind(upload.height)
    .bind(sqlx::types::Json(upload.metadata))
    .bind(upload.accepted_at)
    .execute(pool)
    .await?;
    sqlx::query(&format!(
        "DELETE FROM accepted_uploads WHERE image_id IN (
             SELECT a.image_id FROM accepted_uploads a
             WHERE a.accepted_at < now() - interval '{ACCEPTED_UPLOAD_TTL}'
                OR EXISTS (SELECT 1 FROM images i WHERE i.image_id = a.image_id)
             LIMIT {PRUNE_BATCH})"
    ))
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn variants(pool: &PgPool, image_id: Uuid) -> Result<Vec<VariantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, object_key, format, width, height, bytes, sha256
         FROM variants WHERE image_id = $1 ORDER BY width, name",
    )
    .bind(image_id)
    .fetch_all(pool)
    .await
}

/// A variant's size, for a list of images (the console's gallery).
#[derive(Debug, sqlx::FromRow)]
pub struct VariantSize {
    pub image_id: Uuid,
    pub name: String,
    #[sqlx(rename = "object_key")]
    pub key: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
}

/// The variants of every image in `images` (one page of a listing), smallest first.
pub async fn variant_sizes(
    pool: &PgPool,
    images: &[Uuid],
) -> Result<Vec<VariantSize>, sqlx::Error> {
    sqlx::query_as(
        "SELECT image_id, name, object_key, width, height, bytes
         FROM variants WHERE image_id = ANY($1) ORDER BY image_id, width, name",
    )
    .bind(images)
    .fetch_all(pool)
    .await
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

#[derive(Debug, sqlx::FromRow)]
pub struct TimelineRow {
    pub event_id: Uuid,
    pub event_type: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub occurred_at: OffsetDateTime,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
}

/// Up to `limit` of the image's events, oldest first, after the `(occurred_at, event_id)`
/// of the previous page's last one.
pub async fn timeline(
    pool: &PgPool,
    image_id: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<TimelineRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(
        r#"SELECT event_id, event_type, topic, partition, "offset", occurred_at, correlation_id,
                  causation_id
           FROM image_events
           WHERE image_id = $1
             AND ($2::timestamptz IS NULL OR (occurred_at, event_id) > ($2, $3))
           ORDER BY occurred_at, event_id
           LIMIT $4"#,
    )
    .bind(image_id)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A timeline row with what the fold needs.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub event_type: String,
    pub occurred_at: OffsetDateTime,
    /// Null for rows projected before the timeline kept payloads.
    pub payload: Option<serde_json::Value>,
}

/// The image's events that occurred at or before `until`, in the order they are folded:
/// by time, then by where they sit in the log.
pub async fn events_until(
    pool: &PgPool,
    image_id: Uuid,
    until: OffsetDateTime,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT event_type, occurred_at, payload
           FROM image_events
           WHERE image_id = $1 AND occurred_at <= $2
           ORDER BY occurred_at, partition, "offset", event_id"#,
    )
    .bind(image_id)
    .bind(until)
    .fetch_all(pool)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct ListedImageRow {
    pub image_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub dominant_color: Option<String>,
    pub blurhash: Option<String>,
    pub uploaded_at: OffsetDateTime,
}

/// One page of a client's images, newest first, strictly after `after` (the last row of the
/// previous page) when given.
pub async fn list(
    pool: &PgPool,
    owner: &str,
    status: Option<Status>,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ListedImageRow>, sqlx::Error> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as(
        "SELECT image_id, status, format, width, height, bytes, dominant_color, blurhash,
                uploaded_at
         FROM images
         WHERE owner = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (uploaded_at, image_id) < ($3, $4))
         ORDER BY uploaded_at DESC, image_id DESC
         LIMIT $5",
    )
    .bind(owner)
    .bind(status.map(Status::as_str))
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What the table holds for a client's Idempotency-Key.
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub body_sha256: String,
    pub image_id: Uuid,
    pub response: Option<serde_json::Value>,
    pub reserved_at: OffsetDateTime,
}

/// Reserves `key` for this body and image id. Returns the existing record instead when the
/// key is taken and younger than `ttl` (an older one is forgotten first).
pub async fn reserve_idempotency_key(
    pool: &PgPool,
    owner: &str,
    key: &str,
    body_sha256: &str,
    image_id: Uuid,
    ttl: Duration,
) -> Result<Option<IdempotencyRecord>, sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE owner = $1 AND key = $2 AND created_at < now() - make_interval(secs => $3)",
    )
    .bind(owner)
    .bind(key)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (owner, key, body_sha256, image_id, reserved_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (owner, key) DO NOTHING",
    )
    .bind(owner)
    .bind(key)
    .bind(body_sha256)
    .bind(image_id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(None);
    }
    sqlx::query_as(
        "SELECT body_sha256, image_id, response, reserved_at
         FROM idempotency_keys WHERE owner = $1 AND key = $2",
    )
    .bind(owner)
    .bind(key)
    .fetch_one(pool)
    .await
    .map(Some)
}

/// Forgets up to `batch` keys first reserved longer than `ttl` ago; how many it forgot.
pub async fn prune_idempotency_keys(
    pool: &PgPool,
    ttl: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (
             SELECT ctid FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind(ttl.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Takes over a reservation whose upload never finished, unless another request did first.
pub async fn retake_idempotency_key(
    pool: &PgPool,
    owner: &str,
    key: &str,
    seen_reserved_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE idempotency_keys SET reserved_at = now()
         WHERE owner = $1 AND key = $2 AND reserved_at = $3 AND response IS NULL",
    )
    .bind(owner)
    .bind(key)
    .bind(seen_reserved_at)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

pub async fn complete_idempotency_key(
    pool: &PgPool,
    owner: &str,
    key: &str,
    response: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE owner = $1 AND key = $2")
        .bind(owner)
        .bind(key)
        .bind(response)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Marks a reservation whose upload failed as free to retake at once.
pub async fn release_idempotency_key(
    pool: &PgPool,
    owner: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET reserved_at = 'epoch'
         WHERE owner = $1 AND key = $2 AND response IS NULL",
    )
    .bind(owner)
    .bind(key)
    .execute(pool)
    .await
    .map(|_| ())
}

#[derive(Debug, sqlx::FromRow)]
pub struct StatusCount {
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub count: i64,
}

/// How many of a client's images are in each status (those it has any in).
pub async fn counts_by_status(pool: &PgPool, owner: &str) -> Result<Vec<StatusCount>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) AS count FROM images WHERE owner = $1 GROUP BY status")
        .bind(owner)
        .fetch_all(pool)
        .await
}

/// Seconds from upload to the first result (processed or failed), at p50, p95 and p99, over
/// a client's images; `None` when none has a result yet.
pub async fn processing_seconds(
    pool: &PgPool,
    owner: &str,
) -> Result<Option<(f64, f64, f64)>, sqlx::Error> {
    let row: (Option<Vec<f64>>,) = sqlx::query_as(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY seconds)
         FROM (
             SELECT extract(epoch FROM min(r.occurred_at) - u.occurred_at)::float8 AS seconds
             FROM images i
             JOIN image_events u ON u.image_id = i.image_id AND u.event_type = 'ImageUploaded'
             JOIN image_events r ON r.image_id = i.image_id
                                AND r.event_type IN ('ImageProcessed', 'ImageFailed')
             WHERE i.owner = $1
             GROUP BY i.image_id, u.occurred_at
         ) AS durations",
    )
    .bind(owner)
    .fetch_one(pool)
    .await?;
    Ok(row.0.and_then(|p| match p.as_slice() {
        [p50, p95, p99] => Some((*p50, *p95, *p99)),
        _ => None,
    }))
}
