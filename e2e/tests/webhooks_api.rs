//! The webhook endpoints' API on the real stack: registering (the secret shown once), reading
//! back at once (ingest alone, no projector: read-your-writes), updating, rotating, deleting,
//! each an event on the log keyed by the endpoint's id; the URL and event-type checks; key
//! scopes and ownership; the per-client limit; the deliveries list and redelivery requests.
//! (Just past the house's ~600 lines: five scenarios of one API sharing these helpers.)
#![allow(clippy::unwrap_used)]

use imgpipe_e2e::Pipeline;
use imgpipe_ingest::auth::{ApiKeys, ClientLimits, Scope};
use imgpipe_schemas::{Event, Payload, Producer, WebhookDeliveryAttempted};
use imgpipe_webhooks::signature::SigningSecret;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// What an answer came back as: status, JSON body (null when there is none), headers.
struct Answer {
    status: u16,
    body: Value,
    headers: HeaderMap,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

async fn send(
    pipeline: &Pipeline,
    method: Method,
    key: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = pipeline
        .http
        .request(method, pipeline.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        body,
        headers,
    }
}

/// A receiver URL the test namespace allows (http, 127.0.0.1); nothing is delivered here.
const RECEIVER: &str = "http://127.0.0.1:9/hook";

async fn register(pipeline: &Pipeline, key: &str, event_types: &[&str]) -> Answer {
    let body = json!({ "url": RECEIVER, "event_types": event_types });
    send(pipeline, Method::POST, key, "/v1/webhooks", Some(body)).await
}

/// The secret's key bytes, counted from its standard base64 (and checked to decode).
fn secret_bytes(secret: &str) -> usize {
    let encoded = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    SigningSecret::parse_whsec(secret).expect("the secret decodes");
    encoded.len() / 4 * 3 - encoded.bytes().filter(|&b| b == b'=').count()
}

/// Every event on the log keyed by `key`, with its record key.
async fn logged(pipeline: &Pipeline, key: Uuid) -> Vec<Event> {
    imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap()
        .iter()
        .filter(|record| rdkafka::Message::key(*record) == Some(key.to_string().as_bytes()))
        .map(|record| imgpipe_schemas::decode(rdkafka::Message::payload(record).unwrap()).unwrap())
        .collect()
}

fn event_types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type().as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_reads_back_at_once_changes_and_is_deleted_each_change_an_event() {
    // No projector: what ingest answers after a change is what it applied itself.
    let pipeline = Pipeline::start_ingest_only()
        .await
        .expect("pipeline starts");
    let key = &pipeline.api_key;
    let other = &pipeline.other_api_key;

    let created = register(
        &pipeline,
        key,
        &["image.failed", "image.ready", "image.failed"],
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let endpoint_id: Uuid = id.parse().unwrap();
    let path = format!("/v1/webhooks/{id}");
    assert_eq!(created.headers["location"], path.as_str());
    assert_eq!(created.body["url"], RECEIVER);
    assert_eq!(
        created.body["event_types"],
        json!(["image.ready", "image.failed"])
    );
    assert_eq!(created.body["enabled"], true);
    let secret = created.body["secret"].as_str().unwrap().to_string();
    assert!(secret_bytes(&secret) >= 24, "{secret}");

    let read = send(&pipeline, Method::GET, key, &path, None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["id"], id.as_str());
    assert_eq!(read.body["event_types"], created.body["event_types"]);
    assert_eq!(read.body["created_at"], created.body["created_at"]);
    assert_eq!(read.body["enabled"], true);
    assert_eq!(read.body["disabled_reason"], Value::Null);
    assert!(read.body.get("secret").is_none(), "{}", read.body);
    assert!(
        !read.body.to_string().contains(&secret[6..]),
        "{}",
        read.body
    );

    let listed = send(&pipeline, Method::GET, key, "/v1/webhooks", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    let deliveries = format!("{path}/deliveries");
    let none = send(&pipeline, Method::GET, key, &deliveries, None).await;
    assert_eq!((none.status, &none.body), (200, &json!({ "items": [] })));

    // Another client sees nothing, and changes nothing.
    let theirs = send(&pipeline, Method::GET, other, "/v1/webhooks", None).await;
    assert_eq!(theirs.body, json!({ "items": [] }));
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({ "enabled": false }))),
        (Method::DELETE, "", None),
        (Method::POST, "/rotate-secret", None),
        (Method::GET, "/deliveries", None),
        (
            Method::POST,
            "/redeliver",
            Some(json!({ "since": "2026-01-01T00:00:00Z" })),
        ),
    ] {
        let answer = send(
            &pipeline,
            method.clone(),
            other,
            &format!("{path}{suffix}"),
            body,
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (404, "webhook-not-found"),
            "{method} {suffix}"
        );
    }
    let bad_id = send(&pipeline, Method::GET, key, "/v1/webhooks/nope", None).await;
    assert_eq!((bad_id.status, bad_id.code()), (400, "invalid-webhook-id"));

