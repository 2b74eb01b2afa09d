//! Every error the API answers, each with a stable kebab-case code. Client mistakes are 4xx
//! and logged at WARN or below; a dependency outage is 503 with Retry-After.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing Authorization: Bearer <api key>")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("this API key may only read (GET, HEAD); uploads and deletes need a read-write key")]
    InsufficientScope,
    #[error("the request body is empty")]
    EmptyBody,
    #[error("the body is over the {limit}-byte upload limit")]
    PayloadTooLarge { limit: u64 },
    #[error("the body is not an image in a supported format (JPEG, PNG, WebP, GIF, TIFF)")]
    UnsupportedMediaType,
    #[error("the image header cannot be read: {0}")]
    UnreadableImage(String),
    #[error("{width}x{height} is over the limit of {max_pixels} pixels and {max_side} px a side")]
    ImageTooLarge {
        width: u64,
        height: u64,
        max_pixels: u64,
        max_side: u64,
    },
    #[error("the upload body could not be read: {0}")]
    BodyRead(String),
    #[error("the multipart/form-data body is not a valid upload form: {0}")]
    InvalidMultipart(String),
    #[error("the form has no `file` field")]
    MissingFile,
    #[error("the `metadata` field is not valid: {0}")]
    InvalidMetadata(String),
    #[error("{0} is not an image id")]
    InvalidImageId(String),
    #[error("no image with that id")]
    ImageNotFound,
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with a different body")]
    IdempotencyKeyReused,
    #[error("an upload with this Idempotency-Key is in progress; retry shortly")]
    IdempotencyKeyInFlight,
    #[error("rate limit reached; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("no such route; the API is under /v1")]
    RouteNotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the event log is unavailable; the upload was not accepted, retry later")]
    EventLogUnavailable(String),
    #[error("object storage is unavailable; the upload was not accepted, retry later")]
    StorageUnavailable(String),
    #[error("the read model is unavailable, retry later")]
    DatabaseUnavailable(String),
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl IngestError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing-api-key",
            Self::InvalidApiKey => "invalid-api-key",
            Self::InsufficientScope => "insufficient-scope",
            Self::EmptyBody => "empty-body",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::UnreadableImage(_) => "unreadable-image",
            Self::ImageTooLarge { .. } => "image-too-large",
            Self::BodyRead(_) => "body-read-failed",
            Self::InvalidMultipart(_) => "invalid-multipart",
            Self::MissingFile => "missing-file",
            Self::InvalidMetadata(_) => "invalid-metadata",
            Self::InvalidImageId(_) => "invalid-image-id",
            Self::ImageNotFound => "image-not-found",
            Self::InvalidQuery(_) => "invalid-query",
            Self::RateLimited { .. } => "rate-limited",
            Self::InvalidIdempotencyKey => "invalid-idempotency-key",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::RouteNotFound => "route-not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::EventLogUnavailable(_) => "event-log-unavailable",
            Self::StorageUnavailable(_) => "storage-unavailable",
            Self::DatabaseUnavailable(_) => "database-unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::EmptyBody
            | Self::BodyRead(_)
            | Self::InvalidMultipart(_)
            | Self::MissingFile
            | Self::InvalidMetadata(_)
            | Self::InvalidImageId(_)
            | Self::InvalidQuery(_)
            | Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UnreadableImage(_) | Self::ImageTooLarge { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::ImageNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::IdempotencyKeyReused | Self::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            Self::EventLogUnavailable(_)
            | Self::StorageUnavailable(_)
            | Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::EventLogUnavailable(cause)
            | Self::StorageUnavailable(cause)
            | Self::DatabaseUnavailable(cause) => {
                tracing::error!(code = self.code(), error = %cause, "dependency unavailable");
            }
            _ => tracing::info!(code = self.code(), error = %self, "request rejected"),
        }
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
        };
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs.to_string()),
            Self::IdempotencyKeyInFlight => Some("1".to_string()),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some("5".to_string()),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
