//! Webhook deliveries on the real stack (issue #16): the delivering service in process, in the
//! test's namespace, sending to receivers the test runs on loopback (allow-listed as a private
//! network, with http allowed, as a development setting would).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use imgpipe_e2e::fixtures::kite;
use imgpipe_e2e::Pipeline;
use imgpipe_webhooks::config::Config as WebhooksConfig;
use imgpipe_webhooks::signature::{verify, SigningSecret};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
    at: OffsetDateTime,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on `ip`: answers 503 to its first `fail_first` requests, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(ip: &str, fail_first: usize) -> Receiver {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let mut log = log.lock().unwrap();
                    log.push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                        at: OffsetDateTime::now_utc(),
                    });
                    if log.len() <= fail_first {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} requests after {timeout:?}, waited for {count}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the delivering service until the returned token is cancelled.
async fn start_webhooks(config: WebhooksConfig) -> CancellationToken {
    start_webhooks_with_ops(config).await.0
}

/// Also the service's ops URL (`/metrics`).
async fn start_webhooks_with_ops(config: WebhooksConfig) -> (CancellationToken, String) {
    let service = imgpipe_webhooks::Webhooks::build(&config).await.unwrap();
    let ops_url = format!("http://127.0.0.1:{}", service.ops_port());
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move { service.run(token).await.unwrap() });
    (stop, ops_url)
}

