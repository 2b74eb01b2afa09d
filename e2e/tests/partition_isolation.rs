//! Issue #5: an image whose handling keeps failing transiently holds up only the images behind
//! it in its own partition; every other partition keeps completing. Then the stuck image
//! completes once the fault is gone, or, with a finite `MAX_ATTEMPTS`, is dead-lettered after
//! that many attempts and its partition moves on.
//!
//! The fault is real and deterministic: the stuck image's original key is a directory in
//! s3s-fs (an object exists *under* it), so its GET answers 500 Internal Error, a transient
//! storage failure to the processor, every time until the test removes the object under it
//! and stores the original.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::dead_letters::{header, DeadLetters};
use imgpipe_e2e::{fixtures, Pipeline};
use imgpipe_infra::consume::dead_letter_headers as dlq;
use imgpipe_processor::config::ProcessorSettings;
use imgpipe_processor::metrics as names;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(180);

async fn start(adjust: impl FnOnce(&mut ProcessorSettings)) -> Pipeline {
    Pipeline::start_with_stack(
        |_| {},
        |_| {},
        |processor| {
            // This test is about one record's retries, not an outage: keep the breaker shut.
            processor.breaker_failures = 1_000_000;
            adjust(processor);
        },
        |_| {},
    )
    .await
    .expect("pipeline starts")
}

/// Appends an `ImageUploaded` for a new image to `partition` of the events topic; its original
/// is the corpus photo, stored first unless `stuck`, in which case an object is stored *under*
/// its key instead, which makes the key a directory whose GET fails with a 500.
async fn upload_to(
    pipeline: &Pipeline,
    producer: &FutureProducer,
    partition: i32,
    stuck: bool,
) -> Uuid {
    let image_id = Uuid::now_v7();
    let original_key = pipeline.store.original_key(image_id);
    if stuck {
        pipeline
            .store
            .put(
                &format!("{original_key}/blocker"),
                b"x".to_vec().into(),
                "text/plain",
            )
            .await
            .unwrap();
    } else {
        pipeline
            .store
            .put(&original_key, fixtures::kite().into(), "image/jpeg")
            .await
            .unwrap();
    }
    let uploaded = fixtures::kite_uploaded(image_id, original_key);
    let key = image_id.to_string();
    let payload = imgpipe_schemas::encode(&uploaded).unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&pipeline.kafka.topics().events)
                .partition(partition)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(delivery.partition, partition);
    image_id
}

/// Takes the fault away: the object under the key, the directory, then the original itself.
async fn unblock(pipeline: &Pipeline, image_id: Uuid) {
    let original_key = pipeline.store.original_key(image_id);
    pipeline
        .store
        .delete(&format!("{original_key}/blocker"))
        .await
        .unwrap();
    pipeline
        .store
        .delete(&format!("{original_key}/"))
        .await
        .unwrap();
    pipeline
        .store
        .put(&original_key, fixtures::kite().into(), "image/jpeg")
        .await
        .unwrap();
}

async fn partitions(pipeline: &Pipeline) -> i32 {
    pipeline.log_ends().await.unwrap().iter().count() as i32
}

/// Waits until the processor has met at least `count` storage errors.
async fn wait_for_storage_errors(pipeline: &Pipeline, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.processor_metric(names::STORAGE_ERRORS).await < count {
        assert!(
            Instant::now() < deadline,
            "the processor did not try the stuck image within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status(pipeline: &Pipeline, image_id: Uuid) -> String {
    let (code, body) = pipeline.image(&image_id.to_string()).await.unwrap();
    assert_eq!(code, 200, "{body}");
    body["status"].as_str().unwrap().to_string()
}

/// Polls until the read model knows the image (its `ImageUploaded` was projected).
async fn wait_until_known(pipeline: &Pipeline, image_id: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pipeline.image(&image_id.to_string()).await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "{image_id} never projected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_in_retry_holds_up_only_its_own_partition() {
    let pipeline = start(|_| {}).await;
    let producer: FutureProducer = pipeline.kafka.client_config("uploader").create().unwrap();
    let partition_count = partitions(&pipeline).await;
    assert!(
        partition_count >= 2,
        "the test needs two partitions or more"
    );

    // The stuck image first, and only once the processor is retrying it the rest: one image
    // behind it on its partition and one on every other partition.
    let stuck = upload_to(&pipeline, &producer, 0, true).await;
    wait_for_storage_errors(&pipeline, 1.0).await;
    let behind = upload_to(&pipeline, &producer, 0, false).await;
    let mut others = Vec::new();
    for partition in 1..partition_count {
        others.push(upload_to(&pipeline, &producer, partition, false).await);
    }

    for id in &others {
        let image = pipeline
            .wait_until_settled(&id.to_string(), SETTLE)
            .await
            .unwrap();
        assert_eq!(image["status"], "ready", "{image}");
    }
    // The stuck image cannot have completed, and its partition kept its order: the image
    // behind it waits. Both are still being retried, not failed.
    wait_until_known(&pipeline, behind).await;
    assert_eq!(status(&pipeline, stuck).await, "uploaded");
    assert_eq!(status(&pipeline, behind).await, "uploaded");
    let errors = pipeline.processor_metric(names::STORAGE_ERRORS).await;
    wait_for_storage_errors(&pipeline, errors + 1.0).await;

    unblock(&pipeline, stuck).await;
    for id in [stuck, behind] {
        let image = pipeline
            .wait_until_settled(&id.to_string(), SETTLE)
            .await
            .unwrap();
        assert_eq!(image["status"], "ready", "{image}");
    }
    let (types, _) = pipeline.timeline(&stuck.to_string()).await.unwrap();
    assert_eq!(types, ["ImageUploaded", "ImageProcessed"]);
    assert!(pipeline.processor_metric(names::IMAGES_PROCESSED).await >= (others.len() + 2) as f64);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_out_of_attempts_is_dead_lettered_and_its_partition_moves_on() {
    let pipeline = start(|processor| processor.max_attempts = 3).await;
    let producer: FutureProducer = pipeline.kafka.client_config("uploader").create().unwrap();

    let stuck = upload_to(&pipeline, &producer, 0, true).await;
    let behind = upload_to(&pipeline, &producer, 0, false).await;
    let elsewhere = upload_to(&pipeline, &producer, 1, false).await;
    for id in [behind, elsewhere] {
        let image = pipeline
            .wait_until_settled(&id.to_string(), SETTLE)
            .await
            .unwrap();
        assert_eq!(image["status"], "ready", "{image}");
    }
    // Dead-lettered, so neither processed nor failed: `imgpipe redrive` brings it back.
    assert_eq!(status(&pipeline, stuck).await, "uploaded");

    let letter = DeadLetters::open(&pipeline)
        .await
        .next_before(Instant::now() + Duration::from_secs(60))
        .await
        .expect("a dead letter within 60 s");
    assert_eq!(letter.key(), Some(stuck.to_string().as_bytes()));
    assert_eq!(header(&letter, dlq::ATTEMPTS).unwrap(), "3");
    assert_eq!(header(&letter, dlq::ERROR_CLASS).unwrap(), "storage");
    assert_eq!(header(&letter, dlq::ORIGINAL_PARTITION).unwrap(), "0");
    assert_eq!(
        header(&letter, dlq::CONSUMER_GROUP).unwrap(),
        pipeline.kafka.group_id("imgpipe-processor")
    );
    assert!(pipeline.processor_metric(names::STORAGE_ERRORS).await >= 3.0);
    pipeline.stop().await.unwrap();
}
