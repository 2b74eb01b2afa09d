//! `imgpipe replay reprocess` against the whole pipeline on the real stack: one image, a time
//! range, a variant-spec change over 50 images, and replays that must change nothing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use imgpipe_admin::replay::{self, ReprocessOptions, Selection, Summary};
use imgpipe_admin::report::Report;
use imgpipe_e2e::Pipeline;
use imgpipe_infra::registry::RegistryConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const SETTLE: Duration = Duration::from_secs(180);
/// The spec the restarted processor runs in the spec-change tests: a 512 px size more.
const SPEC_V2: &str = "thumb:256,small:512,medium:1024,large:2048";

/// A small PNG of its own per seed (640x480, so every size but the 256 px one keeps it whole).
fn png(seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([
            (x.wrapping_mul(seed + 1) % 256) as u8,
            (y.wrapping_add(seed * 7) % 256) as u8,
            ((x + y + seed * 31) % 256) as u8,
        ])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// Uploads generated PNGs; their ids, in upload order.
async fn upload_batch(pipeline: &Pipeline, seeds: std::ops::Range<u32>) -> Vec<String> {
    let mut ids = Vec::new();
    for seed in seeds {
        let (status, body) = pipeline.upload(png(seed)).await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn settle_all(pipeline: &Pipeline, ids: &[String]) {
    for id in ids {
        let image = pipeline.wait_until_settled(id, SETTLE).await.unwrap();
        assert_eq!(image["status"], "ready", "{image}");
    }
}

fn options(selection: Selection, spec_version: i32) -> ReprocessOptions {
    ReprocessOptions {
        selection,
        spec_version,
        reason: "e2e".into(),
        requested_by: "tester".into(),
        dry_run: false,
        force: false,
        include_failed: false,
        wait: None,
        show_progress: false,
    }
}

async fn reprocess(pipeline: &Pipeline, options: &ReprocessOptions) -> Summary {
    replay::reprocess(&pipeline.kafka, &RegistryConfig::default(), options)
        .await
        .unwrap()
}

/// Polls `check` until it answers `Some`, or fails after [`SETTLE`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, check: impl Fn() -> F) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not after {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the image reads `ready` with `spec_version` and returns it.
async fn wait_for_spec(pipeline: &Pipeline, id: &str, spec_version: i32) -> Value {
    eventually(&format!("{id} at spec {spec_version}"), || async move {
        let (status, image) = pipeline.image(id).await.unwrap();
        (status == 200 && image["status"] == "ready" && image["spec_version"] == spec_version)
            .then_some(image)
    })
    .await
}

/// Every object under the namespace's variants, with the sha256 of its bytes.
async fn variant_objects(pipeline: &Pipeline) -> BTreeMap<String, String> {
    let prefix = format!("{}variants/", key_prefix(pipeline));
    let mut objects = BTreeMap::new();
    for key in pipeline.store.list(&prefix).await.unwrap() {
        let bytes = pipeline.store.get(&key).await.unwrap();
        objects.insert(key, hex::encode(Sha256::digest(&bytes)));
    }
    objects
}

/// A read-model table as JSON rows in a stable order.
async fn table(pipeline: &Pipeline, query: &str) -> Value {
    let pool = pipeline.database.pool().unwrap();
    let rows: Option<Value> = sqlx::query_scalar(&format!(
        "SELECT jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text) FROM ({query}) t"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.unwrap_or(Value::Null)
}

/// The events topic's high watermark on every partition.
async fn log_end(pipeline: &Pipeline) -> Vec<i64> {
    pipeline.log_end().await.unwrap().into_values().collect()
}

/// The image's timeline once it has `len` events.
async fn timeline_of_length(pipeline: &Pipeline, id: &str, len: usize) -> Option<Vec<Value>> {
    let (_, timeline) = pipeline.timeline(id).await.unwrap();
    (timeline.len() == len).then_some(timeline)
}

fn event_types(timeline: &[Value]) -> Vec<&str> {
    timeline
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

fn requested_ids(summary: &Summary) -> Vec<String> {
    let mut ids: Vec<String> = summary
        .images
        .iter()
        .filter(|line| line.skipped.is_none())
        .map(|line| line.image.image_id.to_string())
        .collect();
    ids.sort();
    ids
}

/// What the pipeline puts in front of every object key.
fn key_prefix(pipeline: &Pipeline) -> String {
    format!("{}/", pipeline.namespace)
}

type Snapshot = (BTreeMap<String, String>, Value, Value, Value, Vec<i64>);

/// Objects, read-model tables and the log's end.
async fn snapshot(pipeline: &Pipeline) -> Snapshot {
    (
        variant_objects(pipeline).await,
        table(pipeline, "SELECT * FROM images").await,
        table(pipeline, "SELECT * FROM variants").await,
        table(pipeline, "SELECT * FROM image_events").await,
        log_end(pipeline).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reprocessing_one_image_appends_a_request_and_a_result_and_keeps_its_objects() {
    let pipeline = Pipeline::start().await.unwrap();
    let ids = upload_batch(&pipeline, 0..2).await;
    settle_all(&pipeline, &ids).await;
    let (target, other) = (&ids[0], &ids[1]);
    let objects_before = variant_objects(&pipeline).await;
    let variants_before = table(&pipeline, "SELECT * FROM variants").await;
    let (_, other_timeline) = pipeline.timeline(other).await.unwrap();
    let image = Selection::Image(target.parse().unwrap());

    // Up to date with the processor's spec: nothing to do unless forced.
    let plain = reprocess(&pipeline, &options(image.clone(), 1)).await;
    assert_eq!(plain.requested(), 0);
    assert_eq!(
        plain.to_json()["skipped"]["up-to-date"],
        1,
        "{}",
        plain.to_json()
    );

    let mut forced = options(image.clone(), 1);
    forced.force = true;
    forced.dry_run = true;
    let dry = reprocess(&pipeline, &forced).await;
    assert_eq!(dry.to_json()["images"][0]["action"], "would-request");
    assert_eq!(
        log_end(&pipeline).await.iter().sum::<i64>(),
        4,
        "a dry run appends nothing"
    );

    forced.dry_run = false;
    forced.wait = Some(SETTLE);
    let summary = reprocess(&pipeline, &forced).await;
    let json = summary.to_json();
    assert_eq!(json["requested"], 1, "{json}");
    assert_eq!(json["results"]["processed"], 1, "{json}");
    let request_id = json["images"][0]["request_event_id"]
        .as_str()
        .unwrap()
        .to_string();

    let timeline = eventually("the timeline shows the request's result", || {
        timeline_of_length(&pipeline, target, 4)
    })
    .await;
    assert_eq!(
        event_types(&timeline),
        [
            "ImageUploaded",
            "ImageProcessed",
            "ReprocessRequested",
            "ImageProcessed"
        ]
    );
    assert_eq!(timeline[2]["event_id"], request_id.as_str());
    assert_eq!(timeline[2]["causation_id"], timeline[0]["event_id"]);
    assert_eq!(
        timeline[2]["correlation_id"],
        summary.correlation_id.as_str()
    );
    assert_eq!(timeline[3]["causation_id"], request_id.as_str());
    assert_eq!(
        timeline[3]["correlation_id"],
        summary.correlation_id.as_str()
    );
    wait_for_spec(&pipeline, target, 1).await;

    // The same spec makes the same objects under the same keys; the other image is untouched.
    assert_eq!(variant_objects(&pipeline).await, objects_before);
    assert_eq!(
        table(&pipeline, "SELECT * FROM variants").await,
        variants_before
    );
    assert_eq!(pipeline.timeline(other).await.unwrap().1, other_timeline);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reprocessing_a_time_range_takes_only_the_uploads_inside_it() {
    let pipeline = Pipeline::start().await.unwrap();
    // Record timestamps are the producer's clock in milliseconds: a pause on each side of a
    // bound keeps every batch clearly on one side.
    let pause = || tokio::time::sleep(Duration::from_millis(1_100));
    let before = upload_batch(&pipeline, 0..3).await;
    pause().await;
    let from = OffsetDateTime::now_utc();
    pause().await;
    let mut inside = upload_batch(&pipeline, 3..6).await;
    pause().await;
    let to = OffsetDateTime::now_utc();
    pause().await;
    let after = upload_batch(&pipeline, 6..9).await;
    settle_all(
        &pipeline,
        &[before.clone(), inside.clone(), after.clone()].concat(),
    )
    .await;
    inside.sort();

    let range = Selection::Range {
        from: Some(from),
        to: Some(to),
    };
    let mut forced = options(range, 1);
    forced.force = true;
    forced.dry_run = true;
    let dry = reprocess(&pipeline, &forced).await;
    assert_eq!(dry.images_in_log, 9);
    assert_eq!(requested_ids(&dry), inside);

    forced.dry_run = false;
    forced.wait = Some(SETTLE);
    let summary = reprocess(&pipeline, &forced).await;
    assert_eq!(requested_ids(&summary), inside);
    assert_eq!(summary.to_json()["results"]["processed"], 3);
    for id in &inside {
        let timeline = eventually("the reprocessed image's timeline", || {
            timeline_of_length(&pipeline, id, 4)
        })
        .await;
        assert_eq!(
            event_types(&timeline)[2..],
            ["ReprocessRequested", "ImageProcessed"]
        );
    }
    for id in before.iter().chain(&after) {
        let (_, timeline) = pipeline.timeline(id).await.unwrap();
        assert_eq!(
            event_types(&timeline),
            ["ImageUploaded", "ImageProcessed"],
            "{id} is outside the range"
        );
    }
    // Open-ended ranges: from the upper bound on is exactly the last batch.
    let mut rest = after.clone();
    rest.sort();
    let tail = reprocess(
        &pipeline,
        &ReprocessOptions {
            dry_run: true,
            force: true,
            ..options(
                Selection::Range {
                    from: Some(to),
                    to: None,
                },
                1,
            )
        },
    )
    .await;
    assert_eq!(requested_ids(&tail), rest);
    pipeline.stop().await.unwrap();
}

/// Runs the default spec over `count` images, restarts the processor with [`SPEC_V2`] as
/// spec version 2 and replays everything; returns the pipeline and the image ids.
async fn spec_change(count: u32) -> (Pipeline, Vec<String>, Summary) {
    let mut pipeline = Pipeline::start().await.unwrap();
    let ids = upload_batch(&pipeline, 0..count).await;
    settle_all(&pipeline, &ids).await;
    pipeline
        .restart_processor(|settings| {
            settings.variants = SPEC_V2.into();
            settings.spec_version = 2;
        })
        .await
        .unwrap();
    let mut all = options(Selection::All, 2);
    all.wait = Some(SETTLE);
    let summary = reprocess(&pipeline, &all).await;
    (pipeline, ids, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spec_change_replayed_over_50_images_gives_every_image_the_new_set() {
    let (pipeline, ids, summary) = spec_change(50).await;
    let json = summary.to_json();
    assert_eq!(json["requested"], 50, "{}", json["skipped"]);
    assert_eq!(json["results"]["processed"], 50, "{}", json["results"]);
    let old_objects: Vec<String> = variant_objects(&pipeline)
        .await
        .into_keys()
        .filter(|key| key.contains("/v1/"))
        .collect();
    assert_eq!(old_objects.len(), 50 * 3);

    for id in &ids {
        let image = wait_for_spec(&pipeline, id, 2).await;
        let mut variants: Vec<(String, String, i64)> = image["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["key"].as_str().unwrap().to_string(),
                    v["width"].as_i64().unwrap(),
                )
            })
            .collect();
        variants.sort();
        let expected: Vec<(String, String, i64)> = [
            ("large", 640),
            ("medium", 640),
            ("small", 512),
            ("thumb", 256),
        ]
        .into_iter()
        .map(|(name, width)| {
            (
                name.to_string(),
                format!("{}variants/{id}/v2/{name}.webp", key_prefix(&pipeline)),
                width,
            )
        })
        .collect();
        assert_eq!(variants, expected, "{image}");
    }
    let by_spec = table(
        &pipeline,
        "SELECT spec_version, count(*) AS images FROM images GROUP BY spec_version",
    )
    .await;
    assert_eq!(
        by_spec,
        serde_json::json!([{"spec_version": 2, "images": 50}])
    );
    // The v1 objects are still stored but nothing refers to them: orphans for the sweep.
    let referenced = table(
        &pipeline,
        "SELECT object_key FROM variants WHERE object_key LIKE '%/v1/%'",
    )
    .await;
    assert_eq!(referenced, Value::Null, "{referenced}");
    let stored = variant_objects(&pipeline).await;
    assert!(old_objects.iter().all(|key| stored.contains_key(key)));
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_identical_replay_changes_nothing() {
    let (pipeline, ids, first) = spec_change(5).await;
    assert_eq!(first.requested(), 5);
    for id in &ids {
        wait_for_spec(&pipeline, id, 2).await;
    }
    let before = snapshot(&pipeline).await;

    let second = reprocess(&pipeline, &options(Selection::All, 2)).await;
    let json = second.to_json();
    assert_eq!(json["requested"], 0, "{json}");
    assert_eq!(json["skipped"]["up-to-date"], 5, "{json}");
    assert_eq!(snapshot(&pipeline).await, before);

    // Forced, the same spec makes the same objects and the same variant rows again; only the
    // timelines grow by the request and its result.
    let mut forced = options(Selection::All, 2);
    forced.force = true;
    forced.wait = Some(SETTLE);
    let third = reprocess(&pipeline, &forced).await;
    assert_eq!(third.to_json()["results"]["processed"], 5);
    for id in &ids {
        eventually("the forced replay is projected", || {
            timeline_of_length(&pipeline, id, 6)
        })
        .await;
    }
    let after = snapshot(&pipeline).await;
    assert_eq!(after.0, before.0, "objects");
    assert_eq!(after.2, before.2, "variant rows");
    let without_updated_at = |images: &Value| {
        let mut images = images.clone();
        for image in images.as_array_mut().unwrap() {
            image.as_object_mut().unwrap().remove("updated_at");
        }
        images
    };
    assert_eq!(without_updated_at(&after.1), without_updated_at(&before.1));
    pipeline.stop().await.unwrap();
}
