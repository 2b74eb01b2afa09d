//! The HTTP surface: `/v1` for apps, `/healthz` and `/readyz` for operators.

mod as_of;
mod console;
mod envelope;
mod extract;
mod images;
mod ownership;
mod page;
mod queries;
mod readiness;
mod request_id;
mod stream;
mod upload;
mod view;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Request;
use axum::response::IntoResponse;
use axum::Router;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use self::request_id::{TimeOrderedRequestId, REQUEST_ID};
use crate::error::IngestError;
use crate::rate_limit::RateLimits;
use crate::state::AppState;

/// The `/v1` routes, with the documentation of those that carry it.
pub(crate) fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().nest(
        "/v1",
        images::router()
            .merge(upload::router())
            .merge(queries::router())
            .merge(stream::router())
            .merge(webhooks::router()),
    )
}

/// What `IMGPIPE_INGEST_OPS_ADDR` serves, when set: `/metrics`, `/healthz` and `/readyz`.
pub fn ops_router(state: &AppState) -> Router {
    let readiness = Arc::new(readiness::Dependencies::from(state));
    imgpipe_infra::ops::router(readiness, None)
        .route("/metrics", axum::routing::get(crate::metrics::render))
}

/// The public listener's router: `api` (the [`v1`] routes, with `GET /v1/openapi.json` as
/// `crate::openapi::with_document` adds it), the operators' routes, and what every request
/// passes through.
pub fn router(api: Router<AppState>, state: AppState) -> Router {
    let readiness = Arc::new(readiness::Dependencies::from(&state));
    let limits = Arc::clone(&state.rate_limits);
    let metrics_here = state.settings.ops_addr.is_none();
    let mut public = api
        .merge(console::router())
        .with_state(state)
        .merge(imgpipe_infra::ops::router(readiness, None));
    if metrics_here {
        public = public.route("/metrics", axum::routing::get(crate::metrics::render));
    }
    public
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            limit_per_address,
        ))
        .fallback(|| async { IngestError::RouteNotFound })
        .method_not_allowed_fallback(|| async { IngestError::MethodNotAllowed })
        // A client that stops sending mid-body gets 408 instead of holding a handler forever.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(60)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request_id::of(request.headers()).unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .layer(SetRequestIdLayer::new(
            REQUEST_ID.clone(),
            TimeOrderedRequestId,
        ))
        .layer(axum::middleware::map_request(request_id::drop_unfit))
}

/// Counts an API request against its address's budget before anything else is done for it
/// (the API key is not checked yet): 429 `rate-limited` over it; the console's pages count too
/// (its sign-in form checks keys). `/healthz`, `/readyz` and `/metrics` are the operators' and
/// are not counted.
async fn limit_per_address(
    State(limits): State<Arc<RateLimits>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if path.starts_with("/v1/") || path.starts_with("/console") {
        if let Some(peer) = crate::server::peer(&request) {
            if let Err(error) = limits.check_ip(peer.ip()) {
                return error.into_response();
            }
        }
    }
    next.run(request).await
}
