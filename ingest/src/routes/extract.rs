//! What handlers take from a request, refused with the JSON envelope and a stable code: the
//! authenticated [`Client`], and axum's `Query`, `Path` and `Json` answering a request they
//! cannot read with `invalid-query`, `invalid-image-id`, `invalid-webhook-id` or `invalid-json`
//! instead of axum's text/plain 400.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::OriginalUri;
use axum::extract::{
    DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, OptionalFromRequest, Path, Query,
    Request,
};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::ApiKeys;
use crate::error::IngestError;
use crate::rate_limit::RateLimits;

/// The upload route, whose requests count against the upload budgets instead.
const UPLOAD_PATH: &str = "/v1/images";

/// The authenticated client making the request. A key without the scope for the request's
/// method is refused here, so no handler has to remember to check.
#[derive(Debug, Clone)]
pub(super) struct Client(pub Arc<str>);

impl<S> FromRequestParts<S> for Client
where
    S: Send + Sync,
    Arc<ApiKeys>: FromRef<S>,
    Arc<RateLimits>: FromRef<S>,
{
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(IngestError::MissingApiKey)?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or(IngestError::MissingApiKey)?;
        let api_keys = Arc::<ApiKeys>::from_ref(state);
        let grant = api_keys.grant_for(key).ok_or(IngestError::InvalidApiKey)?;
        if !grant.scope.allows(&parts.method) {
            return Err(IngestError::InsufficientScope);
        }
        // Uploads are counted by their own budgets (uploads and bytes per minute).
        // (The router nests `/v1`, so the path as requested is the original URI's.)
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(parts.uri.path(), |original| original.0.path());
        // The console's bridge serves the same routes under its prefix.
        let path = path
            .strip_prefix(super::console::API_PREFIX)
            .unwrap_or(path);
        let is_upload = parts.method == Method::POST && path == UPLOAD_PATH;
        Arc::<RateLimits>::from_ref(state).check_request(
            &grant.client,
            &parts.method,
            is_upload,
        )?;
        Ok(Client(grant.client.clone()))
    }
}

/// The query string as `T`; 400 `invalid-query` when it does not read as one.
pub(super) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| IngestError::InvalidQuery(rejection.body_text()))
    }
}

/// The route's `{id}`; 400 `invalid-image-id` when it cannot be read (not UTF-8, say).
pub(super) struct ImageIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ImageIdPath {
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|rejection| IngestError::InvalidImageId(rejection.body_text()))
    }
}

/// The route's `{id}` as a webhook endpoint's id; 400 `invalid-webhook-id` when it is not a UUID.
pub(super) struct WebhookIdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for WebhookIdPath {
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| IngestError::InvalidWebhookId(rejection.body_text()))?;
        Uuid::parse_str(&id)
            .map(Self)
            .map_err(|_| IngestError::InvalidWebhookId(id))
    }
}

/// The most a JSON request body may hold (the API's JSON bodies are a few hundred bytes).
pub(super) const JSON_BODY_LIMIT: usize = 16 * 1024;

/// The limit layer of routes taking [`ApiJson`] bodies.
pub(super) fn json_body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(JSON_BODY_LIMIT)
}

/// A JSON request body as `T` (`Content-Type: application/json`); 400 `invalid-json` when it
/// does not read as one, 413 `payload-too-large` over [`JSON_BODY_LIMIT`]. As an `Option`, a
/// request without a Content-Type (no body) is `None`.
pub(super) struct ApiJson<T>(pub T);

fn json_rejected(rejection: JsonRejection) -> IngestError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        IngestError::PayloadTooLarge {
            limit: JSON_BODY_LIMIT as u64,
        }
    } else {
        IngestError::InvalidJson(rejection.body_text())
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = IngestError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        <Json<T> as FromRequest<S>>::from_request(request, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(json_rejected)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = IngestError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        <Json<T> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map(|json| json.map(|Json(value)| Self(value)))
            .map_err(json_rejected)
    }
}
