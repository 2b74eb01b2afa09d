//! API keys: `Authorization: Bearer <key>`. The config holds only each key's sha256, mapped to
//! the client id that owns the images uploaded with it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::routes::AppState;
use crate::IngestError;

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    client_by_hash: HashMap<[u8; 32], String>,
}

impl ApiKeys {
    /// Parses `client-id=sha256-hex,...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut client_by_hash = HashMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (client, hash) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not client-id=sha256-hex"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash.trim(), &mut digest)
                .map_err(|_| format!("the hash for {client:?} is not 64 hex digits"))?;
            if client.trim().is_empty() {
                return Err(format!("{entry:?} has no client id"));
            }
            client_by_hash.insert(digest, client.trim().to_string());
        }
        Ok(Self { client_by_hash })
    }

    /// The line to put in the config for `key`.
    pub fn entry_for(client: &str, key: &str) -> String {
        format!("{client}={}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    pub fn is_empty(&self) -> bool {
        self.client_by_hash.is_empty()
    }

    pub fn client_for(&self, key: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.client_by_hash.get(&digest).map(String::as_str)
    }
}

/// The authenticated client making the request.
#[derive(Debug, Clone)]
pub struct Client(pub Arc<str>);

impl FromRequestParts<AppState> for Client {
    type Rejection = IngestError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(IngestError::MissingApiKey)?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or(IngestError::MissingApiKey)?;
        state
            .api_keys
            .client_for(key)
            .map(|client| Client(client.into()))
            .ok_or(IngestError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_entry_authenticates_its_key_only() {
        let keys = ApiKeys::parse(&format!(
            "{}, {}",
            ApiKeys::entry_for("alpha", "key-a"),
            ApiKeys::entry_for("beta", "key-b")
        ))
        .unwrap();
        assert_eq!(keys.client_for("key-a"), Some("alpha"));
        assert_eq!(keys.client_for("key-b"), Some("beta"));
        assert_eq!(keys.client_for("key-c"), None);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(ApiKeys::parse("alpha").is_err());
        assert!(ApiKeys::parse("alpha=nothex").is_err());
        assert!(ApiKeys::parse(&format!("={}", "0".repeat(64))).is_err());
        assert!(ApiKeys::parse("").unwrap().is_empty());
    }
}
