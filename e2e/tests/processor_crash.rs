//! `kill -9` of the processor mid-batch: after a restart every image is done once, with
//! exactly the spec's variants, and any result the crash caused to be announced twice is the
//! same result.
//!
//! The processor runs as a process of its own so that it can be SIGKILLed: this test
//! executable again, running `service_child` below (`imgpipe_e2e::service_process`).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use imgpipe_e2e::service_process::{ServiceOutput, ServiceProcess};
use imgpipe_e2e::Pipeline;
use imgpipe_schemas::{ImageProcessed, Payload};
use rdkafka::Message;
use uuid::Uuid;

const IMAGES: usize = 10;

/// The processor process of this test (see `service_process`); the test starts it itself.
#[test]
#[ignore = "the processor process of the crash test; it starts it itself"]
fn service_child() {
    imgpipe_e2e::service_process::run_service_from_env();
}

fn start_processor(pipeline: &Pipeline) -> ServiceProcess {
    ServiceProcess::start(
        "processor",
        pipeline.processor_env(),
        ServiceOutput::TestStderr,
    )
}

/// The client's images that are `ready`, by the listing.
async fn ready_ids(pipeline: &Pipeline) -> Vec<String> {
    let (status, body) = pipeline
        .get("/v1/images?status=ready&limit=200")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every `ImageProcessed` on the events topic, by image.
async fn processed_events(pipeline: &Pipeline) -> BTreeMap<Uuid, Vec<ImageProcessed>> {
    let records = imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap();
    let mut processed: BTreeMap<Uuid, Vec<ImageProcessed>> = BTreeMap::new();
    for record in records {
        let event = imgpipe_schemas::decode(record.payload().unwrap()).unwrap();
        if let Payload::ImageProcessed(result) = event.payload {
            processed.entry(event.image_id).or_default().push(result);
        }
    }
    processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_killed_mid_batch_finishes_every_image_once_after_a_restart() {
    let pipeline = Pipeline::start_without_processor()
        .await
        .expect("pipeline starts");
    let mut photos = imgpipe_e2e::corpus_files("photos");
    photos.extend(imgpipe_e2e::corpus_files("exif"));
    photos.retain(|path| {
        matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jpg" | "png" | "webp")
        )
    });
    photos.truncate(IMAGES);
    assert_eq!(photos.len(), IMAGES);
    let mut ids = Vec::new();
    for path in &photos {
        let (status, body) = pipeline.upload(std::fs::read(path).unwrap()).await.unwrap();
        assert_eq!(status, 202, "{}: {body}", path.display());
        ids.push(body["id"].as_str().unwrap().to_string());
    }

    // Kill it as soon as the first image is done, with the rest in flight or queued.
    let mut processor = start_processor(&pipeline);
    let deadline = Instant::now() + Duration::from_secs(180);
    let ready_before_kill = loop {
        let ready = ready_ids(&pipeline).await.len();
        if ready >= 1 {
            break ready;
        }
        assert!(Instant::now() < deadline, "no image ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    processor.kill();
    assert!(
        ready_before_kill < IMAGES,
        "every image was ready before the kill: nothing was cut short"
    );

    // Restart only once the killed member's session (10 s) has lapsed. Tansu 0.6 evicts a
    // silent member only when a group request finds it overdue; a new member that joined
    // a quarter of a second after the kill got no partitions for more than five minutes in
    // two runs of three, while one that joins after the session lapsed gets them at once.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let restarted = Instant::now();
    processor.spawn();
    for id in &ids {
        let image = pipeline
            .wait_until_settled(id, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(image["status"], "ready", "{id}: {image}");
    }
    eprintln!("all ready {:?} after the restart", restarted.elapsed());
    processor.kill();

    // Each image once in the read model, ready.
    let mut ready = ready_ids(&pipeline).await;
    ready.sort();
    let mut expected_ids = ids.clone();
    expected_ids.sort();
    assert_eq!(ready, expected_ids);

    let processed = processed_events(&pipeline).await;
    let spec = ["thumb", "medium", "large"];
    for id in &ids {
        let image_id: Uuid = id.parse().unwrap();
        // Exactly the spec's objects under the image's variants prefix: nothing left over from
        // the killed attempt.
        let mut stored = pipeline
            .store
            .list(&pipeline.store.variants_prefix(image_id))
            .await
            .unwrap();
        stored.sort();
        let mut expected_keys: Vec<String> = spec
            .iter()
            .map(|name| pipeline.store.variant_key(image_id, 1, name, "webp"))
            .collect();
        expected_keys.sort();
        assert_eq!(stored, expected_keys, "{id}");

        // One upload, no failure; a result announced twice (the kill came between the
        // append and the offset commit) is the same result, and it is what the read model
        // shows.
        let (types, _) = pipeline.timeline(id).await.unwrap();
        assert_eq!(
            types.iter().filter(|t| *t == "ImageUploaded").count(),
            1,
            "{id}: {types:?}"
        );
        assert!(!types.iter().any(|t| t == "ImageFailed"), "{id}: {types:?}");
        let results = processed.get(&image_id).map(Vec::as_slice).unwrap_or(&[]);
        assert!(!results.is_empty(), "{id}: no ImageProcessed");
        assert!(
            results.iter().all(|result| result == &results[0]),
            "{id}: results differ: {results:?}"
        );
        assert_eq!(
            types.iter().filter(|t| *t == "ImageProcessed").count(),
            results.len(),
            "{id}: the timeline has every ImageProcessed: {types:?}"
        );
        let names: BTreeSet<&str> = results[0]
            .variants
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, spec.into_iter().collect(), "{id}");
        let (_, image) = pipeline.image(id).await.unwrap();
        for variant in image["variants"].as_array().unwrap() {
            let announced = results[0]
                .variants
                .iter()
                .find(|v| v.name == variant["name"].as_str().unwrap())
                .unwrap();
            assert_eq!(variant["key"], announced.key.as_str(), "{id}");
            assert_eq!(variant["sha256"], announced.sha256.as_str(), "{id}");
        }
    }

    pipeline.stop().await.unwrap();
}
