//! Whether a consumer is making progress, told truthfully.
//!
//! A consumer can sit in its group with no partitions, or with partitions it never fetches
//! from, while the group has lag, and still answer every broker request: seen on Tansu 0.6
//! after a few broker restarts with consumers killed in between, where the members stayed with
//! an empty assignment for over ten minutes until a graceful leave and rejoin. Whatever the
//! broker's part, a consumer that never recovers from a lost assignment is our defect, so each
//! consume loop reports here what it sees, and asks here whether it should leave the group and
//! join again with a fresh client.
//!
//! The rule: a consumer is **stalled** when the lag it is responsible for (its assigned
//! partitions' lag, or the whole group's while it has no partitions) has been above zero for
//! the stall time, and in that time it received no record, had no record in hand, and was not
//! waiting on a dependency known to be down (an outage is not a stall: rejoining cannot fix
//! it). The lag must be a recent measurement; with no measurement (the broker is down) nobody
//! is stalled. A stalled consumer rejoins (at most once per stall time, backing off while
//! rejoining does not help), is not ready, and once it has been stalled for
//! [`LIVENESS_FACTOR`] stall times it is not live either, so an orchestrator restarts it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A stall this many stall times long fails liveness: the rejoins did not help.
pub const LIVENESS_FACTOR: u32 = 4;
/// Lag on another member's partitions that has not gone down for this many stall times makes
/// this member rejoin, so the group reassigns them ([`StallReason::UnservedPartitions`]).
pub const UNSERVED_FACTOR: u32 = 2;
/// Rejoins that did not end the stall are spaced out, up to this many stall times apart.
const MAX_REJOIN_BACKOFF_FACTOR: u32 = 16;

/// Why a consumer is stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallReason {
    /// No partitions assigned while the group has lag.
    NoAssignment,
    /// Partitions assigned, with lag, but no record arrives.
    NoProgress,
    /// Partitions another member holds have lag that has not gone down for
    /// [`UNSERVED_FACTOR`] stall times: their holder is gone but still in the group's
    /// assignment (Tansu 0.6 keeps a SIGKILLed member's partitions until some member leaves
    /// and rejoins). Not this member's fault, so not a stall of its own: it only rejoins.
    UnservedPartitions,
}

impl StallReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAssignment => "no-assignment",
            Self::NoProgress => "no-progress",
            Self::UnservedPartitions => "unserved-partitions",
        }
    }
}

impl std::fmt::Display for StallReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What fails a readiness or liveness check: the consumer is stalled, why, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub reason: StallReason,
    pub for_secs: u64,
}

/// The health's metrics, one series per consumer `group`; recorded by
/// [`HealthSnapshot::record`] into the service's own recorder.
pub mod metric_names {
    use crate::metrics::MetricKind;

    /// Partitions the member holds now.
    pub const ASSIGNED_PARTITIONS: &str = "imgpipe_consumer_assigned_partitions";
    /// Seconds since a record arrived or finished (or an outage began or ended).
    pub const SECONDS_SINCE_PROGRESS: &str = "imgpipe_consumer_seconds_since_progress";
    /// 1 while the member is stalled: lag to serve and nothing happening.
    pub const STALLED: &str = "imgpipe_consumer_stalled";
    /// Times the member left its group to rejoin with a new client.
    pub const REJOINS: &str = "imgpipe_consumer_rejoins_total";
    /// The group's records not yet consumed, per `partition` of the consumed topic.
    pub const LAG: &str = "imgpipe_consumer_lag";

    /// Every metric above, for the check of the dashboards and alert rules.
    pub const ALL: &[(&str, MetricKind)] = &[
        (ASSIGNED_PARTITIONS, MetricKind::Gauge),
        (SECONDS_SINCE_PROGRESS, MetricKind::Gauge),
        (STALLED, MetricKind::Gauge),
        (REJOINS, MetricKind::Counter),
        (LAG, MetricKind::Gauge),
    ];
}

/// What the metrics and the health endpoints show.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    pub assigned_partitions: usize,
    /// The lag this consumer is responsible for, when measured recently.
    pub lag: Option<i64>,
    pub seconds_since_progress: f64,
    pub stalled: Option<(StallReason, Duration)>,
    pub rejoins: u64,
    /// The group's lag per partition, as last measured (however long ago).
    pub partition_lag: BTreeMap<i32, i64>,
}

