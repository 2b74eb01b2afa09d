//! Reading what the consumers dead-lettered: the topic from its start, and the `dlq-*` headers.

use std::time::{Duration, Instant};

use imgpipe_infra::consume::dead_letter_headers as dlq;
use imgpipe_infra::log_reader::{LogReader, Scan, StartAt};
use imgpipe_schemas::Event;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub use imgpipe_infra::log_reader::header;

/// Writes the upload `event` to the dead-letter topic the way the consume loop does when the
/// group `group` gives up on it: the record's own key, value and headers, plus the `dlq-*`
/// ones (class `storage`, five attempts, from offset `original_offset` of partition 0).
pub async fn write_dead_letter(
    pipeline: &Pipeline,
    event: &Event,
    original_offset: i64,
    group: &str,
) {
    let producer: FutureProducer = pipeline
        .kafka
        .client_config("dead-letterer")
        .create()
        .expect("a producer");
    let topics = pipeline.kafka.topics();
    let key = event.image_id.to_string();
    let value = imgpipe_schemas::encode(event).expect("the event encodes");
    let offset = original_offset.to_string();
    let group = pipeline.kafka.group_id(group);
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        ("event-type", "ImageUploaded"),
        ("correlation-id", event.correlation_id.as_str()),
        ("content-type", "application/vnd.imgpipe.event+avro"),
        (dlq::ORIGINAL_TOPIC, topics.events.as_str()),
        (dlq::ORIGINAL_PARTITION, "0"),
        (dlq::ORIGINAL_OFFSET, offset.as_str()),
        (dlq::ERROR_CLASS, "storage"),
        (dlq::ERROR_MESSAGE, "s3 get: timed out"),
        (dlq::ATTEMPTS, "5"),
        (dlq::CONSUMER_GROUP, group.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    producer
        .send(
            FutureRecord::to(&topics.dead_letter)
                .key(&key)
                .payload(&value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("the dead letter is written");
}

use crate::Pipeline;

/// The pipeline's dead letters, from the topic's first record on, as they arrive (a reader that
/// joins no group: nothing is committed).
pub struct DeadLetters(Scan);

impl DeadLetters {
    pub async fn open(pipeline: &Pipeline) -> Self {
        let reader = LogReader::new(
            &pipeline.kafka,
            "dlq-reader",
            "dlq-reader",
            &pipeline.kafka.topics().dead_letter,
        )
        .expect("a dead-letter reader");
        let ends = reader.ends().await.expect("the dead-letter topic");
        Self(
            reader
                .follow(&StartAt::Beginning, &ends)
                .expect("assigning the dead-letter topic"),
        )
    }

    /// The next dead letter, or `None` when none arrives before `deadline`.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<OwnedMessage> {
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.0.next()).await {
            Ok(Some(message)) => Some(message.expect("reading the dead-letter topic")),
            Ok(None) | Err(_) => None,
        }
    }
}
