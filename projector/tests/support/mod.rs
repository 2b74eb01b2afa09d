//! What several projector tests share: random events of every type for one image.
#![allow(dead_code)]

use std::collections::HashMap;

use imgpipe_schemas::{
    ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted, OrphanRemoved,
    Payload, ReprocessRequested, Variant,
};
use uuid::Uuid;

/// A random event of any type for `image_id` (an upload adds one to `uploads`).
pub fn random_payload(rng: &mut fastrand::Rng, image_id: Uuid, uploads: &mut u32) -> Payload {
    let variant = |name: &str, spec: i32, width: i32| Variant {
        name: name.into(),
        key: format!("variants/{image_id}/v{spec}/{name}.webp"),
        format: "webp".into(),
        width,
        height: width / 2,
        bytes: i64::from(width) * 7,
        sha256: format!("{spec:064}"),
    };
    match rng.u8(0..9) {
        0 | 1 => {
            *uploads += 1;
            ImageUploaded {
                owner: format!("client-{uploads}"),
                original_key: format!("originals/{image_id}"),
                format: "jpeg".into(),
                bytes: i64::from(*uploads) * 1000,
                sha256: "ab".repeat(32),
                width: 800,
                height: 600,
                metadata: HashMap::from([("n".into(), uploads.to_string())]),
            }
            .into()
        }
        2 | 3 => {
            let spec = rng.i32(1..4);
            ImageProcessed {
                spec_version: spec,
                original_width: 600 + spec,
                original_height: 800,
                variants: vec![variant("thumb", spec, 256), variant("large", spec, 2048)],
                dominant_color: rng.bool().then(|| format!("#00000{spec}")),
                blurhash: rng.bool().then(|| "LKO2?U%2Tw=w]~RBVZRi};RPxuwH".into()),
                animated: rng.bool(),
            }
            .into()
        }
        4 => ImageFailed {
            reason_code: "undecodable".into(),
            message: format!("attempt {}", rng.u8(..)),
        }
        .into(),
        5 => ImageDeleted {
            requested_by: "client-1".into(),
            original_key: format!("originals/{image_id}"),
            variant_keys: vec![],
        }
        .into(),
        6 => {
            let spec = rng.i32(1..4);
            ObjectsDeleted {
                keys: vec![variant("thumb", spec, 256).key],
                missing_keys: if rng.bool() {
                    vec![variant("large", spec, 2048).key]
                } else {
                    vec![]
                },
            }
            .into()
        }
        7 => ReprocessRequested {
            requested_by: "ops".into(),
            reason: "spec".into(),
            original_key: format!("originals/{image_id}"),
            format: "jpeg".into(),
        }
        .into(),
        _ => OrphanRemoved {
            key: format!("originals/{image_id}"),
            bytes: 1,
            last_modified_micros: 0,
            reason: "no-event".into(),
        }
        .into(),
    }
}
