//! The image as `GET /v1/images/{id}` answers it: from the read model's rows, or folded from
//! its events as of a time.
//!
//! The response types carry no doc comments of their own where the document has no
//! description for them (utoipa would publish one); the fields' doc comments are the
//! document's.

use std::collections::BTreeMap;

use imgpipe_schemas::state::{ImageState, Status};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{ImageRow, VariantRow};

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ImageStatus {
    pub(in crate::routes) id: Uuid,
    #[serde(flatten)]
    pub(in crate::routes) image: ImageFields,
    /// Why processing failed; null unless the status is `failed`.
    pub(in crate::routes) failure: Option<Failure>,
    pub(in crate::routes) variants: Vec<Variant>,
    /// When the variants' `url`s stop working (RFC 3339); fetch the image again for new ones.
    /// Absent with `as_of`, whose variants have no `url`.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(in crate::routes) urls_expire_at: Option<OffsetDateTime>,
    /// The `as_of` time asked for (RFC 3339): the image is as it was then. Absent without it.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(in crate::routes) as_of: Option<OffsetDateTime>,
}

impl ImageStatus {
    /// The image as the read model has it, with `variants` (and their URLs) as read with it.
    pub(super) fn current(
        id: Uuid,
        row: ImageRow,
        variants: Vec<Variant>,
        urls_expire_at: OffsetDateTime,
    ) -> Self {
        let failure = Failure::of(row.failure_code, row.failure_reason);
        let image = ImageFields {
            status: row.status,
            format: row.format,
            bytes: row.bytes,
            sha256: row.sha256,
            width: row.width,
            height: row.height,
            spec_version: row.spec_version,
            dominant_color: row.dominant_color,
            blurhash: row.blurhash,
            animated: row.animated,
            metadata: row.metadata.0,
            uploaded_at: row.uploaded_at,
            updated_at: row.updated_at,
        };
        Self {
            id,
            image,
            failure,
            variants,
            urls_expire_at: Some(urls_expire_at),
            as_of: None,
        }
    }

    /// The image as its events up to `as_of` left it; its variants have no URL (a past
    /// variant may no longer exist).
    pub(super) fn as_of(id: Uuid, folded: ImageState, as_of: OffsetDateTime) -> Self {
        let mut variants: Vec<Variant> = folded
            .variants
            .into_iter()
            .map(|v| Variant {
                stored: VariantFields {
                    name: v.name,
                    key: v.key,
                    format: v.format,
                    width: v.width,
                    height: v.height,
                    bytes: v.bytes,
                    sha256: v.sha256,
                },
                url: None,
            })
            .collect();
        // The order the current GET lists them in.
        variants.sort_by(|a, b| {
            (a.stored.width, &a.stored.name).cmp(&(b.stored.width, &b.stored.name))
        });
        let failure = Failure::of(folded.failure_code, folded.failure_reason);
        let image = ImageFields {
            status: folded.status,
            format: folded.format,
            bytes: folded.bytes,
            sha256: folded.sha256,
            width: folded.width,
            height: folded.height,
            spec_version: folded.spec_version,
            dominant_color: folded.dominant_color,
            blurhash: folded.blurhash,
            animated: folded.animated,
            metadata: folded.metadata,
            uploaded_at: folded.uploaded_at,
            updated_at: folded.updated_at,
        };
        Self {
            id,
            image,
            failure,
            variants,
            urls_expire_at: None,
            as_of: Some(as_of),
        }
    }
}

