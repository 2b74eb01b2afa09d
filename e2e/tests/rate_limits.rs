//! Per-client rate limits hold on the real service: over the budget is 429 with Retry-After,
//! and another client is not affected.
#![allow(clippy::unwrap_used)]

use imgpipe_e2e::Pipeline;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_upload_budget_is_told_when_to_retry() {
    let pipeline = Pipeline::start_with(|ingest| ingest.uploads_per_minute = 2)
        .await
        .expect("pipeline starts");
    let photo = std::fs::read(imgpipe_e2e::corpus_dir().join("photos/kde-Kite-2560.jpg")).unwrap();
    for _ in 0..2 {
        let (status, body) = pipeline.upload(photo.clone()).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(&pipeline.api_key)
        .body(photo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate-limited");

    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(&pipeline.other_api_key)
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "another client has its own budget");
    pipeline.stop().await.unwrap();
}
