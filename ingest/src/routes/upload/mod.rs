//! `POST /v1/images`: admit the upload, stream its body into object storage, then announce it
//! and answer 202.

mod body;
mod form;
mod framing;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use imgpipe_schemas::state::Status;
use imgpipe_schemas::ImageUploaded;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use self::body::{
    body_error, discard, drain, receive, storage_unavailable, with_deadline, Received,
    DRAIN_LIMIT_FACTOR,
};
use self::form::{is_multipart, receive_form, Metadata, MULTIPART_OVERHEAD};
use super::envelope;
use super::extract::Client;
use crate::db;
use crate::error::{database_unavailable, ErrorBody, IngestError};
use crate::slots::Slot;
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    // The upload counts its own bytes against the configured limit (413) as they stream; axum's
    // default 2 MB cap on multipart bodies would refuse legitimate images first.
    // On the method router, not the router: a layered router's route would no longer merge
    // with `GET /v1/images` on the same path.
    let (schemas, paths, upload) = routes!(upload);
    OpenApiRouter::new().routes((schemas, paths, upload.layer(DefaultBodyLimit::disable())))
}

/// The 202 body of an accepted upload.
#[derive(Debug, Serialize, ToSchema)]
struct Accepted {
    id: Uuid,
    /// Always `uploaded`: processing has not started yet.
    #[schema(value_type = String, example = "uploaded")]
    status: Status,
    /// From the magic bytes: `jpeg`, `png`, `webp`, `gif` or `tiff`.
    format: &'static str,
    /// From the header, before EXIF orientation.
    width: u64,
    height: u64,
    bytes: u64,
    /// Of the original's bytes, lowercase hex.
    sha256: String,
    /// The form's `metadata`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    links: Links,
}

#[derive(Debug, Serialize, ToSchema)]
struct Links {
    /// Where to poll the image: `/v1/images/{id}`.
    #[serde(rename = "self")]
    this: String,
}

/// The upload as a form: exactly `file` and an optional `metadata` (see `form::form_schema`).
struct UploadForm;

impl utoipa::PartialSchema for UploadForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        form::form_schema()
    }
}

impl ToSchema for UploadForm {}

/// An image's bytes as the whole request body.
struct RawImage;

impl utoipa::PartialSchema for RawImage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        form::image_schema().into()
    }
}

impl ToSchema for RawImage {}

