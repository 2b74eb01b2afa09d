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
