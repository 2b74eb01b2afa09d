//! The delivery loop: claims due deliveries from the schedule, attempts each on a task of its
//! own (at most `concurrency` at once, and `per_endpoint` to one endpoint), records every
//! attempt as a `WebhookDeliveryAttempted` event, then retries it at the schedule's next time or
//! removes it. Nothing sleeps on a record: a failing endpoint's deliveries wait in the table,
//! due later, while everything else flows. An endpoint that failed for longer than
//! `disable_after` is disabled, with an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_schemas::{
    DisableReason, Event, Producer, WebhookDeliveryAttempted, WebhookEndpointDisabled,
};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::attempt::{self, AttemptOutcome};
use crate::metrics::{DeliveryOutcome, WebhookMetrics};
use crate::schedule::{self, Due, Endpoint};
use crate::secret::SecretSealer;
use crate::signature::{signature_header, SigningSecret};
use crate::target::AddressPolicy;

/// How long a claim hides a delivery from other instances: longer than an attempt can take
/// (the timeout) plus recording it, so only a crashed instance's claims expire.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The least wait before trying again a delivery whose endpoint's secret cannot be opened.
const SECRET_RETRY: Duration = Duration::from_secs(300);
/// How long attempts wait after the log refused an attempt's record.
const LOG_PAUSE: Duration = Duration::from_secs(10);
/// The longest a receiver's Retry-After may put a retry off.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn producer() -> Producer {
    Producer {
        service: "imgpipe-webhooks".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

pub(crate) struct Deliverer {
    pub(crate) pool: PgPool,
    pub(crate) store: ObjectStore,
    pub(crate) events: EventProducer,
    pub(crate) client: reqwest::Client,
    pub(crate) policy: Arc<AddressPolicy>,
    pub(crate) sealer: Arc<SecretSealer>,
    pub(crate) metrics: WebhookMetrics,
    /// The waits before each retry; after the last, the delivery is given up.
    pub(crate) schedule: Vec<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) disable_after: Duration,
    pub(crate) url_ttl: Duration,
    pub(crate) poll: Duration,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) per_endpoint: usize,
    /// Attempts in flight per endpoint, on this instance.
    pub(crate) in_flight: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Until when no delivery is claimed: the log refused an attempt's record.
    pub(crate) log_down_until: Mutex<Option<tokio::time::Instant>>,
    /// Endpoints this instance is disabling right now (one disabling event each).
    pub(crate) disabling: Mutex<std::collections::HashSet<Uuid>>,
}

