//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! Why this format and not one of our own: a receiver can verify our deliveries with the
//! Standard Webhooks (or Svix) library it already has. The signed content is
//! `{msg_id}.{timestamp}.{body}`, the MAC is HMAC-SHA256 keyed with the secret's raw bytes, and
//! the `webhook-signature` header is `v1,<base64>`; several signatures are space-separated, which
//! is how a rotated secret overlaps with the old one (both sign each delivery for a while).
//!
//! The secret's text form is `whsec_` + standard base64 of its bytes; the prefix is optional when
//! parsing, as in the spec's libraries.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::WebhookError;

type HmacSha256 = Hmac<Sha256>;

/// The text form's prefix ("webhook secret").
const WHSEC_PREFIX: &str = "whsec_";
/// The only signature scheme of the spec so far (symmetric HMAC-SHA256).
const VERSION: &str = "v1";
/// Bytes of a generated secret: within the spec's recommended 24 to 64, and HMAC-SHA256's block
/// size is far above it, so the key is used as is.
const GENERATED_LEN: usize = 32;

/// A webhook endpoint's signing secret: the raw HMAC key.
///
/// Its `Debug` shows only the length, so the secret never reaches a log by accident.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningSecret(<{} bytes, redacted>)", self.key.len())
    }
}

impl SigningSecret {
    /// A new random secret of 32 bytes from the operating system's generator.
    pub fn generate() -> SigningSecret {
        let mut key = vec![0u8; GENERATED_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SigningSecret { key }
    }

    /// A secret from its raw key bytes (an opened sealed secret); empty keys are refused.
    pub fn from_bytes(key: Vec<u8>) -> Result<SigningSecret, WebhookError> {
        if key.is_empty() {
            return Err(WebhookError::SecretEmpty);
        }
        Ok(SigningSecret { key })
    }

    /// The raw key bytes, for sealing.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The text form shown to the client once: `whsec_` + standard base64.
    pub fn to_whsec(&self) -> String {
        format!("{WHSEC_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// Parses the text form; the `whsec_` prefix is optional, as in the spec's libraries.
    pub fn parse_whsec(text: &str) -> Result<SigningSecret, WebhookError> {
        let encoded = text.strip_prefix(WHSEC_PREFIX).unwrap_or(text);
        let key = STANDARD
            .decode(encoded)
            .map_err(WebhookError::SecretEncoding)?;
        SigningSecret::from_bytes(key)
    }

    /// The MAC of `{msg_id}.{timestamp}.{body}`, not finalized yet.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length (long ones are hashed first); the Result is only
            // there because the trait also serves fixed-key MACs.
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One signature, `v1,<base64 HMAC-SHA256 of {msg_id}.{timestamp}.{body}>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("{VERSION},{}", STANDARD.encode(tag))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated (the current
/// secret and, during a rotation's overlap, the previous one).
pub fn signature_header(
    secrets: &[&SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any `v1` signature of `header` is `secret`'s signature of the message.
///
/// The comparison is constant-time (hmac's `verify_slice`), so a forger learns nothing from how
/// long a refusal takes. Signatures of other versions and undecodable ones are skipped, as the
/// spec asks. The timestamp's freshness is the receiver's own check, not done here.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let mac = secret.mac(msg_id, timestamp, body);
    header
        .split(' ')
        .filter_map(|part| part.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The spec's published vector, from standard-webhooks/standard-webhooks,
    /// `libraries/python/tests/test_webhooks.py` (`test_sign_function`; the PHP, JavaScript and
    /// Svix libraries test the same one).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_spec_test_vector_signs_exactly() {
        let secret = SigningSecret::parse_whsec(SPEC_SECRET).unwrap();
        assert_eq!(
            secret.sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert!(verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
    }

    /// The second vector, from standard-webhooks/standard-webhooks, `libraries/rust/src/lib.rs`
    /// (`test_sign`).
    #[test]
    fn the_rust_library_test_vector_signs_exactly() {
        let secret = SigningSecret::parse_whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn the_prefix_is_optional_when_parsing() {
        let with = SigningSecret::parse_whsec(SPEC_SECRET).unwrap();
        let without = SigningSecret::parse_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(with.as_bytes(), without.as_bytes());
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_fails() {
        let secret = SigningSecret::parse_whsec(SPEC_SECRET).unwrap();
        let tampered: &[u8] = br#"{"test": 2432232315}"#;
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            tampered,
            SPEC_SIGNATURE
        ));
        assert!(!verify(
            &secret,
            "msg_other",
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP + 1,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        // The Python library's test of a one-character change in the signature itself.
        let altered = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            altered
        ));
    }

    #[test]
    fn another_secret_fails() {
        let other = SigningSecret::generate();
        assert!(!verify(
            &other,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
    }

    #[test]
    fn during_a_rotation_both_secrets_verify_the_header() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let header = signature_header(&[&new, &old], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&new, "msg_1", 1_700_000_000, b"{}", &header));
        assert!(verify(&old, "msg_1", 1_700_000_000, b"{}", &header));
        assert!(!verify(
            &SigningSecret::generate(),
            "msg_1",
            1_700_000_000,
            b"{}",
            &header
        ));
    }

    #[test]
    fn other_versions_and_garbage_in_the_header_are_skipped() {
        let secret = SigningSecret::parse_whsec(SPEC_SECRET).unwrap();
        let tag = SPEC_SIGNATURE.trim_start_matches("v1,");
        let header = format!("v2,{tag} v1,!!notbase64 nocomma v1,bm9wZQ== {SPEC_SIGNATURE}");
        assert!(verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            &header
        ));
        // The right tag under another version does not count.
        assert!(!verify(
            &secret,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            &format!("v2,{tag}")
        ));
        assert!(!verify(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, ""));
    }

    #[test]
    fn whsec_round_trips() {
        let secret = SigningSecret::generate();
        let text = secret.to_whsec();
        assert!(text.starts_with("whsec_"));
        assert_eq!(secret.as_bytes().len(), 32);
        let parsed = SigningSecret::parse_whsec(&text).unwrap();
        assert_eq!(parsed.as_bytes(), secret.as_bytes());
        assert_eq!(
            SigningSecret::parse_whsec(SPEC_SECRET).unwrap().to_whsec(),
            SPEC_SECRET
        );
    }

    #[test]
    fn two_generated_secrets_differ() {
        assert_ne!(
            SigningSecret::generate().as_bytes(),
            SigningSecret::generate().as_bytes()
        );
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(matches!(
            SigningSecret::parse_whsec("whsec_not base64!"),
            Err(WebhookError::SecretEncoding(_))
        ));
        assert!(matches!(
            SigningSecret::parse_whsec("whsec_"),
            Err(WebhookError::SecretEmpty)
        ));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let secret = SigningSecret::parse_whsec(SPEC_SECRET).unwrap();
        let shown = format!("{secret:?}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", secret.as_bytes())),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
    }
}