impl HealthSnapshot {
    /// Records the snapshot into the current recorder (the caller's
    /// `metrics::with_local_recorder`), labelled with the consumer `group`.
    pub fn record(&self, group: &'static str) {
        use metric_names::*;
        metrics::gauge!(ASSIGNED_PARTITIONS, "group" => group).set(self.assigned_partitions as f64);
        metrics::gauge!(SECONDS_SINCE_PROGRESS, "group" => group).set(self.seconds_since_progress);
        metrics::gauge!(STALLED, "group" => group).set(if self.stalled.is_some() {
            1.0
        } else {
            0.0
        });
        metrics::counter!(REJOINS, "group" => group).absolute(self.rejoins);
        for (partition, lag) in &self.partition_lag {
            metrics::gauge!(LAG, "group" => group, "partition" => partition.to_string())
                .set(*lag as f64);
        }
    }
}

/// Shared by a consume loop (which reports), its lag measurement and the ops endpoints.
#[derive(Clone)]
pub struct ConsumerHealth {
    stall_after: Duration,
    state: Arc<Mutex<State>>,
}

struct State {
    /// The partitions assigned now; `None` before the first look.
    assigned: Option<Vec<i32>>,
    /// Lag per partition of the consumed topic, and when it was measured.
    lag: Option<(Instant, BTreeMap<i32, i64>)>,
    /// Partitions held by others with lag: the lowest lag seen, and since when it has not gone
    /// below it.
    unserved: BTreeMap<i32, (i64, Instant)>,
    /// The last record received or finished, batch applied, or change of waiting.
    last_progress: Instant,
    /// A member that just joined gets a stall time to get going.
    last_rejoin: Option<Instant>,
    in_hand: usize,
    waiting_on_dependency: bool,
    rejoins: u64,
    /// No rejoin before this; doubles while rejoins do not end the stall.
    next_rejoin: Instant,
    rejoin_backoff: Duration,
}

impl ConsumerHealth {
    /// `stall_after`: how long lag may go unserved before the consumer counts as stalled.
    pub fn new(stall_after: Duration) -> Self {
        let now = Instant::now();
        Self {
            stall_after,
            state: Arc::new(Mutex::new(State {
                assigned: None,
                lag: None,
                unserved: BTreeMap::new(),
                last_progress: now,
                last_rejoin: None,
                in_hand: 0,
                waiting_on_dependency: false,
                rejoins: 0,
                next_rejoin: now,
                rejoin_backoff: stall_after,
            })),
        }
    }

    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// The partitions the consumer holds now.
    pub fn set_assignment(&self, partitions: impl IntoIterator<Item = i32>) {
        let partitions: Vec<i32> = partitions.into_iter().collect();
        self.with(|s| s.assigned = Some(partitions));
    }

    /// The group's lag per partition of the consumed topic, just measured.
    pub fn record_lag(&self, lag: impl IntoIterator<Item = (i32, i64)>) {
        let lag: BTreeMap<i32, i64> = lag.into_iter().collect();
        let now = Instant::now();
        self.with(|s| {
            s.track_unserved(&lag, now);
            s.lag = Some((now, lag));
        });
    }

    /// A record arrived, or one was finished.
    pub fn progressed(&self) {
        self.with(|s| s.last_progress = Instant::now());
    }

    /// Marks a record (or a batch) in hand until the guard is dropped: a long render is not a
    /// stall.
    pub fn in_hand(&self) -> InHand {
        self.with(|s| {
            s.in_hand += 1;
            s.last_progress = Instant::now();
        });
        InHand(self.clone())
    }

    /// The consumer waits for a dependency known to be down (its records are not failing,
    /// they wait): not a stall.
    pub fn set_waiting_on_dependency(&self, waiting: bool) {
        self.with(|s| {
            s.waiting_on_dependency = waiting;
            s.last_progress = Instant::now();
        });
    }

    /// Whether the consumer should leave the group and join again now. Each `Some` counts as
    /// a rejoin, and the next is allowed only a backoff later.
    pub fn should_rejoin(&self) -> Option<StallReason> {
        let now = Instant::now();
        let stall_after = self.stall_after;
        self.with(|s| {
            let reason = match s.stall(now, stall_after) {
                Some((reason, _)) => reason,
                None if s.unserved_for(now, stall_after * UNSERVED_FACTOR) => {
                    StallReason::UnservedPartitions
                }
                None => return None,
            };
            if now < s.next_rejoin {
                return None;
            }
            s.unserved.clear();
            s.rejoins += 1;
            s.next_rejoin = now + s.rejoin_backoff;
            s.rejoin_backoff = (s.rejoin_backoff * 2).min(stall_after * MAX_REJOIN_BACKOFF_FACTOR);
            s.last_rejoin = Some(now);
            s.assigned = None;
            Some(reason)
        })
    }

    /// Ready: not stalled.
    pub fn ready(&self) -> Result<(), Stall> {
        match self.snapshot().stalled {
            Some((reason, stalled)) => Err(Stall {
                reason,
                for_secs: stalled.as_secs(),
            }),
            None => Ok(()),
        }
    }

