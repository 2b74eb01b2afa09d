//! Issue #4: an upload while the broker is down gets 503 and no event for it ever appears, not
//! even once the broker is back; uploads before and after the outage are kept and processed.
//!
//! The test runs its own Tansu, so it can kill it without disturbing the shared stack's broker
//! that every other test uses.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::private_server::PrivateServer;
use imgpipe_e2e::Pipeline;
use imgpipe_infra::log_reader::header;
use imgpipe_infra::{kafka, topics, FromEnv, KafkaConfig};
use imgpipe_schemas::Event;
use rdkafka::Message;
use serde_json::Value;
use uuid::Uuid;

/// Waits until the broker creates (or finds) the bundled topics: Tansu accepts connections a
/// while before it serves requests.
async fn wait_until_serving(broker: &PrivateServer) {
    let mut config = KafkaConfig::from_env().unwrap();
    config.brokers = format!("127.0.0.1:{}", broker.port());
    config.topic_prefix = String::new();
    let specs = topics::bundled().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kafka::ensure_topics(&config, &specs).await {
            Ok(()) => return,
            Err(error) if Instant::now() > deadline => {
                panic!("private broker not serving after 60 s: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// `POST /v1/images` with our own request id, which becomes the events' correlation id.
async fn upload(pipeline: &Pipeline, image: &str, request_id: &str) -> reqwest::Response {
    let body = std::fs::read(imgpipe_e2e::corpus_dir().join(image)).unwrap();
    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(&pipeline.api_key)
        .header("x-request-id", request_id)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], request_id);
    response
}

async fn upload_accepted_and_ready(pipeline: &Pipeline, image: &str, request_id: &str) {
    let response = upload(pipeline, image, request_id).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let settled = pipeline
        .wait_until_settled(body["id"].as_str().unwrap(), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(settled["status"], "ready", "{settled}");
}

async fn readyz_status(pipeline: &Pipeline) -> u16 {
    pipeline
        .http
        .get(pipeline.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every record of the events topic from its start up to its current end, decoded, with the
/// correlation id its header carries.
async fn read_events(pipeline: &Pipeline) -> Vec<(Option<String>, Event)> {
    imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap()
        .iter()
        .map(|record| {
            let event = imgpipe_schemas::decode(record.payload().unwrap_or_default())
                .unwrap_or_else(|e| panic!("undecodable record at {}: {e}", record.offset()));
            (
                header(record, imgpipe_schemas::headers::CORRELATION_ID),
                event,
            )
        })
        .collect()
}

/// Delivery is at-least-once: a consumer whose offset commit died with the broker handles an
/// event again, so a second ImageProcessed is fine; a second ImageUploaded is not.
fn assert_accepted_upload_logged(records: &[(Option<String>, Event)], request_id: &str) {
    let events = events_of(records, request_id);
    let (first, results) = events
        .split_first()
        .unwrap_or_else(|| panic!("no events for the accepted upload {request_id}"));
    assert_eq!(first, "ImageUploaded", "{request_id}: {events:?}");
    assert!(
        !results.is_empty() && results.iter().all(|e| e == "ImageProcessed"),
        "{request_id}: {events:?}"
    );
}

/// The types of the events correlated with `request_id` (by the record header or the envelope).
fn events_of(records: &[(Option<String>, Event)], request_id: &str) -> Vec<String> {
    records
        .iter()
        .filter(|(header, event)| {
            header.as_deref() == Some(request_id) || event.correlation_id == request_id
        })
        .map(|(_, event)| event.event_type().as_str().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_refused_while_the_broker_is_down_never_becomes_an_event() {
    let mut broker = PrivateServer::tansu();
    wait_until_serving(&broker).await;
    let pipeline = Pipeline::start_with_kafka(
        |kafka| {
            kafka.brokers = format!("127.0.0.1:{}", broker.port());
            // The 503 comes once a produce has waited this long; librdkafka gives up on the
            // message at the same moment, so it cannot be sent after the client was told no.
            kafka.produce_timeout_ms = 3_000;
        },
        |_| {},
    )
    .await
    .expect("pipeline starts on the private broker");
    let run = Uuid::now_v7().simple().to_string();
    let before = format!("before-outage-{run}");
    let during = format!("during-outage-{run}");
    let after = format!("after-outage-{run}");

    upload_accepted_and_ready(&pipeline, "photos/kde-DarkestHour-2560.jpg", &before).await;
    assert_accepted_upload_logged(&read_events(&pipeline).await, &before);

    broker.kill();
    assert_eq!(
        readyz_status(&pipeline).await,
        503,
        "ingest reports the broker down"
    );
    let response = upload(&pipeline, "exif/camera-Nikon_D70.jpg", &during).await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "event-log-unavailable", "{body}");

    broker.restart();
    wait_until_serving(&broker).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz_status(&pipeline).await != 200 {
        assert!(
            Instant::now() < deadline,
            "ingest not ready again after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    upload_accepted_and_ready(&pipeline, "exif/camera-Canon_40D.jpg", &after).await;

    // A produce librdkafka still held would be sent soon after the broker is back: look for
    // the refused upload for a while, not just once.
    let watch_until = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let records = read_events(&pipeline).await;
        assert_eq!(
            events_of(&records, &during),
            Vec::<String>::new(),
            "the upload answered 503 was appended after all"
        );
        if Instant::now() > watch_until {
            break records;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The log is the source of truth: what was accepted before the outage is still there after
    // the broker's restart (whose maintenance deletes what retention.ms says to; topics.conf).
    assert_accepted_upload_logged(&records, &before);
    assert_accepted_upload_logged(&records, &after);
    for (header, event) in &records {
        if event.event_type().as_str() == "ImageUploaded" {
            assert!(
                [&before, &after].contains(&&event.correlation_id),
                "an upload nobody was told was accepted: {header:?} {event:?}"
            );
        }
    }

    pipeline.stop().await.unwrap();
}
