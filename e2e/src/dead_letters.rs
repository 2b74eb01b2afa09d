//! Reading what the consumers dead-lettered: the topic from its start, and the `dlq-*` headers.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::Pipeline;

/// A header's value as text, if the record has it.
pub fn header(message: &impl Message, key: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// A consumer assigned the pipeline's dead-letter topic from its first record (it joins no
/// group: nothing is committed); `poll` it.
pub fn reader(pipeline: &Pipeline) -> BaseConsumer {
    let consumer: BaseConsumer = pipeline
        .kafka
        .client_config("dlq-reader")
        .set("group.id", "dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a dead-letter reader");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&pipeline.kafka.topics().dead_letter, 0, Offset::Beginning)
        .expect("the dead-letter topic's partition");
    consumer
        .assign(&assignment)
        .expect("assigning the dead-letter topic");
    consumer
}
