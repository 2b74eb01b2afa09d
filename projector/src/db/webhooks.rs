//! The webhook read models: endpoints as their events leave them, their events by id, and
//! every delivery attempt.
//!
//! Ingest applies each endpoint event it appends at once, with this same function, so a client
//! reads its own change back (and the delivering service sees a new endpoint) before the
//! projector gets to it; the projector's later apply finds the event id taken and changes
//! nothing. An endpoint's row only takes an event newer than the last one it took (UUIDv7 ids
//! sort by time), so whichever applies last, the row ends as the log's order leaves it.

use imgpipe_schemas::{
    Event, Payload, WebhookDeliveryAttempted, WebhookEndpointCreated, WebhookEndpointDisabled,
    WebhookEndpointUpdated, WebhookSecretRotated,
};
use sqlx::PgConnection;
use time::OffsetDateTime;

use super::Outcome;

/// Applies one webhook event inside the caller's transaction (an image's event is not one:
/// [`Outcome::Duplicate`]).
pub async fn apply(tx: &mut PgConnection, event: &Event) -> Result<Outcome, sqlx::Error> {
    if let Payload::WebhookDeliveryAttempted(attempt) = &event.payload {
        return apply_attempt(tx, event, attempt).await;
    }
    let Some(endpoint_id) = endpoint_of(&event.payload) else {
        return Ok(Outcome::Duplicate);
    };
    if !record(tx, event, endpoint_id).await? {
        return Ok(Outcome::Duplicate);
    }
    match &event.payload {
        Payload::WebhookEndpointCreated(created) => apply_created(tx, event, created).await?,
        Payload::WebhookEndpointUpdated(updated) => apply_updated(tx, event, updated).await?,
        Payload::WebhookSecretRotated(rotated) => apply_rotated(tx, event, rotated).await?,
        Payload::WebhookEndpointDeleted(_) => apply_deleted(tx, event).await?,
        Payload::WebhookEndpointDisabled(disabled) => apply_disabled(tx, event, disabled).await?,
        // An audit record; the delivering service acts on it.
        _ => {}
    }
    Ok(Outcome::Changed)
}

/// The endpoint an endpoint's own event is about.
fn endpoint_of(payload: &Payload) -> Option<&str> {
    Some(match payload {
        Payload::WebhookEndpointCreated(p) => &p.endpoint_id,
        Payload::WebhookEndpointUpdated(p) => &p.endpoint_id,
        Payload::WebhookSecretRotated(p) => &p.endpoint_id,
        Payload::WebhookEndpointDeleted(p) => &p.endpoint_id,
        Payload::WebhookEndpointDisabled(p) => &p.endpoint_id,
        Payload::WebhookRedeliveryRequested(p) => &p.endpoint_id,
        _ => return None,
    })
}