impl Deliverer {
    /// Claims and attempts deliveries until `shutdown`; then waits for the attempts in flight
    /// (each bounded by the timeout) so none is left unrecorded.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let mut last_gauge = tokio::time::Instant::now() - Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            if last_gauge.elapsed() >= Duration::from_secs(5) {
                last_gauge = tokio::time::Instant::now();
                if let Ok(count) = schedule::due_count(&self.pool).await {
                    self.metrics.due(count);
                }
            }
            let claimed = self.claim_some(&tasks).await;
            if claimed == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.poll) => {}
                }
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// One round: claims what the free slots allow and starts an attempt for each. Returns how
    /// many it started.
    async fn claim_some(self: &Arc<Self>, tasks: &TaskTracker) -> usize {
        if self.log_paused() {
            return 0;
        }
        let free = self.slots.available_permits();
        if free == 0 {
            // Wait for any attempt to end.
            if let Ok(permit) = self.slots.acquire().await {
                drop(permit);
            }
            return 0;
        }
        let busy: Vec<Uuid> = {
            let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight
                .iter()
                .filter(|(_, n)| **n >= self.per_endpoint)
                .map(|(id, _)| *id)
                .collect()
        };
        let lease = self.timeout + LEASE_MARGIN;
        let claimed = match schedule::claim(&self.pool, &busy, free as i64, lease).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(error = %error, "claiming due webhook deliveries failed");
                return 0;
            }
        };
        let count = claimed.len();
        for due in claimed {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                break;
            };
            let in_flight = InFlight::enter(&self.in_flight, due.endpoint_id);
            let deliverer = Arc::clone(self);
            tasks.spawn(async move {
                deliverer.attempt(due).await;
                // Also when the attempt panicked: the endpoint's slot is given back.
                drop(in_flight);
                drop(permit);
            });
        }
        count
    }

    /// Whether attempts wait because the log refused an attempt's record a moment ago.
    fn log_paused(&self) -> bool {
        let until = self
            .log_down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// One attempt of one delivery, start to end. A failure to reach Postgres or the log leaves
    /// the claim to expire, so the attempt is made again later.
    async fn attempt(&self, due: Due) {
        let endpoint = match schedule::endpoint(&self.pool, due.endpoint_id).await {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::warn!(error = %error, "reading a webhook endpoint failed");
                return;
            }
        };
        let Some(endpoint) = endpoint.filter(Endpoint::active) else {
            // Disabled or deleted since it was scheduled: it gets nothing.
            self.metrics.dropped();
            if let Err(error) = schedule::remove(&self.pool, &due).await {
                tracing::warn!(error = %error, "removing a dropped webhook delivery failed");
            }
            return;
        };
        let secrets = match self.secrets(&endpoint) {
            Ok(secrets) => secrets,
            Err(error) => {
                // The sealing key changed or the row is corrupt: an operator's fix, not the
                // receiver's fault. Try again in a while, without an attempt on record.
                // Counted as an attempt of the schedule (without a record: nothing was sent),
                // so a key that stays wrong gives the delivery up in the end.
                tracing::error!(endpoint_id = %endpoint.endpoint_id, error = %error,
                    "cannot open the endpoint's signing secret");
                self.metrics.secret_unreadable();
                let wait = retry_wait(&self.schedule, due.attempt, None);
                let written = match wait {
                    Some(wait) => {
                        let later = OffsetDateTime::now_utc() + wait.max(SECRET_RETRY);
                        schedule::retry_at(&self.pool, &due, due.attempt + 1, later).await
                    }
                    None => schedule::remove(&self.pool, &due).await,
                };
                if let Err(error) = written {
                    tracing::warn!(error = %error, "updating the webhook schedule failed");
                }
                return;
            }
        };
        let body = due.message.body(&self.urls(&due).await);
        let msg_id = due.message_id.to_string();
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signers: Vec<&SigningSecret> = secrets.iter().collect();
        let headers = [
            ("webhook-id", msg_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature_header(&signers, &msg_id, timestamp, &body),
            ),
        ];
        let outcome =
            attempt::post(&self.client, &self.policy, &endpoint.url, &headers, body).await;
        self.settle(&due, &endpoint, outcome).await;
    }

    /// The secrets that sign: the current one, and the previous one during a rotation's overlap.
    fn secrets(&self, endpoint: &Endpoint) -> Result<Vec<SigningSecret>, crate::WebhookError> {
        let mut secrets = vec![self.sealer.open(&endpoint.sealed_secret)?];
        if let (Some(previous), Some(until)) = (
            &endpoint.previous_sealed_secret,
            endpoint.previous_valid_until,
        ) {
            if until > OffsetDateTime::now_utc() {
                secrets.push(self.sealer.open(previous)?);
            }
        }
        Ok(secrets)
    }

    /// Presigned URLs of the message's variants; one that cannot be signed is left out (the body
    /// then has `null`, and the receiver can ask the API).
    async fn urls(&self, due: &Due) -> HashMap<String, String> {
        let mut urls = HashMap::new();
        for key in due.message.variant_keys() {
            match self.store.presigned_get(key, self.url_ttl).await {
                Ok(url) => {
                    urls.insert(key.to_string(), url);
                }
                Err(error) => tracing::warn!(key, error = %error, "presigning a variant failed"),
            }
        }
        urls
    }

    /// Records the attempt, then retries, removes or gives up the delivery, and disables an
    /// endpoint that has failed for too long.
    async fn settle(&self, due: &Due, endpoint: &Endpoint, outcome: AttemptOutcome) {
        let now = OffsetDateTime::now_utc();
        let next_at = if outcome.delivered() {
            None
        } else {
            retry_wait(&self.schedule, due.attempt, outcome.retry_after).map(|wait| now + wait)
        };
        let recorded = WebhookDeliveryAttempted {
            endpoint_id: endpoint.endpoint_id.to_string(),
            message_id: due.message_id.to_string(),
            message_type: due.message.message_type.clone(),
            attempt: due.attempt,
            redelivery: due.redelivery,
            url: endpoint.url.clone(),
            status_code: outcome.status.map(i32::from),
            duration_ms: outcome.duration.as_millis() as i64,
            error_class: outcome.error.map(|class| class.as_str().to_string()),
            next_attempt_micros: next_at.map(micros),
        };
        let event = Event::new(
            due.image_id,
            due.correlation_id.clone(),
            Some(due.message_id),
            producer(),
            recorded,
        );
        if let Err(error) = self.events.publish(&event).await {
            // The attempt happened but the log did not take its record. Making it again would
            // resend what may have been delivered, every lease, for as long as the log is down:
            // so the schedule moves on as if recorded, the attempt is logged here instead, and
            // no delivery is claimed for a while.
            tracing::error!(
                error = %error,
                endpoint_id = %endpoint.endpoint_id,
                message_id = %due.message_id,
                attempt = due.attempt,
                status = outcome.status,
                error_class = outcome.error.map(|class| class.as_str()),
                "recording a webhook attempt failed; the attempt is not on the log"
            );
            *self
                .log_down_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now() + LOG_PAUSE);
        }
        let delivery = if outcome.delivered() {
            DeliveryOutcome::Delivered
        } else if next_at.is_some() {
            DeliveryOutcome::Failed
        } else {
            DeliveryOutcome::Exhausted
        };
        self.metrics.attempt(delivery, outcome.duration);
        tracing::info!(
            endpoint_id = %endpoint.endpoint_id,
            message_id = %due.message_id,
            attempt = due.attempt,
            status = outcome.status,
            error_class = outcome.error.map(|class| class.as_str()),
            outcome = delivery.as_str(),
            "webhook attempt"
        );
        let written = match next_at {
            Some(at) => schedule::retry_at(&self.pool, due, due.attempt + 1, at).await,
            None => schedule::remove(&self.pool, due).await,
        };
        match written {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                message_id = %due.message_id,
                "the claim was voided meanwhile (a redelivery, or the lease ran out): the newer state stands"
            ),
            Err(error) => tracing::warn!(error = %error, "updating the webhook schedule failed"),
        }
        if !outcome.delivered() {
            self.disable_if_failing_too_long(endpoint.endpoint_id, now)
                .await;
        }
    }

    /// Disables the endpoint if, as the read model says now (not as it was before this
    /// attempt: the owner may have enabled it meanwhile), it has been failing for longer than
    /// `disable_after`. One disabling at a time per endpoint on this instance.
    async fn disable_if_failing_too_long(&self, endpoint_id: Uuid, now: OffsetDateTime) {
        let endpoint = match schedule::endpoint(&self.pool, endpoint_id).await {
            Ok(Some(endpoint)) if endpoint.active() => endpoint,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(error = %error, "reading a webhook endpoint failed");
                return;
            }
        };
        let Some(since) = endpoint.failing_since else {
            return;
        };
        if now - since < self.disable_after {
            return;
        }
        if !self
            .disabling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint_id)
        {
            return;
        }
        self.disable(&endpoint, since).await;
        self.disabling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&endpoint_id);
    }

    async fn disable(&self, endpoint: &Endpoint, since: OffsetDateTime) {
        let disabled = Event::new(
            endpoint.endpoint_id,
            format!("webhook-disable-{}", endpoint.endpoint_id),
            None,
            producer(),
            WebhookEndpointDisabled {
                endpoint_id: endpoint.endpoint_id.to_string(),
                reason: DisableReason::Failing.as_str().into(),
                failing_since_micros: micros(since),
            },
        );
        if let Err(error) = self.events.publish(&disabled).await {
            tracing::warn!(error = %error, "recording a webhook endpoint's disabling failed");
            return;
        }
        // Applied at once, as ingest does with the owner's changes, so no further attempt goes
        // out before the projector gets to it.
        if let Err(error) = self.apply_now(&disabled).await {
            tracing::warn!(error = %error, "applying a webhook endpoint's disabling failed");
        }
        if let Err(error) = schedule::remove_endpoint(&self.pool, endpoint.endpoint_id).await {
            tracing::warn!(error = %error, "dropping a disabled endpoint's deliveries failed");
        }
        self.metrics.endpoint_disabled();
        tracing::warn!(
            endpoint_id = %endpoint.endpoint_id,
            failing_since = %since,
            "webhook endpoint disabled: every attempt failed for too long"
        );
    }

    async fn apply_now(&self, event: &Event) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        imgpipe_projector::db::webhooks::apply(&mut tx, event).await?;
        tx.commit().await
    }
}

