use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, InfraError, KafkaConfig, S3Config};
use imgpipe_webhooks::config::WebhookSecurity;
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Config {
    pub ingest: IngestSettings,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
    /// The sealing key and the address policy of webhook endpoints (`IMGPIPE_WEBHOOKS_*`, shared
    /// with the delivering service); no sealing key: the webhook routes answer 503.
    pub webhooks: WebhookSecurity,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// `client-id=sha256-hex-of-key[;option=value...]` entries, comma-separated (the options,
    /// a key's scope and its client's own rate limits, are in `auth.rs`). Only hashes are
    /// configured; the keys themselves are never stored.
    #[serde(default)]
    pub api_keys: String,
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_max_side")]
    pub max_side: u64,
    /// Uploads each client may start per minute (bursts up to the same number); 0 = no limit.
    /// A client's entry in `api_keys` may override this and `bytes_per_minute`.
    #[serde(default = "default_uploads_per_minute")]
    pub uploads_per_minute: u32,
    /// Upload bytes each client may send per minute; 0 = no limit. At least max_upload_bytes.
    #[serde(default = "default_bytes_per_minute")]
    pub bytes_per_minute: u64,
    /// How long the presigned variant URLs in `GET /v1/images/{id}` stay valid: 1 s to 7 days,
    /// the most an S3 signature allows.
    #[serde(
        default = "default_presign_ttl_secs",
        deserialize_with = "presign_ttl_secs_in_range"
    )]
    pub presign_ttl_secs: u64,
    /// How long a connection may take to send a request's headers: a client sending half a
    /// header is cut off then instead of holding its connection forever.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// The longest one upload's body may take to arrive, however steadily it trickles (the
    /// 60 s idle timeout alone lets a byte a minute hold a slot for days); over it, 408.
    #[serde(default = "default_upload_deadline_secs")]
    pub upload_deadline_secs: u64,
    /// Uploads in progress at once, all clients together; over it, 503 `server-busy`.
    /// Each holds up to one S3 part in memory, so this bounds ingest's upload memory.
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// Uploads in progress at once per client; over it, 429 `too-many-uploads`.
    #[serde(default = "default_max_concurrent_uploads_per_client")]
    pub max_concurrent_uploads_per_client: usize,
    /// Requests per minute from one IP address (bursts up to the same number), counted before
    /// the API key is checked; 0 = no limit.
    #[serde(default = "default_requests_per_minute_per_ip")]
    pub requests_per_minute_per_ip: u32,
    /// Reads (GET, HEAD) each client may make per minute (bursts up to the same number);
    /// 0 = no limit.
    #[serde(default = "default_reads_per_minute")]
    pub reads_per_minute: u32,
    /// Deletes each client may make per minute (bursts up to the same number); 0 = no limit.
    #[serde(default = "default_deletes_per_minute")]
    pub deletes_per_minute: u32,
    /// Other changes each client may make per minute (webhook registrations, updates,
    /// rotations and redeliveries: every POST and PATCH but an upload, which has its own
    /// budgets); bursts up to the same number; 0 = no limit.
    #[serde(default = "default_changes_per_minute")]
    pub changes_per_minute: u32,
    /// How long an Idempotency-Key is remembered: after it, the key is free again (a retry
    /// that late makes a new image) and its row is pruned, so the table does not grow for good.
    #[serde(default = "default_idempotency_ttl_secs")]
    pub idempotency_ttl_secs: u64,
    /// Where `/metrics` (with `/healthz` and `/readyz`) is served instead of on
    /// `listen_addr`, e.g. an address only the monitoring network reaches. Unset: `/metrics` is
    /// on `listen_addr`.
    #[serde(default)]
    pub ops_addr: Option<String>,
}

impl IngestSettings {
    pub fn idempotency_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idempotency_ttl_secs.max(1))
    }
}

