//! API keys: `Authorization: Bearer <key>`. The config holds only each key's sha256, mapped to
//! the client id that owns the images uploaded with it, what the key may do, and the client's
//! own rate limits.
//!
//! `IMGPIPE_INGEST_API_KEYS` is a comma-separated list of entries
//! `client-id=sha256-hex[;scope=S][;uploads_per_minute=N][;bytes_per_minute=N]`, the scope `S`
//! being `read`, `read-write` (the default) or `admin` (read-write plus the web console's
//! operator pages). The scope belongs to the key. The limits belong to the client: during a
//! rotation its old and new keys are listed side by side, so a limit stated on any of its
//! entries holds for all its keys, and two entries stating different values are refused rather
//! than one silently winning.

use std::collections::{BTreeMap, HashMap};
use std::num::ParseIntError;
use std::str::FromStr;
use std::sync::Arc;

use axum::http::Method;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, EntryAt, KeyOption};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every route.
    #[default]
    ReadWrite,
    /// GET and HEAD only: dashboards and reporting jobs that must not upload or delete.
    Read,
    /// Every route, as read-write, plus the web console's operator pages (issue #17).
    Admin,
}

impl Scope {
    /// Whether a key of this scope may call an API route with `method`.
    pub fn allows(self, method: &Method) -> bool {
        match self {
            Self::ReadWrite | Self::Admin => true,
            Self::Read => method == Method::GET || method == Method::HEAD,
        }
    }

    /// Whether a key of this scope may open the console's operator pages.
    pub fn is_admin(self) -> bool {
        self == Self::Admin
    }
}

/// A client's own rate limits; `None` leaves the `IMGPIPE_INGEST_*_PER_MINUTE` default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientLimits {
    pub uploads_per_minute: Option<u32>,
    pub bytes_per_minute: Option<u64>,
}

impl ClientLimits {
    /// Takes the limits another entry of the same client states; stating a different value
    /// for the same limit is an error.
    fn merge(&mut self, other: Self, at: &EntryAt) -> Result<(), ConfigError> {
        fn one<T: PartialEq + Into<u64> + Copy>(
            option: KeyOption,
            mine: &mut Option<T>,
            theirs: Option<T>,
            at: &EntryAt,
        ) -> Result<(), ConfigError> {
            match (*mine, theirs) {
                (Some(a), Some(b)) if a != b => Err(ConfigError::ConflictingLimits {
                    at: at.clone(),
                    option,
                    earlier: a.into(),
                    this: b.into(),
                }),
                (None, Some(b)) => {
                    *mine = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        one(
            KeyOption::UploadsPerMinute,
            &mut self.uploads_per_minute,
            other.uploads_per_minute,
            at,
        )?;
        one(
            KeyOption::BytesPerMinute,
            &mut self.bytes_per_minute,
            other.bytes_per_minute,
            at,
        )
    }
}

/// Who a key authenticates and what it may do.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client: Arc<str>,
    pub scope: Scope,
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    grant_by_hash: HashMap<[u8; 32], Grant>,
    /// Only the clients that state a limit of their own.
    limits_by_client: BTreeMap<String, ClientLimits>,
}

impl ApiKeys {
    /// Parses `IMGPIPE_INGEST_API_KEYS` (see the module documentation). An error names the
    /// entry by its position and client id.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut keys = Self::default();
        let entries = text.split(',').map(str::trim).filter(|e| !e.is_empty());
        for (index, text) in entries.enumerate() {
            let client = text.split_once('=').map(|(client, _)| client.trim());
            let at = EntryAt {
                entry: index + 1,
                client: client.filter(|c| !c.is_empty()).map(str::to_string),
                text: text.to_string(),
            };
            keys.add(text, &at)?;
        }
        Ok(keys)
    }

    fn add(&mut self, text: &str, at: &EntryAt) -> Result<(), ConfigError> {
        let entry = Entry::parse(text, at)?;
        if entry.limits != ClientLimits::default() {
            self.limits_by_client
                .entry(entry.client.to_string())
                .or_default()
                .merge(entry.limits, at)?;
        }
        let grant = Grant {
            client: Arc::from(entry.client),
            scope: entry.scope,
        };
        if let Some(earlier) = self.grant_by_hash.insert(entry.digest, grant) {
            return Err(ConfigError::KeyListedTwice {
                at: at.clone(),
                client: earlier.client.to_string(),
            });
        }
        Ok(())
    }

    /// The entry to put in the config for `key`: read-write, the default limits.
    pub fn entry_for(client: &str, key: &str) -> String {
        Self::entry_with(client, key, Scope::default(), ClientLimits::default())
    }

    /// The entry to put in the config for `key` with a scope and the client's own limits.
    pub fn entry_with(client: &str, key: &str, scope: Scope, limits: ClientLimits) -> String {
        let mut entry = format!("{client}={}", hex::encode(Sha256::digest(key.as_bytes())));
        match scope {
            Scope::ReadWrite => {}
            Scope::Read => entry.push_str(";scope=read"),
            Scope::Admin => entry.push_str(";scope=admin"),
        }
        if let Some(n) = limits.uploads_per_minute {
            entry.push_str(&format!(";uploads_per_minute={n}"));
        }
        if let Some(n) = limits.bytes_per_minute {
            entry.push_str(&format!(";bytes_per_minute={n}"));
        }
        entry
    }

    pub fn is_empty(&self) -> bool {
        self.grant_by_hash.is_empty()
    }

    pub fn grant_for(&self, key: &str) -> Option<&Grant> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.grant_by_hash.get(&digest)
    }

