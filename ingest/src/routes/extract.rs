//! axum's `Query` and `Path`, answering a request they cannot read with the JSON envelope and
//! a stable code (`invalid-query`, `invalid-image-id`) instead of axum's text/plain 400.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::IngestError;

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