/// `POST /v1/images`: the image as the raw body, or as the `file` field of a
/// multipart/form-data body with an optional `metadata` field (a JSON object of strings).
///
/// The body streams to object storage as it arrives (a multipart upload once it outgrows one
/// part), so an upload never sits whole in memory. Order matters: the original is durable in
/// object storage before the event is appended, and 202 is sent only after the broker
/// acknowledged the event. If the append fails, the client gets 503 and the stored original
/// is an orphan for the sweeper, never a half-accepted upload.
#[utoipa::path(
    post,
    path = "/images",
    tag = "images",
    operation_id = "upload_image",
    request_body(
        description = "Either the image as the raw body, or multipart/form-data with a `file` \
            part and an optional `metadata` part (a JSON object of strings) and no other part. \
            The format comes from the image's magic bytes (JPEG, PNG, WebP, GIF, TIFF): the \
            Content-Type of the body or of the `file` part is not read, so `image/*` stands \
            for any.",
        content(
            (RawImage = "image/*"),
            (UploadForm = "multipart/form-data", encoding(
                ("file" = (content_type = "image/*")),
                ("metadata" = (content_type = "application/json")),
            )),
        ),
    ),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "Per client, 1 to 255 visible ASCII characters; makes retries safe"),
    ),
    responses(
        (status = 202, description = "Stored and announced", body = Accepted,
            headers(
                ("Location" = String, description = "`/v1/images/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this is a stored answer"),
            )),
        (status = 400, description = "`empty-body`, `body-read-failed`, `invalid-multipart`, `missing-file`, `invalid-metadata`, `invalid-idempotency-key`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 409, description = "`idempotency-key-reused`, `idempotency-key-in-flight` (with Retry-After)", body = ErrorBody),
        (status = 408, description = "`upload-timed-out`: the body took longer than IMGPIPE_INGEST_UPLOAD_DEADLINE_SECS", body = ErrorBody),
        (status = 413, description = "`payload-too-large`", body = ErrorBody),
        (status = 415, description = "`unsupported-media-type`", body = ErrorBody),
        (status = 422, description = "`unreadable-image`, `image-too-large`", body = ErrorBody),
        (status = 429, description = "`rate-limited` (the client's or its address's budget), `too-many-uploads` (the client's uploads in progress)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`event-log-unavailable`, `storage-unavailable`, `database-unavailable`, `server-busy` (uploads in progress): not accepted, retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
async fn upload(
    State(state): State<AppState>,
    client: Result<Client, IngestError>,
    request: Request,
) -> Result<Response, IngestError> {
    let request = with_deadline(request, state.settings.upload_deadline_secs);
    let headers = request.headers().clone();
    let declared = Declared::of(&headers);
    let admitted = match client.and_then(|client| admit(&state, client, &headers, declared)) {
        Ok(admitted) => admitted,
        Err(error) => return Err(refuse(&state, request, declared, error).await),
    };
    let client = &admitted.client;
    let (original, metadata) = receive_upload(&state, client, request, declared).await?;
    let image_id = match &admitted.idempotency_key {
        None => original.image_id,
        Some(key) => match claim(&state, client, key, &original).await? {
            Claim::Fresh(image_id) => image_id,
            Claim::Replay(response) => return Ok(replay(response)),
        },
    };
    let result = store_and_announce(&state, client, &headers, image_id, &original, metadata).await;
    if let Some(key) = &admitted.idempotency_key {
        settle_idempotency_key(&state, client, key, &result).await;
    }
    let mut response = (StatusCode::ACCEPTED, Json(result?)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/images/{image_id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// What the request's headers say of its body.
#[derive(Debug, Clone, Copy)]
struct Declared {
    multipart: bool,
    /// `Content-Length`, when sent.
    length: Option<u64>,
}

impl Declared {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            multipart: is_multipart(headers),
            length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        }
    }
}

/// An upload let in, before its body is read.
struct Admitted {
    client: Arc<str>,
    idempotency_key: Option<String>,
    /// Held until the handler ends.
    _slot: Slot,
}

/// Lets the upload in, or refuses it before its body is read: the client's uploads in
/// progress, its upload budget, its Idempotency-Key, and the declared length against the size
/// limit and (a raw body's) the byte budget.
fn admit(
    state: &AppState,
    Client(client): Client,
    headers: &HeaderMap,
    declared: Declared,
) -> Result<Admitted, IngestError> {
    let limit = state.settings.max_upload_bytes;
    let slot = state.rate_limits.uploads_in_progress.take(&client)?;
    state.rate_limits.check_upload(&client)?;
    let idempotency_key = idempotency_key(headers)?;
    let allowed = if declared.multipart {
        limit + MULTIPART_OVERHEAD
    } else {
        limit
    };
    if declared.length.is_some_and(|length| length > allowed) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    // With the length known, a client over its byte budget is refused before it sends.
    if let (Some(length), false) = (declared.length, declared.multipart) {
        state.rate_limits.check_bytes(&client, length)?;
    }
    Ok(Admitted {
        client,
        idempotency_key,
        _slot: slot,
    })
}

/// Reads what is left of a refused body (see `drain`), unless its declared length is past
/// what would be drained anyway, and gives back why it was refused.
async fn refuse(
    state: &AppState,
    request: Request,
    declared: Declared,
    error: IngestError,
) -> IngestError {
    let limit = state.settings.max_upload_bytes;
    if declared
        .length
        .is_none_or(|length| length <= DRAIN_LIMIT_FACTOR * limit)
    {
        let body = request.into_body().into_data_stream().map_err(body_error);
        drain(std::pin::pin!(body), limit).await;
    }
    error
}

/// Streams the original into object storage, from the form's `file` or the raw body, and
/// charges a body of undeclared length against the client's byte budget once it is in.
async fn receive_upload(
    state: &AppState,
    client: &str,
    request: Request,
    declared: Declared,
) -> Result<(Received, Option<Metadata>), IngestError> {
    if declared.multipart {
        let form = receive_form(state, request).await?;
        charge_bytes(state, client, &form.0).await?;
        return Ok(form);
    }
    let body = request.into_body().into_data_stream().map_err(body_error);
    let mut body = std::pin::pin!(body);
    let original = match receive(state, body.as_mut()).await {
        Ok(original) => original,
        Err(error) => {
            drain(body, state.settings.max_upload_bytes).await;
            return Err(error);
        }
    };
    if declared.length.is_none() {
        charge_bytes(state, client, &original).await?;
    }
    Ok((original, None))
}

/// Records the upload's answer under its Idempotency-Key, or frees the key for a retry when
/// the upload failed.
async fn settle_idempotency_key(
    state: &AppState,
    client: &str,
    key: &str,
    result: &Result<serde_json::Value, IngestError>,
) {
    match result {
        Ok(response) => {
            if let Err(error) =
                db::complete_idempotency_key(&state.pool, client, key, response).await
            {
                // The upload stands; a retry with this key redoes it under the same image
                // id, which downstream handles as a redelivery.
                tracing::warn!(error = %error, "could not record the idempotent response");
            }
        }
        Err(_) => {
            if let Err(error) = db::release_idempotency_key(&state.pool, client, key).await {
                tracing::warn!(error = %error, "could not release the idempotency key");
            }
        }
    }
}

/// Counts a body of unknown length against the client's byte budget once it has arrived;
/// over budget, its stored original is removed again.
async fn charge_bytes(
    state: &AppState,
    client: &str,
    original: &Received,
) -> Result<(), IngestError> {
    if let Err(error) = state.rate_limits.check_bytes(client, original.bytes) {
        discard(state, &original.key).await;
        return Err(error);
    }
    Ok(())
}

/// Appends `ImageUploaded` for an original stored under `image_id` (moving it there first if
/// it was staged under another id) and returns the 202 body.
async fn store_and_announce(
    state: &AppState,
    client: &str,
    headers: &HeaderMap,
    image_id: Uuid,
    original: &Received,
    metadata: Option<Metadata>,
) -> Result<serde_json::Value, IngestError> {
    let original_key = move_to_image_id(state, original, image_id).await?;
    let Received {
        sniffed,
        bytes,
        sha256,
        ..
    } = original;
    let event = envelope::event(
        headers,
        image_id,
        ImageUploaded {
            owner: client.to_string(),
            original_key: original_key.clone(),
            format: sniffed.format.into(),
            bytes: *bytes as i64,
            sha256: sha256.clone(),
            width: sniffed.width as i32,
            height: sniffed.height as i32,
            metadata: metadata.clone().unwrap_or_default().into_iter().collect(),
        },
    );
    let produce_started = std::time::Instant::now();
    let delivery = state
        .events
        .publish(&event)
        .await
        .map_err(IngestError::EventLogUnavailable)?;
    metrics::histogram!(crate::metrics::PRODUCE_SECONDS)
        .record(produce_started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::UPLOAD_BYTES).increment(*bytes);
    tracing::info!(
        image_id = %image_id, client = %client, bytes, format = sniffed.format,
        partition = delivery.partition, offset = delivery.offset, "upload accepted"
    );
    let metadata_recorded = metadata.clone().unwrap_or_default();
    let accepted = db::AcceptedUpload {
        image_id,
        owner: client,
        original_key: &original_key,
        format: sniffed.format,
        bytes: *bytes as i64,
        sha256,
        width: sniffed.width as i32,
        height: sniffed.height as i32,
        metadata: &metadata_recorded,
        accepted_at: event.occurred_at,
    };
    if let Err(error) = db::record_accepted_upload(&state.pool, &accepted).await {
        // The upload stands; until the projector applies it, a GET or DELETE answers 404.
        tracing::warn!(error = %error, image_id = %image_id, "could not record the accepted upload");
    }
    accepted_body(image_id, original, metadata)
}

/// The key of the original under `image_id`, where it is moved first if it was staged under
/// another id (an earlier attempt with the same Idempotency-Key reserved that one).
async fn move_to_image_id(
    state: &AppState,
    original: &Received,
    image_id: Uuid,
) -> Result<String, IngestError> {
    let original_key = state.store.original_key(image_id);
    if original_key != original.key {
        state
            .store
            .copy(&original.key, &original_key)
            .await
            .map_err(storage_unavailable)?;
        discard(state, &original.key).await;
    }
    Ok(original_key)
}

/// The 202 body, as JSON: what is kept under an Idempotency-Key and replayed.
fn accepted_body(
    image_id: Uuid,
    original: &Received,
    metadata: Option<Metadata>,
) -> Result<serde_json::Value, IngestError> {
    let body = Accepted {
        id: image_id,
        status: Status::Uploaded,
        format: original.sniffed.format,
        width: original.sniffed.width,
        height: original.sniffed.height,
        bytes: original.bytes,
        sha256: original.sha256.clone(),
        metadata,
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

/// Reserves the key for this upload, or finds what an earlier upload with it did. Unless the
/// answer is to go ahead with the original as staged, the staged original is removed (or, by
/// the caller, moved to the image id an earlier attempt reserved).
async fn claim(
    state: &AppState,
    client: &str,
    key: &str,
    original: &Received,
) -> Result<Claim, IngestError> {
    let claimed = claim_key(state, client, key, original).await;
    if matches!(claimed, Ok(Claim::Replay(_)) | Err(_)) {
        discard(state, &original.key).await;
    }
    claimed
}

async fn claim_key(
    state: &AppState,
    client: &str,
    key: &str,
    original: &Received,
) -> Result<Claim, IngestError> {
    let sha256 = original.sha256.as_str();
    let existing = db::reserve_idempotency_key(
        &state.pool,
        client,
        key,
        sha256,
        original.image_id,
        state.settings.idempotency_ttl(),
    )
    .await
    .map_err(database_unavailable)?;
    let Some(existing) = existing else {
        return Ok(Claim::Fresh(original.image_id));
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
