//! Per-client rate limits (governor, GCRA): uploads started per minute and upload bytes per
//! minute. A client over either gets 429 `rate-limited` with Retry-After. The limits are
//! `IMGPIPE_INGEST_UPLOADS_PER_MINUTE` and `_BYTES_PER_MINUTE` unless the client's entry in
//! `IMGPIPE_INGEST_API_KEYS` states its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::http::Method;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::ApiKeys;
use crate::config::{ConfigError, IngestSettings};
use crate::error::IngestError;
use crate::slots::Slots;

/// Status streams open at once per client: a page of a few uploads in progress, each watched.
pub const STREAMS_PER_CLIENT: usize = 8;
/// Status streams open at once per instance: each polls the read model at most twice a second.
pub const STREAMS_IN_ALL: usize = 512;

/// Bytes are metered in KiB cells, so a u32 quota reaches terabytes per minute.
const CELL: u64 = 1024;

/// The two limiters of one budget; `None` is no limit.
struct Limiters<L> {
    uploads: Option<L>,
    kib: Option<L>,
}

impl<L> Limiters<L> {
    fn new(uploads_per_minute: u32, bytes_per_minute: u64, make: impl Fn(Quota) -> L) -> Self {
        let per_minute = |n: u64| {
            NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
                .map(|n| make(Quota::per_minute(n)))
        };
        Self {
            uploads: per_minute(u64::from(uploads_per_minute)),
            kib: per_minute(bytes_per_minute.div_ceil(CELL)),
        }
    }
}

pub struct RateLimits {
    /// Clients on the defaults: one quota, a state per client.
    shared: Limiters<DefaultKeyedRateLimiter<String>>,
    /// Clients with limits of their own. A keyed limiter has one quota for all its keys, so
    /// each of these clients gets direct limiters with its quota.
    own: HashMap<String, Limiters<DefaultDirectRateLimiter>>,
    /// Requests per IP address, counted before authentication; `None` is no limit. Its
    /// memory is kept bounded by [`RateLimits::forget_idle`].
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Reads and deletes per client (`IMGPIPE_INGEST_READS_PER_MINUTE`, `_DELETES_PER_MINUTE`).
    reads: Option<DefaultKeyedRateLimiter<String>>,
    deletes: Option<DefaultKeyedRateLimiter<String>>,
    /// Other changes per client (`IMGPIPE_INGEST_CHANGES_PER_MINUTE`): POST and PATCH but
    /// uploads.
    changes: Option<DefaultKeyedRateLimiter<String>>,
    /// Uploads in progress, all clients and per client.
    pub uploads_in_progress: Slots,
    /// Status streams open (`GET /v1/images/{id}/stream`), all clients and per client.
    pub streams_open: Slots,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(settings: &IngestSettings) -> Result<Self, ConfigError> {
        let max_upload_bytes = settings.max_upload_bytes;
        let below_one_upload =
            |bytes_per_minute: u64| bytes_per_minute != 0 && bytes_per_minute < max_upload_bytes;
        if below_one_upload(settings.bytes_per_minute) {
            return Err(ConfigError::BytesPerMinuteBelowOneUpload {
                bytes_per_minute: settings.bytes_per_minute,
                max_upload_bytes,
            });
        }
        // The clients' own limits travel with their keys.
        let keys = ApiKeys::parse(&settings.api_keys)?;
        let own = keys
            .client_limits()
            .map(|(client, limits)| {
                let uploads = limits
                    .uploads_per_minute
                    .unwrap_or(settings.uploads_per_minute);
                let bytes = limits.bytes_per_minute.unwrap_or(settings.bytes_per_minute);
                if below_one_upload(bytes) {
                    return Err(ConfigError::ClientBytesPerMinuteBelowOneUpload {
                        client: client.to_string(),
                        bytes_per_minute: bytes,
                        max_upload_bytes,
                    });
                }
                let limiters = Limiters::new(uploads, bytes, RateLimiter::direct);
                Ok((client.to_string(), limiters))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            shared: Limiters::new(
                settings.uploads_per_minute,
                settings.bytes_per_minute,
                RateLimiter::keyed,
            ),
            own,
            per_ip: keyed_per_minute(settings.requests_per_minute_per_ip),
            reads: keyed_per_minute(settings.reads_per_minute),
            deletes: keyed_per_minute(settings.deletes_per_minute),
            changes: keyed_per_minute(settings.changes_per_minute),
            uploads_in_progress: Slots::new(
                settings.max_concurrent_uploads,
                settings.max_concurrent_uploads_per_client,
                |limit| IngestError::TooManyUploads { limit },
            ),
            streams_open: Slots::new(STREAMS_IN_ALL, STREAMS_PER_CLIENT, |limit| {
                IngestError::TooManyStreams { limit }
            }),
            clock: DefaultClock::default(),
        })
    }

