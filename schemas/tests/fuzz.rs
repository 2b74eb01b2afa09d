//! Untrusted bytes never panic the decoder: arbitrary input and mutations of valid records
//! either decode or return a typed error.
#![allow(clippy::unwrap_used)]

use imgpipe_schemas::{decode, encode, Event, ImageUploaded, Producer};
use proptest::prelude::*;
use uuid::Uuid;

fn valid_record() -> Vec<u8> {
    let event = Event::new(
        Uuid::now_v7(),
        "req",
        Some(Uuid::now_v7()),
        Producer {
            service: "fuzz".into(),
            version: "0".into(),
        },
        ImageUploaded {
            owner: "o".into(),
            original_key: "k".into(),
            format: "png".into(),
            bytes: 1,
            sha256: "00".repeat(32),
            width: 1,
            height: 1,
            metadata: Default::default(),
        },
    );
    encode(&event).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut bytes = valid_record()[..10].to_vec();
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
    }

    #[test]
    fn mutated_records_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_record();
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let len = cut.index(bytes.len() + 1);
        let _ = decode(&bytes[..len]);
    }
}

/// A zigzag varint, as Avro writes a `long`.
fn zigzag(value: i64) -> Vec<u8> {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A valid `ImageUploaded` whose last field (the empty `metadata` map, one zero byte) is
/// replaced by a block of `count` entries with nothing behind it: the record that aborted the
/// processor and the projector when the decoder reserved memory for the count before reading.
fn with_huge_metadata_count(count: i64) -> Vec<u8> {
    let mut bytes = valid_record();
    assert_eq!(
        bytes.pop(),
        Some(0),
        "the record ends with the empty metadata map"
    );
    bytes.extend(zigzag(count));
    bytes
}

#[test]
fn a_huge_map_block_count_is_a_typed_error_not_an_abort() {
    // Under 2^29 entries the old decoder let the count through and reserved it: gigabytes.
    for count in [
        1 << 24,
        400_000_000,
        536_000_000,
        1 << 31,
        5_000_000_000,
        i64::MAX >> 1,
    ] {
        let error = decode(&with_huge_metadata_count(count)).unwrap_err();
        assert!(
            matches!(error, imgpipe_schemas::SchemaError::Avro(_)),
            "count {count}: {error:?}"
        );
    }
}

#[test]
fn a_huge_negative_block_count_is_a_typed_error_not_an_abort() {
    // Avro's negative block count is followed by the block's size in bytes.
    let mut bytes = valid_record();
    bytes.pop();
    bytes.extend(zigzag(-(1 << 40)));
    bytes.extend(zigzag(8));
    assert!(decode(&bytes).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_block_count_without_its_entries_is_an_error(count in 1i64..i64::MAX) {
        prop_assert!(decode(&with_huge_metadata_count(count)).is_err());
    }
}
