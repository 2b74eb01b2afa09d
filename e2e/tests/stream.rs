//! `GET /v1/images/{id}/stream` on the real stack: an upload watched from `uploaded` to
//! `ready` without polling, the bounds, and the end of a stream when ingest stops.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use imgpipe_e2e::fixtures::kite;
use imgpipe_e2e::Pipeline;
use serde_json::Value;

/// An open status stream, read event by event.
struct EventStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    async fn open(pipeline: &Pipeline, key: &str, image_id: &str) -> reqwest::Response {
        pipeline
            .http
            .get(pipeline.url(&format!("/v1/images/{image_id}/stream")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    fn of(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event's name and data (comment lines, the heartbeat, are skipped).
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_string());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                match name {
                    Some(name) => return Some((name, serde_json::from_str(&data).unwrap())),
                    None => continue,
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(120), self.body.next())
                .await
                .expect("an event within two minutes")?
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_watched_from_uploaded_to_ready_without_polling() {
    let pipeline = Pipeline::start().await.unwrap();
    let (status, accepted) = pipeline.upload(kite()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();

    let mut events = EventStream::of(EventStream::open(&pipeline, &pipeline.api_key, &id).await);
    let (name, first) = events.next().await.unwrap();
    assert_eq!(name, "status");
    assert_eq!(first["id"], id.as_str());
    let mut seen = vec![first["status"].as_str().unwrap().to_string()];
    let mut last = first;
    while last["status"] != "ready" {
        let (name, data) = events.next().await.unwrap();
        assert_eq!(name, "status", "{data}");
        seen.push(data["status"].as_str().unwrap().to_string());
        last = data;
    }
    // Each event is a change; the last is the image as GET answers it, with its variants' URLs.
    assert!(seen.windows(2).all(|pair| pair[0] != pair[1]), "{seen:?}");
    let variants = last["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 3);
    assert!(variants
        .iter()
        .all(|v| v["url"].as_str().is_some_and(|u| u.starts_with("http"))));
    let (_, image) = pipeline.image(&id).await.unwrap();
    assert_eq!(image["blurhash"], last["blurhash"]);

    // When ingest stops, the stream ends with `end` rather than holding the shutdown.
    let (end, reason) = tokio::join!(events.next(), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pipeline.stop().await.unwrap();
    })
    .0
    .map(|(name, data)| (name, data["reason"].clone()))
    .map_or((String::new(), Value::Null), |x| x);
    assert_eq!((end.as_str(), reason), ("end", Value::from("shutdown")));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_a_clients_own_and_bounded() {
    let pipeline = Pipeline::start().await.unwrap();
    let (status, accepted) = pipeline.upload(kite()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();

    let other = EventStream::open(&pipeline, &pipeline.other_api_key, &id).await;
    assert_eq!(other.status(), 404, "another client's image");
    let missing = uuid::Uuid::now_v7().to_string();
    let missing = EventStream::open(&pipeline, &pipeline.api_key, &missing).await;
    assert_eq!(missing.status(), 404);

    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(EventStream::of(
            EventStream::open(&pipeline, &pipeline.api_key, &id).await,
        ));
    }
    let ninth = EventStream::open(&pipeline, &pipeline.api_key, &id).await;
    assert_eq!(ninth.status(), 429);
    assert!(ninth.headers().contains_key("retry-after"));
    let body: Value = ninth.json().await.unwrap();
    assert_eq!(body["code"], "too-many-streams");
    // Another client has places of its own, and a closed stream frees one.
    open.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = EventStream::open(&pipeline, &pipeline.api_key, &id).await;
    assert_eq!(again.status(), 200);
    drop(again);
    drop(open);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_is_in_the_api_document_as_an_event_stream() {
    let pipeline = Pipeline::start().await.unwrap();
    let (_, document) = pipeline.get("/v1/openapi.json").await.unwrap();
    let ok = &document["paths"]["/v1/images/{id}/stream"]["get"]["responses"]["200"];
    let schema = &ok["content"]["text/event-stream"]["schema"];
    assert!(!schema.is_null(), "{ok}");
    let codes = document.to_string();
    assert!(codes.contains("too-many-streams"));
    pipeline.stop().await.unwrap();
}
