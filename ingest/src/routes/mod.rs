//! The HTTP surface: `/v1` for apps, `/healthz` and `/readyz` for operators.

mod as_of;
mod extract;
mod images;
mod queries;
mod readiness;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
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

/// What `IMGPIPE_INGEST_OPS_ADDR` serves, when set: `/metrics`, `/healthz` and `/readyz`.
pub fn ops_router(state: &AppState) -> Router {
    let readiness = Arc::new(readiness::Dependencies::from(state));
    imgpipe_infra::ops::router(readiness, None)
        .route("/metrics", axum::routing::get(crate::metrics::render))
}

pub fn router(state: AppState) -> Router {
    let readiness = Arc::new(readiness::Dependencies::from(&state));
    let limits = Arc::clone(&state.rate_limits);
    let (v1, documented) = v1().split_for_parts();
    let document = crate::openapi::assemble(documented);
    let metrics_here = state.settings.ops_addr.is_none();
    let mut public = Router::new()
        .merge(v1)
        .route("/v1/openapi.json", crate::openapi::serve(document))
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
        .layer(axum::middleware::map_request(drop_unfit_request_id))
}

/// Counts an API request against its address's budget before anything else is done for it
/// (the API key is not checked yet): 429 `rate-limited` over it. `/healthz`, `/readyz` and
/// `/metrics` are the operators' and are not counted.
async fn limit_per_address(
    State(limits): State<Arc<RateLimits>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path().starts_with("/v1/") {
        if let Some(peer) = crate::server::peer(&request) {
            if let Err(error) = limits.check_ip(peer.ip()) {
                return error.into_response();
            }
        }
    }
    next.run(request).await
}

/// The longest `X-Request-Id` taken from a client; it is logged and put in events.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Drops a client's `X-Request-Id` that is not 1 to [`MAX_REQUEST_ID_CHARS`] visible ASCII
/// characters, so that one is generated instead: what goes into logs and events is bounded
/// and printable.
async fn drop_unfit_request_id<B>(mut request: Request<B>) -> Request<B> {
    let fit = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_CHARS
            && bytes.iter().all(u8::is_ascii_graphic)
    };
    let headers = request.headers();
    let values = headers.get_all(&REQUEST_ID);
    if values.iter().count() > 1 || values.iter().any(|value| !fit(value)) {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
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
