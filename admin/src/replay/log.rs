//! What the events topic says about every image: one pass over the log, folded per image by
//! the schemas' fold (`imgpipe_schemas::ImageHistory`, the projector's rules).
//!
//! The fold needs no broker time lookup and no read model: it reads every partition from its
//! start to the end it had when the scan began, so it knows every event acknowledged before
//! the run, whatever the projector has applied so far. An image's events share a partition
//! (records are keyed by image id), so reading each partition in order sees each image's
//! events in the order they happened.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use imgpipe_infra::log_reader::{LogReader, StartAt, READ_STALL};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::KafkaConfig;
use imgpipe_schemas::{Event, ImageHistory};
use rdkafka::Message;
use uuid::Uuid;

use crate::error::AdminError;

/// What the processor made of an upload or a request: the log's last result for an image
/// ([`LoggedImage::latest`]), or a request's own.
pub use imgpipe_schemas::state::Outcome;

/// One image as the log tells it: where its upload sits, and its events folded by the
/// schemas' fold (the projector's rules).
#[derive(Debug, Clone)]
pub struct LoggedImage {
    pub image_id: Uuid,
    pub partition: i32,
    /// Offset of the `ImageUploaded` record.
    pub upload_offset: i64,
    /// The upload's record timestamp (milliseconds since the epoch), which time ranges select
    /// on, as `imgpipe events tail --from` and `rpk topic consume -o @T` do.
    pub uploaded_at_ms: i64,
    /// The image (its `uploaded_at` is the upload's `occurred_at`), the upload's event id and
    /// the events whose result is not in the log yet.
    pub history: ImageHistory,
}

impl LoggedImage {
    /// The last result the log holds for the image (none after its deletion counts).
    pub fn latest(&self) -> Option<Outcome> {
        self.history.image.last_result()
    }

    pub fn is_deleted(&self) -> bool {
        self.history.is_deleted()
    }
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
    pub images: HashMap<Uuid, LoggedImage>,
    pub records: u64,
    /// Records that are not events (they were dead-lettered by the consumers too).
    pub undecodable: u64,
}

