//! `imgpipe redrive` against a live pipeline on the real stack, through the functions the
//! command runs (`imgpipe_admin::redrive`, `imgpipe_admin::events`) with the pipeline's
//! configuration: dead letters go back to the events topic byte for byte, once, and the
//! pipeline then handles them like any event.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_admin::events::{self, Start, Tail};
use imgpipe_admin::redrive::{self, Summary};
use imgpipe_admin::report::Report;
use imgpipe_e2e::dead_letters::write_dead_letter;
use imgpipe_e2e::{fixtures, Pipeline};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use uuid::Uuid;

fn codec() -> EventCodec {
    EventCodec::reader(&RegistryConfig::default())
}

/// `imgpipe redrive --progress-every 1 [--image <image>] [--dry-run]`.
async fn redrive_run(pipeline: &Pipeline, image: Option<Uuid>, dry_run: bool) -> Summary {
    let options = redrive::options(image, dry_run, 1);
    redrive::redrive(&pipeline.kafka, &codec(), &options, &mut std::io::stderr())
        .await
        .unwrap()
}

/// The same with `--json`: the summary as the command prints it.
async fn redrive(pipeline: &Pipeline, image: Option<Uuid>, dry_run: bool) -> Value {
    redrive_run(pipeline, image, dry_run).await.to_json()
}

/// `imgpipe events tail --topic <topic> [--image <image>]`.
async fn tail(pipeline: &Pipeline, topic: &str, image: Option<Uuid>) -> Vec<Value> {
    let wanted = Tail {
        topics: vec![events::topic_named(&pipeline.kafka, topic)],
        start: Start::Beginning,
        image,
        follow: false,
    };
    events::read(pipeline.kafka.clone(), codec(), wanted)
        .await
        .unwrap()
}

