//! The contract's guard rails: the Rust types match the .avsc files, every released schema
//! version stays readable by the current one (BACKWARD_TRANSITIVE), and records written by
//! every released version (golden vectors) decode with the current reader.
//!
//! To release a new schema version, add `avro/vN/`, list it in `codec::RELEASED`, and
//! write its golden vectors once with `IMGPIPE_BLESS_GOLDEN=1 cargo test -p imgpipe-schemas`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use apache_avro::schema::{Schema, UnionSchema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::AvroSchema;
use imgpipe_schemas::codec::{current_schema, writer_schemas};
use imgpipe_schemas::{
    decode, encode, Event, EventType, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded,
    ObjectsDeleted, OrphanRemoved, Payload, Producer, ReprocessRequested, Variant,
    WebhookDeliveryAttempted, WebhookEndpointCreated, WebhookEndpointDeleted,
    WebhookEndpointDisabled, WebhookEndpointUpdated, WebhookRedeliveryRequested,
    WebhookSecretRotated, SCHEMA_VERSION,
};
use time::macros::datetime;
use uuid::{uuid, Uuid};

fn payload_union(schema: &Schema) -> &UnionSchema {
    let Schema::Record(record) = schema else {
        panic!("the event schema is a record")
    };
    let field = &record.fields[record.lookup["payload"]];
    let Schema::Union(union) = &field.schema else {
        panic!("payload is a union")
    };
    union
}

fn payload_record<'a>(schema: &'a Schema, name: &str) -> &'a Schema {
    payload_union(schema)
        .variants()
        .iter()
        .find(|variant| matches!(variant, Schema::Record(r) if r.name.name() == name))
        .unwrap_or_else(|| panic!("payload union has no {name}"))
}

#[test]
fn rust_types_match_the_current_avsc() {
    let schema = current_schema();
    let derived = [
        ("ImageUploaded", ImageUploaded::get_schema()),
        ("ImageProcessed", ImageProcessed::get_schema()),
        ("ImageFailed", ImageFailed::get_schema()),
        ("ImageDeleted", ImageDeleted::get_schema()),
        ("ObjectsDeleted", ObjectsDeleted::get_schema()),
        ("OrphanRemoved", OrphanRemoved::get_schema()),
        ("ReprocessRequested", ReprocessRequested::get_schema()),
        (
            "WebhookEndpointCreated",
            WebhookEndpointCreated::get_schema(),
        ),
        (
            "WebhookEndpointUpdated",
            WebhookEndpointUpdated::get_schema(),
        ),
        ("WebhookSecretRotated", WebhookSecretRotated::get_schema()),
        (
            "WebhookEndpointDeleted",
            WebhookEndpointDeleted::get_schema(),
        ),
        (
            "WebhookEndpointDisabled",
            WebhookEndpointDisabled::get_schema(),
        ),
        (
            "WebhookDeliveryAttempted",
            WebhookDeliveryAttempted::get_schema(),
        ),
        (
            "WebhookRedeliveryRequested",
            WebhookRedeliveryRequested::get_schema(),
        ),
    ];
    for (name, from_rust) in derived {
        assert_eq!(
            from_rust.canonical_form(),
            payload_record(schema, name).canonical_form(),
            "{name}: the Rust struct and the .avsc differ"
        );
    }
    // Every union branch is a known event type, in the order of EventType.
    let names: Vec<String> = payload_union(schema)
        .variants()
        .iter()
        .map(|variant| match variant {
            Schema::Record(record) => record.name.name().to_string(),
            other => panic!("payload branch is not a record: {other:?}"),
        })
        .collect();
    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(names, known);
    let Schema::Record(event) = schema else {
        unreachable!()
    };
    let producer = &event.fields[event.lookup["producer"]].schema;
    assert_eq!(
        producer.canonical_form(),
        Producer::get_schema().canonical_form()
    );
    let _ = Variant::get_schema();
}

#[test]
fn every_released_version_is_readable_by_the_current_schema() {
    let current = current_schema();
    let released = writer_schemas();
    for (version, text) in &released {
        let old = Schema::parse_str(text).unwrap();
        SchemaCompatibility::can_read(&old, current).unwrap_or_else(|error| {
            panic!("schema v{version} is not readable by v{SCHEMA_VERSION}: {error}")
        });
    }
    assert!(
        released.iter().any(|(v, _)| *v == SCHEMA_VERSION),
        "the current version is released"
    );
}

const EVENT_ID: Uuid = uuid!("01933b4e-8a10-7000-8000-000000000001");
const IMAGE_ID: Uuid = uuid!("01933b4e-8a10-7000-8000-0000000000aa");
const CAUSE_ID: Uuid = uuid!("01933b4e-8a10-7000-8000-000000000000");
const ENDPOINT_ID: &str = "01933b4e-8a10-7000-8000-0000000000ee";