    let patch = |body: Value| send(&pipeline, Method::PATCH, key, &path, Some(body));
    let disabled = patch(json!({ "enabled": false })).await;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    assert_eq!(disabled.body["enabled"], false);
    assert_eq!(
        disabled.body["event_types"],
        json!(["image.ready", "image.failed"])
    );
    let retyped = patch(json!({ "event_types": ["image.deleted"] })).await;
    assert_eq!(retyped.status, 200, "{}", retyped.body);
    assert_eq!(retyped.body["event_types"], json!(["image.deleted"]));
    assert_eq!(retyped.body["enabled"], false, "unchanged");
    let read = send(&pipeline, Method::GET, key, &path, None).await;
    assert_eq!(read.body, retyped.body);
    for (body, code) in [
        (json!({}), "empty-webhook-update"),
        (json!({ "event_types": [] }), "invalid-event-types"),
        (
            json!({ "url": "http://10.0.0.1/" }),
            "webhook-address-refused",
        ),
        (json!({ "enabled": "no" }), "invalid-json"),
    ] {
        let answer = patch(body.clone()).await;
        assert_eq!((answer.status, answer.code()), (400, code), "{body}");
    }

    let before = OffsetDateTime::now_utc();
    let rotate = format!("{path}/rotate-secret");
    let rotated = send(&pipeline, Method::POST, key, &rotate, None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(secret_bytes(new_secret) >= 24);
    let until = rotated.body["previous_secret_valid_until"]
        .as_str()
        .unwrap();
    let until =
        OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339).unwrap();
    let overlap = until - before;
    assert!(
        overlap > time::Duration::hours(23) && overlap < time::Duration::hours(25),
        "{overlap}"
    );
    // Another rotation with an overlap would cut this one's short.
    let again = send(&pipeline, Method::POST, key, &rotate, None).await;
    assert_eq!(
        (again.status, again.code()),
        (409, "rotation-in-progress"),
        "{}",
        again.body
    );
    // One without replaces both secrets at once.
    let short = send(
        &pipeline,
        Method::POST,
        key,
        &rotate,
        Some(json!({ "overlap_seconds": 0 })),
    )
    .await;
    assert_eq!(short.status, 200, "{}", short.body);
    assert_ne!(short.body["secret"], rotated.body["secret"]);
    for overlap in [json!(604_801), json!(-1)] {
        let body = json!({ "overlap_seconds": overlap });
        let answer = send(&pipeline, Method::POST, key, &rotate, Some(body)).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid-overlap"),
            "{overlap}"
        );
    }

    let deleted = send(&pipeline, Method::DELETE, key, &path, None).await;
    assert_eq!((deleted.status, &deleted.body), (204, &Value::Null));
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::GET, "/deliveries"),
    ] {
        let answer = send(&pipeline, method, key, &format!("{path}{suffix}"), None).await;
        assert_eq!((answer.status, answer.code()), (404, "webhook-not-found"));
    }
    let listed = send(&pipeline, Method::GET, key, "/v1/webhooks", None).await;
    assert_eq!(listed.body, json!({ "items": [] }));

    // The log has every change, keyed by the endpoint, in order; the secrets only sealed.
    let events = logged(&pipeline, endpoint_id).await;
    assert_eq!(
        event_types(&events),
        [
            "WebhookEndpointCreated",
            "WebhookEndpointUpdated",
            "WebhookEndpointUpdated",
            "WebhookSecretRotated",
            "WebhookSecretRotated",
            "WebhookEndpointDeleted",
        ]
    );
    assert!(events.iter().all(|event| event.image_id == endpoint_id));
    let Payload::WebhookEndpointCreated(registered) = &events[0].payload else {
        unreachable!()
    };
    assert_eq!(registered.owner, "client-a");
    assert_eq!(registered.url, RECEIVER);
    assert_eq!(registered.event_types, ["image.ready", "image.failed"]);
    assert!(!registered.sealed_secret.contains(&secret[6..]));
    let Payload::WebhookEndpointUpdated(update) = &events[1].payload else {
        unreachable!()
    };
    assert_eq!(
        (update.enabled, &update.url, &update.event_types),
        (Some(false), &None, &None)
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_urls_and_event_types_are_400_with_their_codes_and_append_nothing() {
    let pipeline = Pipeline::start_ingest_only()
        .await
        .expect("pipeline starts");
    let key = &pipeline.api_key;
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        (
            json!({ "url": "http://169.254.169.254/", "event_types": ["image.ready"] }),
            "webhook-address-refused",
        ),
        (
            json!({ "url": "http://10.0.0.1/", "event_types": ["image.ready"] }),
            "webhook-address-refused",
        ),
        (
            json!({ "url": "http://[::ffff:127.0.0.2]/", "event_types": ["image.ready"] }),
            "webhook-address-refused",
        ),
        (
            json!({ "url": "http://127.0.0.2/", "event_types": ["image.ready"] }),
            "webhook-address-refused",
        ),
        (
            json!({ "url": "ftp://example.com/", "event_types": ["image.ready"] }),
            "webhook-url-insecure",
        ),
        (
            json!({ "url": "https://user:pw@example.com/", "event_types": ["image.ready"] }),
            "invalid-webhook-url",
        ),
        (
            json!({ "url": "not a url", "event_types": ["image.ready"] }),
            "invalid-webhook-url",
        ),
        (
            json!({ "url": long, "event_types": ["image.ready"] }),
            "invalid-webhook-url",
        ),
        (
            json!({ "url": RECEIVER, "event_types": ["image.uploaded"] }),
            "invalid-event-types",
        ),
        (
            json!({ "url": RECEIVER, "event_types": [] }),
            "invalid-event-types",
        ),
        (json!({ "url": RECEIVER }), "invalid-json"),
        (
            json!({ "url": RECEIVER, "event_types": ["image.ready"], "secret": "mine" }),
            "invalid-json",
        ),
        (json!(["image.ready"]), "invalid-json"),
    ];
    for (body, code) in cases {
        let answer = send(
            &pipeline,
            Method::POST,
            key,
            "/v1/webhooks",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, code),
            "{body}: {}",
            answer.body
        );
    }
    let not_json = pipeline
        .http
        .post(pipeline.url("/v1/webhooks"))
        .bearer_auth(key)
        .body("url=http://example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert_eq!(body["code"], "invalid-json");
    let huge = json!({ "url": "x".repeat(64 * 1024), "event_types": ["image.ready"] });
    let answer = send(&pipeline, Method::POST, key, "/v1/webhooks", Some(huge)).await;
    assert_eq!((answer.status, answer.code()), (413, "payload-too-large"));

    let listed = send(&pipeline, Method::GET, key, "/v1/webhooks", None).await;
    assert_eq!(listed.body, json!({ "items": [] }));
    let records = imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap();
    assert!(records.is_empty(), "{} records appended", records.len());
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_key_reads_its_clients_endpoints_but_cannot_change_them() {
    let reader = format!("key-{}", Uuid::new_v4());
    let entry = ApiKeys::entry_with("client-a", &reader, Scope::Read, ClientLimits::default());
    let pipeline = Pipeline::start_with(|ingest| {
        ingest.api_keys = format!("{},{entry}", ingest.api_keys);
    })
    .await
    .expect("pipeline starts");
    let refused = register(&pipeline, &reader, &["image.ready"]).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "insufficient-scope")
    );
    let created = register(&pipeline, &pipeline.api_key, &["image.ready"]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let path = format!("/v1/webhooks/{}", created.body["id"].as_str().unwrap());

    let read = send(&pipeline, Method::GET, &reader, &path, None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let listed = send(&pipeline, Method::GET, &reader, "/v1/webhooks", None).await;
    assert_eq!(listed.body["items"][0]["id"], created.body["id"]);
    let deliveries = send(
        &pipeline,
        Method::GET,
        &reader,
        &format!("{path}/deliveries"),
        None,
    )
    .await;
    assert_eq!(deliveries.status, 200);
    for (method, suffix, body) in [
        (Method::PATCH, "", Some(json!({ "enabled": false }))),
        (Method::DELETE, "", None),
        (Method::POST, "/rotate-secret", None),
        (
            Method::POST,
            "/redeliver",
            Some(json!({ "since": "2026-01-01T00:00:00Z" })),
        ),
    ] {
        let answer = send(
            &pipeline,
            method.clone(),
            &reader,
            &format!("{path}{suffix}"),
            body,
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (403, "insufficient-scope"),
            "{method} {suffix}"
        );
    }
    let read = send(&pipeline, Method::GET, &pipeline.api_key, &path, None).await;
    assert_eq!(read.body["enabled"], true, "nothing changed");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_has_at_most_twenty_endpoints() {
    let pipeline = Pipeline::start_ingest_only()
        .await
        .expect("pipeline starts");
    let mut ids = Vec::new();
    for _ in 0..20 {
        let created = register(&pipeline, &pipeline.api_key, &["image.ready"]).await;
        assert_eq!(created.status, 201, "{}", created.body);
        ids.push(created.body["id"].as_str().unwrap().to_string());
    }
    let over = register(&pipeline, &pipeline.api_key, &["image.ready"]).await;
    assert_eq!((over.status, over.code()), (409, "too-many-webhooks"));
    let listed = send(
        &pipeline,
        Method::GET,
        &pipeline.api_key,
        "/v1/webhooks",
        None,
    )
    .await;
    let listed: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let theirs = register(&pipeline, &pipeline.other_api_key, &["image.ready"]).await;
    assert_eq!(theirs.status, 201, "the limit is per client");

    let path = format!("/v1/webhooks/{}", ids[0]);
    let deleted = send(&pipeline, Method::DELETE, &pipeline.api_key, &path, None).await;
    assert_eq!(deleted.status, 204);
    let again = register(&pipeline, &pipeline.api_key, &["image.ready"]).await;
    assert_eq!(
        again.status, 201,
        "a deleted endpoint no longer counts: {}",
        again.body
    );
    pipeline.stop().await.unwrap();
}

/// An attempt as the delivering service records it, applied to the read model the way the
/// projector applies it.
async fn record_attempt(pipeline: &Pipeline, endpoint_id: Uuid, message_id: Uuid) -> Event {
    let attempt = WebhookDeliveryAttempted {
        endpoint_id: endpoint_id.to_string(),
        message_id: message_id.to_string(),
        message_type: "image.ready".into(),
        attempt: 1,
        redelivery: false,
        url: RECEIVER.into(),
        status_code: Some(500),
        duration_ms: 12,
        error_class: Some("status".into()),
        next_attempt_micros: None,
    };
    let producer = Producer {
        service: "imgpipe-webhooks".into(),
        version: "test".into(),
    };
    let event = Event::new(Uuid::now_v7(), "test", Some(message_id), producer, attempt);
    let pool = pipeline.database.pool().unwrap();
    let mut tx = pool.begin().await.unwrap();
    imgpipe_projector::db::webhooks::apply(&mut tx, &event)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_names_one_delivered_message_or_a_time() {
    let pipeline = Pipeline::start_ingest_only()
        .await
        .expect("pipeline starts");
    let key = &pipeline.api_key;
    let created = register(&pipeline, key, &["image.ready"]).await;
    let endpoint_id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    let redeliver = format!("/v1/webhooks/{endpoint_id}/redeliver");
    let message_id = Uuid::now_v7();
    for body in [
        json!({}),
        json!({ "message_id": message_id, "since": "2026-01-01T00:00:00Z" }),
        json!({ "message_id": "not-a-uuid" }),
        json!({ "since": "yesterday" }),
        json!({ "message_id": null, "since": null }),
    ] {
        let answer = send(&pipeline, Method::POST, key, &redeliver, Some(body.clone())).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid-redelivery"),
            "{body}"
        );
    }
    let unknown = json!({ "message_id": message_id });
    let answer = send(
        &pipeline,
        Method::POST,
        key,
        &redeliver,
        Some(unknown.clone()),
    )
    .await;
    assert_eq!(
        (answer.status, answer.code()),
        (404, "webhook-message-not-found")
    );

    let attempt = record_attempt(&pipeline, endpoint_id, message_id).await;
    let deliveries = format!("/v1/webhooks/{endpoint_id}/deliveries");
    let listed = send(&pipeline, Method::GET, key, &deliveries, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let item = &listed.body["items"][0];
    assert_eq!(item["attempt_id"], attempt.event_id.to_string());
    assert_eq!(item["message_id"], message_id.to_string());
    assert_eq!(
        (&item["status_code"], &item["error_class"]),
        (&json!(500), &json!("status"))
    );
    let bad_page = send(
        &pipeline,
        Method::GET,
        key,
        &format!("{deliveries}?limit=0"),
        None,
    )
    .await;
    assert_eq!((bad_page.status, bad_page.code()), (400, "invalid-query"));

    let answer = send(&pipeline, Method::POST, key, &redeliver, Some(unknown)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "endpoint_id": endpoint_id, "message_id": message_id })
    );
    let since = json!({ "since": "2026-01-01T00:00:00Z" });
    let answer = send(&pipeline, Method::POST, key, &redeliver, Some(since)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["since"], "2026-01-01T00:00:00Z");

    let events = logged(&pipeline, endpoint_id).await;
    assert_eq!(
        event_types(&events),
        [
            "WebhookEndpointCreated",
            "WebhookRedeliveryRequested",
            "WebhookRedeliveryRequested"
        ]
    );
    let Payload::WebhookRedeliveryRequested(one) = &events[1].payload else {
        unreachable!()
    };
    assert_eq!(
        (one.message_id.as_deref(), one.since_micros),
        (Some(message_id.to_string().as_str()), None)
    );
    assert_eq!(one.requested_by, "client-a");
    let Payload::WebhookRedeliveryRequested(all) = &events[2].payload else {
        unreachable!()
    };
    assert_eq!(
        (&all.message_id, all.since_micros),
        (&None, Some(1_767_225_600_000_000))
    );
    pipeline.stop().await.unwrap();
}
