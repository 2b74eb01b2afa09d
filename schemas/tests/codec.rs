use imgpipe_schemas::{
    decode, encode, Event, ImageFailed, ImageProcessed, ImageUploaded, Payload, Producer,
    SchemaError, Variant,
};
use uuid::Uuid;

fn producer() -> Producer {
    Producer {
        service: "imgpipe-test".into(),
        version: "0.0.0".into(),
    }
}

fn uploaded() -> ImageUploaded {
    ImageUploaded {
        owner: "client-a".into(),
        original_key: "originals/0192".into(),
        format: "jpeg".into(),
        bytes: 1_234_567,
        sha256: "ab".repeat(32),
        width: 2560,
        height: 1600,
        metadata: [("album", "kites"), ("source", "phone")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    }
}

fn every_payload() -> Vec<Payload> {
    vec![
        uploaded().into(),
        ImageProcessed {
            spec_version: 1,
            original_width: 1600,
            original_height: 2560,
            variants: vec![Variant {
                name: "thumb".into(),
                key: "variants/x/thumb.webp".into(),
                format: "webp".into(),
                width: 160,
                height: 256,
                bytes: 9_000,
                sha256: "cd".repeat(32),
            }],
            dominant_color: Some("#c81e1e".into()),
            blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
            animated: false,
        }
        .into(),
        ImageFailed {
            reason_code: "undecodable".into(),
            message: "unexpected end of file".into(),
        }
        .into(),
    ]
}

#[test]
fn every_event_type_round_trips() {
    for payload in every_payload() {
        let event = Event::new(
            Uuid::now_v7(),
            "req-1",
            Some(Uuid::now_v7()),
            producer(),
            payload,
        );
        let bytes = encode(&event).expect("encode");
        assert_eq!(&bytes[..2], &[0xC3, 0x01], "single-object marker");
        assert_eq!(decode(&bytes).expect("decode"), event);
    }
}

#[test]
fn missing_causation_round_trips() {
    let event = Event::new(Uuid::now_v7(), "req-2", None, producer(), uploaded());
    assert_eq!(decode(&encode(&event).unwrap()).unwrap(), event);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let event = Event::new(Uuid::now_v7(), "req-3", None, producer(), uploaded());
    let bytes = encode(&event).unwrap();
    for len in 0..bytes.len() {
        assert!(
            decode(&bytes[..len]).is_err(),
            "a record cut to {len} bytes must not decode"
        );
    }
}

#[test]
fn foreign_bytes_are_rejected_with_a_reason() {
    assert!(matches!(decode(b"hi"), Err(SchemaError::TooShort(2))));
    assert!(matches!(
        decode(b"{\"json\": true}"),
        Err(SchemaError::BadMagic)
    ));
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&[0xEE; 8]);
    unknown.extend_from_slice(b"body");
    assert!(matches!(
        decode(&unknown),
        Err(SchemaError::UnknownSchema(_))
    ));
}

#[test]
fn trailing_garbage_is_rejected() {
    let event = Event::new(Uuid::now_v7(), "req-4", None, producer(), uploaded());
    let mut bytes = encode(&event).unwrap();
    bytes.push(0);
    assert!(matches!(decode(&bytes), Err(SchemaError::TrailingBytes(1))));
}
