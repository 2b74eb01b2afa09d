//! Queries over the webhook read models (`webhook_endpoints`, `webhook_attempts`), which the
//! projector keeps and ingest also writes at once for read-your-writes (through
//! `imgpipe_projector::db::webhooks::apply`, never by hand).

use imgpipe_schemas::{SchemaError, WebhookEventType};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// An endpoint's `event_types` as words; a row holding another text fails to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(pub Vec<WebhookEventType>);

impl TryFrom<Vec<String>> for EventTypes {
    type Error = SchemaError;

    fn try_from(texts: Vec<String>) -> Result<Self, Self::Error> {
        texts
            .iter()
            .map(|text| text.parse())
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// A live (not deleted) endpoint as the read model has it; never its secrets.
#[derive(Debug, sqlx::FromRow)]
pub struct EndpointRow {
    pub endpoint_id: Uuid,
    pub owner: String,
    pub url: String,
    #[sqlx(try_from = "Vec<String>")]
    pub event_types: EventTypes,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<OffsetDateTime>,
    pub last_delivered_at: Option<OffsetDateTime>,
    /// Until when the previous secret also signs (a rotation's overlap).
    pub previous_valid_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, owner, url, event_types, enabled, disabled_reason, \
     failing_since, last_delivered_at, previous_valid_until, created_at, updated_at";

/// The endpoint, unless it does not exist or was deleted.
pub async fn endpoint(
    pool: &PgPool,
    endpoint_id: Uuid,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE endpoint_id = $1 AND NOT deleted"
    ))
    .bind(endpoint_id)
    .fetch_optional(pool)
    .await
}

/// The client's live endpoints, newest first (a client has at most a few dozen).
pub async fn endpoints(pool: &PgPool, owner: &str) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE owner = $1 AND NOT deleted
         ORDER BY created_at DESC, endpoint_id DESC"
    ))
    .bind(owner)
    .fetch_all(pool)
    .await
}

/// Takes the client's endpoint-registration lock for the rest of the transaction, so that two
/// registrations at once cannot both pass the limit, then counts its live endpoints.
pub async fn lock_and_count_live(tx: &mut PgConnection, owner: &str) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('webhook endpoints of ' || $1, 0))")
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM webhook_endpoints WHERE owner = $1 AND NOT deleted")
            .bind(owner)
            .fetch_one(&mut *tx)
            .await?;
    Ok(count)
}

/// One delivery attempt.
#[derive(Debug, sqlx::FromRow)]
pub struct AttemptRow {
    /// The attempt event's id.
    pub event_id: Uuid,
    pub message_id: Uuid,
    pub message_type: String,
    pub image_id: Uuid,
    pub attempt: i32,
    pub redelivery: bool,
    pub url: String,
    pub status_code: Option<i32>,
    pub duration_ms: i64,
    pub error_class: Option<String>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub attempted_at: OffsetDateTime,
}

/// Up to `limit` of the endpoint's attempts, newest first, strictly after the
/// `(attempted_at, event_id)` of the previous page's last one when given.
pub async fn attempts(
    pool: &PgPool,
    endpoint_id: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as(
        "SELECT event_id, message_id, message_type, image_id, attempt, redelivery, url,
                status_code, duration_ms, error_class, next_attempt_at, attempted_at
         FROM webhook_attempts
         WHERE endpoint_id = $1
           AND ($2::timestamptz IS NULL OR (attempted_at, event_id) < ($2, $3))
         ORDER BY attempted_at DESC, event_id DESC
         LIMIT $4",
    )
    .bind(endpoint_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether the endpoint had at least one attempt of the message.
pub async fn has_attempt(
    pool: &PgPool,
    endpoint_id: Uuid,
    message_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let (found,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM webhook_attempts
                        WHERE endpoint_id = $1 AND message_id = $2)",
    )
    .bind(endpoint_id)
    .bind(message_id)
    .fetch_one(pool)
    .await?;
    Ok(found)
}
