//! One image: `GET /v1/images/{id}` and `DELETE /v1/images/{id}`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgpipe_schemas::state::Status;
use imgpipe_schemas::ImageDeleted;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::as_of;
use super::envelope;
use super::extract::{ApiQuery, Client, ImageIdPath};
use super::ownership::owned_image;
use super::view::{ImageStatus, Variant};
use crate::db::{self, ImageRow};
use crate::error::{database_unavailable, ErrorBody, IngestError};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status, delete))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// An RFC 3339 time, e.g. `2026-11-22T19:30:00Z` (a `+hh:mm` offset's `+` sent unencoded
    /// reads as a space, which is taken as `+`): the image as it was then, folded from its
    /// timeline's events that occurred at or before it. The answer has the same fields, plus
    /// `as_of`, and its variants carry no `url`.
    #[param(value_type = Option<String>, format = DateTime)]
    as_of: Option<String>,
}

/// The image as the read model has it, with a presigned URL for each variant; or, with
/// `as_of`, as it was at that time.
///
/// Right after the upload's 202, before the read model has the image, it reads `uploaded` with
/// what the 202 said (ingest's own record of the upload): poll for the result.
#[utoipa::path(
    get,
    path = "/images/{id}",
    tag = "images",
    operation_id = "get_image",
    params(("id" = Uuid, Path, description = "The id the upload's 202 gave"), StatusQuery),
    responses(
        (status = 200, description = "The image", body = ImageStatus),
        (status = 400, description = "`invalid-image-id`, `invalid-query` (as_of is not an RFC 3339 time)", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 404, description = "`image-not-found` (also another client's image); `not-yet-uploaded` (as_of is before the upload)", body = ErrorBody),
        (status = 409, description = "`as-of-unavailable`: the image's events up to as_of were projected before the timeline kept payloads", body = ErrorBody),
        (status = 503, description = "`database-unavailable`, `storage-unavailable`", body = ErrorBody),
    ),
)]
async fn status(
    State(state): State<AppState>,
    Client(client): Client,
    ImageIdPath(id): ImageIdPath,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Result<Json<ImageStatus>, IngestError> {
    // Checked before the image is looked up, so a bad time is 400 whether or not the id exists.
    let as_of = query.as_of.as_deref().map(as_of::parse).transpose()?;
    let (image_id, image) = owned_image(&state, &client, id).await?;
    if let Some(as_of) = as_of {
        return as_of::image_at(&state, image_id, as_of).await.map(Json);
    }
    current(&state, image_id, image).await.map(Json)
}

/// The image as the read model has it now, each variant with a freshly presigned URL: what
/// `GET /v1/images/{id}` answers and its status stream sends.
pub(super) async fn current(
    state: &AppState,
    image_id: Uuid,
    image: ImageRow,
) -> Result<ImageStatus, IngestError> {
    let stored = db::variants(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?;
    let ttl = Duration::from_secs(state.settings.presign_ttl_secs);
    // Signatures are dated in whole seconds at signing; taking the time before signing and
    // dropping its fraction keeps the advertised expiry from being later than theirs.
    let now = OffsetDateTime::now_utc();
    let urls_expire_at = now - time::Duration::nanoseconds(now.nanosecond().into()) + ttl;
    let mut variants = Vec::with_capacity(stored.len());
    for stored in stored {
        let url = state
            .store
            .presigned_get(&stored.key, ttl)
            .await
            .map_err(IngestError::StorageUnavailable)?;
        variants.push(Variant::current(stored, url));
    }
    Ok(ImageStatus::current(
        image_id,
        image,
        variants,
        urls_expire_at,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
struct Deleting {
    id: Uuid,
    /// `deleting` when this request started the deletion, `deleted` when it was already done.
    #[schema(value_type = String)]
    status: &'static str,
}

/// Deletes the image: the original and every variant are removed, then the image reads
/// `deleted` with no variants.
///
/// Appends `ImageDeleted` and answers 202; the processor removes the objects and announces
/// `ObjectsDeleted`. Deleting a deleted image again, or one whose deletion another DELETE
/// already appended, appends nothing.
#[utoipa::path(
    delete,
    path = "/images/{id}",
    tag = "images",
    operation_id = "delete_image",
    params(("id" = Uuid, Path, description = "The id the upload's 202 gave")),
    responses(
        (status = 202, description = "Deletion accepted (or already done)", body = Deleting),
        (status = 400, description = "`invalid-image-id`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 404, description = "`image-not-found` (also another client's image)", body = ErrorBody),
        (status = 409, description = "`deletion-in-flight`: another DELETE of the image is appending its deletion (with Retry-After)", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's deletes per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn delete(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    ImageIdPath(id): ImageIdPath,
) -> Result<Response, IngestError> {
    let (image_id, image) = owned_image(&state, &client, id).await?;
    if image.status == Status::Deleted {
        return Ok(deleting(image_id, "deleted"));
    }
    if !claim_deletion(&state, &client, image_id).await? {
        return Ok(deleting(image_id, "deleting"));
    }
    let appended = append_deletion(&state, &client, &headers, image_id, image).await;
    let key = deletion_key(image_id);
    match &appended {
        Ok(()) => {
            let done = serde_json::json!({ "id": image_id, "status": "deleting" });
            if let Err(error) =
                db::complete_idempotency_key(&state.pool, &client, &key, &done).await
            {
                // Only a DELETE after the claim's in-flight window could append again.
                tracing::warn!(error = %error, "could not record the appended deletion");
            }
        }
        Err(_) => {
            if let Err(error) = db::release_idempotency_key(&state.pool, &client, &key).await {
                tracing::warn!(error = %error, "could not release the deletion claim");
            }
        }
    }
    appended?;
    tracing::info!(image_id = %image_id, client = %client, "deletion accepted");
    Ok(deleting(image_id, "deleting"))
}

fn deleting(id: Uuid, status: &'static str) -> Response {
    (StatusCode::ACCEPTED, Json(Deleting { id, status })).into_response()
}

/// A claim older than this whose `ImageDeleted` was never recorded as appended is taken over
/// (its request failed, or its ingest died); the append times out well before.
const DELETION_IN_FLIGHT: time::Duration = time::Duration::minutes(1);

/// The image's deletion claim, kept with the clients' Idempotency-Keys under a key no client
/// can send (those are visible ASCII; this has a space).
fn deletion_key(image_id: Uuid) -> String {
    format!("delete {image_id}")
}

/// Claims the image's one `ImageDeleted` for this request: `false` when an earlier DELETE
/// appended it (the read model may not show it yet), 409 `deletion-in-flight` while another
/// is appending it. Repeated or concurrent DELETEs so append one event.
async fn claim_deletion(
    state: &AppState,
    client: &str,
    image_id: Uuid,
) -> Result<bool, IngestError> {
    let key = deletion_key(image_id);
    let existing = db::reserve_idempotency_key(
        &state.pool,
        client,
        &key,
        "",
        image_id,
        state.settings.idempotency_ttl(),
    )
    .await
    .map_err(database_unavailable)?;
    let Some(existing) = existing else {
        return Ok(true);
    };
    if existing.response.is_some() {
        return Ok(false);
    }
    let stale = existing.reserved_at < OffsetDateTime::now_utc() - DELETION_IN_FLIGHT;
    if stale
        && db::retake_idempotency_key(&state.pool, client, &key, existing.reserved_at)
            .await
            .map_err(database_unavailable)?
    {
        return Ok(true);
    }
    Err(IngestError::DeletionInFlight)
}

async fn append_deletion(
    state: &AppState,
    client: &str,
    headers: &HeaderMap,
    image_id: Uuid,
    image: ImageRow,
) -> Result<(), IngestError> {
    let variant_keys = db::variants(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?
        .into_iter()
        .map(|variant| variant.key)
        .collect();
    let event = envelope::event(
        headers,
        image_id,
        ImageDeleted {
            requested_by: client.to_string(),
            original_key: image.original_key,
            variant_keys,
        },
    );
    state
        .events
        .publish(&event)
        .await
        .map_err(IngestError::EventLogUnavailable)?;
    Ok(())
}
