//! Per-client rate limits (governor, GCRA): uploads started per minute and upload bytes per
//! minute. A client over either gets 429 `rate-limited` with Retry-After.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::IngestSettings;
use crate::IngestError;

/// Bytes are metered in KiB cells, so a u32 quota reaches terabytes per minute.
const CELL: u64 = 1024;

pub struct RateLimits {
    uploads: Option<DefaultKeyedRateLimiter<String>>,
    kib: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(settings: &IngestSettings) -> Result<Self, String> {
        if settings.bytes_per_minute != 0 && settings.bytes_per_minute < settings.max_upload_bytes {
            return Err(format!(
                "IMGPIPE_INGEST_BYTES_PER_MINUTE ({}) must be at least IMGPIPE_INGEST_MAX_UPLOAD_BYTES ({}) or 0",
                settings.bytes_per_minute, settings.max_upload_bytes
            ));
        }
        let per_minute = |n: u64| {
            NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
                .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n)))
        };
        Ok(Self {
            uploads: per_minute(u64::from(settings.uploads_per_minute)),
            kib: per_minute(settings.bytes_per_minute.div_ceil(CELL)),
            clock: DefaultClock::default(),
        })
    }

    /// Counts one upload for `client`.
    pub fn check_upload(&self, client: &str) -> Result<(), IngestError> {
        let Some(limiter) = &self.uploads else {
            return Ok(());
        };
        limiter
            .check_key(&client.to_string())
            .map_err(|not_until| self.limited(not_until.wait_time_from(self.clock.now())))
    }

    /// Counts `bytes` of upload for `client`.
    pub fn check_bytes(&self, client: &str, bytes: u64) -> Result<(), IngestError> {
        let Some(limiter) = &self.kib else {
            return Ok(());
        };
        let cells = NonZeroU32::new(u32::try_from(bytes.div_ceil(CELL)).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&client.to_string(), cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.limited(not_until.wait_time_from(self.clock.now()))),
            // Larger than a whole minute's allowance: new() rules that out for bodies within
            // the upload limit, so this is an oversized body.
            Err(_) => Err(IngestError::PayloadTooLarge { limit: bytes }),
        }
    }

    fn limited(&self, wait: std::time::Duration) -> IngestError {
        IngestError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
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
    fn a_byte_budget_below_one_upload_is_refused() {
        assert!(RateLimits::new(&settings(1, 10)).is_err());
    }
}
