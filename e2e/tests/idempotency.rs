//! Idempotency-Key: the same key and body returns the first answer and appends nothing; the
//! same key with another body is refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::Pipeline;
use serde_json::Value;

async fn upload(pipeline: &Pipeline, api_key: &str, key: &str, body: &[u8]) -> reqwest::Response {
    pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(api_key)
        .header("idempotency-key", key)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_upload_is_answered_once_and_appended_once() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photos = imgpipe_e2e::corpus_dir().join("photos");
    let kite = std::fs::read(photos.join("kde-Kite-2560.jpg")).unwrap();
    let other = std::fs::read(photos.join("kde-BytheWater-2560.jpg")).unwrap();

    let first = upload(&pipeline, &pipeline.api_key, "order-42", &kite).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_string();

    let again = upload(&pipeline, &pipeline.api_key, "order-42", &kite).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        format!("/v1/images/{id}")
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first answer, unchanged");

    let reused = upload(&pipeline, &pipeline.api_key, "order-42", &other).await;
    assert_eq!(reused.status(), 409);
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(reused["code"], "idempotency-key-reused");

    let invalid = upload(&pipeline, &pipeline.api_key, &"k".repeat(300), &kite).await;
    assert_eq!(invalid.status(), 400);
    let invalid: Value = invalid.json().await.unwrap();
    assert_eq!(invalid["code"], "invalid-idempotency-key");

    // Keys are per client: the other client's "order-42" is its own upload.
    let theirs = upload(&pipeline, &pipeline.other_api_key, "order-42", &kite).await;
    assert_eq!(theirs.status(), 202);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["id"], first["id"]);

    pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    let (_, listing) = pipeline.get("/v1/images").await.unwrap();
    assert_eq!(
        listing["images"].as_array().unwrap().len(),
        1,
        "one image for three requests: {listing}"
    );
    let (types, _) = pipeline.timeline(&id).await.unwrap();
    let uploads = types.iter().filter(|t| *t == "ImageUploaded").count();
    assert_eq!(uploads, 1, "{types:?}");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_is_forgotten_after_its_time_to_live() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photos = imgpipe_e2e::corpus_dir().join("photos");
    let kite = std::fs::read(photos.join("kde-Kite-2560.jpg")).unwrap();
    let other = std::fs::read(photos.join("kde-BytheWater-2560.jpg")).unwrap();

    let first = upload(&pipeline, &pipeline.api_key, "order-7", &kite).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Within the time to live, another body under the key is refused.
    let reused = upload(&pipeline, &pipeline.api_key, "order-7", &other).await;
    assert_eq!(reused.status(), 409);

    // A day and more later (the default time to live is a day), the key is free again.
    let pool = pipeline.database.pool().unwrap();
    let aged = sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'order-7'",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(aged, 1);
    let later = upload(&pipeline, &pipeline.api_key, "order-7", &other).await;
    assert_eq!(later.status(), 202);
    assert!(later.headers().get("idempotent-replayed").is_none());
    let later: Value = later.json().await.unwrap();
    assert_ne!(later["id"], first["id"]);
    assert_ne!(later["sha256"], first["sha256"]);
    pipeline.stop().await.unwrap();
}