impl Default for IngestSettings {
    /// The documented defaults (the same as an empty environment).
    fn default() -> Self {
        Self {
            listen_addr: default_listen_addr(),
            api_keys: String::new(),
            max_upload_bytes: default_max_upload_bytes(),
            max_pixels: default_max_pixels(),
            max_side: default_max_side(),
            uploads_per_minute: default_uploads_per_minute(),
            bytes_per_minute: default_bytes_per_minute(),
            presign_ttl_secs: default_presign_ttl_secs(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            upload_deadline_secs: default_upload_deadline_secs(),
            max_concurrent_uploads: default_max_concurrent_uploads(),
            max_concurrent_uploads_per_client: default_max_concurrent_uploads_per_client(),
            requests_per_minute_per_ip: default_requests_per_minute_per_ip(),
            reads_per_minute: default_reads_per_minute(),
            deletes_per_minute: default_deletes_per_minute(),
            changes_per_minute: default_changes_per_minute(),
            idempotency_ttl_secs: default_idempotency_ttl_secs(),
            ops_addr: None,
        }
    }
}

impl FromEnv for IngestSettings {
    const PREFIX: &'static str = "IMGPIPE_INGEST_";
}

fn default_listen_addr() -> String {
    "127.0.0.1:18080".into()
}
fn default_max_upload_bytes() -> u64 {
    25_000_000
}
fn default_max_pixels() -> u64 {
    50_000_000
}
fn default_max_side() -> u64 {
    20_000
}
fn default_uploads_per_minute() -> u32 {
    600
}
fn default_bytes_per_minute() -> u64 {
    2_000_000_000
}
fn default_presign_ttl_secs() -> u64 {
    900
}
fn default_header_read_timeout_secs() -> u64 {
    10
}
fn default_upload_deadline_secs() -> u64 {
    300
}
fn default_max_concurrent_uploads() -> usize {
    64
}
fn default_max_concurrent_uploads_per_client() -> usize {
    16
}
fn default_requests_per_minute_per_ip() -> u32 {
    6_000
}
fn default_reads_per_minute() -> u32 {
    6_000
}
fn default_deletes_per_minute() -> u32 {
    600
}
fn default_changes_per_minute() -> u32 {
    120
}

fn default_idempotency_ttl_secs() -> u64 {
    24 * 60 * 60
}

/// The longest expiry an S3 SigV4 presigned URL may have.
pub const MAX_PRESIGN_TTL_SECS: u64 = 7 * 24 * 3600;

fn presign_ttl_secs_in_range<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    let secs = u64::deserialize(deserializer)?;
    if !(1..=MAX_PRESIGN_TTL_SECS).contains(&secs) {
        return Err(serde::de::Error::custom(format!(
            "{}PRESIGN_TTL_SECS: {secs} is not 1 to {MAX_PRESIGN_TTL_SECS} seconds",
            IngestSettings::PREFIX
        )));
    }
    Ok(secs)
}

impl Config {
    pub fn from_env() -> Result<Self, InfraError> {
        Ok(Self {
            ingest: IngestSettings::from_env()?,
            kafka: KafkaConfig::from_env()?,
            s3: S3Config::from_env()?,
            database: DatabaseConfig::from_env()?,
            registry: RegistryConfig::from_env()?,
            log: LogConfig::from_env()?,
            webhooks: WebhookSecurity::from_env()?,
        })
    }

    /// Every environment variable ingest reads.
    pub fn env_vars() -> Vec<String> {
        [
            IngestSettings::env_vars(),
            KafkaConfig::env_vars(),
            S3Config::env_vars(),
            DatabaseConfig::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
            WebhookSecurity::env_vars(),
        ]
        .concat()
    }
}

/// An option of an `IMGPIPE_INGEST_API_KEYS` entry (the format is in `auth.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOption {
    /// The key's scope: `read`, `read-write` or `admin`.
    Scope,
    /// The client's own `IMGPIPE_INGEST_UPLOADS_PER_MINUTE`.
    UploadsPerMinute,
    /// The client's own `IMGPIPE_INGEST_BYTES_PER_MINUTE`.
    BytesPerMinute,
}

impl KeyOption {
    pub const ALL: [KeyOption; 3] = [
        KeyOption::Scope,
        KeyOption::UploadsPerMinute,
        KeyOption::BytesPerMinute,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scope => "scope",
            Self::UploadsPerMinute => "uploads_per_minute",
            Self::BytesPerMinute => "bytes_per_minute",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|option| option.as_str() == name)
    }

    /// The largest value a limit option takes (0 is no limit).
    fn max(self) -> u64 {
        match self {
            Self::UploadsPerMinute => u64::from(u32::MAX),
            Self::Scope | Self::BytesPerMinute => u64::MAX,
        }
    }
}