    /// Live: not stalled for [`LIVENESS_FACTOR`] stall times (rejoining did not help).
    pub fn live(&self) -> Result<(), Stall> {
        match self.snapshot().stalled {
            Some((reason, stalled)) if stalled >= self.stall_after * LIVENESS_FACTOR => {
                Err(Stall {
                    reason,
                    for_secs: stalled.as_secs(),
                })
            }
            _ => Ok(()),
        }
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        let stall_after = self.stall_after;
        self.with(|s| {
            let stalled = s
                .stall(now, stall_after)
                .map(|(reason, since)| (reason, now.saturating_duration_since(since)));
            HealthSnapshot {
                assigned_partitions: s.assigned.as_ref().map_or(0, Vec::len),
                lag: s.responsible_lag(now, stall_after),
                seconds_since_progress: now.duration_since(s.last_progress).as_secs_f64(),
                stalled,
                rejoins: s.rejoins,
                partition_lag: s
                    .lag
                    .as_ref()
                    .map(|(_, lag)| lag.clone())
                    .unwrap_or_default(),
            }
        })
    }
}

impl State {
    /// Follows the lag on partitions others hold (only while this member holds some: with
    /// none, the whole group's lag is its own to answer for).
    fn track_unserved(&mut self, lag: &BTreeMap<i32, i64>, now: Instant) {
        let assigned = match self.assigned.as_deref() {
            Some(assigned) if !assigned.is_empty() => assigned,
            _ => {
                self.unserved.clear();
                return;
            }
        };
        for (&partition, &lag) in lag {
            if lag == 0 || assigned.contains(&partition) {
                self.unserved.remove(&partition);
                continue;
            }
            let entry = self.unserved.entry(partition).or_insert((lag, now));
            if lag < entry.0 {
                // Someone works on it.
                *entry = (lag, now);
            }
        }
        self.unserved
            .retain(|partition, _| lag.contains_key(partition));
    }

    /// Whether some partition another member holds has had lag that did not go down for
    /// `window`, by a recent measurement.
    fn unserved_for(&self, now: Instant, window: Duration) -> bool {
        let recent = self
            .lag
            .as_ref()
            .is_some_and(|(measured, _)| now.duration_since(*measured) <= window);
        recent
            && self
                .unserved
                .values()
                .any(|(_, since)| now.duration_since(*since) >= window)
    }

    /// The lag this consumer answers for: its partitions', or the group's while it has none.
    /// `None` unless measured within a stall time and after the last progress (an older figure
    /// may predate records handled since).
    fn responsible_lag(&self, now: Instant, stall_after: Duration) -> Option<i64> {
        let (measured, lag) = self.lag.as_ref()?;
        if now.duration_since(*measured) > stall_after || *measured < self.last_progress {
            return None;
        }
        Some(match self.assigned.as_deref() {
            Some(assigned) if !assigned.is_empty() => assigned
                .iter()
                .filter_map(|partition| lag.get(partition))
                .sum(),
            _ => lag.values().sum(),
        })
    }

    /// The stall rule (module docs): the reason, and since when the consumer has made no
    /// progress beyond a stall time (rejoins do not reset it; only progress does).
    fn stall(&mut self, now: Instant, stall_after: Duration) -> Option<(StallReason, Instant)> {
        let quiet_since = self
            .last_rejoin
            .map_or(self.last_progress, |rejoin| rejoin.max(self.last_progress));
        let idle = self.in_hand == 0
            && !self.waiting_on_dependency
            && now.duration_since(quiet_since) >= stall_after;
        let lag = self.responsible_lag(now, stall_after);
        if lag == Some(0) {
            // Caught up: the next stall starts the rejoin backoff afresh.
            self.rejoin_backoff = stall_after;
        }
        if !(idle && lag.is_some_and(|lag| lag > 0)) {
            return None;
        }
        let reason = match self.assigned.as_deref() {
            Some(assigned) if !assigned.is_empty() => StallReason::NoProgress,
            _ => StallReason::NoAssignment,
        };
        Some((reason, self.last_progress + stall_after))
    }
}

