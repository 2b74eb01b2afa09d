//! Kafka clients configured the one way imgpipe uses them.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use imgpipe_schemas::{headers, Event};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::registry::EventCodec;
use crate::topics::{self, TopicSpec};
use crate::{InfraError, KafkaConfig};

/// Base names of the consumer groups (the deployment's prefix goes in front), in one place so
/// the console's operator page can read each one's lag.
pub mod groups {
    /// Makes the variants (the events topic).
    pub const PROCESSOR: &str = "imgpipe-processor";
    /// Builds the read models (the events topic).
    pub const PROJECTOR: &str = "imgpipe-projector";
    /// Delivers the webhooks (the events topic).
    pub const WEBHOOKS: &str = "imgpipe-webhooks";
    /// Marks what was redriven (the dead-letter topic); it never consumes as a member.
    pub const REDRIVE: &str = "imgpipe-redrive";
    /// The groups that consume the events topic.
    pub const ON_EVENTS: [&str; 3] = [PROCESSOR, PROJECTOR, WEBHOOKS];
}

/// Topic names with the deployment's prefix applied.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub dead_letter: String,
}

impl KafkaConfig {
    pub fn topics(&self) -> Topics {
        Topics {
            events: self.topic(topics::EVENTS),
            dead_letter: self.topic(topics::DEAD_LETTER),
        }
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix)
    }

    /// Consumer groups share the topic prefix so isolated deployments never share offsets.
    pub fn group_id(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix)
    }

    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Fail over quickly to another broker address instead of waiting on a dead one.
            .set("socket.connection.setup.timeout.ms", "5000");
        // Empty counts as unset, as `.env.example` leaves them.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        for (key, value) in [
            ("security.protocol", given(&self.security_protocol)),
            ("sasl.mechanism", given(&self.sasl_mechanism)),
            ("sasl.username", given(&self.sasl_username)),
            ("ssl.ca.location", given(&self.ssl_ca_location)),
            (
                "sasl.password",
                self.sasl_password
                    .as_ref()
                    .filter(|p| !p.is_empty())
                    .map(|p| p.expose().to_string()),
            ),
        ] {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        config
    }

    /// A consumer in `group` that stores offsets only when told to (at-least-once): the
    /// caller calls `store_offset*` once the record's outputs are durable, and librdkafka
    /// commits the stored offsets in the background.
    pub fn consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("group.id", self.group_id(group))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("enable.partition.eof", "false");
        config
    }

    /// [`KafkaConfig::consumer_config`] for a group's consuming member: with the static
    /// membership name when `IMGPIPE_KAFKA_GROUP_INSTANCE_ID` gives one. Two clients with one
    /// name in one group fence each other, so only the member subscribing to the group's
    /// topic uses this; readers that never subscribe use `consumer_config`.
    pub fn member_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.consumer_config(client_id, group);
        if let Some(name) = self.group_instance_id.as_deref().filter(|n| !n.is_empty()) {
            config.set("group.instance.id", name);
        }
        config
    }
}

/// Where an event landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Appends events to the events topic: idempotent, acknowledged by all in-sync replicas, keyed
/// by image id so one image's events stay in order.
///
/// After a failed append the producer is replaced by a new one. librdkafka's idempotent producer
/// answers a failed message by bumping its producer epoch itself (KIP-360), and Tansu 0.6 refuses
/// every produce with an epoch it did not hand out: one produce timeout during a broker outage
/// would otherwise fail every later append of this process. A new producer gets a new producer
/// id from the broker.
#[derive(Clone)]
pub struct EventProducer {
    current: Arc<RwLock<Generation>>,
    client_config: ClientConfig,
    topic: String,
    timeout: Duration,
    codec: EventCodec,
}

/// One producer instance; `number` tells concurrent failures of the same instance apart from a
/// failure of its successor, so one failure replaces it once.
#[derive(Clone)]
struct Generation {
    number: u64,
    producer: FutureProducer,
}

impl EventProducer {
    pub fn new(
        config: &KafkaConfig,
        client_id: &str,
        codec: EventCodec,
    ) -> Result<Self, InfraError> {
        let timeout = Duration::from_millis(config.produce_timeout_ms);
        let client_config = config.idempotent_producer_config(client_id);
        let producer: FutureProducer = client_config.create()?;
        Ok(Self {
            current: Arc::new(RwLock::new(Generation {
                number: 0,
                producer,
            })),
            client_config,
            topic: config.topics().events,
            timeout,
            codec,
        })
    }

