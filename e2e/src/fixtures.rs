//! What tests upload and append: the corpus photo most of them use, and the `ImageUploaded`
//! event ingest would append for an original.

use imgpipe_schemas::{Event, ImageUploaded, Producer};
use uuid::Uuid;

use crate::Pipeline;

/// The corpus photo the tests upload unless they need another (a 2560x1600 JPEG).
pub const KITE: &str = "photos/kde-Kite-2560.jpg";
/// [`KITE`]'s size.
pub const KITE_WIDTH: i32 = 2560;
pub const KITE_HEIGHT: i32 = 1600;

/// The kite photo's bytes.
pub fn kite() -> Vec<u8> {
    corpus_file(KITE)
}

fn kite_len() -> i64 {
    let path = crate::corpus_dir().join(KITE);
    let len = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .len();
    i64::try_from(len).expect("a photo's size")
}

/// A file of the corpus, by its path inside it.
pub fn corpus_file(path: &str) -> Vec<u8> {
    let full = crate::corpus_dir().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The `ImageUploaded` ingest appends for `client-a`'s upload of the kite photo as `image_id`
/// (the original at `original_key`), with the correlation id `req-{image_id}`.
pub fn kite_uploaded(image_id: Uuid, original_key: String) -> Event {
    Event::new(
        image_id,
        format!("req-{image_id}"),
        None,
        Producer {
            service: "test".into(),
            version: "0".into(),
        },
        ImageUploaded {
            owner: "client-a".into(),
            original_key,
            format: "jpeg".into(),
            bytes: kite_len(),
            sha256: "00".repeat(32),
            width: KITE_WIDTH,
            height: KITE_HEIGHT,
            metadata: Default::default(),
        },
    )
}

/// Stores the kite photo as a new image's original, as ingest does before it appends, and
/// gives the event that announces it (not appended).
pub async fn stored_kite(pipeline: &Pipeline) -> Event {
    let image_id = Uuid::now_v7();
    let original_key = pipeline.store.original_key(image_id);
    pipeline
        .store
        .put(&original_key, kite().into(), "image/jpeg")
        .await
        .expect("storing the original");
    kite_uploaded(image_id, original_key)
}
