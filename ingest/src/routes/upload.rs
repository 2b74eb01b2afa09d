//! `POST /v1/images`: validate, store the original, announce it, answer 202.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::LengthLimitError;
use imgpipe_schemas::{Event, ImageUploaded};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::images::{correlation_id, database_unavailable, producer};
use super::AppState;
use crate::auth::Client;
use crate::db;
use crate::sniff::{self, Sniffed};
use crate::IngestError;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/images", post(upload))
}

#[derive(Debug, Serialize)]
struct Accepted {
    id: Uuid,
    status: &'static str,
    format: &'static str,
    width: u64,
    height: u64,
    bytes: u64,
    sha256: String,
    links: Links,
}

#[derive(Debug, Serialize)]
struct Links {
    #[serde(rename = "self")]
    this: String,
}

/// `POST /v1/images` with the image as the raw body.
///
/// Order matters: the original is durable in object storage before the event is appended,
/// and 202 is sent only after the broker acknowledged the event. If the append fails, the
/// client gets 503 and the stored original is an orphan for the sweeper, never a half-accepted
/// upload.
async fn upload(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    state.rate_limits.check_upload(&client)?;
    let limit = state.settings.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let bytes = read_limited(body, limit).await?;
    state.rate_limits.check_bytes(&client, bytes.len() as u64)?;
    let sniffed = sniff::sniff(&bytes)?;
    check_limits(&state, sniffed)?;

    let sha256 = hex::encode(Sha256::digest(&bytes));
    let idempotency_key = idempotency_key(&headers)?;
    let image_id = match &idempotency_key {
        None => Uuid::now_v7(),
        Some(key) => match claim(&state, &client, key, &sha256).await? {
            Claim::Fresh(image_id) => image_id,
            Claim::Replay(response) => return Ok(replay(response)),
        },
    };
    let result =
        store_and_announce(&state, &client, &headers, image_id, bytes, sniffed, &sha256).await;
    if let Some(key) = &idempotency_key {
        match &result {
            Ok(response) => {
                if let Err(error) =
                    db::complete_idempotency_key(&state.pool, &client, key, response).await
                {
                    // The upload stands; a retry with this key redoes it under the same image
                    // id, which downstream handles as a redelivery.
                    tracing::warn!(error = %error, "could not record the idempotent response");
                }
            }
            Err(_) => {
                if let Err(error) = db::release_idempotency_key(&state.pool, &client, key).await {
                    tracing::warn!(error = %error, "could not release the idempotency key");
                }
            }
        }
    }
    let response = result?;
    let mut response = (StatusCode::ACCEPTED, Json(response)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/images/{image_id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Stores the original, appends `ImageUploaded` and returns the 202 body.
async fn store_and_announce(
    state: &AppState,
    client: &str,
    headers: &HeaderMap,
    image_id: Uuid,
    bytes: Bytes,
    sniffed: Sniffed,
    sha256: &str,
) -> Result<serde_json::Value, IngestError> {
    let size = bytes.len() as u64;
    let original_key = state.store.original_key(image_id);
    let content_type = format!("image/{}", sniffed.format);
    state
        .store
        .put(&original_key, bytes, &content_type)
        .await
        .map_err(|e| IngestError::StorageUnavailable(e.to_string()))?;

    let event = Event::new(
        image_id,
        correlation_id(headers, image_id),
        None,
        producer(),
        ImageUploaded {
            owner: client.to_string(),
            original_key,
            format: sniffed.format.into(),
            bytes: size as i64,
            sha256: sha256.to_string(),
            width: sniffed.width as i32,
            height: sniffed.height as i32,
        },
    );
    let produce_started = std::time::Instant::now();
    let delivery = state
        .events
        .publish(&event)
        .await
        .map_err(|e| IngestError::EventLogUnavailable(e.to_string()))?;
    metrics::histogram!(crate::metrics::PRODUCE_SECONDS)
        .record(produce_started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::UPLOAD_BYTES).increment(size);
    tracing::info!(
        image_id = %image_id, client = %client, bytes = size, format = sniffed.format,
        partition = delivery.partition, offset = delivery.offset, "upload accepted"
    );

    let body = Accepted {
        id: image_id,
        status: "uploaded",
        format: sniffed.format,
        width: sniffed.width,
        height: sniffed.height,
        bytes: size,
        sha256: sha256.to_string(),
        links: Links {
            this: format!("/v1/images/{image_id}"),
        },
    };
    serde_json::to_value(body).map_err(|e| IngestError::BodyRead(e.to_string()))
}

/// An upload's Idempotency-Key, if it sent one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, IngestError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| IngestError::InvalidIdempotencyKey)?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IngestError::InvalidIdempotencyKey);
    }
    Ok(Some(key.to_string()))
}

enum Claim {
    /// Go ahead with this image id (new, or the one a failed attempt reserved).
    Fresh(Uuid),
    /// The key's first upload succeeded: answer what it answered.
    Replay(serde_json::Value),
}

/// An attempt newer than this may still be in flight (produce and S3 time out well before).
const IN_FLIGHT: time::Duration = time::Duration::minutes(2);

async fn claim(
    state: &AppState,
    client: &str,
    key: &str,
    sha256: &str,
) -> Result<Claim, IngestError> {
    let new_id = Uuid::now_v7();
    let existing = db::reserve_idempotency_key(&state.pool, client, key, sha256, new_id)
        .await
        .map_err(database_unavailable)?;
    let Some(existing) = existing else {
        return Ok(Claim::Fresh(new_id));
    };
    if existing.body_sha256 != sha256 {
        return Err(IngestError::IdempotencyKeyReused);
    }
    if let Some(response) = existing.response {
        return Ok(Claim::Replay(response));
    }
    let stale = existing.reserved_at < time::OffsetDateTime::now_utc() - IN_FLIGHT;
    if stale
        && db::retake_idempotency_key(&state.pool, client, key, existing.reserved_at)
            .await
            .map_err(database_unavailable)?
    {
        return Ok(Claim::Fresh(existing.image_id));
    }
    Err(IngestError::IdempotencyKeyInFlight)
}

fn replay(body: serde_json::Value) -> Response {
    let location = body["links"]["self"].as_str().map(str::to_string);
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(value) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, value);
    }
    response
}

async fn read_limited(body: Body, limit: u64) -> Result<Bytes, IngestError> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit_usize)
        .await
        .map_err(|error| {
            let inner = error.into_inner();
            if inner.downcast_ref::<LengthLimitError>().is_some() {
                IngestError::PayloadTooLarge { limit }
            } else {
                IngestError::BodyRead(inner.to_string())
            }
        })
}

fn check_limits(state: &AppState, sniffed: Sniffed) -> Result<(), IngestError> {
    let settings = &state.settings;
    if sniffed.width > settings.max_side
        || sniffed.height > settings.max_side
        || sniffed.width * sniffed.height > settings.max_pixels
    {
        return Err(IngestError::ImageTooLarge {
            width: sniffed.width,
            height: sniffed.height,
            max_pixels: settings.max_pixels,
            max_side: settings.max_side,
        });
    }
    Ok(())
}
