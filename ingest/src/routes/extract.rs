//! What handlers take from a request, refused with the JSON envelope and a stable code: the
//! authenticated [`Client`], and axum's `Query` and `Path` answering a request they cannot
//! read with `invalid-query` or `invalid-image-id` instead of axum's text/plain 400.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Path, Query};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::ApiKeys;
use crate::error::IngestError;
use crate::rate_limit::RateLimits;

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
        Arc::<RateLimits>::from_ref(state).check_request(&grant.client, &parts.method)?;
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