/// The events the golden vectors of the current version hold.
fn golden_events() -> Vec<(&'static str, Event)> {
    let envelope = |payload: imgpipe_schemas::Payload, causation: Option<Uuid>| Event {
        event_id: EVENT_ID,
        image_id: IMAGE_ID,
        occurred_at: datetime!(2026-11-22 06:00:00.123456 UTC),
        correlation_id: "req-golden".into(),
        causation_id: causation,
        producer: Producer {
            service: "imgpipe-golden".into(),
            version: "1.0.0".into(),
        },
        payload,
    };
    vec![
        (
            "image_uploaded",
            envelope(
                ImageUploaded {
                    owner: "client-a".into(),
                    original_key: format!("originals/{IMAGE_ID}"),
                    format: "jpeg".into(),
                    bytes: 487_350,
                    sha256: "bd".repeat(32),
                    width: 2560,
                    height: 1600,
                    // One entry: a map's encoding follows its iteration order.
                    metadata: [("album".to_string(), "kites".to_string())].into(),
                }
                .into(),
                None,
            ),
        ),
        (
            "image_processed",
            envelope(
                ImageProcessed {
                    spec_version: 1,
                    original_width: 2560,
                    original_height: 1600,
                    variants: vec![Variant {
                        name: "thumb".into(),
                        key: format!("variants/{IMAGE_ID}/v1/thumb.webp"),
                        format: "webp".into(),
                        width: 256,
                        height: 160,
                        bytes: 3_392,
                        sha256: "c0".repeat(32),
                    }],
                    dominant_color: Some("#4a6b8c".into()),
                    blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
                    animated: true,
                }
                .into(),
                Some(CAUSE_ID),
            ),
        ),
        (
            "image_failed",
            envelope(
                ImageFailed {
                    reason_code: "undecodable".into(),
                    message: "unexpected end of file".into(),
                }
                .into(),
                Some(CAUSE_ID),
            ),
        ),
        (
            "image_deleted",
            envelope(
                ImageDeleted {
                    requested_by: "client-a".into(),
                    original_key: format!("originals/{IMAGE_ID}"),
                    variant_keys: vec![format!("variants/{IMAGE_ID}/v1/thumb.webp")],
                }
                .into(),
                None,
            ),
        ),
        (
            "objects_deleted",
            envelope(
                ObjectsDeleted {
                    keys: vec![format!("originals/{IMAGE_ID}")],
                    missing_keys: vec![format!("variants/{IMAGE_ID}/v1/thumb.webp")],
                }
                .into(),
                Some(CAUSE_ID),
            ),
        ),
        (
            "orphan_removed",
            envelope(
                OrphanRemoved {
                    key: format!("originals/{IMAGE_ID}"),
                    bytes: 487_350,
                    last_modified_micros: 1_795_000_000_000_000,
                    reason: "no-event".into(),
                }
                .into(),
                None,
            ),
        ),
        (
            "reprocess_requested",
            envelope(
                ReprocessRequested {
                    requested_by: "operator".into(),
                    reason: "spec v2".into(),
                    original_key: format!("originals/{IMAGE_ID}"),
                    format: "jpeg".into(),
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_endpoint_created",
            envelope(
                WebhookEndpointCreated {
                    endpoint_id: ENDPOINT_ID.into(),
                    owner: "client-a".into(),
                    url: "https://hooks.example.com/imgpipe".into(),
                    event_types: vec!["image.ready".into(), "image.failed".into()],
                    sealed_secret: "v1.c2VhbGVkLXNlY3JldC1ieXRlcw".into(),
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_endpoint_updated",
            envelope(
                WebhookEndpointUpdated {
                    endpoint_id: ENDPOINT_ID.into(),
                    requested_by: "client-a".into(),
                    url: None,
                    event_types: Some(vec!["image.deleted".into()]),
                    enabled: Some(false),
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_secret_rotated",
            envelope(
                WebhookSecretRotated {
                    endpoint_id: ENDPOINT_ID.into(),
                    requested_by: "client-a".into(),
                    sealed_secret: "v1.bmV3LXNlYWxlZC1zZWNyZXQ".into(),
                    previous_valid_until_micros: 1_795_086_400_000_000,
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_endpoint_deleted",
            envelope(
                WebhookEndpointDeleted {
                    endpoint_id: ENDPOINT_ID.into(),
                    requested_by: "client-a".into(),
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_endpoint_disabled",
            envelope(
                WebhookEndpointDisabled {
                    endpoint_id: ENDPOINT_ID.into(),
                    reason: "failing".into(),
                    failing_since_micros: 1_794_740_800_000_000,
                }
                .into(),
                None,
            ),
        ),
        (
            "webhook_delivery_attempted",
            envelope(
                WebhookDeliveryAttempted {
                    endpoint_id: ENDPOINT_ID.into(),
                    message_id: CAUSE_ID.to_string(),
                    message_type: "image.ready".into(),
                    attempt: 2,
                    redelivery: false,
                    url: "https://hooks.example.com/imgpipe".into(),
                    status_code: Some(503),
                    duration_ms: 41,
                    error_class: Some("status".into()),
                    next_attempt_micros: Some(1_795_000_300_000_000),
                }
                .into(),
                Some(CAUSE_ID),
            ),
        ),
        (
            "webhook_redelivery_requested",
            envelope(
                WebhookRedeliveryRequested {
                    endpoint_id: ENDPOINT_ID.into(),
                    requested_by: "operator".into(),
                    message_id: None,
                    since_micros: Some(1_795_000_000_000_000),
                }
                .into(),
                None,
            ),
        ),
    ]
}

fn golden_dir(version: i32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("v{version}"))
}

#[test]
fn current_version_encodes_exactly_its_golden_vectors() {
    let bless = std::env::var_os("IMGPIPE_BLESS_GOLDEN").is_some();
    for (name, event) in golden_events() {
        let path = golden_dir(SCHEMA_VERSION).join(format!("{name}.avro"));
        let bytes = encode(&event).unwrap();
        if bless && !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (bless with IMGPIPE_BLESS_GOLDEN=1)",
                path.display()
            )
        });
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(&golden),
            "{name}: the released v{SCHEMA_VERSION} encoding changed; release a new version instead"
        );
        assert_eq!(decode(&golden).unwrap(), event);
    }
}

#[test]
fn golden_vectors_of_every_released_version_decode() {
    for (version, _) in writer_schemas() {
        let dir = golden_dir(version);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let event = decode(&bytes)
                .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
            assert_eq!(event.event_id, EVENT_ID, "{}", path.display());
            assert_eq!(event.image_id, IMAGE_ID, "{}", path.display());
            let stem = path.file_stem().unwrap().to_str().unwrap().replace('_', "");
            assert_eq!(
                stem,
                event.event_type().as_str().to_lowercase(),
                "{}",
                path.display()
            );
            count += 1;
        }
        if version == SCHEMA_VERSION {
            assert_eq!(count, EventType::ALL.len(), "one golden vector per event");
        } else {
            assert!(count > 0, "v{version} keeps its golden vectors");
        }
    }
}

#[test]
fn image_processed_written_before_v2_reads_without_descriptors() {
    let bytes = std::fs::read(golden_dir(1).join("image_processed.avro")).unwrap();
    let Payload::ImageProcessed(processed) = decode(&bytes).unwrap().payload else {
        panic!("the v1 vector is an ImageProcessed")
    };
    assert_eq!(processed.variants.len(), 1);
    assert_eq!(processed.dominant_color, None);
    assert_eq!(processed.blurhash, None);
}

#[test]
fn image_processed_written_before_v3_reads_as_not_animated() {
    let bytes = std::fs::read(golden_dir(2).join("image_processed.avro")).unwrap();
    let Payload::ImageProcessed(processed) = decode(&bytes).unwrap().payload else {
        panic!("the v2 vector is an ImageProcessed")
    };
    assert!(processed.blurhash.is_some());
    assert!(!processed.animated);
}

#[test]
fn image_uploaded_written_before_v2_reads_with_no_metadata() {
    let bytes = std::fs::read(golden_dir(1).join("image_uploaded.avro")).unwrap();
    let Payload::ImageUploaded(uploaded) = decode(&bytes).unwrap().payload else {
        panic!("the v1 vector is an ImageUploaded")
    };
    assert_eq!(uploaded.width, 2560);
    assert!(uploaded.metadata.is_empty());
}

#[test]
fn composing_rejects_missing_and_stray_event_files() {
    let (_, files) = imgpipe_schemas::codec::RELEASED[0];
    let (envelope, events) = (files[0], &files[1..]);
    assert!(imgpipe_schemas::codec::compose(envelope, events).is_ok());
    // An event the envelope names but no file defines.
    assert!(imgpipe_schemas::codec::compose(envelope, &events[1..]).is_err());
    // A file whose event the envelope does not name.
    let stray =
        r#"{"type": "record", "name": "Stray", "namespace": "imgpipe.events", "fields": []}"#;
    let mut with_stray = events.to_vec();
    with_stray.push(stray);
    assert!(imgpipe_schemas::codec::compose(envelope, &with_stray).is_err());
}
