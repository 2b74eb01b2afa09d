//! `imgpipe events`: read topics as JSON lines, one record a line, with the Avro value decoded.

use std::io::{BufRead, Write};

use futures::StreamExt;
use imgpipe_infra::log_reader::{LogReader, StartAt};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::{FromEnv, KafkaConfig};
use imgpipe_schemas::Event;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::AdminError;

/// Where reading starts on every partition.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Beginning,
    End,
    Offset(i64),
    /// Records whose timestamp is at or after this time. Brokers' ListOffsets-by-timestamp is
    /// not trusted (Tansu 0.6 answers 0 even for a future time): reading starts at the
    /// beginning and earlier records are skipped by their own timestamps.
    Time(OffsetDateTime),
}

impl std::str::FromStr for Start {
    type Err = AdminError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "beginning" | "start" => Ok(Start::Beginning),
            "end" => Ok(Start::End),
            _ => {
                if let Ok(offset) = text.parse::<i64>() {
                    return Ok(Start::Offset(offset));
                }
                OffsetDateTime::parse(text, &Rfc3339)
                    .map(Start::Time)
                    .map_err(|_| AdminError::Start {
                        text: text.to_string(),
                    })
            }
        }
    }
}

pub struct Tail {
    pub topics: Vec<String>,
    pub start: Start,
    pub image: Option<Uuid>,
    pub follow: bool,
}

impl Start {
    fn start_at(&self) -> StartAt {
        match self {
            Start::Beginning | Start::Time(_) => StartAt::Beginning,
            Start::End => StartAt::End,
            Start::Offset(offset) => StartAt::Offset(*offset),
        }
    }

    /// Whether a record written at `timestamp_ms` is one to show.
    fn admits(&self, timestamp_ms: Option<i64>) -> bool {
        match self {
            Start::Time(since) => {
                let at = timestamp_ms.unwrap_or(i64::MIN);
                i128::from(at) * 1_000_000 >= since.unix_timestamp_nanos()
            }
            _ => true,
        }
    }
}

/// The topic `--topic` names: `events`, `dlq` (the dead-letter topic), or a full topic name.
pub fn topic_named(config: &KafkaConfig, name: &str) -> String {
    let topics = config.topics();
    match name {
        "events" => topics.events,
        "dlq" => topics.dead_letter,
        other => other.to_string(),
    }
}

/// `imgpipe events tail`: the records of `topic` on stdout, with the deployment's
/// configuration.
pub async fn run_tail(
    topic: &str,
    start: Start,
    image: Option<Uuid>,
    follow: bool,
) -> Result<u64, AdminError> {
    let codec = EventCodec::reader(&RegistryConfig::from_env()?);
    let config = KafkaConfig::from_env()?;
    let wanted = Tail {
        topics: vec![topic_named(&config, topic)],
        start,
        image,
        follow,
    };
    tail(&config, &codec, &wanted, &mut std::io::stdout().lock()).await
}

/// `imgpipe events history`: [`history`] on stdout, with the deployment's configuration.
pub async fn run_history(image: Uuid) -> Result<(), AdminError> {
    let codec = EventCodec::reader(&RegistryConfig::from_env()?);
    let config = KafkaConfig::from_env()?;
    for line in history(config, codec, image).await? {
        println!("{line}");
    }
    Ok(())
}

/// `imgpipe events decode`: [`decode_lines`] from stdin to stdout.
pub async fn run_decode() -> Result<u64, AdminError> {
    let codec = EventCodec::reader(&RegistryConfig::from_env()?);
    tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        decode_lines(&mut stdin.lock(), &codec, &mut std::io::stdout().lock())
    })
    .await?
}

/// Every record of one image on the events and dead-letter topics, oldest first, as
/// `imgpipe events history` prints them.
pub async fn history(
    config: KafkaConfig,
    codec: EventCodec,
    image: Uuid,
) -> Result<Vec<Value>, AdminError> {
    let topics = config.topics();
    let wanted = Tail {
        topics: vec![topics.events, topics.dead_letter],
        start: Start::Beginning,
        image: Some(image),
        follow: false,
    };
    Ok(oldest_first(read(config, codec, wanted).await?))
}

/// What [`tail`] writes for `wanted` (which must not follow), one value per record.
pub async fn read(
    config: KafkaConfig,
    codec: EventCodec,
    wanted: Tail,
) -> Result<Vec<Value>, AdminError> {
    let mut buffer = Vec::new();
    tail(&config, &codec, &wanted, &mut buffer).await?;
    let lines = buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()?;
    Ok(lines)
}

/// Records of several topics, oldest first. Each topic alone is already in log order, and the
/// sort keeps records of equal timestamps in the order they came; one without a timestamp
/// goes last.
fn oldest_first(mut lines: Vec<Value>) -> Vec<Value> {
    lines.sort_by_key(|line| line["timestamp"].as_i64().unwrap_or(i64::MAX));
    lines
}