/// The wait before attempt `attempt + 1`, or `None` when `schedule` is spent. A receiver's
/// Retry-After longer than the schedule's wait puts the retry off that long (at most a day); a
/// shorter one does not bring it forward, so a receiver briefly overloaded (429 with
/// `Retry-After: 1`) cannot burn the whole schedule in seconds. It adds no attempt.
fn retry_wait(
    schedule: &[Duration],
    attempt: i32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
    let scheduled = *schedule.get(index)?;
    Some(retry_after.map_or(scheduled, |asked| asked.min(MAX_RETRY_AFTER).max(scheduled)))
}

/// An attempt in flight to an endpoint, counted until dropped.
struct InFlight {
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
    endpoint_id: Uuid,
}

impl InFlight {
    fn enter(counts: &Arc<Mutex<HashMap<Uuid, usize>>>, endpoint_id: Uuid) -> Self {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(endpoint_id).or_default() += 1;
        Self {
            counts: Arc::clone(counts),
            endpoint_id,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.endpoint_id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.endpoint_id);
            }
        }
    }
}

fn micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_or_the_receivers_retry_after_until_it_is_spent() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(retry_wait(&schedule, 1, None), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_wait(&schedule, 2, None),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_wait(&schedule, 3, None),
            None,
            "given up after the last wait"
        );
        let asked = Some(Duration::from_secs(42));
        assert_eq!(
            retry_wait(&schedule, 1, asked),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            retry_wait(&schedule, 2, asked),
            Some(Duration::from_secs(300)),
            "a shorter Retry-After does not bring the retry forward"
        );
        assert_eq!(
            retry_wait(&schedule, 3, asked),
            None,
            "Retry-After adds no attempt"
        );
        assert_eq!(
            retry_wait(&schedule, 1, Some(Duration::ZERO)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_wait(&schedule, 1, Some(Duration::from_secs(10 * 86_400))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_wait(&schedule, 0, None), None);
    }
}
