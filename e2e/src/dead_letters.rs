//! Reading what the consumers dead-lettered: the topic from its start, and the `dlq-*` headers.

use std::time::Instant;

use imgpipe_infra::log_reader::{LogReader, Scan, StartAt};
use rdkafka::message::OwnedMessage;

pub use imgpipe_infra::log_reader::header;

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