async fn register(pipeline: &Pipeline, url: &str, types: &[&str]) -> (String, SigningSecret) {
    let response = pipeline
        .http
        .post(pipeline.url("/v1/webhooks"))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({"url": url, "event_types": types}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let secret = SigningSecret::parse_whsec(body["secret"].as_str().unwrap()).unwrap();
    (body["id"].as_str().unwrap().to_string(), secret)
}

async fn upload_until_ready(pipeline: &Pipeline) -> String {
    let (id, image) = pipeline.upload_settled(kite()).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    id
}

/// The id of the image's `ImageProcessed` event: the `webhook-id` of its `image.ready`.
async fn processed_event_id(pipeline: &Pipeline, image_id: &str) -> String {
    let (_, events) = pipeline.timeline(image_id).await.unwrap();
    let processed = events
        .iter()
        .find(|e| e["event_type"] == "ImageProcessed")
        .unwrap();
    processed["event_id"].as_str().unwrap().to_string()
}

/// The endpoint's attempts once the listing holds at least `count` that `keep` keeps: each
/// attempt's event is appended after its request, then projected.
async fn wait_for_deliveries(
    pipeline: &Pipeline,
    endpoint: &str,
    count: usize,
    keep: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    for _ in 0..300 {
        let listed = deliveries(pipeline, endpoint).await;
        if listed.iter().filter(|d| keep(d)).count() >= count {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{endpoint}: fewer than {count} attempts listed after a minute");
}

async fn deliveries(pipeline: &Pipeline, endpoint: &str) -> Vec<Value> {
    let (status, body) = pipeline
        .get(&format!("/v1/webhooks/{endpoint}/deliveries"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_arrive_signed_follow_the_retry_schedule_and_can_be_redelivered() {
    let pipeline = Pipeline::start().await.unwrap();
    let config = pipeline.webhooks_config.clone();
    let schedule = config.delivery.schedule().unwrap();
    let stop = start_webhooks(config).await;
    // Fails the first two attempts; the third is delivered.
    let receiver = Receiver::start("127.0.0.1", 2).await;
    let (endpoint, secret) = register(&pipeline, &receiver.url, &["image.ready"]).await;

    let image_id = upload_until_ready(&pipeline).await;
    let message_id = processed_event_id(&pipeline, &image_id).await;
    let received = receiver.wait_for(3, Duration::from_secs(60)).await;

    // Exactly as signed, the same webhook-id on every attempt: the causing event's id.
    for request in &received {
        assert_eq!(request.id, message_id);
        assert!(
            verify(
                &secret,
                &request.id,
                request.timestamp,
                &request.body,
                &request.signature
            ),
            "the signature of {request:?} verifies"
        );
        let body = request.json();
        assert_eq!(body["type"], "image.ready");
        assert_eq!(body["data"]["image_id"], image_id);
        assert_eq!(body["data"]["status"], "ready");
        assert_eq!(body["data"]["variants"].as_array().unwrap().len(), 3);
    }
    // The variant URLs are presigned and fetch the variant.
    let body = received[2].json();
    let url = body["data"]["variants"][0]["url"].as_str().unwrap();
    let variant = reqwest::get(url).await.unwrap();
    assert_eq!(variant.status(), 200);
    assert_eq!(
        variant.bytes().await.unwrap().len() as u64,
        body["data"]["variants"][0]["bytes"].as_u64().unwrap()
    );
    // Retries came no sooner than the schedule says.
    for (attempt, wait) in schedule.iter().take(2).enumerate() {
        let gap = received[attempt + 1].at - received[attempt].at;
        assert!(
            gap >= *wait,
            "attempt {} came {gap} after the one before",
            attempt + 2
        );
    }

    // Every attempt is listed, newest first, with what it came to.
    let listed = wait_for_deliveries(&pipeline, &endpoint, 3, |_| true).await;
    let summary: Vec<(i64, Option<i64>, Option<&str>)> = listed
        .iter()
        .map(|d| {
            (
                d["attempt"].as_i64().unwrap(),
                d["status_code"].as_i64(),
                d["error_class"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (3, Some(204), None),
            (2, Some(503), Some("status")),
            (1, Some(503), Some("status"))
        ]
    );
    assert!(listed
        .iter()
        .all(|d| d["message_id"] == message_id.as_str()));
    assert!(listed[0]["next_attempt_at"].is_null());
    assert!(listed[1]["next_attempt_at"].is_string());

    // A redelivery of that message arrives again, with the same webhook-id.
    let response = pipeline
        .http
        .post(pipeline.url(&format!("/v1/webhooks/{endpoint}/redeliver")))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({"message_id": message_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let received = receiver.wait_for(4, Duration::from_secs(60)).await;
    assert_eq!(received[3].id, message_id);
    assert!(verify(
        &secret,
        &received[3].id,
        received[3].timestamp,
        &received[3].body,
        &received[3].signature
    ));

    // And so does one the operator asks for with `imgpipe replay webhooks --from`.
    let since = received[0].at - Duration::from_secs(60);
    imgpipe_admin::replay::webhooks::request(
        &pipeline.kafka,
        &pipeline.webhooks_config.registry,
        endpoint.parse().unwrap(),
        &imgpipe_admin::replay::webhooks::Redelivery::Since(since),
        "e2e-operator",
    )
    .await
    .unwrap();
    let received = receiver.wait_for(5, Duration::from_secs(60)).await;
    assert_eq!(received[4].id, message_id);
    let listed = wait_for_deliveries(&pipeline, &endpoint, 2, |d| d["redelivery"] == true).await;
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(listed[..2]
        .iter()
        .all(|d| d["attempt"] == 1 && d["status_code"] == 204));

    // A disabled endpoint gets nothing: a second, enabled endpoint is the witness that the
    // next image's message went out.
    let response = pipeline
        .http
        .patch(pipeline.url(&format!("/v1/webhooks/{endpoint}")))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Nor is anything redelivered to it.
    let refused = pipeline
        .http
        .post(pipeline.url(&format!("/v1/webhooks/{endpoint}/redeliver")))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({"message_id": message_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let witness = Receiver::start("127.0.0.1", 0).await;
    register(&pipeline, &witness.url, &["image.ready"]).await;
    let second = upload_until_ready(&pipeline).await;
    let to_witness = witness.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(to_witness[0].json()["data"]["image_id"], second);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.received().len(),
        5,
        "the disabled endpoint got nothing more"
    );

    stop.cancel();
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_at_an_address_not_allow_listed_is_never_contacted() {
    let pipeline = Pipeline::start().await.unwrap();
    // Ingest accepts loopback (the namespace allow-lists it for registration); this delivering
    // service allows no private network at all, as a production one would.
    let mut config = pipeline.webhooks_config.clone();
    config.security.allow_private = String::new();
    config.delivery.retry_schedule = "1s".into();
    let stop = start_webhooks(config).await;
    let literal = Receiver::start("127.0.0.1", 0).await;
    // By name: `localhost` resolves to loopback, refused after resolution, at connect time.
    let by_name = Receiver::start("127.0.0.1", 0).await;
    let by_name_url = by_name.url.replace("127.0.0.1", "localhost");
    let (literal_endpoint, _) = register(&pipeline, &literal.url, &["image.ready"]).await;
    let (name_endpoint, _) = register(&pipeline, &by_name_url, &["image.ready"]).await;

    upload_until_ready(&pipeline).await;
    // Both deliveries are attempted (and given up after the one retry) without contact.
    let mut outcomes: HashMap<String, Vec<Value>> = HashMap::new();
    for endpoint in [&literal_endpoint, &name_endpoint] {
        let attempts = wait_for_deliveries(&pipeline, endpoint, 2, |_| true).await;
        outcomes.insert(endpoint.clone(), attempts);
    }
    for (endpoint, attempts) in &outcomes {
        assert_eq!(attempts.len(), 2, "{endpoint}: {attempts:?}");
        for attempt in attempts {
            assert_eq!(attempt["error_class"], "address-refused", "{attempt}");
            assert!(attempt["status_code"].is_null());
        }
    }
    assert!(literal.received().is_empty());
    assert!(by_name.received().is_empty());

    stop.cancel();
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_failing_for_longer_than_allowed_is_disabled_with_an_event() {
    let pipeline = Pipeline::start().await.unwrap();
    let mut config = pipeline.webhooks_config.clone();
    // Fails for 2 s at most, retried every second, many times.
    config.delivery.disable_after_secs = 2;
    config.delivery.retry_schedule = "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s".into();
    let (stop, ops_url) = start_webhooks_with_ops(config).await;
    let receiver = Receiver::start("127.0.0.1", usize::MAX).await;
    let (endpoint, _) = register(&pipeline, &receiver.url, &["image.ready"]).await;

    upload_until_ready(&pipeline).await;
    let mut status = Value::Null;
    for _ in 0..300 {
        let (code, body) = pipeline
            .get(&format!("/v1/webhooks/{endpoint}"))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        if body["enabled"] == false {
            status = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status["disabled_reason"], "failing", "{status}");
    assert!(status["failing_since"].is_string());
    // The disabling is an event of the endpoint's, on the log.
    let disabled = imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap()
        .iter()
        .filter_map(|record| {
            use rdkafka::Message as _;
            imgpipe_schemas::decode(record.payload()?).ok()
        })
        .filter(|event| {
            matches!(&event.payload, imgpipe_schemas::Payload::WebhookEndpointDisabled(d)
                if d.endpoint_id == endpoint && d.reason == "failing")
        })
        .count();
    assert_eq!(disabled, 1);
    let page = imgpipe_e2e::metrics::page(&pipeline.http, &ops_url)
        .await
        .unwrap();
    assert_eq!(
        imgpipe_e2e::metrics::series_value(&page, "imgpipe_webhooks_endpoints_disabled_total"),
        Some(1.0)
    );
    // Nothing more goes to it: its pending retry was dropped with it.
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), attempts);

    stop.cancel();
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_waiting_when_its_endpoint_is_disabled_is_dropped_unsent() {
    let pipeline = Pipeline::start().await.unwrap();
    let mut config = pipeline.webhooks_config.clone();
    config.delivery.retry_schedule = "3s".into();
    let (stop, ops_url) = start_webhooks_with_ops(config).await;
    let receiver = Receiver::start("127.0.0.1", usize::MAX).await;
    let (endpoint, _) = register(&pipeline, &receiver.url, &["image.ready"]).await;
    upload_until_ready(&pipeline).await;
    receiver.wait_for(1, Duration::from_secs(60)).await;
    // The first attempt failed; its retry is due in 3 s. The owner disables the endpoint.
    let response = pipeline
        .http
        .patch(pipeline.url(&format!("/v1/webhooks/{endpoint}")))
        .bearer_auth(&pipeline.api_key)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut dropped = None;
    for _ in 0..100 {
        let page = imgpipe_e2e::metrics::page(&pipeline.http, &ops_url)
            .await
            .unwrap();
        dropped =
            imgpipe_e2e::metrics::series_value(&page, "imgpipe_webhooks_deliveries_dropped_total");
        if dropped.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dropped, Some(1.0), "the retry was dropped when it came due");
    assert_eq!(receiver.received().len(), 1, "and never sent");

    stop.cancel();
    pipeline.stop().await.unwrap();
}
