//! Every error the API answers, each with a stable kebab-case code. Client mistakes are 4xx
//! and logged at WARN or below; a dependency outage is 503 with Retry-After.

use std::net::IpAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgpipe_webhooks::target::TargetRefused;
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
    #[error("the image had not been uploaded yet at {0}")]
    NotYetUploaded(String),
    #[error("the image's events up to {0} were recorded before the timeline kept payloads; a read model rebuilt from the log can answer")]
    AsOfUnavailable(String),
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
    #[error("this client has {limit} uploads in progress, the most it may; retry when one ends")]
    TooManyUploads { limit: usize },
    #[error("the server has as many uploads in progress as it takes; retry shortly")]
    ServerBusy,
    #[error("the upload took longer than {secs} s to arrive")]
    UploadTimedOut { secs: u64 },
    #[error("another request is deleting this image; retry shortly")]
    DeletionInFlight,
    #[error("no such route; the API is under /v1")]
    RouteNotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the event log is unavailable; the upload was not accepted, retry later")]
    EventLogUnavailable(#[source] imgpipe_infra::InfraError),
    #[error("object storage is unavailable; the upload was not accepted, retry later")]
    StorageUnavailable(#[source] imgpipe_infra::InfraError),
    #[error("the read model is unavailable, retry later")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("webhooks are not enabled on this deployment (no sealing key is configured)")]
    WebhooksDisabled,
    #[error("the request body is not valid JSON for this route: {0}")]
    InvalidJson(String),
    #[error("{0} is not a webhook id")]
    InvalidWebhookId(String),
    #[error("no webhook endpoint with that id")]
    WebhookNotFound,
    /// A URL that does not parse, is too long, or carries credentials.
    #[error("{0}")]
    InvalidWebhookUrl(imgpipe_webhooks::target::TargetRefused),
    #[error("{0}")]
    WebhookUrlInsecure(imgpipe_webhooks::target::TargetRefused),
    #[error("{0}")]
    WebhookAddressRefused(imgpipe_webhooks::target::TargetRefused),
    #[error(
        "event_types must be a non-empty list of image.ready, image.failed, image.deleted: {0}"
    )]
    InvalidEventTypes(String),
    #[error("the update changes nothing: give at least one of url, event_types, enabled")]
    EmptyWebhookUpdate,
    #[error("this client has {limit} webhook endpoints, the most it may; delete one first")]
    TooManyWebhooks { limit: usize },
    #[error("overlap_seconds must be 0 to {max}")]
    InvalidOverlap { max: u32 },
    #[error(
        "a redelivery names exactly one of message_id (a uuid) and since (an RFC 3339 time): {0}"
    )]
    InvalidRedelivery(String),
    #[error("the endpoint has no delivery of that message to redeliver")]
    WebhookMessageNotFound,
    #[error(
        "the endpoint is disabled: enable it (PATCH enabled: true) to have messages redelivered"
    )]
    WebhookDisabled,
    #[error(
        "the previous secret still signs until {until}: rotate again after it, or with \
         overlap_seconds 0 to replace both now"
    )]
    RotationInProgress { until: String },
    #[error("this client has {limit} status streams open, the most it may; close one first")]
    TooManyStreams { limit: usize },
    #[error("a change sent to the console from another site is refused")]
    CrossSiteRequest,
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl IngestError {
    /// Every stable code, in declaration order: what the API document lists. A client may
    /// rely on these.
    pub fn all_codes() -> Vec<&'static str> {
        Self::one_of_each().iter().map(Self::code).collect()
    }

    /// One error of every variant, so the API document can say which codes each status
    /// carries without a second table to keep in step.
    pub fn one_of_each() -> Vec<IngestError> {
        vec![
            Self::MissingApiKey,
            Self::InvalidApiKey,
            Self::InsufficientScope,
            Self::EmptyBody,
            Self::PayloadTooLarge { limit: 0 },
            Self::UnsupportedMediaType,
            Self::UnreadableImage(String::new()),
            Self::ImageTooLarge {
                width: 0,
                height: 0,
                max_pixels: 0,
                max_side: 0,
            },
            Self::BodyRead(String::new()),
            Self::InvalidMultipart(String::new()),
            Self::MissingFile,
            Self::InvalidMetadata(String::new()),
            Self::InvalidImageId(String::new()),
            Self::ImageNotFound,
            Self::NotYetUploaded(String::new()),
            Self::AsOfUnavailable(String::new()),
            Self::InvalidQuery(String::new()),
            Self::RateLimited {
                retry_after_secs: 0,
            },
            Self::TooManyUploads { limit: 0 },
            Self::ServerBusy,
            Self::UploadTimedOut { secs: 0 },
            Self::DeletionInFlight,
            Self::InvalidIdempotencyKey,
            Self::IdempotencyKeyReused,
            Self::IdempotencyKeyInFlight,
            Self::RouteNotFound,
            Self::MethodNotAllowed,
            Self::EventLogUnavailable(imgpipe_infra::InfraError::Config(String::new())),
            Self::StorageUnavailable(imgpipe_infra::InfraError::Config(String::new())),
            Self::DatabaseUnavailable(sqlx::Error::PoolTimedOut),
            Self::WebhooksDisabled,
            Self::InvalidJson(String::new()),
            Self::InvalidWebhookId(String::new()),
            Self::WebhookNotFound,
            Self::InvalidWebhookUrl(TargetRefused::Malformed),
            Self::WebhookUrlInsecure(TargetRefused::Insecure),
            Self::WebhookAddressRefused(TargetRefused::Address(IpAddr::from([0, 0, 0, 0]))),
            Self::InvalidEventTypes(String::new()),
            Self::EmptyWebhookUpdate,
            Self::TooManyWebhooks { limit: 0 },
            Self::InvalidOverlap { max: 0 },
            Self::InvalidRedelivery(String::new()),
            Self::WebhookMessageNotFound,
            Self::WebhookDisabled,
            Self::RotationInProgress {
                until: String::new(),
            },
            Self::TooManyStreams { limit: 0 },
            Self::CrossSiteRequest,
        ]
    }

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
            Self::NotYetUploaded(_) => "not-yet-uploaded",
            Self::AsOfUnavailable(_) => "as-of-unavailable",
            Self::InvalidQuery(_) => "invalid-query",
            Self::RateLimited { .. } => "rate-limited",
            Self::TooManyUploads { .. } => "too-many-uploads",
            Self::ServerBusy => "server-busy",
            Self::UploadTimedOut { .. } => "upload-timed-out",
            Self::DeletionInFlight => "deletion-in-flight",
            Self::InvalidIdempotencyKey => "invalid-idempotency-key",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::RouteNotFound => "route-not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::EventLogUnavailable(_) => "event-log-unavailable",
            Self::StorageUnavailable(_) => "storage-unavailable",
            Self::DatabaseUnavailable(_) => "database-unavailable",
            Self::WebhooksDisabled => "webhooks-disabled",
            Self::InvalidJson(_) => "invalid-json",
            Self::InvalidWebhookId(_) => "invalid-webhook-id",
            Self::WebhookNotFound => "webhook-not-found",
            Self::InvalidWebhookUrl(_) => "invalid-webhook-url",
            Self::WebhookUrlInsecure(_) => "webhook-url-insecure",
            Self::WebhookAddressRefused(_) => "webhook-address-refused",
            Self::InvalidEventTypes(_) => "invalid-event-types",
            Self::EmptyWebhookUpdate => "empty-webhook-update",
            Self::TooManyWebhooks { .. } => "too-many-webhooks",
            Self::InvalidOverlap { .. } => "invalid-overlap",
            Self::InvalidRedelivery(_) => "invalid-redelivery",
            Self::WebhookMessageNotFound => "webhook-message-not-found",
            Self::WebhookDisabled => "webhook-disabled",
            Self::RotationInProgress { .. } => "rotation-in-progress",
            Self::TooManyStreams { .. } => "too-many-streams",
            Self::CrossSiteRequest => "cross-site-request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope | Self::CrossSiteRequest => StatusCode::FORBIDDEN,
            Self::EmptyBody
            | Self::BodyRead(_)
            | Self::InvalidMultipart(_)
            | Self::MissingFile
            | Self::InvalidMetadata(_)
            | Self::InvalidImageId(_)
            | Self::InvalidQuery(_)
            | Self::InvalidIdempotencyKey
            | Self::InvalidJson(_)
            | Self::InvalidWebhookId(_)
            | Self::InvalidWebhookUrl(_)
            | Self::WebhookUrlInsecure(_)
            | Self::WebhookAddressRefused(_)
            | Self::InvalidEventTypes(_)
            | Self::EmptyWebhookUpdate
            | Self::InvalidOverlap { .. }
            | Self::InvalidRedelivery(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UnreadableImage(_) | Self::ImageTooLarge { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::ImageNotFound
            | Self::NotYetUploaded(_)
            | Self::RouteNotFound
            | Self::WebhookNotFound
            | Self::WebhookMessageNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. }
            | Self::TooManyUploads { .. }
            | Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UploadTimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::IdempotencyKeyReused
            | Self::IdempotencyKeyInFlight
            | Self::DeletionInFlight
            | Self::AsOfUnavailable(_)
            | Self::TooManyWebhooks { .. }
            | Self::WebhookDisabled
            | Self::RotationInProgress { .. } => StatusCode::CONFLICT,
            Self::EventLogUnavailable(_)
            | Self::StorageUnavailable(_)
            | Self::DatabaseUnavailable(_)
            | Self::ServerBusy
            | Self::WebhooksDisabled => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A webhook URL the address policy refuses, as the API's code says why.
impl From<TargetRefused> for IngestError {
    fn from(refused: TargetRefused) -> Self {
        match refused {
            TargetRefused::Insecure => Self::WebhookUrlInsecure(refused),
            TargetRefused::Address(_) => Self::WebhookAddressRefused(refused),
            TargetRefused::Malformed | TargetRefused::Credentials => {
                Self::InvalidWebhookUrl(refused)
            }
        }
    }
}

/// A query that failed: 503 `database-unavailable`.
pub(crate) fn database_unavailable(error: sqlx::Error) -> IngestError {
    IngestError::DatabaseUnavailable(error)
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A dependency's failure is ours (ERROR, with its cause); the rest are the client's.
        match std::error::Error::source(&self) {
            Some(cause) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::error!(code = self.code(), error = %cause, "dependency unavailable");
            }
            _ => tracing::info!(code = self.code(), error = %self, "request rejected"),
        }
        metrics::counter!(crate::metrics::ERRORS, "code" => self.code()).increment(1);
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
        };
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs.to_string()),
            Self::IdempotencyKeyInFlight
            | Self::DeletionInFlight
            | Self::TooManyUploads { .. }
            | Self::ServerBusy => Some("1".to_string()),
            Self::TooManyStreams { .. } => Some("5".to_string()),
            // A setting, not an outage: retrying does not help.
            Self::WebhooksDisabled => None,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// No wildcard arm: a new variant does not compile here until it is given a number, and
    /// then `one_of_each_covers_every_variant` fails until `one_of_each` has it.
    fn variant_number(error: &IngestError) -> usize {
        use IngestError::*;
        match error {
            MissingApiKey => 0,
            InvalidApiKey => 1,
            EmptyBody => 2,
            PayloadTooLarge { .. } => 3,
            UnsupportedMediaType => 4,
            UnreadableImage(_) => 5,
            ImageTooLarge { .. } => 6,
            BodyRead(_) => 7,
            InvalidImageId(_) => 8,
            ImageNotFound => 9,
            InvalidQuery(_) => 10,
            RateLimited { .. } => 11,
            InvalidIdempotencyKey => 12,
            IdempotencyKeyReused => 13,
            IdempotencyKeyInFlight => 14,
            RouteNotFound => 15,
            MethodNotAllowed => 16,
            EventLogUnavailable(_) => 17,
            StorageUnavailable(_) => 18,
            DatabaseUnavailable(_) => 19,
            InsufficientScope => 20,
            InvalidMultipart(_) => 21,
            MissingFile => 22,
            InvalidMetadata(_) => 23,
            NotYetUploaded(_) => 24,
            AsOfUnavailable(_) => 25,
            TooManyUploads { .. } => 26,
            ServerBusy => 27,
            UploadTimedOut { .. } => 28,
            DeletionInFlight => 29,
            WebhooksDisabled => 30,
            InvalidJson(_) => 31,
            InvalidWebhookId(_) => 32,
            WebhookNotFound => 33,
            InvalidWebhookUrl(_) => 34,
            WebhookUrlInsecure(_) => 35,
            WebhookAddressRefused(_) => 36,
            InvalidEventTypes(_) => 37,
            EmptyWebhookUpdate => 38,
            TooManyWebhooks { .. } => 39,
            InvalidOverlap { .. } => 40,
            InvalidRedelivery(_) => 41,
            WebhookMessageNotFound => 42,
            WebhookDisabled => 43,
            RotationInProgress { .. } => 44,
            TooManyStreams { .. } => 45,
            CrossSiteRequest => 46,
        }
    }

    #[test]
    fn one_of_each_covers_every_variant() {
        let numbers: BTreeSet<usize> = IngestError::one_of_each()
            .iter()
            .map(variant_number)
            .collect();
        assert_eq!(numbers, (0..=46).collect());
    }

    #[test]
    fn no_two_variants_share_a_code() {
        let codes = IngestError::all_codes();
        let unique: BTreeSet<&str> = codes.iter().copied().collect();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
    }

    #[test]
    fn codes_are_kebab_case_and_errors_are_4xx_or_5xx() {
        for error in IngestError::one_of_each() {
            let code = error.code();
            assert!(
                !code.is_empty()
                    && !code.starts_with('-')
                    && !code.ends_with('-')
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{code}"
            );
            assert!(
                error.status().is_client_error() || error.status().is_server_error(),
                "{code}"
            );
        }
    }
}