    /// Appends one event and waits for the broker's acknowledgement.
    pub async fn publish(&self, event: &Event) -> Result<Delivery, InfraError> {
        self.publish_to(&self.topic, event).await
    }

    pub async fn publish_to(&self, topic: &str, event: &Event) -> Result<Delivery, InfraError> {
        let payload = self.codec.encode(event)?;
        let key = event.image_id.to_string();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(event_headers(event, self.codec.content_type()));
        let generation = self.current();
        match generation
            .producer
            .send(record, Timeout::After(self.timeout))
            .await
        {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => {
                self.replace(generation);
                Err(InfraError::Kafka(error))
            }
        }
    }

    fn current(&self) -> Generation {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a new producer in place of `failed`, unless another failure already did.
    fn replace(&self, failed: Generation) {
        if self.current().number != failed.number {
            return;
        }
        let producer: FutureProducer = match self.client_config.create() {
            Ok(producer) => producer,
            Err(error) => {
                tracing::warn!(error = %error, "could not create a new producer; keeping the old one");
                return;
            }
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let unused = if current.number == failed.number {
            tracing::info!(
                generation = failed.number + 1,
                "producer replaced after a failed append"
            );
            let retired = std::mem::replace(
                &mut *current,
                Generation {
                    number: failed.number + 1,
                    producer,
                },
            );
            retired.producer
        } else {
            producer
        };
        drop(current);
        // Dropping a producer joins its threads: not on an async worker.
        tokio::task::spawn_blocking(move || drop((unused, failed)));
    }

    /// Checks the broker answers a metadata request for the events topic.
    pub async fn ping(&self) -> Result<(), InfraError> {
        let producer = self.current().producer;
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(3))
                .map(|_| ())
        })
        .await
        .map_err(|error| InfraError::Config(format!("metadata task: {error}")))??;
        Ok(())
    }

    /// Waits for in-flight produces; call on shutdown. Blocks, so it runs on a blocking thread.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.current().producer;
        let result =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(error = %error, "producer flush did not complete");
        }
    }
}

fn event_headers(event: &Event, content_type: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(event.event_type().as_str()),
        })
        .insert(Header {
            key: headers::CORRELATION_ID,
            value: Some(event.correlation_id.as_str()),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(content_type),
        })
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), InfraError> {
    let admin: AdminClient<DefaultClientContext> =
        config.client_config("imgpipe-setup").create()?;
    let names: Vec<String> = specs.iter().map(|s| config.topic(&s.name)).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&names)
        .map(|(spec, name)| {
            spec.configs.iter().fold(
                NewTopic::new(
                    name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(InfraError::Topics(format!("creating {name}: {code}")));
            }
        }
    }
    Ok(())
}

impl KafkaConfig {
    /// The settings `EventProducer` appends with (idempotent, `acks=all`, the Java client's key
    /// hashing, a delivery timeout equal to the produce timeout), for tools that append
    /// records they did not encode themselves, such as `imgpipe redrive` putting dead letters
    /// back byte for byte: same key hashing, so a record returns to its image's partition.
    pub fn idempotent_producer_config(&self, client_id: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // The Java client's key hashing, so Redpanda tooling and any other client put an
            // image's records on the same partition as imgpipe does.
            .set("partitioner", "murmur2_random")
            // A record ingest answered 503 for is never delivered later (ARCHITECTURE.md).
            .set("message.timeout.ms", self.produce_timeout_ms.to_string())
            .set("linger.ms", "5");
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FromEnv;

    fn kafka(instance_id: Option<&str>) -> KafkaConfig {
        let vars = instance_id.map(|id| ("IMGPIPE_KAFKA_GROUP_INSTANCE_ID".to_string(), id.into()));
        KafkaConfig::from_iter(vars).expect("defaults suffice")
    }

    #[test]
    fn only_the_consuming_member_carries_the_static_membership_name() {
        let config = kafka(Some("processor-0"));
        let member = config.member_config("imgpipe-processor", "imgpipe-processor");
        assert_eq!(member.get("group.instance.id"), Some("processor-0"));
        let reader = config.consumer_config("imgpipe-processor-lag", "imgpipe-processor");
        assert_eq!(reader.get("group.instance.id"), None);
    }

    #[test]
    fn no_or_an_empty_name_is_dynamic_membership() {
        for config in [kafka(None), kafka(Some(""))] {
            let member = config.member_config("imgpipe-projector", "imgpipe-projector");
            assert_eq!(member.get("group.instance.id"), None);
        }
    }
}