    pub fn client_for(&self, key: &str) -> Option<&str> {
        self.grant_for(key).map(|grant| &*grant.client)
    }

    /// The clients with limits of their own, and those limits.
    pub fn client_limits(&self) -> impl Iterator<Item = (&str, ClientLimits)> {
        self.limits_by_client
            .iter()
            .map(|(client, limits)| (client.as_str(), *limits))
    }
}

/// One entry of `IMGPIPE_INGEST_API_KEYS`.
struct Entry<'a> {
    client: &'a str,
    digest: [u8; 32],
    scope: Scope,
    limits: ClientLimits,
}

impl<'a> Entry<'a> {
    fn parse(text: &'a str, at: &EntryAt) -> Result<Self, ConfigError> {
        let mut parts = text.split(';').map(str::trim);
        let (client, hash) = parts
            .next()
            .and_then(|head| head.split_once('='))
            .ok_or_else(|| ConfigError::NotAnEntry { at: at.clone() })?;
        let client = client.trim();
        if client.is_empty() {
            return Err(ConfigError::NoClientId { at: at.clone() });
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash.trim(), &mut digest).map_err(|source| {
            ConfigError::KeyHashNotHex {
                at: at.clone(),
                source,
            }
        })?;
        let mut scope = None;
        let mut limits = ClientLimits::default();
        for option in parts.filter(|part| !part.is_empty()) {
            let (name, value) = option
                .split_once('=')
                .map(|(name, value)| (name.trim(), value.trim()))
                .ok_or_else(|| ConfigError::OptionNotNameValue {
                    at: at.clone(),
                    option: option.to_string(),
                })?;
            let known = KeyOption::from_name(name).ok_or_else(|| ConfigError::UnknownOption {
                at: at.clone(),
                name: name.to_string(),
            })?;
            match known {
                KeyOption::Scope => {
                    let value = match value {
                        "read" => Scope::Read,
                        "read-write" => Scope::ReadWrite,
                        "admin" => Scope::Admin,
                        _ => {
                            return Err(ConfigError::UnknownScope {
                                at: at.clone(),
                                value: value.to_string(),
                            })
                        }
                    };
                    set_once(&mut scope, known, value, at)?
                }
                KeyOption::UploadsPerMinute => set_once(
                    &mut limits.uploads_per_minute,
                    known,
                    number(known, value, at)?,
                    at,
                )?,
                KeyOption::BytesPerMinute => set_once(
                    &mut limits.bytes_per_minute,
                    known,
                    number(known, value, at)?,
                    at,
                )?,
            }
        }
        Ok(Self {
            client,
            digest,
            scope: scope.unwrap_or_default(),
            limits,
        })
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    option: KeyOption,
    value: T,
    at: &EntryAt,
) -> Result<(), ConfigError> {
    match slot.replace(value) {
        Some(_) => Err(ConfigError::OptionGivenTwice {
            at: at.clone(),
            option,
        }),
        None => Ok(()),
    }
}

fn number<T: FromStr<Err = ParseIntError>>(
    option: KeyOption,
    value: &str,
    at: &EntryAt,
) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|source| ConfigError::LimitNotANumber {
            at: at.clone(),
            option,
            value: value.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn error_of(text: &str) -> String {
        ApiKeys::parse(text).expect_err(text).to_string()
    }

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
        assert_eq!(keys.grant_for("key-a").unwrap().scope, Scope::ReadWrite);
        assert_eq!(keys.client_limits().count(), 0, "both on the defaults");
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(matches!(
            ApiKeys::parse("alpha"),
            Err(ConfigError::NotAnEntry { at }) if at.entry == 1 && at.client.is_none()
        ));
        assert!(matches!(
            ApiKeys::parse("alpha=nothex"),
            Err(ConfigError::KeyHashNotHex { at, .. }) if at.client.as_deref() == Some("alpha")
        ));
        let error = ApiKeys::parse(&format!("={HASH}")).unwrap_err();
        assert!(matches!(error, ConfigError::NoClientId { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("entry 1 (\"={HASH}\"): no client id"),
            "an entry without a client id is named by its text"
        );
        assert!(ApiKeys::parse("").unwrap().is_empty());
    }

    #[test]
    fn options_set_the_scope_and_the_clients_limits() {
        let reader = ApiKeys::entry_with(
            "alpha",
            "reader",
            Scope::Read,
            ClientLimits {
                uploads_per_minute: Some(120),
                bytes_per_minute: None,
            },
        );
        // The options may come in any order, with spaces around them.
        let writer = format!(
            "alpha = {} ; bytes_per_minute = 500000000 ; scope = read-write ;",
            hex::encode(Sha256::digest(b"writer"))
        );
        let other = ApiKeys::entry_for("beta", "other");
        let text = format!("{reader},{writer},{other}");
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.grant_for("reader").unwrap().scope, Scope::Read);
        assert_eq!(keys.grant_for("writer").unwrap().scope, Scope::ReadWrite);
        assert_eq!(keys.client_for("writer"), Some("alpha"));
        let limits: Vec<_> = keys.client_limits().collect();
        assert_eq!(
            limits,
            vec![(
                "alpha",
                ClientLimits {
                    uploads_per_minute: Some(120),
                    bytes_per_minute: Some(500_000_000),
                }
            )],
            "the limits of both entries hold for the client; beta keeps the defaults"
        );
    }

    #[test]
    fn entries_round_trip() {
        let limits = ClientLimits {
            uploads_per_minute: Some(0),
            bytes_per_minute: Some(u64::MAX),
        };
        let keys = ApiKeys::parse(&ApiKeys::entry_with("c", "k", Scope::Read, limits)).unwrap();
        assert_eq!(keys.grant_for("k").unwrap().scope, Scope::Read);
        assert_eq!(
            keys.client_limits().collect::<Vec<_>>(),
            vec![("c", limits)]
        );
    }

    #[test]
    fn conflicting_limits_for_one_client_are_refused() {
        let error = error_of(&format!(
            "alpha={HASH};uploads_per_minute=10,beta={},alpha={};uploads_per_minute=20",
            "1".repeat(64),
            "2".repeat(64)
        ));
        assert!(error.starts_with("entry 3 (client \"alpha\"): "), "{error}");
        assert!(error.contains("uploads_per_minute=20 conflicts"), "{error}");
        // Alike, or stated once, is fine.
        ApiKeys::parse(&format!(
            "alpha={HASH};uploads_per_minute=10,alpha={};uploads_per_minute=10,alpha={}",
            "1".repeat(64),
            "2".repeat(64)
        ))
        .unwrap();
    }

    #[test]
    fn bad_numbers_are_refused_with_the_entry_named() {
        for bad in ["-1", "ten", "4294967296", ""] {
            let error = error_of(&format!(
                "ok={HASH},slow={};uploads_per_minute={bad}",
                "1".repeat(64)
            ));
            assert!(
                error.starts_with("entry 2 (client \"slow\"): uploads_per_minute"),
                "{error}"
            );
        }
        let error = error_of(&format!("big={HASH};bytes_per_minute=1e9"));
        assert!(
            error.contains("bytes_per_minute \"1e9\" is not a whole number"),
            "{error}"
        );
    }

    #[test]
    fn unknown_or_repeated_options_are_refused() {
        let error = error_of(&format!("alpha={HASH};uploads_per_hour=5"));
        assert!(
            error.contains("unknown option \"uploads_per_hour\""),
            "{error}"
        );
        let error = error_of(&format!("alpha={HASH};scope=write"));
        assert!(
            error.contains("scope \"write\" is not read, read-write or admin"),
            "{error}"
        );
        let error = error_of(&format!("alpha={HASH};scope=read;scope=read"));
        assert!(error.contains("scope is given twice"), "{error}");
        let error = error_of(&format!("alpha={HASH};read-only"));
        assert!(error.contains("\"read-only\" is not name=value"), "{error}");
    }

    #[test]
    fn one_key_for_two_clients_is_refused() {
        let error = error_of(&format!("alpha={HASH},beta={HASH}"));
        assert!(
            error.contains("already listed for client \"alpha\""),
            "{error}"
        );
    }

    #[test]
    fn a_read_scope_allows_only_get_and_head() {
        for method in [Method::GET, Method::HEAD] {
            assert!(Scope::Read.allows(&method));
        }
        for method in [Method::POST, Method::DELETE, Method::PUT, Method::PATCH] {
            assert!(!Scope::Read.allows(&method));
            assert!(Scope::ReadWrite.allows(&method));
        }
    }

    #[test]
    fn an_admin_scope_parses_and_round_trips() {
        let keys = ApiKeys::parse(&format!("ops={HASH};scope=admin")).unwrap();
        assert_eq!(keys.grant_by_hash[&[0u8; 32]].scope, Scope::Admin);

        let limits = ClientLimits {
            uploads_per_minute: Some(5),
            bytes_per_minute: None,
        };
        let entry = ApiKeys::entry_with("ops", "k", Scope::Admin, limits);
        assert!(
            entry.ends_with(";scope=admin;uploads_per_minute=5"),
            "{entry}"
        );
        let keys = ApiKeys::parse(&entry).unwrap();
        let grant = keys.grant_for("k").unwrap();
        assert_eq!((&*grant.client, grant.scope), ("ops", Scope::Admin));
        assert_eq!(
            keys.client_limits().collect::<Vec<_>>(),
            vec![("ops", limits)]
        );
    }

    #[test]
    fn an_admin_scope_allows_every_method_and_only_it_is_admin() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
        ] {
            assert!(Scope::Admin.allows(&method), "{method}");
        }
        assert!(Scope::Admin.is_admin());
        assert!(!Scope::ReadWrite.is_admin());
        assert!(!Scope::Read.is_admin());
    }
}