impl std::fmt::Display for KeyOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which `IMGPIPE_INGEST_API_KEYS` entry a mistake is in: its position (from 1) and its client
/// id, or its whole text when it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryAt {
    pub entry: usize,
    pub client: Option<String>,
    pub text: String,
}

impl std::fmt::Display for EntryAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.client {
            Some(client) => write!(f, "entry {} (client {client:?})", self.entry),
            None => write!(f, "entry {} ({:?})", self.entry, self.text),
        }
    }
}

/// A mistake in ingest's own settings, found when it starts (and by `imgpipe api-key`, which
/// reads back the entry it mints). One enum for the keys' entries and the rate limits, which
/// [`crate::startup::BuildError`] wraps as its source; each variant carries what its message
/// needs, so the service refuses to start saying exactly what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{at}: not client-id=sha256-hex[;option=value...]")]
    NotAnEntry { at: EntryAt },
    #[error("{at}: no client id")]
    NoClientId { at: EntryAt },
    #[error("{at}: the key hash is not 64 hex digits")]
    KeyHashNotHex {
        at: EntryAt,
        #[source]
        source: hex::FromHexError,
    },
    #[error("{at}: option {option:?} is not name=value")]
    OptionNotNameValue { at: EntryAt, option: String },
    #[error("{at}: unknown option {name:?} (known: scope, uploads_per_minute, bytes_per_minute)")]
    UnknownOption { at: EntryAt, name: String },
    #[error("{at}: {option} is given twice")]
    OptionGivenTwice { at: EntryAt, option: KeyOption },
    #[error("{at}: scope {value:?} is not read, read-write or admin")]
    UnknownScope { at: EntryAt, value: String },
    #[error(
        "{at}: {option} {value:?} is not a whole number in range (0 = no limit, at most {})",
        option.max()
    )]
    LimitNotANumber {
        at: EntryAt,
        option: KeyOption,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error(
        "{at}: {option}={this} conflicts with {option}={earlier} on an earlier entry of the same \
         client (limits belong to the client: state them once, or alike on every entry)"
    )]
    ConflictingLimits {
        at: EntryAt,
        option: KeyOption,
        earlier: u64,
        this: u64,
    },
    #[error("{at}: the same key is already listed for client {client:?}")]
    KeyListedTwice { at: EntryAt, client: String },
    #[error(
        "IMGPIPE_INGEST_BYTES_PER_MINUTE ({bytes_per_minute}) must be at least \
         IMGPIPE_INGEST_MAX_UPLOAD_BYTES ({max_upload_bytes}) or 0"
    )]
    BytesPerMinuteBelowOneUpload {
        bytes_per_minute: u64,
        max_upload_bytes: u64,
    },
    #[error(
        "client {client:?}: bytes_per_minute ({bytes_per_minute}) must be at least \
         IMGPIPE_INGEST_MAX_UPLOAD_BYTES ({max_upload_bytes}) or 0"
    )]
    ClientBytesPerMinuteBelowOneUpload {
        client: String,
        bytes_per_minute: u64,
        max_upload_bytes: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_environment_reads_as_the_defaults() {
        let read = IngestSettings::from_iter(Vec::new()).unwrap();
        assert_eq!(
            read.presign_ttl_secs,
            IngestSettings::default().presign_ttl_secs
        );
        assert_eq!(read.presign_ttl_secs, 900);
    }

    #[test]
    fn the_presign_ttl_is_read_and_bounded_by_what_s3_signs() {
        let read =
            IngestSettings::from_iter(vars(&[("IMGPIPE_INGEST_PRESIGN_TTL_SECS", "60")])).unwrap();
        assert_eq!(read.presign_ttl_secs, 60);
        for bad in ["0", "604801", "soon"] {
            let error =
                IngestSettings::from_iter(vars(&[("IMGPIPE_INGEST_PRESIGN_TTL_SECS", bad)]))
                    .unwrap_err()
                    .to_string();
            assert!(
                error.contains("IMGPIPE_INGEST_PRESIGN_TTL_SECS"),
                "{bad}: {error}"
            );
        }
    }
}
