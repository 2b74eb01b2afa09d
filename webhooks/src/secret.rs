//! Sealing signing secrets, so they can live in the event log.
//!
//! Endpoint changes are events (a read model rebuilt from the log must know each endpoint's
//! secret), but the log is read by many (operators, `imgpipe events`, replay tools, backups).
//! So the secret goes into an event only sealed: ChaCha20-Poly1305 under a key that only the
//! services which sign or register hold (`IMGPIPE_WEBHOOKS_SEALING_KEY`, base64 of 32 bytes).
//! Whoever reads the log sees `v1.<base64url>`, and cannot alter it unnoticed either (AEAD).
//!
//! Format: `"v1." + base64url-nopad(nonce (12 bytes) || ciphertext and tag)`. The nonce is random
//! per seal; with 96-bit random nonces the usual bound (2^32 seals under one key) is far beyond
//! how many secrets this will ever seal. The `v1` leaves room for another scheme or a key id.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::error::WebhookError;
use crate::signature::SigningSecret;

/// The environment variable holding the sealing key (base64 of 32 bytes).
pub const SEALING_KEY_ENV: &str = "IMGPIPE_WEBHOOKS_SEALING_KEY";

const PREFIX: &str = "v1.";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Associated data: binds a ciphertext to this purpose and version, so a blob sealed under the
/// same key for something else cannot be passed off as a signing secret.
const AAD: &[u8] = b"imgpipe webhook signing secret v1";

/// Seals and opens signing secrets with one 32-byte key. Its `Debug` does not show the key.
#[derive(Clone)]
pub struct SecretSealer {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretSealer(<key redacted>)")
    }
}

impl SecretSealer {
    /// A sealer from the key's base64 (standard alphabet, as `openssl rand -base64 32` prints it;
    /// surrounding whitespace is ignored). Anything but exactly 32 bytes is refused: a shorter key
    /// would be weaker than it looks, and padding it would hide a configuration mistake.
    pub fn from_base64(text: &str) -> Result<Self, WebhookError> {
        let key = STANDARD
            .decode(text.trim())
            .map_err(WebhookError::SealingKeyEncoding)?;
        if key.len() != KEY_LEN {
            return Err(WebhookError::SealingKeyLength(key.len()));
        }
        Ok(SecretSealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// The secret sealed: `v1.` + base64url (no padding) of a fresh random nonce and the
    /// ciphertext. Two seals of one secret differ.
    pub fn seal(&self, secret: &SigningSecret) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: AAD,
        };
        let ciphertext = match self.cipher.encrypt(Nonce::from_slice(&nonce), payload) {
            Ok(ciphertext) => ciphertext,
            // ChaCha20-Poly1305 only fails to encrypt past 256 GiB of plaintext; a secret is
            // a few dozen bytes.
            Err(_) => unreachable!("a signing secret is far below ChaCha20-Poly1305's limit"),
        };
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Opens a sealed secret. An unknown version, bad encoding, a wrong key or any alteration is
    /// an error, never a panic and never a wrong secret.
    pub fn open(&self, sealed: &str) -> Result<SigningSecret, WebhookError> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .ok_or(WebhookError::SealedMalformed(
                "unknown version (expected v1.)",
            ))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| WebhookError::SealedMalformed("not base64url"))?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(WebhookError::SealedMalformed("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: AAD,
        };
        let key = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| WebhookError::SealedOpen)?;
        SigningSecret::from_bytes(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn a_sealed_secret_opens_to_the_same_secret() {
        let sealer = SecretSealer::from_base64(&key(7)).unwrap();
        let secret = SigningSecret::generate();
        let sealed = sealer.seal(&secret);
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains(&secret.to_whsec()["whsec_".len()..]));
        assert_eq!(sealer.open(&sealed).unwrap().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn two_seals_of_one_secret_differ() {
        let sealer = SecretSealer::from_base64(&key(7)).unwrap();
        let secret = SigningSecret::generate();
        let (a, b) = (sealer.seal(&secret), sealer.seal(&secret));
        assert_ne!(a, b);
        assert_eq!(sealer.open(&a).unwrap().as_bytes(), secret.as_bytes());
        assert_eq!(sealer.open(&b).unwrap().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn another_key_cannot_open_it() {
        let sealed = SecretSealer::from_base64(&key(7))
            .unwrap()
            .seal(&SigningSecret::generate());
        let other = SecretSealer::from_base64(&key(8)).unwrap();
        assert!(matches!(other.open(&sealed), Err(WebhookError::SealedOpen)));
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let sealer = SecretSealer::from_base64(&key(7)).unwrap();
        let sealed = sealer.seal(&SigningSecret::generate());
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed[3..]).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            let tampered = format!("v1.{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert!(
                matches!(sealer.open(&tampered), Err(WebhookError::SealedOpen)),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        // Cut short by one byte.
        let short = format!("v1.{}", URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1]));
        assert!(sealer.open(&short).is_err());
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let sealer = SecretSealer::from_base64(&key(7)).unwrap();
        let sealed = sealer.seal(&SigningSecret::generate());
        let v2 = sealed.replacen("v1.", "v2.", 1);
        for garbage in ["", "v1.", "v1.%%%", "v1.AAAA", "whsec_abc", v2.as_str()] {
            assert!(
                matches!(sealer.open(garbage), Err(WebhookError::SealedMalformed(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn keys_of_other_lengths_or_encodings_are_refused() {
        assert!(matches!(
            SecretSealer::from_base64(&STANDARD.encode([1u8; 16])),
            Err(WebhookError::SealingKeyLength(16))
        ));
        assert!(matches!(
            SecretSealer::from_base64(&STANDARD.encode([1u8; 33])),
            Err(WebhookError::SealingKeyLength(33))
        ));
        assert!(matches!(
            SecretSealer::from_base64(""),
            Err(WebhookError::SealingKeyLength(0))
        ));
        assert!(matches!(
            SecretSealer::from_base64("not base64!"),
            Err(WebhookError::SealingKeyEncoding(_))
        ));
        let message = WebhookError::SealingKeyLength(16).to_string();
        assert!(message.contains("32 bytes"), "{message}");
        // A trailing newline from an env file is fine.
        assert!(SecretSealer::from_base64(&format!("{}\n", key(1))).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let sealer = SecretSealer::from_base64(&key(0xAB)).unwrap();
        let shown = format!("{sealer:?}");
        assert_eq!(shown, "SecretSealer(<key redacted>)");
    }
}
