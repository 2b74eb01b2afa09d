//! `/console/api/v1/...`: the API again, for the console's own scripts (uploads with progress,
//! the status stream). A script cannot read the HttpOnly session cookie, and `EventSource`
//! cannot send an `Authorization` header, so this bridge turns the session cookie into the
//! Bearer header (dropping any the request brought) and hands the request to the same `/v1`
//! routes: keys, scopes, limits and errors are the API's own. A change (anything but GET or
//! HEAD) sent from another site is refused with 403 `cross-site-request`.

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::session::{same_origin, session_key};
use crate::error::IngestError;
use crate::state::AppState;

/// Where the bridge serves the `/v1` routes.
pub(crate) const PREFIX: &str = "/console/api";

pub(super) fn router() -> Router<AppState> {
    let (api, _) = crate::routes::v1().split_for_parts();
    Router::new()
        .nest(PREFIX, api)
        .layer(axum::middleware::from_fn(cookie_to_bearer))
}

async fn cookie_to_bearer(mut request: Request, next: Next) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes && !same_origin(request.headers()) {
        return IngestError::CrossSiteRequest.into_response();
    }
    let key = session_key(request.headers());
    let headers = request.headers_mut();
    headers.remove(AUTHORIZATION);
    if let Some(value) = key.and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok()) {
        headers.insert(AUTHORIZATION, value);
    }
    next.run(request).await
}
