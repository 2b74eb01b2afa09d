//! What the events topic says about every image: one pass over the log, folded per image.
//!
//! The fold needs no broker time lookup and no read model: it reads every partition from its
//! start to the end it had when the scan began, so it knows every event acknowledged before
//! the run, whatever the projector has applied so far. An image's events share a partition
//! (records are keyed by image id), so reading each partition in order sees each image's
//! events in the order they happened.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context};
use imgpipe_infra::log_reader::{LogReader, StartAt};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::KafkaConfig;
use imgpipe_schemas::{Event, Payload};
use rdkafka::Message;
use time::OffsetDateTime;
use uuid::Uuid;

/// How long to wait for the next record of a bounded scan before giving up on the broker.
const READ_STALL: Duration = Duration::from_secs(30);

/// The last result the log holds for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed { spec_version: i32 },
    Failed { reason_code: String },
}

/// One image as the log tells it.
#[derive(Debug, Clone)]
pub struct ImageState {
    pub image_id: Uuid,
    pub partition: i32,
    /// Offset of the `ImageUploaded` record.
    pub upload_offset: i64,
    pub upload_event_id: Uuid,
    /// The upload's record timestamp (milliseconds since the epoch), which time ranges select
    /// on, as `imgpipe events tail --from` and `rpk topic consume -o @T` do.
    pub uploaded_at_ms: i64,
    /// The upload's `occurred_at`: the read model's `uploaded_at`.
    pub occurred_at: OffsetDateTime,
    pub original_key: String,
    pub format: String,
    pub latest: Option<Outcome>,
    /// Events (the upload, reprocess requests) whose result is not in the log yet.
    pub awaiting: HashSet<Uuid>,
    pub deleted: bool,
}

