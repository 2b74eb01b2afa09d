//! Per-client rate limits and key scopes hold on the real service: over the budget is 429 with
//! Retry-After and another client is not affected; a client's own limits override the
//! defaults; a read-only key reads its client's images but gets 403 on upload and delete.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::Pipeline;
use imgpipe_ingest::auth::{ApiKeys, ClientLimits, Scope};
use serde_json::Value;
use uuid::Uuid;

/// A small real photo, so the pipeline's processing of the accepted uploads stays cheap.
fn small_photo() -> Vec<u8> {
    std::fs::read(imgpipe_e2e::corpus_dir().join("exif/camera-Canon_40D.jpg")).unwrap()
}

async fn upload_as(pipeline: &Pipeline, api_key: &str, body: Vec<u8>) -> reqwest::Response {
    pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(api_key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 `rate-limited` with a sensible Retry-After.
async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate-limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_upload_budget_is_told_when_to_retry() {
    let pipeline = Pipeline::start_with(|ingest| ingest.uploads_per_minute = 2)
        .await
        .expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();
    for _ in 0..2 {
        let (status, body) = pipeline.upload(photo.clone()).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    assert_rate_limited(upload_as(&pipeline, &pipeline.api_key, photo.clone()).await).await;

    let response = upload_as(&pipeline, &pipeline.other_api_key, photo).await;
    assert_eq!(response.status(), 202, "another client has its own budget");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_with_its_own_low_limit_is_limited_while_a_default_client_is_not() {
    // client-a's limit is stated on the entry of a second key (as during a rotation); it holds
    // for both of client-a's keys together.
    let second_key = format!("key-{}", Uuid::new_v4());
    let limited = ClientLimits {
        uploads_per_minute: Some(2),
        bytes_per_minute: None,
    };
    let entry = ApiKeys::entry_with("client-a", &second_key, Scope::ReadWrite, limited);
    let pipeline = Pipeline::start_with(|ingest| {
        ingest.uploads_per_minute = 10;
        ingest.api_keys = format!("{},{entry}", ingest.api_keys);
    })
    .await
    .expect("pipeline starts");
    let photo = small_photo();

    let response = upload_as(&pipeline, &second_key, photo.clone()).await;
    assert_eq!(response.status(), 202);
    let response = upload_as(&pipeline, &pipeline.api_key, photo.clone()).await;
    assert_eq!(response.status(), 202);
    assert_rate_limited(upload_as(&pipeline, &pipeline.api_key, photo.clone()).await).await;
    assert_rate_limited(upload_as(&pipeline, &second_key, photo.clone()).await).await;

    for n in 1..=3 {
        let response = upload_as(&pipeline, &pipeline.other_api_key, photo.clone()).await;
        assert_eq!(
            response.status(),
            202,
            "client-b's upload {n} is within the default 10 per minute"
        );
    }
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_key_reads_its_clients_images_but_cannot_upload_or_delete() {
    let reader_key = format!("key-{}", Uuid::new_v4());
    let entry = ApiKeys::entry_with(
        "client-a",
        &reader_key,
        Scope::Read,
        ClientLimits::default(),
    );
    let pipeline = Pipeline::start_with(|ingest| {
        ingest.api_keys = format!("{},{entry}", ingest.api_keys);
    })
    .await
    .expect("pipeline starts");
    let (status, accepted) = pipeline.upload(small_photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let settled = pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(settled["status"], "ready", "{settled}");

    let (status, page) = pipeline
        .request(reqwest::Method::GET, &reader_key, "/v1/images")
        .await
        .unwrap();
    assert_eq!(status, 200, "{page}");
    let listed: Vec<&str> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![id.as_str()],
        "the reader sees client-a's images"
    );
    let (status, image) = pipeline
        .request(
            reqwest::Method::GET,
            &reader_key,
            &format!("/v1/images/{id}"),
        )
        .await
        .unwrap();
    assert_eq!((status, &image["status"]), (200, &Value::from("ready")));

    let response = upload_as(&pipeline, &reader_key, small_photo()).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "insufficient-scope", "{body}");
    let (status, body) = pipeline
        .request(
            reqwest::Method::DELETE,
            &reader_key,
            &format!("/v1/images/{id}"),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, &body["code"]),
        (403, &Value::from("insufficient-scope")),
        "{body}"
    );

    let (types, _) = pipeline.timeline(&id).await.unwrap();
    assert!(
        !types.iter().any(|t| t == "ImageDeleted"),
        "the refused delete appended nothing: {types:?}"
    );
    let (status, page) = pipeline.get("/v1/images").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        page["images"].as_array().unwrap().len(),
        1,
        "the refused upload made no image: {page}"
    );
    pipeline.stop().await.unwrap();
}
