//! A record no consumer can decode goes to the dead-letter topic with headers saying where it
//! came from and why, and the partition keeps moving: garbage, and a hostile record that once
//! aborted both consumers (a valid `ImageUploaded` whose last byte became a huge map block
//! count, for which the Avro decoder reserved memory before reading).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::dead_letters::{header, DeadLetters};
use imgpipe_e2e::{fixtures, Pipeline};
use imgpipe_infra::consume::dead_letter_headers as dlq;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_is_dead_lettered_and_the_partition_keeps_moving() {
    poison_is_dead_lettered_and_the_partition_keeps_moving(b"definitely not avro".to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_block_count_is_dead_lettered_not_an_abort() {
    poison_is_dead_lettered_and_the_partition_keeps_moving(huge_metadata_block_count()).await;
}

/// A valid `ImageUploaded` whose last byte (its empty `metadata` map) is replaced by a map
/// block of 500 million entries with nothing behind it (under the old decoder's item-count
/// check, over this machine's memory once multiplied by the entry's size).
fn huge_metadata_block_count() -> Vec<u8> {
    let event = imgpipe_schemas::Event::new(
        uuid::Uuid::now_v7(),
        "req-poison",
        None,
        imgpipe_schemas::Producer {
            service: "test".into(),
            version: "0".into(),
        },
        imgpipe_schemas::ImageUploaded {
            owner: "client-a".into(),
            original_key: "originals/x".into(),
            format: "png".into(),
            bytes: 1,
            sha256: "00".repeat(32),
            width: 1,
            height: 1,
            metadata: Default::default(),
        },
    );
    let mut bytes = imgpipe_schemas::encode(&event).unwrap();
    assert_eq!(
        bytes.pop(),
        Some(0),
        "the record ends with the empty metadata map"
    );
    // As Avro's zigzag varint long.
    let mut n: u64 = 500_000_000u64 << 1;
    while n >= 0x80 {
        bytes.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes
}

async fn poison_is_dead_lettered_and_the_partition_keeps_moving(poison: Vec<u8>) {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let topics = pipeline.kafka.topics();

    // Garbage, keyed like an image, on partition 0 of the events topic.
    let producer: FutureProducer = pipeline.kafka.client_config("poisoner").create().unwrap();
    let poison_key = "00000000-0000-7000-8000-00000000dead";
    let (partition, offset) = {
        let delivery = producer
            .send(
                FutureRecord::to(&topics.events)
                    .partition(0)
                    .key(poison_key)
                    .payload(&poison)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "event-type",
                        value: Some("ImageUploaded"),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        (delivery.partition, delivery.offset)
    };

    // A good upload behind it on the same partition is still processed and projected.
    let uploaded = fixtures::stored_kite(&pipeline).await;
    let image_id = uploaded.image_id;
    let key = image_id.to_string();
    let payload = imgpipe_schemas::encode(&uploaded).unwrap();
    let behind = producer
        .send(
            FutureRecord::to(&topics.events)
                .partition(0)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(behind.partition, partition);
    assert!(behind.offset > offset);
    let image = pipeline
        .wait_until_settled(&key, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");

    // Both consumer groups dead-lettered the poison record, with its origin and the reason.
    let mut letters = DeadLetters::open(&pipeline).await;
    let mut groups = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while groups.len() < 2 {
        let Some(message) = letters.next_before(deadline).await else {
            break;
        };
        assert_eq!(message.key(), Some(poison_key.as_bytes()));
        assert_eq!(message.payload(), Some(&poison[..]));
        assert_eq!(
            header(&message, dlq::ORIGINAL_TOPIC).unwrap(),
            topics.events
        );
        assert_eq!(
            header(&message, dlq::ORIGINAL_PARTITION).unwrap(),
            partition.to_string()
        );
        assert_eq!(
            header(&message, dlq::ORIGINAL_OFFSET).unwrap(),
            offset.to_string()
        );
        assert_eq!(
            header(&message, dlq::ERROR_CLASS).unwrap(),
            "undecodable-record"
        );
        assert!(!header(&message, dlq::ERROR_MESSAGE).unwrap().is_empty());
        assert_eq!(header(&message, "event-type").unwrap(), "ImageUploaded");
        groups.push(header(&message, dlq::CONSUMER_GROUP).unwrap());
    }
    groups.sort();
    assert_eq!(
        groups,
        [
            pipeline.kafka.group_id("imgpipe-processor"),
            pipeline.kafka.group_id("imgpipe-projector")
        ]
    );
    // Each service counted its dead letter, by class.
    let series = |name: &str| format!("{name}{{class=\"undecodable-record\"}}");
    let processor_series = series(imgpipe_processor::metrics::RECORDS_DEAD_LETTERED);
    assert_eq!(pipeline.processor_metric(&processor_series).await, 1.0);
    let projector_page = pipeline.projector_metrics().await;
    let projector_series = series(imgpipe_projector::metrics::RECORDS_DEAD_LETTERED);
    assert_eq!(
        imgpipe_e2e::metrics::series_value(&projector_page, &projector_series),
        Some(1.0)
    );
    pipeline.stop().await.unwrap();
}
