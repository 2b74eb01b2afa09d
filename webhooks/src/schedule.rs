//! The delivering service's Postgres side: the schedule of deliveries waiting for an attempt
//! (`webhook_schedule`), and what it reads from the read models (endpoints, an image's owner,
//! past messages). Rows only; the decisions are in `handler.rs` and `deliver.rs`.

use std::time::Duration;

use imgpipe_schemas::{EventType, Payload};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::message::Message;

/// A delivery waiting for (or claimed for) its next attempt.
#[derive(Debug, Clone, FromRow)]
pub struct Due {
    pub endpoint_id: Uuid,
    pub message_id: Uuid,
    pub image_id: Uuid,
    pub correlation_id: String,
    pub message: Json<Message>,
    /// The number of this attempt (1 = first).
    pub attempt: i32,
    pub redelivery: bool,
}

/// An endpoint as an attempt needs it.
#[derive(Debug, Clone, FromRow)]
pub struct Endpoint {
    pub endpoint_id: Uuid,
    pub url: String,
    pub sealed_secret: String,
    pub previous_sealed_secret: Option<String>,
    pub previous_valid_until: Option<OffsetDateTime>,
    pub enabled: bool,
    pub deleted: bool,
    pub failing_since: Option<OffsetDateTime>,
}

impl Endpoint {
    /// Whether deliveries go to it.
    pub fn active(&self) -> bool {
        self.enabled && !self.deleted
    }
}

/// A new delivery of `message` (about the event `message_id`) to each endpoint, due now. A
/// delivery already scheduled stays as it is (the event was consumed before); a redelivery
/// starts again at attempt 1, due now, whatever state the endpoint's delivery is in.
pub async fn add(
    pool: &PgPool,
    endpoints: &[Uuid],
    message_id: Uuid,
    correlation_id: &str,
    message: &Message,
    redelivery: bool,
) -> Result<(), sqlx::Error> {
    let conflict = if redelivery {
        "ON CONFLICT (endpoint_id, message_id) DO UPDATE
         SET attempt = 1, redelivery = true, due_at = now(), leased_until = '-infinity',
             message = EXCLUDED.message"
    } else {
        "ON CONFLICT (endpoint_id, message_id) DO NOTHING"
    };
    sqlx::query(&format!(
        "INSERT INTO webhook_schedule
             (endpoint_id, message_id, image_id, message_type, correlation_id, message, attempt,
              redelivery, due_at)
         SELECT endpoint_id, $2, $3, $4, $5, $6, 1, $7, now() FROM UNNEST($1::uuid[]) AS endpoint_id
         {conflict}"
    ))
    .bind(endpoints)
    .bind(message_id)
    .bind(message.image_id)
    .bind(&message.message_type)
    .bind(correlation_id)
    .bind(Json(message))
    .bind(redelivery)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries, at most one per endpoint and none of the endpoints in
/// `busy` (those with as many attempts in flight as allowed), for `lease`. Another instance's
/// claim hides a row until its lease ends, so a crashed instance's claims come back. The
/// `UPDATE` checks the lease again under the row lock, so of two instances picking the same row
/// only one gets it.
pub async fn claim(
    pool: &PgPool,
    busy: &[Uuid],
    limit: i64,
    lease: Duration,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE webhook_schedule s
         SET leased_until = now() + $3 * interval '1 millisecond'
         FROM (SELECT DISTINCT ON (endpoint_id) endpoint_id, message_id
               FROM webhook_schedule
               WHERE due_at <= now() AND leased_until < now() AND endpoint_id <> ALL($1)
               ORDER BY endpoint_id, due_at
               LIMIT $2) pick
         WHERE s.endpoint_id = pick.endpoint_id AND s.message_id = pick.message_id
           AND s.leased_until < now()
         RETURNING s.endpoint_id, s.message_id, s.image_id, s.correlation_id, s.message,
                   s.attempt, s.redelivery",
    )
    .bind(busy)
    .bind(limit)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await
}

/// The delivery's next attempt, `attempt`, is due at `due_at`; the claim ends.
pub async fn retry_at(
    pool: &PgPool,
    due: &Due,
    attempt: i32,
    due_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_schedule SET attempt = $3, due_at = $4, leased_until = '-infinity'
         WHERE endpoint_id = $1 AND message_id = $2",
    )
    .bind(due.endpoint_id)
    .bind(due.message_id)
    .bind(attempt)
    .bind(due_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// The delivery is done: delivered, given up, or its endpoint is gone.
pub async fn remove(pool: &PgPool, due: &Due) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_schedule WHERE endpoint_id = $1 AND message_id = $2")
        .bind(due.endpoint_id)
        .bind(due.message_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every delivery to an endpoint that was disabled.
pub async fn remove_endpoint(pool: &PgPool, endpoint_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_schedule WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deliveries due now, for the gauge.
pub async fn due_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM webhook_schedule WHERE due_at <= now()")
        .fetch_one(pool)
        .await
}

pub async fn endpoint(pool: &PgPool, endpoint_id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT endpoint_id, url, sealed_secret, previous_sealed_secret, previous_valid_until,
                enabled, deleted, failing_since
         FROM webhook_endpoints WHERE endpoint_id = $1",
    )
    .bind(endpoint_id)
    .fetch_optional(pool)
    .await
}

/// The owner's active endpoints subscribed to `message_type` that existed when the event
/// happened: an endpoint gets the messages of its own time, not the log's history (a new
/// deliverer group starts at the log's beginning).
pub async fn subscribed(
    pool: &PgPool,
    owner: &str,
    message_type: &str,
    occurred_at: OffsetDateTime,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT endpoint_id FROM webhook_endpoints
         WHERE owner = $1 AND enabled AND NOT deleted AND $2 = ANY(event_types)
           AND created_at <= $3",
    )
    .bind(owner)
    .bind(message_type)
    .bind(occurred_at)
    .fetch_all(pool)
    .await
}

/// The client an image belongs to: the read model's, or ingest's record of the upload it
/// accepted (which it keeps until the read model has the image).
pub async fn owner_of(pool: &PgPool, image_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT owner FROM images WHERE image_id = $1
         UNION ALL
         SELECT owner FROM accepted_uploads WHERE image_id = $1
         LIMIT 1",
    )
    .bind(image_id)
    .fetch_optional(pool)
    .await
}

/// The messages an endpoint had attempts for: `message_id`, or every one first attempted at or
/// after `since`.
pub async fn past_messages(
    pool: &PgPool,
    endpoint_id: Uuid,
    message_id: Option<Uuid>,
    since: Option<OffsetDateTime>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT message_id FROM webhook_attempts
         WHERE endpoint_id = $1 AND ($2::uuid IS NULL OR message_id = $2)
         GROUP BY message_id
         HAVING $3::timestamptz IS NULL OR min(attempted_at) >= $3
         ORDER BY min(attempted_at)",
    )
    .bind(endpoint_id)
    .bind(message_id)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// An image's event as the timeline stored it, with its correlation id.
pub async fn stored_event(
    pool: &PgPool,
    event_id: Uuid,
) -> Result<Option<(Uuid, OffsetDateTime, String, Payload)>, sqlx::Error> {
    let row: Option<(Uuid, OffsetDateTime, String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT image_id, occurred_at, correlation_id, event_type, payload
         FROM image_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.and_then(|(image_id, at, correlation, event_type, payload)| {
            let event_type = EventType::from_name(&event_type)?;
            let payload = Payload::from_json(event_type, payload).ok()?;
            Some((image_id, at, correlation, payload))
        }),
    )
}
