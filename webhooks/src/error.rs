//! The crate's one error type.
//!
//! An attempt's outcome is not an error (`attempt::AttemptOutcome` classifies it); these are the
//! failures of building things (a secret, a sealing key, the allow-list, the HTTP client) and the
//! guarded resolver's refusal, which must survive inside reqwest's error chain so an attempt can
//! be classified as `address-refused`.

use crate::target::TargetRefused;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A `whsec_` signing secret whose base64 does not decode.
    #[error("the webhook signing secret is not valid base64")]
    SecretEncoding(#[source] base64::DecodeError),

    /// A signing secret with no key bytes: HMAC would accept it, but it signs nothing secret.
    #[error("the webhook signing secret is empty")]
    SecretEmpty,

    /// The sealing key (`IMGPIPE_WEBHOOKS_SEALING_KEY`) is not base64.
    #[error("the webhook sealing key is not valid base64")]
    SealingKeyEncoding(#[source] base64::DecodeError),

    /// The sealing key decodes to something other than the 32 bytes ChaCha20-Poly1305 needs.
    #[error("the webhook sealing key must be base64 of exactly 32 bytes, it decodes to {0} bytes")]
    SealingKeyLength(usize),

    /// A sealed secret that is not `v1.` + base64url of a nonce and a ciphertext.
    #[error("the sealed webhook secret is malformed: {0}")]
    SealedMalformed(&'static str),

    /// A sealed secret that does not authenticate: sealed with another key, or altered. The AEAD
    /// error is opaque on purpose (it says nothing more), so there is no source to keep.
    #[error("the sealed webhook secret cannot be opened: wrong sealing key, or altered")]
    SealedOpen,

    /// An allow-list entry that is neither a CIDR nor an IP address.
    #[error("webhook allow-list entry {entry:?} is neither a CIDR nor an IP address")]
    AllowListEntry {
        entry: String,
        #[source]
        source: ipnet::AddrParseError,
    },

    /// A webhook URL the address policy refuses.
    #[error(transparent)]
    TargetRefused(#[from] TargetRefused),

    /// The target's host name did not resolve.
    #[error("resolving webhook host {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },

    /// Every address the target's host resolved to is refused by the address policy (private,
    /// loopback, metadata, ...). Returned by `GuardedResolver`, found again in reqwest's error
    /// chain by `target::is_address_refused`.
    #[error(
        "every address of webhook host {host} is refused by the address policy ({refused} refused)"
    )]
    AddressRefused { host: String, refused: usize },

    /// The HTTP client could not be built (TLS setup).
    #[error("building the webhook HTTP client")]
    HttpClient(#[source] reqwest::Error),

    /// A setting the service cannot run with.
    #[error("configuration: {0}")]
    Config(String),

    /// The stack (broker, object store, database pool) could not be reached or set up.
    #[error(transparent)]
    Infra(#[from] imgpipe_infra::InfraError),

    /// Binding the ops address.
    #[error("binding the ops address")]
    Io(#[from] std::io::Error),
}
