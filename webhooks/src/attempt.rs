//! One delivery attempt: one POST, and what came of it.
//!
//! An attempt never fails as a Rust error: whatever happens (refused address, timeout, TLS, a 500)
//! is an `AttemptOutcome` the caller records as an event and schedules the next attempt from.
//! Every attempt is bounded: in time by the client's timeout (`target::http_client`), in memory by
//! reading at most `MAX_RESPONSE_BODY` of the response.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use time::{format_description::well_known::Rfc2822, OffsetDateTime};

use crate::target::{is_address_refused, AddressPolicy, TargetRefused};

/// The most of a response body read. Enough for a receiver's short answer to finish, so that
/// hyper can return the connection to the pool; a longer (or endless) body is dropped unread
/// with its connection, so a receiver cannot make us hold memory or time.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024;

/// The longest `Retry-After` honoured; a longer one is cut to this (the retry schedule and the
/// endpoint's disabling still apply).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Why an attempt did not deliver: a word of the contract (stored in attempt events, shown in
/// the deliveries listing), so it lives in the schemas crate.
pub use imgpipe_schemas::WebhookErrorClass as ErrorClass;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The response's status, if the receiver answered.
    pub status: Option<u16>,
    /// From just before the request until the response (its first `MAX_RESPONSE_BODY` bytes)
    /// was read or the attempt failed.
    pub duration: Duration,
    /// None when delivered (2xx).
    pub error: Option<ErrorClass>,
    /// The receiver's `Retry-After`, capped at `MAX_RETRY_AFTER`.
    pub retry_after: Option<Duration>,
}