/// A record or batch in hand; see [`ConsumerHealth::in_hand`].
pub struct InHand(ConsumerHealth);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.with(|s| {
            s.in_hand = s.in_hand.saturating_sub(1);
            s.last_progress = Instant::now();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_assignment_with_group_lag_stalls_and_asks_to_rejoin() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([]);
        health.record_lag([(0, 5), (1, 0)]);
        assert_eq!(health.should_rejoin(), None);
        assert!(health.ready().is_ok());
        advance(STALL).await;
        health.record_lag([(0, 5), (1, 0)]);
        assert!(matches!(
            health.ready(),
            Err(Stall {
                reason: StallReason::NoAssignment,
                ..
            })
        ));
        assert!(health.live().is_ok());
        assert_eq!(health.should_rejoin(), Some(StallReason::NoAssignment));
        // Not again right away: the new member gets a stall time.
        health.record_lag([(0, 5), (1, 0)]);
        assert_eq!(health.should_rejoin(), None);
        assert!(health.ready().is_ok());
        assert_eq!(health.snapshot().rejoins, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_lag_no_stall_however_idle() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([0, 1]);
        advance(STALL * 10).await;
        health.record_lag([(0, 0), (1, 0), (2, 7)]);
        assert_eq!(health.snapshot().stalled, None);
        assert_eq!(health.should_rejoin(), None);
        // Lag on a partition another member holds is not ours to serve.
        assert_eq!(health.snapshot().lag, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn lag_that_nobody_serves_on_another_members_partitions_makes_a_member_rejoin() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([0]);
        health.record_lag([(0, 0), (1, 4)]);
        // Someone works on partition 1: its lag goes down.
        advance(STALL).await;
        health.record_lag([(0, 0), (1, 3)]);
        advance(STALL).await;
        health.record_lag([(0, 0), (1, 3)]);
        assert_eq!(
            health.should_rejoin(),
            None,
            "it went down a stall time ago"
        );
        // Then nobody does, for the window: its holder is gone.
        advance(STALL).await;
        health.record_lag([(0, 0), (1, 5)]);
        assert_eq!(
            health.should_rejoin(),
            Some(StallReason::UnservedPartitions)
        );
        // Not this member's own stall: it stays ready.
        assert!(health.ready().is_ok());
        assert_eq!(health.snapshot().stalled, None);
        // Once it holds the partition, the lag is its own.
        health.set_assignment([0, 1]);
        advance(STALL * UNSERVED_FACTOR * 2).await;
        health.progressed();
        health.record_lag([(0, 0), (1, 5)]);
        assert_eq!(health.should_rejoin(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn lag_without_records_on_assigned_partitions_is_no_progress() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([2]);
        advance(STALL * 2).await;
        health.record_lag([(2, 7)]);
        assert_eq!(health.should_rejoin(), Some(StallReason::NoProgress));
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_in_hand_or_an_outage_is_not_a_stall() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([0]);
        let render = health.in_hand();
        advance(STALL * 10).await;
        health.record_lag([(0, 3)]);
        assert_eq!(health.snapshot().stalled, None);
        drop(render);
        health.set_waiting_on_dependency(true);
        advance(STALL * 10).await;
        health.record_lag([(0, 3)]);
        assert_eq!(health.snapshot().stalled, None);
        health.set_waiting_on_dependency(false);
        advance(STALL * 2).await;
        health.record_lag([(0, 3)]);
        assert_eq!(health.should_rejoin(), Some(StallReason::NoProgress));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_recent_lag_measurement_nobody_is_stalled() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([]);
        advance(STALL * 2).await;
        health.record_lag([(0, 5)]);
        assert!(health.snapshot().stalled.is_some());
        // The broker went away: no new measurement.
        advance(STALL + Duration::from_secs(1)).await;
        assert_eq!(health.snapshot().stalled, None);
        assert!(health.live().is_ok());
        // A measurement older than the last progress may predate the records handled since.
        health.record_lag([(0, 5)]);
        advance(Duration::from_secs(1)).await;
        health.progressed();
        advance(STALL).await;
        assert_eq!(health.snapshot().lag, None);
        assert_eq!(health.snapshot().stalled, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_that_rejoins_do_not_end_fails_liveness_and_rejoins_back_off() {
        let health = ConsumerHealth::new(STALL);
        let mut rejoined_at = Vec::new();
        let started = Instant::now();
        for _ in 0..40 {
            advance(STALL / 2).await;
            health.set_assignment([]);
            health.record_lag([(0, 5)]);
            if health.should_rejoin().is_some() {
                rejoined_at.push(Instant::now().duration_since(started).as_secs());
            }
        }
        assert!(health.live().is_err(), "{:?}", health.snapshot());
        let gaps: Vec<u64> = rejoined_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{rejoined_at:?}");
        assert!(gaps.last() > gaps.first(), "{rejoined_at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_ends_a_stall() {
        let health = ConsumerHealth::new(STALL);
        health.set_assignment([0]);
        advance(STALL * 3).await;
        health.record_lag([(0, 5)]);
        assert!(matches!(
            health.ready(),
            Err(Stall {
                reason: StallReason::NoProgress,
                ..
            })
        ));
        health.progressed();
        assert!(health.ready().is_ok());
        assert_eq!(health.snapshot().stalled, None);
    }
}