/// Adds the event to `webhook_events`; false when its id is there already. An endpoint id
/// that is not a UUID is refused by Postgres as data (22P02), so the record is dead-lettered.
async fn record(
    tx: &mut PgConnection,
    event: &Event,
    endpoint_id: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (event_id, endpoint_id, event_type, occurred_at, payload)
         VALUES ($1, $2::uuid, $3, $4, $5)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(endpoint_id)
    .bind(event.event_type().as_str())
    .bind(event.occurred_at)
    .bind(event.payload.to_json())
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

async fn apply_created(
    tx: &mut PgConnection,
    event: &Event,
    created: &WebhookEndpointCreated,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_endpoints
             (endpoint_id, owner, url, event_types, sealed_secret, last_event_id, created_at,
              updated_at)
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (endpoint_id) DO NOTHING",
    )
    .bind(&created.endpoint_id)
    .bind(&created.owner)
    .bind(&created.url)
    .bind(&created.event_types)
    .bind(&created.sealed_secret)
    .bind(event.event_id)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_updated(
    tx: &mut PgConnection,
    event: &Event,
    updated: &WebhookEndpointUpdated,
) -> Result<(), sqlx::Error> {
    // Enabling or disabling by the owner clears the service's reason; enabling also forgets the
    // failures so far (and any failed attempt from before it applied later), so the endpoint
    // gets its full failing time again.
    sqlx::query(
        "UPDATE webhook_endpoints
         SET url = COALESCE($3, url),
             event_types = COALESCE($4, event_types),
             enabled = COALESCE($5, enabled),
             disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason END,
             failing_since = CASE WHEN $5 THEN NULL ELSE failing_since END,
             failures_reset_at = CASE WHEN $5 THEN $6 ELSE failures_reset_at END,
             last_event_id = $2, updated_at = $6
         WHERE endpoint_id = $1::uuid AND last_event_id < $2 AND NOT deleted",
    )
    .bind(&updated.endpoint_id)
    .bind(event.event_id)
    .bind(&updated.url)
    .bind(&updated.event_types)
    .bind(updated.enabled)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_rotated(
    tx: &mut PgConnection,
    event: &Event,
    rotated: &WebhookSecretRotated,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints
         SET previous_sealed_secret = sealed_secret, sealed_secret = $3,
             previous_valid_until = $4, last_event_id = $2, updated_at = $5
         WHERE endpoint_id = $1::uuid AND last_event_id < $2 AND NOT deleted",
    )
    .bind(&rotated.endpoint_id)
    .bind(event.event_id)
    .bind(&rotated.sealed_secret)
    .bind(from_micros(rotated.previous_valid_until_micros))
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_deleted(tx: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let Some(endpoint_id) = endpoint_of(&event.payload) else {
        return Ok(());
    };
    // Deleting is final, whatever its order among the endpoint's other events.
    sqlx::query(
        "UPDATE webhook_endpoints
         SET deleted = true, enabled = false, last_event_id = GREATEST(last_event_id, $2),
             updated_at = $3
         WHERE endpoint_id = $1::uuid",
    )
    .bind(endpoint_id)
    .bind(event.event_id)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_disabled(
    tx: &mut PgConnection,
    event: &Event,
    disabled: &WebhookEndpointDisabled,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints
         SET enabled = false, disabled_reason = $3, last_event_id = $2, updated_at = $4
         WHERE endpoint_id = $1::uuid AND last_event_id < $2 AND NOT deleted",
    )
    .bind(&disabled.endpoint_id)
    .bind(event.event_id)
    .bind(&disabled.reason)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_attempt(
    tx: &mut PgConnection,
    event: &Event,
    attempt: &WebhookDeliveryAttempted,
) -> Result<Outcome, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO webhook_attempts
             (event_id, endpoint_id, message_id, message_type, image_id, attempt, redelivery,
              url, status_code, duration_ms, error_class, next_attempt_at, attempted_at)
         VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(&attempt.endpoint_id)
    .bind(&attempt.message_id)
    .bind(&attempt.message_type)
    .bind(event.image_id)
    .bind(attempt.attempt)
    .bind(attempt.redelivery)
    .bind(&attempt.url)
    .bind(attempt.status_code)
    .bind(attempt.duration_ms)
    .bind(&attempt.error_class)
    .bind(attempt.next_attempt_micros.map(from_micros))
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Outcome::Duplicate);
    }
    // Attempts of different images arrive from different partitions, out of time order: a
    // failure only starts the failing time if it is newer than the last delivery, and a
    // delivery only ends a failing time that began before it.
    let query = if attempt.error_class.is_none() {
        "UPDATE webhook_endpoints
         SET last_delivered_at = GREATEST(last_delivered_at, $2),
             failing_since = CASE WHEN failing_since <= $2 THEN NULL ELSE failing_since END
         WHERE endpoint_id = $1::uuid"
    } else {
        "UPDATE webhook_endpoints
         SET failing_since = LEAST(failing_since, $2)
         WHERE endpoint_id = $1::uuid AND (last_delivered_at IS NULL OR last_delivered_at < $2)
           AND (failures_reset_at IS NULL OR failures_reset_at < $2)"
    };
    sqlx::query(query)
        .bind(&attempt.endpoint_id)
        .bind(event.occurred_at)
        .execute(&mut *tx)
        .await?;
    Ok(Outcome::Changed)
}

/// Unix microseconds as a time; out of range (no real clock) clamps to the epoch.
fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