/// The image's records on the events topic, as `imgpipe events tail` prints them.
async fn events_of(pipeline: &Pipeline, image: Uuid) -> Vec<Value> {
    tail(pipeline, "events", Some(image)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_moves_dead_letters_back_once_and_the_pipeline_handles_them() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let first = fixtures::stored_kite(&pipeline).await;
    let second = fixtures::stored_kite(&pipeline).await;
    // The first upload was given up on by both groups: two dead letters of one record.
    write_dead_letter(&pipeline, &first, 1000, "imgpipe-processor").await;
    write_dead_letter(&pipeline, &first, 1000, "imgpipe-projector").await;
    write_dead_letter(&pipeline, &second, 1001, "imgpipe-processor").await;
    let first_id = first.image_id.to_string();

    // A dry run lists what would move and moves nothing.
    let dry = redrive(&pipeline, None, true).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["scanned"], 3, "{dry}");
    assert_eq!(dry["moved"], 2, "{dry}");
    assert_eq!(dry["skipped_duplicates"], 1, "{dry}");
    assert_eq!(dry["committed"], false, "{dry}");
    assert_eq!(dry["by_error_class"]["storage"]["scanned"], 3, "{dry}");
    assert_eq!(dry["records"].as_array().unwrap().len(), 2, "{dry}");
    let mut table = Vec::new();
    redrive_run(&pipeline, None, true)
        .await
        .write_table(&mut table)
        .unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("would move"), "{table}");
    assert!(table.contains(&first_id), "{table}");
    assert!(events_of(&pipeline, first.image_id).await.is_empty());
    assert!(events_of(&pipeline, second.image_id).await.is_empty());

    // One image only: its record moves, the other stays; the position moves past the first
    // image's two letters (the head of the topic's one partition), not past the second's.
    let only_first = redrive(&pipeline, Some(first.image_id), false).await;
    assert_eq!(only_first["moved"], 1, "{only_first}");
    assert_eq!(only_first["skipped_by_filter"], 1, "{only_first}");
    assert_eq!(only_first["skipped_duplicates"], 1, "{only_first}");
    assert_eq!(only_first["committed"], true, "{only_first}");
    let back = events_of(&pipeline, first.image_id).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0]["key"], first_id.as_str());
    assert_eq!(back[0]["value"]["event_id"], first.event_id.to_string());
    let headers = back[0]["headers"].as_object().unwrap();
    assert_eq!(headers["event-type"], "ImageUploaded");
    assert_eq!(headers["correlation-id"], first.correlation_id.as_str());
    assert!(
        headers.keys().all(|key| !key.starts_with("dlq-")),
        "{headers:?}"
    );
    assert!(events_of(&pipeline, second.image_id).await.is_empty());
    // The redriven upload is processed like any other.
    let image = pipeline
        .wait_until_settled(&first_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(image["variants"].as_array().unwrap().len(), 3, "{image}");

    // Everything: what is left is the second image's letter.
    let all = redrive(&pipeline, None, false).await;
    assert_eq!(all["scanned"], 1, "{all}");
    assert_eq!(all["moved"], 1, "{all}");
    assert_eq!(all["committed"], true, "{all}");
    assert_eq!(
        events_of(&pipeline, first.image_id).await.len(),
        2 /* uploaded, processed */
    );
    let second_id = second.image_id.to_string();
    let image = pipeline
        .wait_until_settled(&second_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(
        events_of(&pipeline, second.image_id).await.len(),
        2 /* uploaded, processed */
    );

    // Again: nothing is left to move.
    let again = redrive(&pipeline, None, false).await;
    assert_eq!(again["scanned"], 0, "{again}");
    assert_eq!(again["moved"], 0, "{again}");
    let nothing = redrive(&pipeline, None, true).await;
    assert_eq!(nothing["moved"], 0, "{nothing}");

    pipeline.stop().await.unwrap();
}

/// The dead-letter topic's records, as `imgpipe events tail --topic dlq` prints them, once
/// there are at least `count`.
async fn dead_letters_when(pipeline: &Pipeline, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lines = tail(pipeline, "dlq", None).await;
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} dead letters, not {count}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_the_pipeline_dead_lettered_goes_back_once_per_run() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let topics = pipeline.kafka.topics();
    let producer: FutureProducer = pipeline.kafka.client_config("poisoner").create().unwrap();
    let poison_key = "00000000-0000-7000-8000-00000000dead";
    producer
        .send(
            FutureRecord::to(&topics.events)
                .key(poison_key)
                .payload(b"definitely not avro")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event-type",
                    value: Some("ImageUploaded"),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // Processor and projector each dead-letter it, with the consume loop's own headers.
    dead_letters_when(&pipeline, 2).await;

    let dry = redrive(&pipeline, None, true).await;
    assert_eq!(dry["scanned"], 2, "{dry}");
    assert_eq!(dry["moved"], 1, "{dry}");
    assert_eq!(dry["skipped_duplicates"], 1, "{dry}");
    assert_eq!(
        dry["by_error_class"]["undecodable-record"]["scanned"], 2,
        "{dry}"
    );
    assert_eq!(dry["records"][0]["original_topic"], topics.events.as_str());

    let moved = redrive(&pipeline, None, false).await;
    assert_eq!(moved["moved"], 1, "{moved}");
    assert_eq!(moved["committed"], true, "{moved}");
    let on_events = events_of(&pipeline, poison_key.parse().unwrap()).await;
    assert_eq!(
        on_events.len(),
        2,
        "the original and its copy: {on_events:?}"
    );
    let copy = &on_events[1];
    assert_eq!(copy["key"], poison_key);
    assert_eq!(copy["headers"]["event-type"], "ImageUploaded");
    assert_eq!(copy["headers"].as_object().unwrap().len(), 1, "{copy}");
    assert!(copy["value"]["error"].is_string(), "still not avro: {copy}");

    // Still poison, so both groups dead-letter the copy; the next run sees only those two.
    dead_letters_when(&pipeline, 4).await;
    let next = redrive(&pipeline, None, true).await;
    assert_eq!(next["scanned"], 2, "{next}");
    assert_eq!(next["moved"], 1, "{next}");

    pipeline.stop().await.unwrap();
}
