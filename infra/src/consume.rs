//! The at-least-once consume loop shared by the workers.
//!
//! For each record: decode the event, run the handler, and store the record's offset only once
//! the handler's outputs are durable (librdkafka commits stored offsets in the background).
//! Transient handler errors are retried with exponential backoff and jitter; a record that
//! cannot be decoded, a permanent error, or a transient one that outlived its attempts goes to
//! the dead-letter topic, and only then is its offset stored. Records are handled one at a
//! time, so the offset stored is always the highest one fully done.
//!
//! A handler can also say a dependency is known to be down ([`HandlerError::Unavailable`], from
//! an open circuit breaker). Then the record is neither failed nor counted as an attempt: the
//! loop pauses the assignment, keeps polling (so the group keeps us and rebalances run) until
//! [`EventHandler::until_available`] resolves, resumes, and handles the same record again.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use imgpipe_schemas::Event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::registry::EventCodec;
use crate::InfraError;

/// Where a record sits in the log.
#[derive(Debug, Clone)]
pub struct RecordPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A handler failure, classified so the loop knows whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The infrastructure did not answer (S3 5xx or timeout, broker, database): retry.
    #[error("{class}: {message}")]
    Transient {
        class: &'static str,
        message: String,
    },
    /// Retrying gives the same answer: dead-letter at once.
    #[error("{class}: {message}")]
    Permanent {
        class: &'static str,
        message: String,
    },
    /// A dependency is known to be down (its circuit breaker is open): wait for
    /// [`EventHandler::until_available`], then handle the record again. Not an attempt.
    #[error("{class} unavailable: {message}")]
    Unavailable {
        class: &'static str,
        message: String,
    },
}

impl HandlerError {
    pub fn transient(class: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Transient {
            class,
            message: error.to_string(),
        }
    }

    pub fn permanent(class: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Permanent {
            class,
            message: error.to_string(),
        }
    }

    pub fn unavailable(class: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            class,
            message: error.to_string(),
        }
    }

    fn class(&self) -> &'static str {
        match self {
            Self::Transient { class, .. }
            | Self::Permanent { class, .. }
            | Self::Unavailable { class, .. } => class,
        }
    }
}

/// What a worker does with one event.
pub trait EventHandler: Send + Sync {
    fn handle(
        &self,
        event: &Event,
        position: &RecordPosition,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Resolves once the dependency behind a [`HandlerError::Unavailable`] may answer again.
    /// Handlers that never report one keep this default, which only spaces out the attempts.
    fn until_available(&self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_secs(1))
    }
}

/// How hard to retry transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// `None`: retry until it works or the service stops (for handlers whose only dependency
    /// is one the whole service needs, like the projector's database).
    pub max_attempts: Option<usize>,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts.saturating_sub(1)),
            None => builder.without_max_times(),
        }
    }
}

/// Header names on dead-lettered records. The record keeps its key, value and headers.
pub mod dead_letter_headers {
    pub const ORIGINAL_TOPIC: &str = "dlq-original-topic";
    pub const ORIGINAL_PARTITION: &str = "dlq-original-partition";
    pub const ORIGINAL_OFFSET: &str = "dlq-original-offset";
    pub const ERROR_CLASS: &str = "dlq-error-class";
    pub const ERROR_MESSAGE: &str = "dlq-error-message";
    pub const ATTEMPTS: &str = "dlq-attempts";
    pub const CONSUMER_GROUP: &str = "dlq-consumer-group";
}

/// Runs the loop until `shutdown` is cancelled, then closes the consumer on a blocking thread
/// (dropping one can block for the session timeout when the broker is gone).
pub async fn run<H: EventHandler>(
    consumer: StreamConsumer,
    codec: EventCodec,
    handler: H,
    dead_letters: DeadLetterProducer,
    retry: RetryPolicy,
    shutdown: CancellationToken,
) {
    // Records received while paused for an unavailable dependency (from partitions assigned
    // meanwhile), handled in order before anything new is received.
    let mut received_while_paused = VecDeque::new();
    loop {
        let message = match received_while_paused.pop_front() {
            Some(message) => message,
            None => {
                let message = tokio::select! {
                    () = shutdown.cancelled() => break,
                    message = consumer.recv() => message,
                };
                match message {
                    // Owned, so the record can be held while the consumer keeps polling.
                    Ok(message) => message.detach(),
                    Err(error) => {
                        tracing::warn!(error = %error, "kafka receive failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        };
        let done = loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => Outcome::Stopped,
                outcome = process(&message, &codec, &handler, &dead_letters, retry) => outcome,
            };
            match outcome {
                Outcome::Done => break true,
                Outcome::Stopped => break false,
                Outcome::Unavailable => {
                    let available = pause_until_available(
                        &consumer,
                        &handler,
                        &mut received_while_paused,
                        &shutdown,
                    )
                    .await;
                    if !available {
                        break false;
                    }
                }
            }
        };
        if !done {
            // Stopped mid-record: leave its offset unstored so it is handled again.
            break;
        }
        // librdkafka stores the offset after this one: the next to read.
        if let Err(error) =
            consumer.store_offset(message.topic(), message.partition(), message.offset())
        {
            // After a rebalance the partition may belong to another member; it will redo it.
            tracing::warn!(error = %error, "could not store offset");
        }
    }
    close(consumer).await;
}

enum Outcome {
    /// Handled or dead-lettered: store the offset.
    Done,
    /// A dependency is down: wait for it and handle the record again.
    Unavailable,
    Stopped,
}

/// Pauses the assignment and keeps polling until the handler's dependency may answer again;
/// false if `shutdown` came first. Polling keeps this member in the group (librdkafka evicts a
/// consumer not polled for `max.poll.interval.ms`) and runs rebalances. A partition assigned
/// meanwhile is not paused yet, so its first record is kept in `received` and the partition
/// paused too; nothing is handled out of order and nothing is skipped.
async fn pause_until_available<H: EventHandler>(
    consumer: &StreamConsumer,
    handler: &H,
    received: &mut VecDeque<OwnedMessage>,
    shutdown: &CancellationToken,
) -> bool {
    let mut paused = consumer.assignment().unwrap_or_default();
    if let Err(error) = consumer.pause(&paused) {
        tracing::warn!(error = %error, "could not pause the assignment");
    }
    tracing::warn!(
        partitions = paused.count(),
        "a dependency is unavailable, consumption paused until it answers"
    );
    let available = {
        let until_available = handler.until_available();
        tokio::pin!(until_available);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break false,
                () = &mut until_available => break true,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let mut partition = TopicPartitionList::new();
                        partition.add_partition(message.topic(), message.partition());
                        if let Err(error) = consumer.pause(&partition) {
                            tracing::warn!(error = %error, "could not pause a new partition");
                        }
                        paused.add_partition(message.topic(), message.partition());
                        received.push_back(message.detach());
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "kafka receive failed while paused");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
            }
        }
    };
    // Partitions revoked meanwhile are no longer ours to resume; librdkafka skips them.
    if let Err(error) = consumer.resume(&paused) {
        tracing::warn!(error = %error, "could not resume the assignment");
    }
    if available {
        tracing::info!("dependency available again, consumption resumed");
    }
    available
}

