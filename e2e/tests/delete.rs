//! DELETE /v1/images/{id}: ImageDeleted -> the processor removes every object ->
//! ObjectsDeleted -> the read model shows the image deleted with no variants.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::Pipeline;
use serde_json::Value;

async fn delete(pipeline: &Pipeline, key: &str, id: &str) -> (u16, Value) {
    pipeline
        .request(reqwest::Method::DELETE, key, &format!("/v1/images/{id}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_image_removes_its_objects_and_records_it() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();
    let (_, accepted) = pipeline.upload(photo).await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    let image = pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    let variant_keys: Vec<String> = image["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    let original_key = pipeline.store.original_key(id.parse().unwrap());
    assert!(pipeline.store.exists(&original_key).await.unwrap());

    let (status, body) = delete(&pipeline, &pipeline.other_api_key, &id).await;
    assert_eq!(status, 404, "another client cannot delete it: {body}");
    let (status, body) = delete(&pipeline, &pipeline.api_key, &id).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "deleting");

    let deadline = Instant::now() + Duration::from_secs(60);
    let image = loop {
        let (_, image) = pipeline.image(&id).await.unwrap();
        if image["status"] == "deleted" && image["variants"].as_array().unwrap().is_empty() {
            break image;
        }
        assert!(Instant::now() < deadline, "not deleted in time: {image}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(image["status"], "deleted");
    for key in variant_keys.iter().chain([&original_key]) {
        assert!(
            !pipeline.store.exists(key).await.unwrap(),
            "{key} still stored"
        );
    }

    let (types, events) = pipeline.timeline(&id).await.unwrap();
    assert_eq!(
        types,
        [
            "ImageUploaded",
            "ImageProcessed",
            "ImageDeleted",
            "ObjectsDeleted"
        ]
    );
    assert_eq!(events[3]["causation_id"], events[2]["event_id"]);

    // Deleting again appends nothing: the log ends where it did, and once the projector has
    // applied all of it the timeline is unchanged.
    pipeline
        .wait_until_projected(Duration::from_secs(60))
        .await
        .unwrap();
    let log_end = pipeline.log_end().await.unwrap();
    let (status, body) = delete(&pipeline, &pipeline.api_key, &id).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "deleted");
    assert_eq!(pipeline.log_end().await.unwrap(), log_end);
    pipeline
        .wait_until_projected(Duration::from_secs(60))
        .await
        .unwrap();
    let (again, _) = pipeline.timeline(&id).await.unwrap();
    assert_eq!(again.len(), 4);
    pipeline.stop().await.unwrap();
}
