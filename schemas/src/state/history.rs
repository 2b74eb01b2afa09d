//! An image folded from whole events: [`ImageState`] plus what only event ids tell.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{ImageState, Status};
use crate::events::{Event, Payload};

/// An image as its events left it, folded from the events rather than their payloads: the
/// same [`ImageState`] (the same rules make it), plus the upload's event id and the events
/// still awaiting their result. `imgpipe replay reprocess` names the upload as a request's
/// causation and leaves alone an image whose result is still to come.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageHistory {
    pub image: ImageState,
    /// The event id of the `ImageUploaded` that created the image (a later copy of it, a
    /// redrive say, changes nothing).
    pub upload_event_id: Uuid,
    /// The upload and the `ReprocessRequested` events that no `ImageProcessed` or `ImageFailed`
    /// names as its causation yet. A result answers only its own cause: the upload's result
    /// arriving after a request leaves the request awaited. Like the rest of the image, it no
    /// longer changes once the image is deleted.
    pub awaiting: BTreeSet<Uuid>,
}

impl ImageHistory {
    /// The image after every event, in the order given; `None` while no `ImageUploaded` has
    /// come.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<ImageHistory> {
        let mut history: Option<ImageHistory> = None;
        for event in events {
            match history.as_mut() {
                Some(history) => history.update(event),
                None => history = ImageHistory::created_by(event),
            }
        }
        history
    }

    /// The image an event creates where there is none yet: only an `ImageUploaded` creates one.
    pub fn created_by(event: &Event) -> Option<ImageHistory> {
        ImageState::created_by(event.occurred_at, &event.payload).map(|image| ImageHistory {
            image,
            upload_event_id: event.event_id,
            awaiting: BTreeSet::from([event.event_id]),
        })
    }

    /// Applies one more event of the image.
    pub fn update(&mut self, event: &Event) {
        if self.image.status != Status::Deleted {
            match &event.payload {
                Payload::ReprocessRequested(_) => {
                    self.awaiting.insert(event.event_id);
                }
                Payload::ImageProcessed(_) | Payload::ImageFailed(_) => {
                    if let Some(cause) = event.causation_id {
                        self.awaiting.remove(&cause);
                    }
                }
                _ => {}
            }
        }
        self.image.update(event.occurred_at, &event.payload);
    }

    pub fn is_deleted(&self) -> bool {
        self.image.status == Status::Deleted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::events::{
        ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, Producer, ReprocessRequested,
    };
    use crate::state::Outcome;

    fn event(image: Uuid, cause: Option<&Event>, payload: impl Into<Payload>) -> Event {
        let producer = Producer {
            service: "t".into(),
            version: "0".into(),
        };
        Event::new(image, "req", cause.map(|c| c.event_id), producer, payload)
    }

    fn upload(image: Uuid) -> Event {
        event(
            image,
            None,
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
        event(
            cause.image_id,
            Some(cause),
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

    fn failed(cause: &Event) -> Event {
        event(
            cause.image_id,
            Some(cause),
            ImageFailed {
                reason_code: "undecodable".into(),
                message: "eof".into(),
            },
        )
    }

    fn request(image: Uuid) -> Event {
        event(
            image,
            None,
            ReprocessRequested {
                requested_by: "op".into(),
                reason: "test".into(),
                original_key: format!("originals/{image}"),
                format: "png".into(),
            },
        )
    }

    fn deleted(image: Uuid) -> Event {
        event(
            image,
            None,
            ImageDeleted {
                requested_by: "a".into(),
                original_key: format!("originals/{image}"),
                variant_keys: Vec::new(),
            },
        )
    }

    /// The image of the events is the payload fold's, whatever the ids say.
    fn checked(events: &[&Event]) -> ImageHistory {
        let history = ImageHistory::fold(events.iter().copied()).unwrap();
        let payloads = ImageState::fold(events.iter().map(|e| (e.occurred_at, &e.payload)));
        assert_eq!(Some(&history.image), payloads.as_ref());
        history
    }

    #[test]
    fn a_request_is_awaited_until_its_own_result_arrives() {
        let image = Uuid::now_v7();
        let up = upload(image);
        let again = request(image);
        assert_eq!(checked(&[&up]).awaiting, BTreeSet::from([up.event_id]));
        // The upload's result arrives after the request was appended: the request still waits.
        let late = processed(&up, 1);
        let seen = checked(&[&up, &again, &late]);
        assert_eq!(
            seen.image.last_result(),
            Some(Outcome::Processed { spec_version: 1 })
        );
        assert_eq!(seen.awaiting, BTreeSet::from([again.event_id]));
        let seen = checked(&[&up, &again, &late, &failed(&again)]);
        assert!(seen.awaiting.is_empty());
        assert_eq!(
            seen.image.last_result(),
            Some(Outcome::Failed {
                reason_code: "undecodable".into()
            })
        );
        // A result that names no awaited event answers nothing.
        let stray = processed(&request(image), 2);
        let seen = checked(&[&up, &again, &stray]);
        assert_eq!(seen.awaiting, BTreeSet::from([up.event_id, again.event_id]));
    }

    #[test]
    fn the_first_upload_stands_and_a_deletion_is_final() {
        let image = Uuid::now_v7();
        let up = upload(image);
        let copy = upload(image);
        let done = processed(&up, 1);
        let seen = checked(&[&up, &done, &copy]);
        assert_eq!(seen.upload_event_id, up.event_id);
        assert!(seen.awaiting.is_empty(), "a second upload awaits nothing");

        let gone = deleted(image);
        let again = request(image);
        let seen = checked(&[&up, &gone, &again, &processed(&up, 2)]);
        assert!(seen.is_deleted());
        assert_eq!(
            seen.awaiting,
            BTreeSet::from([up.event_id]),
            "after the deletion requests and results change nothing"
        );
        assert_eq!(ImageHistory::fold([&request(image), &done]), None);
    }
}
