//! What an image's events make of it: the fold behind "the image as of a time".
//!
//! The rules are the projector's (`projector/src/db.rs`, `apply`), written once more without a
//! database so the state at any point of a timeline can be computed from the events alone;
//! `projector/tests/fold.rs` checks that both give the same image for the same events. In
//! short: the first `ImageUploaded` creates the image and later ones change nothing; an event
//! before it changes nothing; `ImageDeleted` is final (nothing but another `ImageDeleted` and
//! `ObjectsDeleted` touches a deleted image); `ObjectsDeleted` drops the variants whose objects
//! are gone; `OrphanRemoved` changes nothing.
//!
//! [`ImageHistory`] folds whole events (ids and causation too) with the same rules, for what
//! the payloads alone do not tell: which upload a reprocess request follows, and which
//! requests still await their result.

mod history;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::SchemaError;
use crate::events::{ImageUploaded, Payload, Variant};

pub use history::ImageHistory;

words! {
    /// Where an image is in its life. The read model's `images.status` holds [`Status::as_str`],
    /// and so does JSON (serde).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Status ("image status") {
        Uploaded = "uploaded",
        Processing = "processing",
        Ready = "ready",
        Failed = "failed",
        Deleted = "deleted",
    }
}

/// For a decoder that hands over an owned string (sqlx's `#[sqlx(try_from = "String")]`).
impl TryFrom<String> for Status {
    type Error = SchemaError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

/// One image as its events left it: the `images` row and its `variants` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageState {
    pub owner: String,
    pub original_key: String,
    pub status: Status,
    pub format: String,
    pub bytes: i64,
    pub sha256: String,
    /// As uploaded; the EXIF-oriented size once processed.
    pub width: i32,
    pub height: i32,
    pub spec_version: Option<i32>,
    pub dominant_color: Option<String>,
    pub blurhash: Option<String>,
    /// The original has several frames (the variants show the first).
    pub animated: bool,
    pub metadata: BTreeMap<String, String>,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub uploaded_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// In the order the `ImageProcessed` that made them listed them.
    pub variants: Vec<Variant>,
}

impl ImageState {
    /// The state after every event, in the order given; `None` while no `ImageUploaded` has
    /// come.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = (OffsetDateTime, &'a Payload)>,
    ) -> Option<ImageState> {
        let mut state = None;
        for (occurred_at, payload) in events {
            ImageState::apply(&mut state, occurred_at, payload);
        }
        state
    }

    /// The image as its `ImageUploaded` creates it.
    fn uploaded(uploaded: &ImageUploaded, occurred_at: OffsetDateTime) -> ImageState {
        ImageState {
            owner: uploaded.owner.clone(),
            original_key: uploaded.original_key.clone(),
            status: Status::Uploaded,
            format: uploaded.format.clone(),
            bytes: uploaded.bytes,
            sha256: uploaded.sha256.clone(),
            width: uploaded.width,
            height: uploaded.height,
            spec_version: None,
            dominant_color: None,
            blurhash: None,
            animated: false,
            metadata: uploaded
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            failure_code: None,
            failure_reason: None,
            uploaded_at: occurred_at,
            updated_at: occurred_at,
            variants: Vec::new(),
        }
    }

    /// Applies one event that occurred at `occurred_at`.
    pub fn apply(state: &mut Option<ImageState>, occurred_at: OffsetDateTime, payload: &Payload) {
        match state {
            None => *state = ImageState::created_by(occurred_at, payload),
            Some(image) => image.update(occurred_at, payload),
        }
    }

    /// The image an event creates where there is none yet: only an `ImageUploaded` creates one.
    pub fn created_by(occurred_at: OffsetDateTime, payload: &Payload) -> Option<ImageState> {
        match payload {
            Payload::ImageUploaded(uploaded) => Some(ImageState::uploaded(uploaded, occurred_at)),
            _ => None,
        }
    }

    /// Applies one event, that occurred at `occurred_at`, to an image its upload created.
    pub fn update(&mut self, occurred_at: OffsetDateTime, payload: &Payload) {
        let deleted = self.status == Status::Deleted;
        match payload {
            // The image id is taken: a second upload event for it changes nothing.
            Payload::ImageUploaded(_) => {}
            Payload::ImageProcessed(processed) if !deleted => {
                self.status = Status::Ready;
                self.spec_version = Some(processed.spec_version);
                self.width = processed.original_width;
                self.height = processed.original_height;
                self.dominant_color.clone_from(&processed.dominant_color);
                self.blurhash.clone_from(&processed.blurhash);
                self.animated = processed.animated;
                self.failure_code = None;
                self.failure_reason = None;
                self.updated_at = occurred_at;
                self.variants.clone_from(&processed.variants);
            }
            Payload::ImageFailed(failed) if !deleted => {
                self.status = Status::Failed;
                self.failure_code = Some(failed.reason_code.clone());
                self.failure_reason = Some(failed.message.clone());
                self.updated_at = occurred_at;
            }
            Payload::ReprocessRequested(_) if !deleted => {
                self.status = Status::Processing;
                self.updated_at = occurred_at;
            }
            // After a deletion a late result or request changes nothing.
            Payload::ImageProcessed(_)
            | Payload::ImageFailed(_)
            | Payload::ReprocessRequested(_) => {}
            Payload::ImageDeleted(_) => {
                self.status = Status::Deleted;
                self.updated_at = occurred_at;
            }
            Payload::ObjectsDeleted(objects) => {
                let gone: BTreeSet<&str> = objects
                    .keys
                    .iter()
                    .chain(&objects.missing_keys)
                    .map(String::as_str)
                    .collect();
                self.variants
                    .retain(|variant| !gone.contains(variant.key.as_str()));
            }
            // Audit records and webhook events do not change the image.
            Payload::OrphanRemoved(_)
            | Payload::WebhookEndpointCreated(_)
            | Payload::WebhookEndpointUpdated(_)
            | Payload::WebhookSecretRotated(_)
            | Payload::WebhookEndpointDeleted(_)
            | Payload::WebhookEndpointDisabled(_)
            | Payload::WebhookDeliveryAttempted(_)
            | Payload::WebhookRedeliveryRequested(_) => {}
        }
    }

    /// The last result (`ImageProcessed` or `ImageFailed`) applied to the image, whatever came
    /// after it. An `ImageProcessed` clears the failure an `ImageFailed` sets, so a failure
    /// code means the last result failed.
    pub fn last_result(&self) -> Option<Outcome> {
        match (&self.failure_code, self.spec_version) {
            (Some(reason_code), _) => Some(Outcome::Failed {
                reason_code: reason_code.clone(),
            }),
            (None, Some(spec_version)) => Some(Outcome::Processed { spec_version }),
            (None, None) => None,
        }
    }
}