/// Reads the topics and writes matching records to `out` as JSON lines. Without `follow`, it
/// stops once every partition is read up to where it ended when reading began.
pub async fn tail(
    config: &KafkaConfig,
    codec: &EventCodec,
    tail: &Tail,
    out: &mut dyn Write,
) -> Result<u64, AdminError> {
    let start = tail.start.start_at();
    let mut scans = Vec::new();
    for topic in &tail.topics {
        let reader = LogReader::new(config, "imgpipe-events", "imgpipe-events-reader", topic)?;
        let ends = reader.ends().await?;
        let scan = if tail.follow {
            reader.follow(&start, &ends)?
        } else {
            reader.scan(&start, &ends)?
        };
        scans.push(Box::pin(scan.into_stream()));
    }
    let mut records = futures::stream::select_all(scans);
    let mut written = 0;
    while let Some(message) = records.next().await {
        let message = message?;
        if !tail.start.admits(message.timestamp().to_millis()) {
            continue;
        }
        let line = record_json(&message, codec).await;
        if let Some(image) = tail.image {
            if line["key"] != json!(image.to_string())
                && line["value"]["image_id"] != json!(image.to_string())
            {
                continue;
            }
        }
        writeln!(out, "{line}")?;
        written += 1;
    }
    Ok(written)
}

async fn record_json(message: &OwnedMessage, codec: &EventCodec) -> Value {
    let headers: serde_json::Map<String, Value> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_string(), json!(value))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "value": value_json(message.payload().unwrap_or_default(), codec).await,
    })
}

/// The decoded event, or `{"error": ...}` for bytes that are not one.
pub async fn value_json(bytes: &[u8], codec: &EventCodec) -> Value {
    match codec.decode(bytes).await {
        Ok(Ok(event)) => event_json(&event),
        Ok(Err(error)) => json!({ "error": error.to_string(), "bytes": bytes.len() }),
        Err(error) => json!({ "error": error.to_string(), "bytes": bytes.len() }),
    }
}

pub fn event_json(event: &Event) -> Value {
    let payload = event.payload.to_json();
    json!({
        "event_id": event.event_id,
        "event_type": event.event_type().as_str(),
        "image_id": event.image_id,
        "occurred_at": event.occurred_at.format(&Rfc3339).unwrap_or_default(),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "producer": { "service": event.producer.service, "version": event.producer.version },
        "payload": payload,
    })
}

/// Decodes base64 values, one per line (`rpk topic consume T -f '%v{base64}\n'`).
pub fn decode_lines(
    input: &mut dyn BufRead,
    codec: &EventCodec,
    out: &mut dyn Write,
) -> Result<u64, AdminError> {
    use base64::Engine;
    let mut written = 0;
    for line in input.lines() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let value = match base64::engine::general_purpose::STANDARD.decode(text) {
            // On a blocking thread: it may wait for the registry.
            Ok(bytes) => tokio::runtime::Handle::current().block_on(value_json(&bytes, codec)),
            Err(error) => json!({ "error": format!("not base64: {error}") }),
        };
        writeln!(out, "{value}")?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgpipe_schemas::{ImageFailed, Producer};

    #[test]
    fn start_parses_every_form() {
        assert_eq!("beginning".parse::<Start>().unwrap(), Start::Beginning);
        assert_eq!("end".parse::<Start>().unwrap(), Start::End);
        assert_eq!("42".parse::<Start>().unwrap(), Start::Offset(42));
        assert!(matches!(
            "2026-11-22T06:00:00Z".parse::<Start>().unwrap(),
            Start::Time(_)
        ));
        assert!("yesterday".parse::<Start>().is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn decodes_base64_lines_and_reports_bad_ones() {
        use base64::Engine;
        let event = Event::new(
            Uuid::now_v7(),
            "req-7",
            None,
            Producer {
                service: "t".into(),
                version: "0".into(),
            },
            ImageFailed {
                reason_code: "undecodable".into(),
                message: "eof".into(),
            },
        );
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(imgpipe_schemas::encode(&event).unwrap());
        let input = format!("{encoded}\n\nnot-base64!\n");
        let mut out = Vec::new();
        let count = tokio::task::block_in_place(|| {
            decode_lines(
                &mut input.as_bytes(),
                &EventCodec::single_object(),
                &mut out,
            )
        })
        .unwrap();
        assert_eq!(count, 2);
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event_type"], "ImageFailed");
        assert_eq!(lines[0]["correlation_id"], "req-7");
        assert_eq!(lines[0]["payload"]["reason_code"], "undecodable");
        assert!(lines[1]["error"].as_str().unwrap().contains("base64"));
    }

    #[test]
    fn history_merges_topics_by_time_keeping_each_topics_order() {
        fn line(topic: &str, offset: i64, timestamp: Option<i64>) -> Value {
            json!({ "topic": topic, "offset": offset, "timestamp": timestamp })
        }
        let merged = oldest_first(vec![
            line("events", 0, Some(10)),
            line("events", 1, Some(30)),
            line("events", 2, Some(30)),
            line("dlq", 0, None),
            line("dlq", 1, Some(20)),
            line("dlq", 2, Some(30)),
        ]);
        let order: Vec<(&str, i64)> = merged
            .iter()
            .map(|l| (l["topic"].as_str().unwrap(), l["offset"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            order,
            [
                ("events", 0),
                ("dlq", 1),
                ("events", 1),
                ("events", 2),
                ("dlq", 2),
                ("dlq", 0)
            ]
        );
    }
}
