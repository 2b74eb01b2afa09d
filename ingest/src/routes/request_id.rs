//! `X-Request-Id`: the client's when it is fit to log, else a generated UUIDv7. It is echoed
//! on every response, logged with the request, and becomes the correlation id of the events
//! the request appends.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

pub(super) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest `X-Request-Id` taken from a client; it is logged and put in events.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// The request's id, once [`TimeOrderedRequestId`] has made sure it has one.
pub(super) fn of(headers: &HeaderMap) -> Option<&str> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok())
}

/// Drops a client's `X-Request-Id` that is not 1 to [`MAX_REQUEST_ID_CHARS`] visible ASCII
/// characters, so that one is generated instead: what goes into logs and events is bounded
/// and printable.
pub(super) async fn drop_unfit<B>(mut request: Request<B>) -> Request<B> {
    let fit = |value: &HeaderValue| {
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
pub(super) struct TimeOrderedRequestId;

impl MakeRequestId for TimeOrderedRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}