/// Where a record sits and its broker timestamp.
#[derive(Debug, Clone, Copy)]
pub struct RecordAt {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// Every image of the log, and what the scan read.
#[derive(Debug, Default)]
pub struct LogState {
    pub images: HashMap<Uuid, ImageState>,
    pub records: u64,
    /// Records that are not events (they were dead-lettered by the consumers too).
    pub undecodable: u64,
}

impl LogState {
    /// Folds one event, read in its partition's order.
    pub fn apply(&mut self, event: &Event, at: RecordAt) {
        if let Payload::ImageUploaded(uploaded) = &event.payload {
            // A redriven upload is the same upload again: the first one stands.
            self.images
                .entry(event.image_id)
                .or_insert_with(|| ImageState {
                    image_id: event.image_id,
                    partition: at.partition,
                    upload_offset: at.offset,
                    upload_event_id: event.event_id,
                    uploaded_at_ms: at
                        .timestamp_ms
                        .unwrap_or((event.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64),
                    occurred_at: event.occurred_at,
                    original_key: uploaded.original_key.clone(),
                    format: uploaded.format.clone(),
                    latest: None,
                    awaiting: HashSet::from([event.event_id]),
                    deleted: false,
                });
            return;
        }
        // Anything about an image whose upload is not in the log has nothing to replay.
        let Some(image) = self.images.get_mut(&event.image_id) else {
            return;
        };
        match &event.payload {
            Payload::ImageProcessed(processed) => {
                image.latest = Some(Outcome::Processed {
                    spec_version: processed.spec_version,
                });
                image.answered(event.causation_id);
            }
            Payload::ImageFailed(failed) => {
                image.latest = Some(Outcome::Failed {
                    reason_code: failed.reason_code.clone(),
                });
                image.answered(event.causation_id);
            }
            Payload::ReprocessRequested(_) => {
                image.awaiting.insert(event.event_id);
            }
            Payload::ImageDeleted(_) => image.deleted = true,
            Payload::ImageUploaded(_) | Payload::ObjectsDeleted(_) | Payload::OrphanRemoved(_) => {}
        }
    }
}

impl ImageState {
    fn answered(&mut self, cause: Option<Uuid>) {
        if let Some(cause) = cause {
            self.awaiting.remove(&cause);
        }
    }
}

/// Reads the events topic from the start of every partition to the end it had when the scan
/// began, and folds it.
pub async fn scan(
    config: &KafkaConfig,
    codec: &EventCodec,
    show_progress: bool,
) -> anyhow::Result<LogState> {
    let topic = config.topics().events;
    let reader = LogReader::new(config, "imgpipe-replay", "imgpipe-replay-reader", &topic)?;
    let ends = reader.ends().await?;
    let bar = crate::progress::bar(ends.records().max(0) as u64, "scan", show_progress);
    let mut state = LogState::default();
    let mut records = reader.scan(&StartAt::Beginning, &ends)?;
    loop {
        let message = match tokio::time::timeout(READ_STALL, records.next()).await {
            Ok(Some(message)) => message.context("reading the events topic")?,
            Ok(None) => break,
            Err(_) => bail!(
                "no record arrived for {READ_STALL:?} with {} partitions of {topic} unread",
                records.unfinished()
            ),
        };
        state.records += 1;
        bar.inc(1);
        match codec.decode(message.payload().unwrap_or_default()).await? {
            Ok(event) => state.apply(
                &event,
                RecordAt {
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                },
            ),
            Err(_) => state.undecodable += 1,
        }
    }
    bar.finish();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgpipe_schemas::{
        ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, Producer, ReprocessRequested,
    };

    fn producer() -> Producer {
        Producer {
            service: "t".into(),
            version: "0".into(),
        }
    }

    fn at(offset: i64) -> RecordAt {
        RecordAt {
            partition: 0,
            offset,
            timestamp_ms: Some(1_000 + offset),
        }
    }

    fn upload(image: Uuid) -> Event {
        Event::new(
            image,
            "req",
            None,
            producer(),
            ImageUploaded {
                owner: "a".into(),
                original_key: format!("originals/{image}"),
                format: "png".into(),
                bytes: 1,
                sha256: "00".into(),
                width: 1,
                height: 1,
                metadata: Default::default(),
            },
        )
    }

    fn processed(cause: &Event, spec_version: i32) -> Event {
        Event::new(
            cause.image_id,
            "req",
            Some(cause.event_id),
            producer(),
            ImageProcessed {
                spec_version,
                original_width: 1,
                original_height: 1,
                variants: Vec::new(),
                dominant_color: None,
                blurhash: None,
                animated: false,
            },
        )
    }

    fn request(image: Uuid) -> Event {
        Event::new(
            image,
            "replay",
            None,
            producer(),
            ReprocessRequested {
                requested_by: "op".into(),
                reason: "test".into(),
                original_key: format!("originals/{image}"),
                format: "png".into(),
            },
        )
    }

    #[test]
    fn a_request_is_awaited_until_its_own_result_arrives() {
        let image = Uuid::now_v7();
        let up = upload(image);
        let again = request(image);
        let mut state = LogState::default();
        state.apply(&up, at(0));
        state.apply(&again, at(1));
        // The upload's result arrives after the request was appended: the request still waits.
        state.apply(&processed(&up, 1), at(2));
        let seen = &state.images[&image];
        assert_eq!(seen.latest, Some(Outcome::Processed { spec_version: 1 }));
        assert_eq!(seen.awaiting, HashSet::from([again.event_id]));
        assert_eq!(seen.uploaded_at_ms, 1_000);
        state.apply(&processed(&again, 2), at(3));
        let seen = &state.images[&image];
        assert_eq!(seen.latest, Some(Outcome::Processed { spec_version: 2 }));
        assert!(seen.awaiting.is_empty());
    }

    #[test]
    fn failures_deletions_and_strays_are_folded() {
        let (image, stray) = (Uuid::now_v7(), Uuid::now_v7());
        let up = upload(image);
        let mut state = LogState::default();
        state.apply(&up, at(0));
        state.apply(
            &Event::new(
                image,
                "req",
                Some(up.event_id),
                producer(),
                ImageFailed {
                    reason_code: "undecodable".into(),
                    message: "eof".into(),
                },
            ),
            at(1),
        );
        // A second copy of the upload (a redrive) keeps the first one's position.
        state.apply(&up, at(2));
        state.apply(&request(stray), at(3));
        let seen = &state.images[&image];
        assert_eq!(
            seen.latest,
            Some(Outcome::Failed {
                reason_code: "undecodable".into()
            })
        );
        assert_eq!(seen.upload_offset, 0);
        assert!(!seen.deleted);
        assert!(!state.images.contains_key(&stray));
        state.apply(
            &Event::new(
                image,
                "req",
                None,
                producer(),
                ImageDeleted {
                    requested_by: "a".into(),
                    original_key: String::new(),
                    variant_keys: Vec::new(),
                },
            ),
            at(4),
        );
        assert!(state.images[&image].deleted);
    }
}
