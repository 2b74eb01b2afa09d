//! The HTTP surface: `/v1` for apps, `/healthz` and `/readyz` for operators.

mod as_of;
mod images;
mod queries;
mod readiness;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, Request};
use axum::Router;
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::storage::ObjectStore;
use sqlx::PgPool;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::ApiKeys;
use crate::config::IngestSettings;
use crate::rate_limit::RateLimits;
use crate::IngestError;

pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: ObjectStore,
    pub events: EventProducer,
    pub pool: PgPool,
    pub api_keys: Arc<ApiKeys>,
    pub settings: Arc<IngestSettings>,
    pub rate_limits: Arc<RateLimits>,
}

/// The `/v1` routes, with the documentation of those that carry it.
pub(crate) fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().nest(
        "/v1",
        images::router()
            .merge(upload::router())
            .merge(queries::router()),
    )
}

pub fn router(state: AppState) -> Router {
    let readiness = Arc::new(readiness::Dependencies::from(&state));
    let (v1, documented) = v1().split_for_parts();
    let document = crate::openapi::assemble(documented);
    Router::new()
        .merge(v1)
        .route("/v1/openapi.json", crate::openapi::serve(document))
        .with_state(state)
        .merge(imgpipe_infra::ops::router(readiness, None))
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(|| async { IngestError::RouteNotFound })
        .method_not_allowed_fallback(|| async { IngestError::MethodNotAllowed })
        // A client that stops sending mid-body gets 408 instead of holding a handler forever.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(60)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
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
}

/// Generates a UUIDv7 request id when the client sent none.
#[derive(Clone, Copy)]
struct TimeOrderedRequestId;

impl MakeRequestId for TimeOrderedRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}