/// What the processor made of an upload or a reprocess request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed { spec_version: i32 },
    Failed { reason_code: String },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;
    use crate::events::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000 + seconds).unwrap()
    }

    fn uploaded() -> Payload {
        ImageUploaded {
            owner: "client-a".into(),
            original_key: "originals/i".into(),
            format: "jpeg".into(),
            bytes: 1000,
            sha256: "ab".repeat(32),
            width: 4000,
            height: 3000,
            metadata: HashMap::from([("album".into(), "kites".into())]),
        }
        .into()
    }

    fn variant(name: &str, spec: i32, width: i32) -> Variant {
        Variant {
            name: name.into(),
            key: format!("variants/i/v{spec}/{name}.webp"),
            format: "webp".into(),
            width,
            height: width * 4 / 3,
            bytes: i64::from(width) * 10,
            sha256: "cd".repeat(32),
        }
    }

    fn processed(spec: i32) -> Payload {
        ImageProcessed {
            spec_version: spec,
            // Portrait after EXIF orientation.
            original_width: 3000,
            original_height: 4000,
            variants: vec![variant("thumb", spec, 256), variant("large", spec, 2048)],
            dominant_color: Some(format!("#00000{spec}")),
            blurhash: Some("LKO2?U%2Tw=w]~RBVZRi};RPxuwH".into()),
            animated: spec == 2,
        }
        .into()
    }

    fn failed() -> Payload {
        ImageFailed {
            reason_code: "undecodable".into(),
            message: "truncated".into(),
        }
        .into()
    }

    fn reprocess() -> Payload {
        ReprocessRequested {
            requested_by: "ops".into(),
            reason: "spec v2".into(),
            original_key: "originals/i".into(),
            format: "jpeg".into(),
        }
        .into()
    }

    fn deleted(variant_keys: Vec<String>) -> Payload {
        ImageDeleted {
            requested_by: "client-a".into(),
            original_key: "originals/i".into(),
            variant_keys,
        }
        .into()
    }

    fn objects_deleted(keys: Vec<String>, missing_keys: Vec<String>) -> Payload {
        ObjectsDeleted { keys, missing_keys }.into()
    }

    /// The state after each prefix of the timeline: what as_of answers at each event's time.
    fn states(timeline: &[(OffsetDateTime, Payload)]) -> Vec<Option<ImageState>> {
        (0..=timeline.len())
            .map(|n| ImageState::fold(timeline[..n].iter().map(|(t, p)| (*t, p))))
            .collect()
    }

    #[test]
    fn a_life_from_upload_through_reprocessing_to_deletion() {
        let v2_keys: Vec<String> = [variant("thumb", 2, 256), variant("large", 2, 2048)]
            .into_iter()
            .map(|v| v.key)
            .collect();
        let timeline = vec![
            (at(0), uploaded()),
            (at(2), processed(1)),
            (at(60), reprocess()),
            (at(63), processed(2)),
            (at(100), deleted(v2_keys.clone())),
            (
                at(101),
                objects_deleted(
                    [vec!["originals/i".to_string()], v2_keys[..1].to_vec()].concat(),
                    v2_keys[1..].to_vec(),
                ),
            ),
        ];
        let states = states(&timeline);

        assert_eq!(states[0], None, "before the upload there is no image");

        let up = states[1].as_ref().unwrap();
        assert_eq!(up.status, Status::Uploaded);
        assert_eq!((up.width, up.height), (4000, 3000));
        assert_eq!(up.owner, "client-a");
        assert_eq!(up.metadata.get("album").map(String::as_str), Some("kites"));
        assert_eq!((up.uploaded_at, up.updated_at), (at(0), at(0)));
        assert!(up.variants.is_empty() && up.spec_version.is_none());

        let v1 = states[2].as_ref().unwrap();
        assert_eq!(v1.status, Status::Ready);
        assert_eq!(v1.spec_version, Some(1));
        assert_eq!((v1.width, v1.height), (3000, 4000), "oriented size");
        assert_eq!(
            v1.variants,
            vec![variant("thumb", 1, 256), variant("large", 1, 2048)]
        );
        assert_eq!(v1.dominant_color.as_deref(), Some("#000001"));
        assert_eq!((v1.uploaded_at, v1.updated_at), (at(0), at(2)));

        let again = states[3].as_ref().unwrap();
        assert_eq!(again.status, Status::Processing);
        assert_eq!(
            again.variants, v1.variants,
            "v1 variants stay until v2 replaces them"
        );
        assert_eq!(again.spec_version, Some(1));

        let v2 = states[4].as_ref().unwrap();
        assert_eq!(v2.status, Status::Ready);
        assert_eq!(v2.spec_version, Some(2));
        assert_eq!(
            v2.variants,
            vec![variant("thumb", 2, 256), variant("large", 2, 2048)]
        );

        let gone = states[5].as_ref().unwrap();
        assert_eq!(gone.status, Status::Deleted);
        assert_eq!(
            gone.variants.len(),
            2,
            "variant rows stay until their objects are gone"
        );
        assert_eq!(gone.updated_at, at(100));

        let swept = states[6].as_ref().unwrap();
        assert_eq!(swept.status, Status::Deleted);
        assert!(
            swept.variants.is_empty(),
            "removed and already-missing keys both drop"
        );
        assert_eq!(
            swept.updated_at,
            at(100),
            "ObjectsDeleted does not touch updated_at"
        );
        assert_eq!(swept.uploaded_at, at(0));
    }

    #[test]
    fn a_failure_then_a_successful_reprocess_clears_the_failure() {
        let states = states(&[
            (at(0), uploaded()),
            (at(1), failed()),
            (at(5), reprocess()),
            (at(6), processed(2)),
        ]);
        let failed = states[2].as_ref().unwrap();
        assert_eq!(failed.status, Status::Failed);
        assert_eq!(failed.failure_code.as_deref(), Some("undecodable"));
        assert_eq!(failed.failure_reason.as_deref(), Some("truncated"));
        assert_eq!((failed.width, failed.height), (4000, 3000));
        let processing = states[3].as_ref().unwrap();
        assert_eq!(processing.status, Status::Processing);
        assert_eq!(
            processing.failure_code.as_deref(),
            Some("undecodable"),
            "the projector keeps the failure until a result replaces it"
        );
        let ready = states[4].as_ref().unwrap();
        assert_eq!(ready.status, Status::Ready);
        assert_eq!(
            (ready.failure_code.clone(), ready.failure_reason.clone()),
            (None, None)
        );
    }

    #[test]
    fn a_deleted_image_stays_deleted_whatever_comes_late() {
        let timeline = [
            (at(0), uploaded()),
            (at(1), deleted(vec![])),
            (at(2), processed(1)),
            (at(3), failed()),
            (at(4), reprocess()),
            (at(5), uploaded()),
        ];
        let state = ImageState::fold(timeline.iter().map(|(t, p)| (*t, p))).unwrap();
        assert_eq!(state.status, Status::Deleted);
        assert!(state.variants.is_empty());
        assert_eq!(state.spec_version, None);
        assert_eq!(state.failure_code, None);
        assert_eq!(state.updated_at, at(1));
        assert_eq!((state.width, state.height), (4000, 3000));

        // A second ImageDeleted (a retried delete) moves updated_at, as the projector does.
        let again = [
            (at(0), uploaded()),
            (at(1), deleted(vec![])),
            (at(9), deleted(vec![])),
        ];
        let state = ImageState::fold(again.iter().map(|(t, p)| (*t, p))).unwrap();
        assert_eq!((state.status, state.updated_at), (Status::Deleted, at(9)));
    }

    #[test]
    fn events_before_the_upload_and_repeated_uploads_change_nothing() {
        let mut second_upload = uploaded();
        if let Payload::ImageUploaded(u) = &mut second_upload {
            u.owner = "client-b".into();
            u.bytes = 1;
        }
        let timeline = [
            (at(-2), processed(1)),
            (
                at(-1),
                objects_deleted(vec!["variants/i/v1/thumb.webp".into()], vec![]),
            ),
            (at(0), uploaded()),
            (at(1), second_upload),
            (
                at(2),
                OrphanRemoved {
                    key: "originals/i".into(),
                    bytes: 1000,
                    last_modified_micros: 0,
                    reason: "no-event".into(),
                }
                .into(),
            ),
        ];
        let state = ImageState::fold(timeline.iter().map(|(t, p)| (*t, p))).unwrap();
        let only_upload = ImageState::fold([(at(0), &uploaded())]).unwrap();
        assert_eq!(state, only_upload);
        assert_eq!(state.owner, "client-a");
        assert_eq!(state.bytes, 1000);
        assert_eq!(ImageState::fold([(at(0), &processed(1))]), None);
    }

    #[test]
    fn objects_deleted_drops_only_the_named_variants() {
        let timeline = [
            (at(0), uploaded()),
            (at(1), processed(1)),
            (
                at(2),
                objects_deleted(
                    vec!["variants/i/v1/large.webp".into(), "other".into()],
                    vec![],
                ),
            ),
        ];
        let state = ImageState::fold(timeline.iter().map(|(t, p)| (*t, p))).unwrap();
        assert_eq!(state.status, Status::Ready);
        assert_eq!(state.variants, vec![variant("thumb", 1, 256)]);
        assert_eq!(state.updated_at, at(1));
    }

    #[test]
    fn a_status_reads_back_from_its_name_in_text_and_in_json() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            assert_eq!(
                Status::try_from(status.as_str().to_string()).unwrap(),
                status
            );
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(serde_json::from_value::<Status>(json).unwrap(), status);
        }
        for unknown in ["", "Ready", "deleting", " ready"] {
            assert!(
                matches!(unknown.parse::<Status>(), Err(SchemaError::UnknownWord { word, .. }) if word == unknown),
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn the_last_result_is_the_last_one_applied() {
        let last = |timeline: &[(OffsetDateTime, Payload)]| {
            ImageState::fold(timeline.iter().map(|(t, p)| (*t, p)))
                .unwrap()
                .last_result()
        };
        let undecodable = || Outcome::Failed {
            reason_code: "undecodable".into(),
        };
        assert_eq!(last(&[(at(0), uploaded()), (at(1), reprocess())]), None);
        assert_eq!(
            last(&[
                (at(0), uploaded()),
                (at(1), processed(1)),
                (at(2), reprocess())
            ]),
            Some(Outcome::Processed { spec_version: 1 }),
            "a request is not a result"
        );
        assert_eq!(
            last(&[
                (at(0), uploaded()),
                (at(1), processed(1)),
                (at(2), failed())
            ]),
            Some(undecodable()),
            "a failure after a success is the last result"
        );
        assert_eq!(
            last(&[
                (at(0), uploaded()),
                (at(1), failed()),
                (at(2), reprocess()),
                (at(3), processed(2))
            ]),
            Some(Outcome::Processed { spec_version: 2 })
        );
        assert_eq!(
            last(&[
                (at(0), uploaded()),
                (at(1), processed(1)),
                (at(2), deleted(vec![])),
                (at(3), failed())
            ]),
            Some(Outcome::Processed { spec_version: 1 }),
            "a result after the deletion is not applied"
        );
    }
}
