//! Issue #5: when the object store goes away mid-run, the processor's circuit breaker opens and
//! consumption pauses: no image fails for it and nothing is dead-lettered. Once the store is
//! back, the breaker's probe closes it and every image ends `ready`.
//!
//! The test runs its own s3s-fs, so it can kill it without disturbing the shared stack's object
//! store that every other test uses.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::private_server::PrivateServer;
use imgpipe_e2e::Pipeline;
use imgpipe_infra::consume::health::metric_names as lag_metric;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_processor::metrics as names;

/// The processor group's `imgpipe_consumer_lag` gauges, one per partition measured so far.
async fn lag_per_partition(pipeline: &Pipeline) -> Vec<f64> {
    let text = pipeline.processor_metrics().await;
    let prefix = format!("{}{{group=\"imgpipe-processor\"", lag_metric::LAG);
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

/// Records on the dead-letter topic, over all its partitions.
async fn dead_letters(pipeline: &Pipeline) -> i64 {
    let topic = pipeline.kafka.topics().dead_letter;
    LogReader::new(&pipeline.kafka, "dlq-counter", "dlq-counter", &topic)
        .unwrap()
        .ends()
        .await
        .unwrap()
        .records()
}

async fn assert_no_image_failed(pipeline: &Pipeline, ids: &[String]) {
    for id in ids {
        let (types, _) = pipeline.timeline(id).await.unwrap();
        assert!(
            !types.iter().any(|t| t == "ImageFailed"),
            "{id} failed: {types:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_outage_pauses_processing_and_every_image_completes_after_it() {
    let mut s3 = PrivateServer::s3s_fs();
    s3.wait_until_listening().await;
    let endpoint = format!("http://127.0.0.1:{}", s3.port());
    let pipeline = Pipeline::start_with_stack(
        |_| {},
        |config| config.endpoint = Some(endpoint),
        |processor| {
            // Open fast and probe often, so the outage is seen within seconds.
            processor.breaker_failures = 2;
            processor.breaker_open_secs = 1;
            processor.cpu_jobs = 1;
        },
        |_| {},
    )
    .await
    .expect("pipeline starts");

    // Twice the photos, so the processor is still busy when the store goes away.
    let photos = imgpipe_e2e::corpus_files("photos");
    let mut ids = Vec::new();
    for path in photos.iter().chain(&photos) {
        let (status, body) = pipeline.upload(std::fs::read(path).unwrap()).await.unwrap();
        assert_eq!(status, 202, "{}: {body}", path.display());
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    s3.kill();
    let (_, last) = pipeline.image(ids.last().unwrap()).await.unwrap();
    assert_ne!(
        last["status"], "ready",
        "every image was done before the outage began; the test needs more work in flight"
    );

    // The breaker opens instead of the images failing or being dead-lettered, and a probe
    // that finds the store still down opens it again.
    let opened = format!("{}{{to=\"open\"}}", names::STORAGE_BREAKER_TRANSITIONS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.processor_metric(&opened).await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the breaker did not open and fail a probe within 120 s of the outage"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(dead_letters(&pipeline).await, 0, "nothing is dead-lettered");
    assert_no_image_failed(&pipeline, &ids).await;

    s3.restart();
    s3.wait_until_listening().await;
    for id in &ids {
        let image = pipeline
            .wait_until_settled(id, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(image["status"], "ready", "{image}");
    }
    assert_no_image_failed(&pipeline, &ids).await;
    assert_eq!(dead_letters(&pipeline).await, 0, "nothing is dead-lettered");
    let closed = format!("{}{{to=\"closed\"}}", names::STORAGE_BREAKER_TRANSITIONS);
    assert!(pipeline.processor_metric(&closed).await >= 1.0);
    assert_eq!(
        pipeline
            .processor_metric(names::STORAGE_BREAKER_STATE)
            .await,
        0.0
    );
    assert!(pipeline.processor_metric(names::IMAGES_PROCESSED).await >= ids.len() as f64);
    assert_eq!(
        pipeline.processor_metric(names::IMAGES_IN_FLIGHT).await,
        0.0
    );

    // Once the group has committed everything, every partition's lag reads 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lags = lag_per_partition(&pipeline).await;
        if !lags.is_empty() && lags.iter().all(|lag| *lag == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer lag not 0 on every partition after 60 s: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pipeline.stop().await.unwrap();
}