impl AttemptOutcome {
    /// Whether the receiver accepted the delivery (answered 2xx).
    pub fn delivered(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// POSTs `body` (JSON) with `headers` to `url` with `client` (built by `target::http_client`).
///
/// The URL is checked against `policy` first, because reqwest does not call the guarded resolver
/// for an IP-literal host: a literal refused address is `AddressRefused` without any network.
/// A response body is read only up to `MAX_RESPONSE_BODY`; once the status is known, the body
/// reading cannot change the outcome.
pub async fn post(
    client: &reqwest::Client,
    policy: &AddressPolicy,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> AttemptOutcome {
    let started = Instant::now();
    let failed = |class| AttemptOutcome {
        status: None,
        duration: started.elapsed(),
        error: Some(class),
        retry_after: None,
    };
    let url = match policy.check_url(url) {
        Ok(url) => url,
        Err(TargetRefused::Address(_)) => return failed(ErrorClass::AddressRefused),
        Err(_) => return failed(ErrorClass::Request),
    };
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(err) => return failed(classify(&err)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, OffsetDateTime::now_utc()));
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    let error = match status.as_u16() {
        200..=299 => None,
        300..=399 => Some(ErrorClass::Redirect),
        _ => Some(ErrorClass::Status),
    };
    AttemptOutcome {
        status: Some(status.as_u16()),
        duration: started.elapsed(),
        error,
        retry_after,
    }
}

/// The class of a request that got no response.
fn classify(err: &reqwest::Error) -> ErrorClass {
    if is_address_refused(err) {
        ErrorClass::AddressRefused
    } else if err.is_timeout() {
        ErrorClass::Timeout
    } else if err.is_connect() && is_tls(err) {
        ErrorClass::Tls
    } else if err.is_connect() {
        ErrorClass::Connect
    } else if err.is_redirect() {
        ErrorClass::Redirect
    } else {
        ErrorClass::Request
    }
}

/// Whether a connect error is a TLS failure. rustls is no dependency of ours to downcast to, but
/// tokio-rustls reports each handshake failure (certificate, alert, a peer not speaking TLS) as an
/// `io::Error` of kind `InvalidData`, which a TCP connect never fails with. It sits inside an
/// `io::Error` of kind `Other`, whose `source()` skips it: hence `get_ref`.
fn is_tls(err: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = next {
        let io = err.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return true;
        }
        next = match io.and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// A `Retry-After` value: delta-seconds, or an HTTP-date (its IMF-fixdate form, which RFC 2822
/// parsing reads; the obsolete RFC 850 and asctime forms give None). A date in the past is zero;
/// anything longer than `MAX_RETRY_AFTER` is cut to it.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        value.parse().map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
        Duration::try_from(at - now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{atomic::AtomicUsize, atomic::Ordering::SeqCst, Arc};
    use std::{convert::Infallible, net::SocketAddr};

    use axum::{body::Body, body::Bytes, extract::State, Router};
    use axum::{http::HeaderMap, http::StatusCode, routing::any, routing::post as route_post};

    use super::ErrorClass::*;
    use super::*;
    use crate::target::{http_client, parse_allow_list};

    type Hits = Arc<AtomicUsize>;

    async fn ok(headers: HeaderMap, body: Bytes) -> StatusCode {
        let json = headers[CONTENT_TYPE] == "application/json";
        let signed = headers["webhook-id"] == "msg_1";
        match json && signed && &body[..] == b"{}" {
            true => StatusCode::NO_CONTENT,
            false => StatusCode::BAD_REQUEST,
        }
    }

    async fn target(State(hits): State<Hits>) -> StatusCode {
        hits.fetch_add(1, SeqCst);
        StatusCode::OK
    }

    async fn endless() -> Body {
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        let chunk = || Ok::<_, Infallible>(Bytes::from_static(&CHUNK));
        Body::from_stream(futures::stream::repeat_with(chunk))
    }

    /// A receiver bound on `bind`, and how many requests reached its `/target`.
    async fn serve(bind: &str) -> (SocketAddr, Hits) {
        let hits = Hits::default();
        let fail = || async { (StatusCode::INTERNAL_SERVER_ERROR, [(RETRY_AFTER, "7")]) };
        let redirect = || async { (StatusCode::FOUND, [("location", "/target")]) };
        let router = Router::new()
            .route("/ok", route_post(ok))
            .route("/fail", any(fail))
            .route("/redirect", any(redirect))
            .route("/target", any(target))
            .route("/slow", any(|| tokio::time::sleep(Duration::from_secs(30))))
            .route("/huge", any(|| async { vec![b'x'; 10 * 1024 * 1024] }))
            .route("/endless", any(endless))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, hits)
    }

    fn allowing(list: &str) -> Arc<AddressPolicy> {
        Arc::new(AddressPolicy::new(true, parse_allow_list(list).unwrap()))
    }

    /// One attempt with a client of `timeout` seconds.
    async fn attempt(policy: Arc<AddressPolicy>, timeout: u64, url: &str) -> AttemptOutcome {
        let client = http_client(policy.clone(), Duration::from_secs(timeout)).unwrap();
        let headers = [("webhook-id", "msg_1".to_owned())];
        post(&client, &policy, url, &headers, b"{}".to_vec()).await
    }

    fn got(outcome: &AttemptOutcome) -> (Option<u16>, Option<ErrorClass>) {
        (outcome.status, outcome.error)
    }

    #[tokio::test]
    async fn outcomes_of_a_local_receiver() {
        let (addr, hits) = serve("127.0.0.1:0").await;
        let url = |path: &str| format!("http://{addr}{path}");
        let local = || allowing("127.0.0.1/32");

        let delivered = attempt(local(), 5, &url("/ok")).await;
        assert_eq!(got(&delivered), (Some(204), None));
        assert!(delivered.delivered());
        let failed = attempt(local(), 5, &url("/fail")).await;
        assert_eq!(got(&failed), (Some(500), Some(Status)));
        assert_eq!(failed.retry_after, Some(Duration::from_secs(7)));
        assert!(!failed.delivered());
        let redirected = attempt(local(), 5, &url("/redirect")).await;
        assert_eq!(got(&redirected), (Some(302), Some(Redirect)));
        assert_eq!(hits.load(SeqCst), 0, "the redirect was followed");

        let slow = attempt(local(), 1, &url("/slow")).await;
        assert_eq!(got(&slow), (None, Some(Timeout)));

        let huge = attempt(local(), 5, &url("/huge")).await;
        assert_eq!(got(&huge), (Some(200), None));
        // An endless body is left after its first bytes; reading on would last until the
        // client's timeout (10 min), which the deadline, not a measurement, would catch.
        let (endless_url, deadline) = (url("/endless"), Duration::from_secs(60));
        let endless = tokio::time::timeout(deadline, attempt(local(), 600, &endless_url)).await;
        assert_eq!(got(&endless.unwrap()), (Some(200), None));

        // A host name is checked when resolved: localhost's ::1 is dropped, 127.0.0.1 allowed.
        let by_name = format!("http://localhost:{}/target", addr.port());
        let named = attempt(local(), 5, &by_name).await;
        assert_eq!(got(&named), (Some(200), None));
        assert_eq!(hits.load(SeqCst), 1);
        // Without the allow-list every address of localhost is refused, in the resolver.
        let refused = attempt(allowing(""), 5, &by_name).await;
        assert_eq!(got(&refused), (None, Some(AddressRefused)));
        assert_eq!(hits.load(SeqCst), 1, "a refused address was reached");
    }

    #[tokio::test]
    async fn a_literal_address_outside_the_allow_list_is_never_contacted() {
        let (addr, hits) = serve("127.0.0.2:0").await;
        let url = format!("http://{addr}/target");
        let outcome = attempt(allowing("127.0.0.1/32"), 5, &url).await;
        assert_eq!(got(&outcome), (None, Some(AddressRefused)));
        assert_eq!(hits.load(SeqCst), 0);
        // The same receiver is reachable once allowed, so the refusal was the policy's.
        assert!(attempt(allowing("127.0.0.2"), 5, &url).await.delivered());
        assert_eq!(hits.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_connect_and_plain_http_for_https_is_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let outcome = attempt(allowing("127.0.0.1"), 5, &format!("http://{closed}/")).await;
        assert_eq!(got(&outcome), (None, Some(Connect)));

        // A server that answers a TLS handshake with plain HTTP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                let _ = socket.write_all(answer).await;
            }
        });
        let outcome = attempt(allowing("127.0.0.1"), 5, &format!("https://{plain}/")).await;
        assert_eq!(got(&outcome), (None, Some(Tls)));
    }