    /// Counts one request from `ip`, whoever it claims to be.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), IngestError> {
        match self.per_ip.as_ref().map(|limiter| limiter.check_key(&ip)) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(self.limited(not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// Counts one request of `client` against its budget: a read (GET, HEAD), a delete, or
    /// another change (POST, PATCH, PUT). An upload (`is_upload`) counts nothing here:
    /// [`Self::check_upload`] counts it.
    pub fn check_request(
        &self,
        client: &str,
        method: &Method,
        is_upload: bool,
    ) -> Result<(), IngestError> {
        let limiter = match *method {
            Method::GET | Method::HEAD => self.reads.as_ref(),
            Method::DELETE => self.deletes.as_ref(),
            Method::POST | Method::PATCH | Method::PUT if !is_upload => self.changes.as_ref(),
            _ => None,
        };
        match limiter.map(|limiter| limiter.check_key(&client.to_string())) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(self.limited(not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// Forgets the addresses whose budget is full again: they would pass as new ones do, so
    /// the per-IP state holds only recent addresses, however many a flood comes from.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Counts one upload for `client`.
    pub fn check_upload(&self, client: &str) -> Result<(), IngestError> {
        let verdict = match self.own.get(client) {
            Some(own) => own.uploads.as_ref().map(|limiter| limiter.check()),
            None => {
                (self.shared.uploads.as_ref()).map(|limiter| limiter.check_key(&client.to_string()))
            }
        };
        match verdict {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(self.limited(not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// Counts `bytes` of upload for `client`.
    pub fn check_bytes(&self, client: &str, bytes: u64) -> Result<(), IngestError> {
        let cells = NonZeroU32::new(u32::try_from(bytes.div_ceil(CELL)).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let verdict = match self.own.get(client) {
            Some(own) => own.kib.as_ref().map(|limiter| limiter.check_n(cells)),
            None => (self.shared.kib.as_ref())
                .map(|limiter| limiter.check_key_n(&client.to_string(), cells)),
        };
        match verdict {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(not_until))) => {
                Err(self.limited(not_until.wait_time_from(self.clock.now())))
            }
            // Larger than a whole minute's allowance: new() rules that out for bodies within
            // the upload limit, so this is an oversized body.
            Some(Err(_)) => Err(IngestError::PayloadTooLarge { limit: bytes }),
        }
    }

    fn limited(&self, wait: std::time::Duration) -> IngestError {
        IngestError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

fn keyed_per_minute<K: std::hash::Hash + Eq + Clone>(
    per_minute: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgpipe_infra::FromEnv;

    fn settings(uploads: u32, bytes: u64) -> IngestSettings {
        let mut settings = IngestSettings::from_iter(Vec::new()).unwrap();
        settings.uploads_per_minute = uploads;
        settings.bytes_per_minute = bytes;
        settings.max_upload_bytes = 1_000;
        settings
    }

    #[test]
    fn each_client_has_its_own_upload_budget() {
        let limits = RateLimits::new(&settings(2, 0)).unwrap();
        assert!(limits.check_upload("a").is_ok());
        assert!(limits.check_upload("a").is_ok());
        match limits.check_upload("a") {
            Err(IngestError::RateLimited { retry_after_secs }) => {
                assert!((1..=30).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("expected rate-limited, got {other:?}"),
        }
        assert!(
            limits.check_upload("b").is_ok(),
            "another client is not affected"
        );
    }

    #[test]
    fn bytes_are_metered_too() {
        let limits = RateLimits::new(&settings(0, 4 * 1024)).unwrap();
        assert!(limits.check_bytes("a", 1_000).is_ok());
        assert!(limits.check_bytes("a", 3 * 1024).is_ok());
        assert!(matches!(
            limits.check_bytes("a", 1_000),
            Err(IngestError::RateLimited { .. })
        ));
        assert!(limits.check_upload("a").is_ok(), "uploads unlimited at 0");
    }

    #[test]
    fn each_address_has_its_own_budget_and_full_ones_are_forgotten() {
        let mut settings = settings(0, 0);
        settings.requests_per_minute_per_ip = 2;
        let limits = RateLimits::new(&settings).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        assert!(limits.check_ip(a).is_ok() && limits.check_ip(a).is_ok());
        assert!(is_limited(limits.check_ip(a)));
        assert!(
            limits.check_ip(b).is_ok(),
            "another address is not affected"
        );
        limits.forget_idle();
        let remembered = limits.per_ip.as_ref().map(|limiter| limiter.len());
        assert_eq!(remembered, Some(2), "both still owe time");
    }

    #[test]
    fn reads_deletes_and_other_changes_have_budgets_of_their_own() {
        let mut settings = settings(0, 0);
        settings.reads_per_minute = 2;
        settings.deletes_per_minute = 1;
        settings.changes_per_minute = 1;
        let limits = RateLimits::new(&settings).unwrap();
        assert!(limits.check_request("a", &Method::GET, false).is_ok());
        assert!(limits.check_request("a", &Method::HEAD, false).is_ok());
        assert!(is_limited(limits.check_request("a", &Method::GET, false)));
        assert!(limits.check_request("a", &Method::DELETE, false).is_ok());
        assert!(is_limited(limits.check_request(
            "a",
            &Method::DELETE,
            false
        )));
        assert!(limits.check_request("a", &Method::POST, false).is_ok());
        assert!(is_limited(limits.check_request("a", &Method::PATCH, false)));
        assert!(
            limits.check_request("a", &Method::POST, true).is_ok(),
            "uploads count apart"
        );
        assert!(limits.check_request("b", &Method::GET, false).is_ok());
    }

    #[test]
    fn a_byte_budget_below_one_upload_is_refused() {
        let error = RateLimits::new(&settings(1, 10)).err().unwrap();
        assert!(
            matches!(
                error,
                ConfigError::BytesPerMinuteBelowOneUpload {
                    bytes_per_minute: 10,
                    max_upload_bytes: 1_000
                }
            ),
            "{error:?}"
        );
    }

    fn with_keys(mut settings: IngestSettings, api_keys: &str) -> IngestSettings {
        settings.api_keys = api_keys.to_string();
        settings
    }

    fn hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn is_limited(result: Result<(), IngestError>) -> bool {
        matches!(result, Err(IngestError::RateLimited { .. }))
    }

    #[test]
    fn a_client_with_its_own_lower_limit_is_limited_where_a_default_client_is_not() {
        let api_keys = format!("slow={};uploads_per_minute=2,steady={}", hash(1), hash(2));
        let limits = RateLimits::new(&with_keys(settings(5, 0), &api_keys)).unwrap();
        assert!(limits.check_upload("slow").is_ok());
        assert!(limits.check_upload("slow").is_ok());
        assert!(
            is_limited(limits.check_upload("slow")),
            "the third of 2/min"
        );
        for _ in 0..3 {
            assert!(limits.check_upload("steady").is_ok(), "5/min by default");
        }
    }

    #[test]
    fn a_client_may_have_more_or_no_limit_than_the_default() {
        let api_keys = format!(
            "big={};uploads_per_minute=3,free={};uploads_per_minute=0;bytes_per_minute=0",
            hash(1),
            hash(2)
        );
        let limits = RateLimits::new(&with_keys(settings(1, 2_000), &api_keys)).unwrap();
        for _ in 0..3 {
            assert!(limits.check_upload("big").is_ok());
        }
        assert!(is_limited(limits.check_upload("big")));
        assert!(
            limits.check_bytes("big", 1_000).is_ok()
                && is_limited(limits.check_bytes("big", 1_100)),
            "big keeps the default byte budget"
        );
        for _ in 0..100 {
            assert!(limits.check_upload("free").is_ok());
            assert!(limits.check_bytes("free", 1_000).is_ok());
        }
        assert!(limits.check_upload("anyone").is_ok());
        assert!(
            is_limited(limits.check_upload("anyone")),
            "the default is 1/min"
        );
    }

    #[test]
    fn a_clients_own_bytes_are_metered_for_all_its_keys_together() {
        let api_keys = format!("a={};bytes_per_minute=2048,a={}", hash(1), hash(2));
        let limits = RateLimits::new(&with_keys(settings(0, 0), &api_keys)).unwrap();
        assert!(limits.check_bytes("a", 1_000).is_ok());
        assert!(limits.check_bytes("a", 1_000).is_ok());
        assert!(is_limited(limits.check_bytes("a", 1_000)));
        assert!(
            limits.check_bytes("b", 1_000_000).is_ok(),
            "unlimited by default"
        );
    }

    #[test]
    fn a_clients_byte_budget_below_one_upload_is_refused_by_name() {
        let error = RateLimits::new(&with_keys(
            settings(0, 0),
            &format!("tiny={};bytes_per_minute=999", hash(1)),
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.starts_with("client \"tiny\": bytes_per_minute (999)"),
            "{error}"
        );
    }
}
