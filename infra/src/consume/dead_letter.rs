//! Copies records the loop gives up on to the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use imgpipe_schemas::headers::ErrorClass;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;

use super::{dead_letter_headers, HandlerError};
use crate::InfraError;

/// Copies failed records to the dead-letter topic with headers saying where they came from
/// and why.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    group: String,
    on_sent: Option<OnSent>,
}

/// Told the class of each record once the broker has its copy (a service counts them in its
/// metrics; the registry is the service's, so infra only calls back).
pub type OnSent = Arc<dyn Fn(ErrorClass) + Send + Sync>;

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
            on_sent: None,
        })
    }

    /// Calls `on_sent` with each record's error class once its copy is on the broker.
    pub fn on_sent(mut self, on_sent: OnSent) -> Self {
        self.on_sent = Some(on_sent);
        self
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
            (ERROR_CLASS, error.class().as_str()),
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
                Ok(_) => {
                    if let Some(on_sent) = &self.on_sent {
                        on_sent(error.class());
                    }
                    return;
                }
                Err((error, _)) => {
                    tracing::error!(error = %error, "dead-letter produce failed, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
