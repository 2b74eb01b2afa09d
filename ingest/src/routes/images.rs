use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::LengthLimitError;
use imgpipe_schemas::{Event, ImageUploaded, Producer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AppState, REQUEST_ID};
use crate::auth::Client;
use crate::db::{self, ImageRow, VariantRow};
use crate::sniff::{self, Sniffed};
use crate::IngestError;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/images", post(upload))
        .route("/images/{id}", get(status))
}

fn producer() -> Producer {
    Producer {
        service: "imgpipe-ingest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
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
    let limit = state.settings.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let bytes = read_limited(body, limit).await?;
    let sniffed = sniff::sniff(&bytes)?;
    check_limits(&state, sniffed)?;

    let image_id = Uuid::now_v7();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let original_key = state.store.original_key(image_id);
    let content_type = format!("image/{}", sniffed.format);
    state
        .store
        .put(&original_key, bytes, &content_type)
        .await
        .map_err(|e| IngestError::StorageUnavailable(e.to_string()))?;

    let correlation_id = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| image_id.to_string(), str::to_string);
    let event = Event::new(
        image_id,
        correlation_id,
        None,
        producer(),
        ImageUploaded {
            owner: client.to_string(),
            original_key,
            format: sniffed.format.into(),
            bytes: size as i64,
            sha256: sha256.clone(),
            width: sniffed.width as i32,
            height: sniffed.height as i32,
        },
    );
    let delivery = state
        .events
        .publish(&event)
        .await
        .map_err(|e| IngestError::EventLogUnavailable(e.to_string()))?;
    tracing::info!(
        image_id = %image_id, client = %client, bytes = size, format = sniffed.format,
        partition = delivery.partition, offset = delivery.offset, "upload accepted"
    );

    let location = format!("/v1/images/{image_id}");
    let body = Accepted {
        id: image_id,
        status: "uploaded",
        format: sniffed.format,
        width: sniffed.width,
        height: sniffed.height,
        bytes: size,
        sha256,
        links: Links {
            this: location.clone(),
        },
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
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

#[derive(Debug, Serialize)]
struct ImageStatus {
    id: Uuid,
    #[serde(flatten)]
    image: ImageRow,
    failure: Option<Failure>,
    variants: Vec<VariantRow>,
}

#[derive(Debug, Serialize)]
struct Failure {
    code: String,
    reason: String,
}

/// `GET /v1/images/{id}`: the image as the read model has it. A client sees only its own
/// images; another client's answer is the same 404 as a missing one.
async fn status(
    State(state): State<AppState>,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<ImageStatus>, IngestError> {
    let image_id = Uuid::parse_str(&id).map_err(|_| IngestError::InvalidImageId(id))?;
    let unavailable = |e: sqlx::Error| IngestError::DatabaseUnavailable(e.to_string());
    let mut image = db::image(&state.pool, image_id)
        .await
        .map_err(unavailable)?
        .filter(|image| image.owner == *client)
        .ok_or(IngestError::ImageNotFound)?;
    let variants = db::variants(&state.pool, image_id)
        .await
        .map_err(unavailable)?;
    let failure = match (image.failure_code.take(), image.failure_reason.take()) {
        (Some(code), reason) => Some(Failure {
            code,
            reason: reason.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Json(ImageStatus {
        id: image_id,
        image,
        failure,
        variants,
    }))
}