impl LogState {
    /// Folds one event, read in its partition's order.
    pub fn apply(&mut self, event: &Event, at: RecordAt) {
        match self.images.entry(event.image_id) {
            // A redriven upload is the same upload again: the first one's position stands.
            Entry::Occupied(mut image) => image.get_mut().history.update(event),
            Entry::Vacant(slot) => {
                // Anything about an image whose upload is not in the log has nothing to
                // replay.
                let Some(history) = ImageHistory::created_by(event) else {
                    return;
                };
                slot.insert(LoggedImage {
                    image_id: event.image_id,
                    partition: at.partition,
                    upload_offset: at.offset,
                    uploaded_at_ms: at
                        .timestamp_ms
                        .unwrap_or((event.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64),
                    history,
                });
            }
        }
    }
}

/// Reads the events topic from the start of every partition to the end it had when the scan
/// began, and folds it.
pub async fn scan(
    config: &KafkaConfig,
    codec: &EventCodec,
    show_progress: bool,
) -> Result<LogState, AdminError> {
    let topic = config.topics().events;
    let reader = LogReader::new(config, "imgpipe-replay", "imgpipe-replay-reader", &topic)?;
    let ends = reader.ends().await?;
    let bar = crate::progress::bar(ends.records().max(0) as u64, "scan", show_progress);
    let mut state = LogState::default();
    let mut records = reader.scan(&StartAt::Beginning, &ends)?;
    while let Some(message) = records.next_within(READ_STALL).await? {
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

/// Images made by folding events, for the replay's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use imgpipe_schemas::{
        ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, Payload, Producer,
        ReprocessRequested,
    };

    use super::*;

    fn producer() -> Producer {
        Producer {
            service: "t".into(),
            version: "0".into(),
        }
    }

    pub fn at(offset: i64) -> RecordAt {
        RecordAt {
            partition: 0,
            offset,
            timestamp_ms: Some(1_000 + offset),
        }
    }

    pub fn upload(image: Uuid) -> Event {
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

    /// The result `outcome` of `cause`.
    pub fn result(cause: &Event, outcome: &Outcome) -> Event {
        let payload: Payload = match outcome {
            Outcome::Processed { spec_version } => ImageProcessed {
                spec_version: *spec_version,
                original_width: 1,
                original_height: 1,
                variants: Vec::new(),
                dominant_color: None,
                blurhash: None,
                animated: false,
            }
            .into(),
            Outcome::Failed { reason_code } => ImageFailed {
                reason_code: reason_code.clone(),
                message: "eof".into(),
            }
            .into(),
        };
        Event::new(
            cause.image_id,
            "req",
            Some(cause.event_id),
            producer(),
            payload,
        )
    }

    pub fn request(image: Uuid) -> Event {
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

    pub fn deletion(image: Uuid) -> Event {
        Event::new(
            image,
            "req",
            None,
            producer(),
            ImageDeleted {
                requested_by: "a".into(),
                original_key: String::new(),
                variant_keys: Vec::new(),
            },
        )
    }

    /// An image uploaded at `at_ms` whose upload has `latest` as its result (none: the
    /// upload awaits it), then a request still awaiting its own when `awaiting`, then its
    /// deletion when `deleted`.
    pub fn logged(
        latest: Option<Outcome>,
        awaiting: bool,
        deleted: bool,
        at_ms: i64,
    ) -> LoggedImage {
        let image = Uuid::now_v7();
        let up = upload(image);
        let mut events = vec![up.clone()];
        events.extend(latest.map(|outcome| result(&up, &outcome)));
        if awaiting {
            events.push(request(image));
        }
        if deleted {
            events.push(deletion(image));
        }
        let mut state = LogState::default();
        for (offset, event) in events.iter().enumerate() {
            let mut record = at(offset as i64);
            record.timestamp_ms = Some(at_ms);
            state.apply(event, record);
        }
        state.images.remove(&image).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::testing::*;
    use super::*;

    #[test]
    fn a_request_is_awaited_until_its_own_result_arrives() {
        let image = Uuid::now_v7();
        let up = upload(image);
        let again = request(image);
        let mut state = LogState::default();
        state.apply(&up, at(0));
        state.apply(&again, at(1));
        // The upload's result arrives after the request was appended: the request still waits.
        state.apply(&result(&up, &Outcome::Processed { spec_version: 1 }), at(2));
        let seen = &state.images[&image];
        assert_eq!(seen.latest(), Some(Outcome::Processed { spec_version: 1 }));
        assert_eq!(seen.history.awaiting, BTreeSet::from([again.event_id]));
        assert_eq!(seen.uploaded_at_ms, 1_000);
        state.apply(
            &result(&again, &Outcome::Processed { spec_version: 2 }),
            at(3),
        );
        let seen = &state.images[&image];
        assert_eq!(seen.latest(), Some(Outcome::Processed { spec_version: 2 }));
        assert!(seen.history.awaiting.is_empty());
    }

    #[test]
    fn failures_deletions_and_strays_are_folded() {
        let (image, stray) = (Uuid::now_v7(), Uuid::now_v7());
        let up = upload(image);
        let undecodable = Outcome::Failed {
            reason_code: "undecodable".into(),
        };
        let mut state = LogState::default();
        state.apply(&up, at(0));
        state.apply(&result(&up, &undecodable), at(1));
        // A second copy of the upload (a redrive) keeps the first one's position.
        state.apply(&up, at(2));
        state.apply(&request(stray), at(3));
        let seen = &state.images[&image];
        assert_eq!(seen.latest(), Some(undecodable.clone()));
        assert_eq!(seen.upload_offset, 0);
        assert_eq!(seen.history.upload_event_id, up.event_id);
        assert!(!seen.is_deleted());
        assert!(!state.images.contains_key(&stray));
        state.apply(&deletion(image), at(4));
        assert!(state.images[&image].is_deleted());
        // A result after the deletion is not the image's: the projector ignores it too.
        state.apply(&result(&up, &Outcome::Processed { spec_version: 3 }), at(5));
        assert_eq!(state.images[&image].latest(), Some(undecodable));
    }

    #[test]
    fn the_test_images_are_what_they_say() {
        let v1 = Some(Outcome::Processed { spec_version: 1 });
        let image = logged(v1.clone(), true, false, 42);
        assert_eq!((image.latest(), image.uploaded_at_ms), (v1, 42));
        assert_eq!(image.history.awaiting.len(), 1);
        assert!(!image
            .history
            .awaiting
            .contains(&image.history.upload_event_id));
        let image = logged(None, false, true, 0);
        assert!(image.is_deleted() && image.latest().is_none());
    }
}
