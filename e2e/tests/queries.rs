//! Listing with cursor pagination, and the per-image timeline, on the real stack.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::Pipeline;
use serde_json::Value;

async fn get(pipeline: &Pipeline, key: &str, path: &str) -> (u16, Value) {
    pipeline
        .request(reqwest::Method::GET, key, path)
        .await
        .unwrap()
}

fn page_ids(page: &Value) -> Vec<&str> {
    page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_page_through_their_images_and_read_each_timeline() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, accepted) = pipeline.upload(photo.clone()).await.unwrap();
        assert_eq!(status, 202);
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        pipeline
            .wait_until_settled(id, Duration::from_secs(120))
            .await
            .unwrap();
    }
    let key = pipeline.api_key.clone();

    // Newest first, two per page, then the rest, then no cursor.
    let (status, first) = get(&pipeline, &key, "/v1/images?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(page_ids(&first), [ids[2].as_str(), ids[1].as_str()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(
        &pipeline,
        &key,
        &format!("/v1/images?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(page_ids(&second), [ids[0].as_str()]);
    assert!(second.get("next_cursor").is_none(), "{second}");

    let (_, ready) = get(&pipeline, &key, "/v1/images?status=ready").await;
    assert_eq!(ready["images"].as_array().unwrap().len(), 3);
    for image in ready["images"].as_array().unwrap() {
        // A gallery's placeholder comes with the listing, not one GET per image.
        assert!(
            image["dominant_color"]
                .as_str()
                .is_some_and(|c| c.len() == 7 && c.starts_with('#')),
            "{image}"
        );
        assert!(
            image["blurhash"].as_str().is_some_and(|h| !h.is_empty()),
            "{image}"
        );
    }
    let (_, failed) = get(&pipeline, &key, "/v1/images?status=failed").await;
    assert_eq!(failed["images"].as_array().unwrap().len(), 0);
    let (_, others) = get(&pipeline, &pipeline.other_api_key, "/v1/images").await;
    assert_eq!(
        others["images"].as_array().unwrap().len(),
        0,
        "clients see only their own"
    );

    for bad in [
        "/v1/images?status=shiny",
        "/v1/images?limit=0",
        "/v1/images?limit=1000",
        "/v1/images?cursor=not-a-cursor",
    ] {
        let (status, body) = get(&pipeline, &key, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "invalid-query", "{bad}");
    }

    // Stats: three ready, percentiles of upload-to-result in seconds, ordered.
    let (status, stats) = get(&pipeline, &key, "/v1/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["counts"]["ready"], 3, "{stats}");
    assert_eq!(stats["counts"]["failed"], 0);
    let seconds = &stats["processing_seconds"];
    let (p50, p99) = (
        seconds["p50"].as_f64().unwrap(),
        seconds["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{stats}");
    let (_, theirs) = get(&pipeline, &pipeline.other_api_key, "/v1/stats").await;
    assert_eq!(theirs["counts"]["ready"], 0);
    assert!(theirs.get("processing_seconds").is_none(), "{theirs}");

    // The timeline: upload, then its result caused by it, with log positions.
    let (status, timeline) = get(&pipeline, &key, &format!("/v1/images/{}/events", ids[0])).await;
    assert_eq!(status, 200, "{timeline}");
    let events = timeline["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ImageUploaded", "ImageProcessed"]);
    assert_eq!(events[1]["causation_id"], events[0]["event_id"]);
    assert_eq!(events[0]["topic"], pipeline.kafka.topics().events);
    assert_eq!(events[0]["partition"], events[1]["partition"]);
    assert!(events[1]["offset"].as_i64() > events[0]["offset"].as_i64());

    let (status, body) = get(
        &pipeline,
        &pipeline.other_api_key,
        &format!("/v1/images/{}/events", ids[0]),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "image-not-found");
    pipeline.stop().await.unwrap();
}
