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
    /// This claim's token: the outcome is written back only while the row still holds it.
    pub lease_id: Uuid,
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
/// delivery already scheduled, or already attempted (its record consumed again after a crash
/// or a rebalance), is left as it is.
pub async fn add(
    pool: &PgPool,
    endpoints: &[Uuid],
    message_id: Uuid,
    correlation_id: &str,
    message: &Message,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_schedule
             (endpoint_id, message_id, image_id, message_type, correlation_id, message, attempt,
              redelivery, due_at)
         SELECT e.endpoint_id, $2, $3, $4, $5, $6, 1, false, now()
         FROM UNNEST($1::uuid[]) AS e(endpoint_id)
         WHERE NOT EXISTS (SELECT 1 FROM webhook_attempts a
                           WHERE a.endpoint_id = e.endpoint_id AND a.message_id = $2)
         ON CONFLICT (endpoint_id, message_id) DO NOTHING",
    )
    .bind(endpoints)
    .bind(message_id)
    .bind(message.image_id)
    .bind(&message.message_type)
    .bind(correlation_id)
    .bind(Json(message))
    .execute(pool)
    .await?;
    Ok(())
}

/// A message to deliver again, as a redelivery request names it.
pub struct Redelivery {
    pub message_id: Uuid,
    pub correlation_id: String,
    pub message: Message,
}

/// Schedules `messages` to `endpoint_id` again from attempt 1, due now, in one statement, on
/// behalf of the request `request_id`. A row already scheduled is reset (and its claim, if an
/// attempt is running, voided) unless this same request reset it before: a request consumed
/// twice changes nothing the second time.
pub async fn redeliver(
    pool: &PgPool,
    endpoint_id: Uuid,
    request_id: Uuid,
    messages: &[Redelivery],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
    let images: Vec<Uuid> = messages.iter().map(|m| m.message.image_id).collect();
    let types: Vec<&str> = messages
        .iter()
        .map(|m| m.message.message_type.as_str())
        .collect();
    let correlations: Vec<&str> = messages.iter().map(|m| m.correlation_id.as_str()).collect();
    let bodies: Vec<Json<&Message>> = messages.iter().map(|m| Json(&m.message)).collect();
    sqlx::query(
        "INSERT INTO webhook_schedule
             (endpoint_id, message_id, image_id, message_type, correlation_id, message, attempt,
              redelivery, due_at, redelivery_request)
         SELECT $1, m.message_id, m.image_id, m.message_type, m.correlation_id, m.message, 1,
                true, now(), $2
         FROM UNNEST($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[])
              AS m(message_id, image_id, message_type, correlation_id, message)
         ON CONFLICT (endpoint_id, message_id) DO UPDATE
         SET attempt = 1, redelivery = true, due_at = now(), leased_until = '-infinity',
             lease_id = NULL, message = EXCLUDED.message, redelivery_request = $2
         WHERE webhook_schedule.redelivery_request IS DISTINCT FROM $2",
    )
    .bind(endpoint_id)
    .bind(request_id)
    .bind(&ids)
    .bind(&images)
    .bind(&types)
    .bind(&correlations)
    .bind(&bodies)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries, at most one per endpoint (its earliest) and none of
/// the endpoints in `busy` (those with as many attempts in flight as allowed), earliest due
/// first, for `lease`. A claimed row gets a new `lease_id` and is hidden from other claims until
/// its lease ends, so a crashed instance's claims come back. `SKIP LOCKED`: instances claiming
/// at the same moment take different rows instead of waiting for each other's.
pub async fn claim(
    pool: &PgPool,
    busy: &[Uuid],
    limit: i64,
    lease: Duration,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH firsts AS (
             SELECT DISTINCT ON (endpoint_id) endpoint_id, message_id, due_at
             FROM webhook_schedule
             WHERE due_at <= now() AND leased_until < now() AND endpoint_id <> ALL($1)
             ORDER BY endpoint_id, due_at),
         pick AS (
             SELECT s.endpoint_id, s.message_id
             FROM webhook_schedule s
             JOIN (SELECT endpoint_id, message_id FROM firsts ORDER BY due_at LIMIT $2) f
               USING (endpoint_id, message_id)
             WHERE s.leased_until < now()
             FOR UPDATE OF s SKIP LOCKED)
         UPDATE webhook_schedule s
         SET leased_until = now() + $3 * interval '1 millisecond', lease_id = gen_random_uuid()
         FROM pick
         WHERE s.endpoint_id = pick.endpoint_id AND s.message_id = pick.message_id
         RETURNING s.endpoint_id, s.message_id, s.image_id, s.correlation_id, s.message,
                   s.attempt, s.redelivery, s.lease_id",
    )
    .bind(busy)
    .bind(limit)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await
}

/// The delivery's next attempt, `attempt`, is due at `due_at`; the claim ends. False when the
/// claim was voided meanwhile (a redelivery reset the row, or the lease ran out and another
/// claim took it): the newer state stands.
pub async fn retry_at(
    pool: &PgPool,
    due: &Due,
    attempt: i32,
    due_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE webhook_schedule
         SET attempt = $4, due_at = $5, leased_until = '-infinity', lease_id = NULL
         WHERE endpoint_id = $1 AND message_id = $2 AND lease_id = $3",
    )
    .bind(due.endpoint_id)
    .bind(due.message_id)
    .bind(due.lease_id)
    .bind(attempt)
    .bind(due_at)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The delivery is done: delivered, given up, or its endpoint is gone. Only while the claim
/// is still the row's (see [`retry_at`]).
pub async fn remove(pool: &PgPool, due: &Due) -> Result<bool, sqlx::Error> {
    let removed = sqlx::query(
        "DELETE FROM webhook_schedule WHERE endpoint_id = $1 AND message_id = $2 AND lease_id = $3",
    )
    .bind(due.endpoint_id)
    .bind(due.message_id)
    .bind(due.lease_id)
    .execute(pool)
    .await?;
    Ok(removed.rows_affected() == 1)
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
/// after `since`, the earliest `limit`.
pub async fn past_messages(
    pool: &PgPool,
    endpoint_id: Uuid,
    message_id: Option<Uuid>,
    since: Option<OffsetDateTime>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT message_id FROM webhook_attempts
         WHERE endpoint_id = $1 AND ($2::uuid IS NULL OR message_id = $2)
         GROUP BY message_id
         HAVING $3::timestamptz IS NULL OR min(attempted_at) >= $3
         ORDER BY min(attempted_at)
         LIMIT $4",
    )
    .bind(endpoint_id)
    .bind(message_id)
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Images' events as the timeline stored them, with their correlation ids, by event id (an id
/// the timeline does not have is left out).
pub async fn stored_events(
    pool: &PgPool,
    event_ids: &[Uuid],
) -> Result<Vec<(Uuid, Uuid, OffsetDateTime, String, Payload)>, sqlx::Error> {
    let rows: Vec<(
        Uuid,
        Uuid,
        OffsetDateTime,
        String,
        String,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT event_id, image_id, occurred_at, correlation_id, event_type, payload
             FROM image_events WHERE event_id = ANY($1) AND payload IS NOT NULL",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(event_id, image_id, at, correlation, event_type, payload)| {
                let event_type = EventType::from_name(&event_type)?;
                let payload = Payload::from_json(event_type, payload).ok()?;
                Some((event_id, image_id, at, correlation, payload))
            },
        )
        .collect())
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