// The document calls it `ImageRow`, the name it had when the database row was served as is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImageRow)]
pub(super) struct ImageFields {
    #[schema(value_type = String)]
    pub(in crate::routes) status: Status,
    pub(in crate::routes) format: String,
    pub(in crate::routes) bytes: i64,
    pub(in crate::routes) sha256: String,
    pub(in crate::routes) width: i32,
    pub(in crate::routes) height: i32,
    pub(in crate::routes) spec_version: Option<i32>,
    /// `#rrggbb`; null until processed, and for images processed before schema v2.
    pub(in crate::routes) dominant_color: Option<String>,
    pub(in crate::routes) blurhash: Option<String>,
    /// The original is an animation (GIF or WebP of more than one frame) and the variants show
    /// its first frame; false until processed, and for images processed before schema v3.
    pub(in crate::routes) animated: bool,
    /// The upload form's `metadata`; `{}` when it had none.
    pub(in crate::routes) metadata: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(in crate::routes) uploaded_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(in crate::routes) updated_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Variant {
    #[serde(flatten)]
    pub(in crate::routes) stored: VariantFields,
    /// A presigned GET URL for the WebP: no Authorization header, valid until `urls_expire_at`.
    /// Absent with `as_of`: a past variant may no longer exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::routes) url: Option<String>,
}

impl Variant {
    /// A stored variant with its presigned URL.
    pub(super) fn current(row: VariantRow, url: String) -> Self {
        Self {
            stored: VariantFields {
                name: row.name,
                key: row.key,
                format: row.format,
                width: row.width,
                height: row.height,
                bytes: row.bytes,
                sha256: row.sha256,
            },
            url: Some(url),
        }
    }
}

// The document calls it `VariantRow`, as `ImageFields` is `ImageRow`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VariantRow)]
pub(super) struct VariantFields {
    pub(in crate::routes) name: String,
    /// The object key in the bucket.
    pub(in crate::routes) key: String,
    pub(in crate::routes) format: String,
    pub(in crate::routes) width: i32,
    pub(in crate::routes) height: i32,
    pub(in crate::routes) bytes: i64,
    pub(in crate::routes) sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Failure {
    /// `undecodable`, `unsupported-format`, `image-too-large`, `original-missing`,
    /// `encode-failed`.
    pub(in crate::routes) code: String,
    pub(in crate::routes) reason: String,
}

impl Failure {
    /// The failure a row or a folded state holds: none without a code.
    fn of(code: Option<String>, reason: Option<String>) -> Option<Self> {
        code.map(|code| Self {
            code,
            reason: reason.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        let nanos = 1_795_000_000_000_000_000 + seconds * 1_000_123_000;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).unwrap()
    }

    fn id() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    fn row() -> ImageRow {
        ImageRow {
            owner: "client-a".into(),
            original_key: "originals/x".into(),
            status: Status::Failed,
            format: "png".into(),
            bytes: 1234,
            sha256: "ab".repeat(32),
            width: 640,
            height: 480,
            spec_version: Some(3),
            dominant_color: Some("#102030".into()),
            blurhash: None,
            animated: true,
            metadata: sqlx::types::Json([("album".to_string(), "kites".to_string())].into()),
            failure_code: Some("undecodable".into()),
            failure_reason: Some("truncated".into()),
            uploaded_at: at(0),
            updated_at: at(5),
        }
    }

    /// The body is what it was when the read model's rows were served as they are: the row's
    /// fields flattened in, without the owner, the original's key or the failure columns.
    #[test]
    fn the_current_image_is_its_rows_public_fields_and_its_variants() {
        let variant = VariantRow {
            name: "thumb".into(),
            key: "variants/x/thumb.webp".into(),
            format: "webp".into(),
            width: 256,
            height: 192,
            bytes: 999,
            sha256: "cd".repeat(32),
        };
        let failed = ImageStatus::current(
            id(),
            row(),
            vec![Variant::current(variant, "http://s3/x?sig".into())],
            at(60),
        );
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r##"{"id":"01900000-0000-7000-8000-000000000001","status":"failed","format":"png","bytes":1234,"sha256":"abababababababababababababababababababababababababababababababab","width":640,"height":480,"spec_version":3,"dominant_color":"#102030","blurhash":null,"animated":true,"metadata":{"album":"kites"},"uploaded_at":"2026-11-18T11:06:40Z","updated_at":"2026-11-18T11:06:45.000615Z","failure":{"code":"undecodable","reason":"truncated"},"variants":[{"name":"thumb","key":"variants/x/thumb.webp","format":"webp","width":256,"height":192,"bytes":999,"sha256":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","url":"http://s3/x?sig"}],"urls_expire_at":"2026-11-18T11:07:40.00738Z"}"##
        );
        let ready = ImageRow {
            status: Status::Ready,
            failure_code: None,
            ..row()
        };
        let ready = ImageStatus::current(id(), ready, Vec::new(), at(60));
        assert_eq!(
            serde_json::to_string(&ready).unwrap(),
            r##"{"id":"01900000-0000-7000-8000-000000000001","status":"ready","format":"png","bytes":1234,"sha256":"abababababababababababababababababababababababababababababababab","width":640,"height":480,"spec_version":3,"dominant_color":"#102030","blurhash":null,"animated":true,"metadata":{"album":"kites"},"uploaded_at":"2026-11-18T11:06:40Z","updated_at":"2026-11-18T11:06:45.000615Z","failure":null,"variants":[],"urls_expire_at":"2026-11-18T11:07:40.00738Z"}"##
        );
    }

    #[test]
    fn a_folded_image_has_no_urls_and_its_variants_in_the_current_order() {
        let variant =
            |name: &str, key: &str, width, bytes, sha256: &str| imgpipe_schemas::Variant {
                name: name.into(),
                key: key.into(),
                format: "webp".into(),
                width,
                height: 1,
                bytes,
                sha256: sha256.into(),
            };
        let folded = ImageState {
            owner: "client-a".into(),
            original_key: "originals/x".into(),
            status: Status::Uploaded,
            format: "png".into(),
            bytes: 5,
            sha256: "00".into(),
            width: 1,
            height: 2,
            spec_version: None,
            dominant_color: None,
            blurhash: None,
            animated: false,
            metadata: [("k".to_string(), "v".to_string())].into(),
            failure_code: Some("encode-failed".into()),
            failure_reason: None,
            uploaded_at: at(0),
            updated_at: at(0),
            variants: vec![
                variant("large", "k2", 2048, 2, "ee"),
                variant("thumb", "k1", 256, 1, "ff"),
            ],
        };
        let body = ImageStatus::as_of(id(), folded, at(3));
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r##"{"id":"01900000-0000-7000-8000-000000000001","status":"uploaded","format":"png","bytes":5,"sha256":"00","width":1,"height":2,"spec_version":null,"dominant_color":null,"blurhash":null,"animated":false,"metadata":{"k":"v"},"uploaded_at":"2026-11-18T11:06:40Z","updated_at":"2026-11-18T11:06:40Z","failure":{"code":"encode-failed","reason":""},"variants":[{"name":"thumb","key":"k1","format":"webp","width":256,"height":1,"bytes":1,"sha256":"ff"},{"name":"large","key":"k2","format":"webp","width":2048,"height":1,"bytes":2,"sha256":"ee"}],"as_of":"2026-11-18T11:06:43.000369Z"}"##
        );
    }
}
