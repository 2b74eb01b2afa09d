//! One image: `GET /v1/images/{id}` and `DELETE /v1/images/{id}`, and what the other routes
//! share about images.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use imgpipe_schemas::{Event, ImageDeleted, Producer};
use serde::Serialize;
use uuid::Uuid;

use super::{AppState, REQUEST_ID};
use crate::auth::Client;
use crate::db::{self, ImageRow, VariantRow};
use crate::IngestError;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/images/{id}", get(status).delete(delete))
}

pub(super) fn producer() -> Producer {
    Producer {
        service: "imgpipe-ingest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
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
    let (image_id, mut image) = owned_image(&state, &client, id).await?;
    let variants = db::variants(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?;
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

/// The image must exist and belong to the client; another client's image is the same 404 as a
/// missing one.
pub(super) async fn owned_image(
    state: &AppState,
    client: &str,
    id: String,
) -> Result<(Uuid, ImageRow), IngestError> {
    let image_id = Uuid::parse_str(&id).map_err(|_| IngestError::InvalidImageId(id))?;
    let image = db::image(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?
        .filter(|image| image.owner == client)
        .ok_or(IngestError::ImageNotFound)?;
    Ok((image_id, image))
}

pub(super) fn database_unavailable(error: sqlx::Error) -> IngestError {
    IngestError::DatabaseUnavailable(error.to_string())
}

#[derive(Debug, Serialize)]
struct Deleting {
    id: Uuid,
    status: &'static str,
}

/// `DELETE /v1/images/{id}`: appends `ImageDeleted` and answers 202; the processor removes the
/// objects and announces `ObjectsDeleted`. Deleting a deleted image again appends nothing.
async fn delete(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IngestError> {
    let (image_id, image) = owned_image(&state, &client, id).await?;
    if image.status == "deleted" {
        return Ok((
            StatusCode::ACCEPTED,
            Json(Deleting {
                id: image_id,
                status: "deleted",
            }),
        )
            .into_response());
    }
    let variant_keys = db::variants(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?
        .into_iter()
        .map(|variant| variant.key)
        .collect();
    let event = Event::new(
        image_id,
        correlation_id(&headers, image_id),
        None,
        producer(),
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
        .map_err(|e| IngestError::EventLogUnavailable(e.to_string()))?;
    tracing::info!(image_id = %image_id, client = %client, "deletion accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(Deleting {
            id: image_id,
            status: "deleting",
        }),
    )
        .into_response())
}

/// The request id (the client's `X-Request-Id` or the one generated for it).
pub(super) fn correlation_id(headers: &HeaderMap, fallback: Uuid) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| fallback.to_string(), str::to_string)
}