    #[test]
    fn retry_after_values() {
        let now = OffsetDateTime::parse("Wed, 21 Oct 2015 07:28:00 GMT", &Rfc2822).unwrap();
        let secs = |value| parse_retry_after(value, now).map(|wait| wait.as_secs());
        assert_eq!(secs("7"), Some(7));
        assert_eq!(secs(" 120 "), Some(120));
        assert_eq!(secs("0"), Some(0));
        assert_eq!(secs("86401"), Some(86_400));
        assert_eq!(secs("99999999999999999999999"), Some(86_400));
        assert_eq!(secs("Wed, 21 Oct 2015 07:29:30 GMT"), Some(90));
        assert_eq!(secs("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0));
        assert_eq!(secs("Sat, 21 Oct 2017 07:28:00 GMT"), Some(86_400));
        for refused in ["-5", "+5", "1.5", "soon", ""] {
            assert_eq!(secs(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn error_classes_round_trip_through_their_names() {
        for class in ErrorClass::ALL {
            assert_eq!(class.as_str().parse::<ErrorClass>().unwrap(), class);
            assert_eq!(class.to_string(), class.as_str());
        }
        assert_eq!(ErrorClass::AddressRefused.as_str(), "address-refused");
        assert!("Timeout".parse::<ErrorClass>().is_err());
    }
}