async fn process<H: EventHandler>(
    message: &OwnedMessage,
    codec: &EventCodec,
    handler: &H,
    dead_letters: &DeadLetterProducer,
    retry: RetryPolicy,
) -> Outcome {
    let position = RecordPosition {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let payload = message.payload().unwrap_or_default();
    let decoded = loop {
        // Only a registry that does not answer fails here; wait for it rather than
        // dead-letter records that are fine.
        match codec.decode(payload).await {
            Ok(decoded) => break decoded,
            Err(error) => {
                tracing::warn!(error = %error, "schema registry unavailable, retrying");
                tokio::time::sleep(retry.max_delay).await;
            }
        }
    };
    let event = match decoded {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(
                topic = %position.topic, partition = position.partition,
                offset = position.offset, error = %error,
                "undecodable record, dead-lettering it"
            );
            let failure = HandlerError::permanent("undecodable-record", &error);
            dead_letters.send(message, &failure, 1).await;
            return Outcome::Done;
        }
    };
    let mut attempts = 0usize;
    let result = (|| {
        attempts += 1;
        handler.handle(&event, &position)
    })
    .retry(retry.backoff())
    .when(|error| matches!(error, HandlerError::Transient { .. }))
    .notify(|error, delay| {
        tracing::warn!(
            image_id = %event.image_id, event_id = %event.event_id, error = %error,
            retry_in_ms = delay.as_millis() as u64, "transient failure, retrying"
        );
    })
    .await;
    match result {
        Ok(()) => Outcome::Done,
        Err(error @ HandlerError::Unavailable { .. }) => {
            tracing::warn!(
                image_id = %event.image_id, event_id = %event.event_id, error = %error,
                "dependency unavailable, the record waits for it"
            );
            Outcome::Unavailable
        }
        Err(error) => {
            tracing::error!(
                image_id = %event.image_id, event_id = %event.event_id,
                event_type = %event.event_type(), error = %error, attempts,
                "handler gave up, dead-lettering the record"
            );
            dead_letters.send(message, &error, attempts).await;
            Outcome::Done
        }
    }
}

async fn close(consumer: StreamConsumer) {
    consumer.unsubscribe();
    if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::warn!(error = %error, "closing the consumer failed");
    }
}

/// Copies failed records to the dead-letter topic with headers saying where they came from
/// and why.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    group: String,
}

impl DeadLetterProducer {
    pub fn new(
        config: &crate::KafkaConfig,
        client_id: &str,
        group: &str,
    ) -> Result<Self, InfraError> {
        let producer = config
            .client_config(client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(Self {
            producer,
            topic: config.topics().dead_letter,
            group: config.group_id(group),
        })
    }

    /// Returns once the broker has the copy. Retries until then: losing a record here would
    /// break the promise that every image ends processed or failed.
    pub async fn send(&self, message: &OwnedMessage, error: &HandlerError, attempts: usize) {
        use dead_letter_headers::*;
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let attempts = attempts.to_string();
        let text = error.to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        for (key, value) in [
            (ORIGINAL_TOPIC, message.topic()),
            (ORIGINAL_PARTITION, partition.as_str()),
            (ORIGINAL_OFFSET, offset.as_str()),
            (ERROR_CLASS, error.class()),
            (ERROR_MESSAGE, text.as_str()),
            (ATTEMPTS, attempts.as_str()),
            (CONSUMER_GROUP, self.group.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        loop {
            let mut record = FutureRecord::to(&self.topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
            {
                Ok(_) => return,
                Err((error, _)) => {
                    tracing::error!(error = %error, "dead-letter produce failed, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
