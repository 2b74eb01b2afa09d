//! A circuit breaker for one dependency (the processor's object store).
//!
//! Closed: calls pass, and `failure_threshold` failures in a row open it. Open: calls are
//! refused without being made, for `open_for`. Then the first caller becomes the half-open
//! probe: the only call let through; its success closes the breaker, its failure opens it for
//! another `open_for`. Written here rather than taken from a crate because the consume loop
//! needs to wait for the breaker to close (with a cheap probe of its own) on tokio's clock,
//! and the crates looked at (failsafe) let every call through while half-open.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

/// What the breaker lets through, as observed from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// One probe is in flight; every other call is refused until it answers.
    HalfOpen,
    Open,
}

impl BreakerState {
    /// For a gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half-open",
            Self::Open => "open",
        }
    }
}

/// Why a call through the breaker did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// Refused without being made: the breaker is open, or another call is the probe.
    #[error("circuit breaker open")]
    Open,
    #[error(transparent)]
    Failed(E),
}

/// Called on every state change, after it happened: for metrics.
pub type TransitionHook = Arc<dyn Fn(BreakerState) + Send + Sync>;

#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: &'static str,
    settings: BreakerSettings,
    phase: Mutex<Phase>,
    changes: watch::Sender<BreakerState>,
    on_transition: TransitionHook,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// Leave to make one call. A probe's permit dropped without an outcome (its caller was
/// cancelled) reopens the breaker with the cool-down already over, so the next caller probes
/// instead of the breaker staying half-open forever.
struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    fn settle(mut self, succeeded: bool) {
        self.settled = true;
        self.breaker.record(self.probe, succeeded);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut phase = self.breaker.phase();
            if matches!(*phase, Phase::HalfOpen) {
                self.breaker.transition(
                    &mut phase,
                    Phase::Open {
                        until: Instant::now(),
                    },
                );
            }
        }
    }
}

impl CircuitBreaker {
    pub fn new(
        name: &'static str,
        settings: BreakerSettings,
        on_transition: TransitionHook,
    ) -> Self {
        let settings = BreakerSettings {
            failure_threshold: settings.failure_threshold.max(1),
            ..settings
        };
        Self {
            shared: Arc::new(Shared {
                name,
                settings,
                phase: Mutex::new(Phase::Closed {
                    consecutive_failures: 0,
                }),
                changes: watch::Sender::new(BreakerState::Closed),
                on_transition,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.phase().state()
    }

    /// Makes `call` unless the breaker refuses it. `is_failure` says which errors count against
    /// the dependency (a missing object is an answer, not an outage).
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, BreakerError<E>> {
        let permit = self.admit().ok_or(BreakerError::Open)?;
        match call.await {
            Ok(value) => {
                permit.settle(true);
                Ok(value)
            }
            Err(error) => {
                permit.settle(!is_failure(&error));
                Err(BreakerError::Failed(error))
            }
        }
    }

    /// Resolves once the breaker is closed. While it is open, waits out the cool-down and then
    /// makes `probe` the half-open call (unless another caller is probing already), as many
    /// times as it takes.
    pub async fn wait_until_closed<E, F, Fut>(&self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut changes = self.shared.changes.subscribe();
        loop {
            let phase = *self.phase();
            match phase {
                Phase::Closed { .. } => return,
                Phase::Open { until } => {
                    tokio::time::sleep_until(until).await;
                    if let Some(permit) = self.admit() {
                        let succeeded = probe().await.is_ok();
                        permit.settle(succeeded);
                    }
                }
                Phase::HalfOpen => {
                    // Someone else's probe: its outcome is a state change.
                    changes.mark_unchanged();
                    if *self.shared.changes.borrow() == BreakerState::HalfOpen
                        && changes.changed().await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    fn admit(&self) -> Option<Permit<'_>> {
        let mut phase = self.phase();
        match *phase {
            Phase::Closed { .. } => Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            Phase::Open { until } if Instant::now() >= until => {
                self.transition(&mut phase, Phase::HalfOpen);
                Some(Permit {
                    breaker: self,
                    probe: true,
                    settled: false,
                })
            }
            Phase::Open { .. } | Phase::HalfOpen => None,
        }
    }

    fn record(&self, probe: bool, succeeded: bool) {
        let mut phase = self.phase();
        let reopened = Phase::Open {
            until: Instant::now() + self.shared.settings.open_for,
        };
        match (*phase, probe) {
            (Phase::HalfOpen, true) => {
                let next = if succeeded {
                    Phase::Closed {
                        consecutive_failures: 0,
                    }
                } else {
                    reopened
                };
                self.transition(&mut phase, next);
            }
            (Phase::Closed { .. }, _) if succeeded => {
                *phase = Phase::Closed {
                    consecutive_failures: 0,
                };
            }
            (
                Phase::Closed {
                    consecutive_failures,
                },
                _,
            ) => {
                let consecutive_failures = consecutive_failures + 1;
                if consecutive_failures >= self.shared.settings.failure_threshold {
                    self.transition(&mut phase, reopened);
                } else {
                    *phase = Phase::Closed {
                        consecutive_failures,
                    };
                }
            }
            // A call let through before the breaker opened, answering after: the probe decides.
            _ => {}
        }
    }

    fn transition(&self, phase: &mut MutexGuard<'_, Phase>, next: Phase) {
        let from = phase.state();
        **phase = next;
        let to = next.state();
        if from == to {
            return;
        }
        let name = self.shared.name;
        match to {
            BreakerState::Open => tracing::warn!(
                breaker = name,
                from = from.as_str(),
                open_for_ms = self.shared.settings.open_for.as_millis() as u64,
                "circuit breaker opened"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(breaker = name, "circuit breaker half-open, probing")
            }
            BreakerState::Closed => tracing::info!(breaker = name, "circuit breaker closed"),
        }
        self.shared.changes.send_replace(to);
        (self.shared.on_transition)(to);
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The state is a plain value, never left half-written: a panic elsewhere while holding
        // the lock does not make it wrong.
        self.shared
            .phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker() -> (CircuitBreaker, Arc<Mutex<Vec<BreakerState>>>) {
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let hook: TransitionHook = {
            let transitions = Arc::clone(&transitions);
            Arc::new(move |to| transitions.lock().unwrap().push(to))
        };
        let breaker = CircuitBreaker::new(
            "test",
            BreakerSettings {
                failure_threshold: 3,
                open_for: OPEN_FOR,
            },
            hook,
        );
        (breaker, transitions)
    }

    async fn fail(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(async { Err("down") }, |_| true).await
    }

    async fn succeed(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(async { Ok(()) }, |_| true).await
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_of_consecutive_failures() {
        let (breaker, transitions) = breaker();
        fail(&breaker).await.unwrap_err();
        fail(&breaker).await.unwrap_err();
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker).await.unwrap_err();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(*transitions.lock().unwrap(), [BreakerState::Open]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_non_failures_do_not_count() {
        let (breaker, _) = breaker();
        fail(&breaker).await.unwrap_err();
        fail(&breaker).await.unwrap_err();
        succeed(&breaker).await.unwrap();
        fail(&breaker).await.unwrap_err();
        fail(&breaker).await.unwrap_err();
        for _ in 0..5 {
            let answer: Result<(), _> = breaker.call(async { Err("not found") }, |_| false).await;
            assert!(matches!(answer, Err(BreakerError::Failed("not found"))));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_refuses_without_calling() {
        let (breaker, _) = breaker();
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        let calls = AtomicUsize::new(0);
        let answer = breaker
            .call(
                async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, &str>(())
                },
                |_| true,
            )
            .await;
        assert!(matches!(answer, Err(BreakerError::Open)));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(OPEN_FOR - Duration::from_millis(1)).await;
        assert!(matches!(succeed(&breaker).await, Err(BreakerError::Open)));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through_and_its_success_closes() {
        let (breaker, transitions) = breaker();
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::advance(OPEN_FOR).await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let probe = tokio::spawn({
            let breaker = breaker.clone();
            async move {
                breaker
                    .call(
                        async {
                            released.await.unwrap();
                            Ok::<_, &str>(())
                        },
                        |_| true,
                    )
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(matches!(succeed(&breaker).await, Err(BreakerError::Open)));
        release.send(()).unwrap();
        probe.await.unwrap().unwrap();
        assert_eq!(breaker.state(), BreakerState::Closed);
        succeed(&breaker).await.unwrap();
        assert_eq!(
            *transitions.lock().unwrap(),
            [
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_cool_down() {
        let (breaker, transitions) = breaker();
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::advance(OPEN_FOR).await;
        fail(&breaker).await.unwrap_err();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(OPEN_FOR / 2).await;
        assert!(matches!(succeed(&breaker).await, Err(BreakerError::Open)));
        tokio::time::advance(OPEN_FOR / 2).await;
        succeed(&breaker).await.unwrap();
        assert_eq!(
            *transitions.lock().unwrap(),
            [
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_probes_after_each_cool_down_until_the_dependency_answers() {
        let (breaker, _) = breaker();
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        let probes = AtomicUsize::new(0);
        let started = Instant::now();
        breaker
            .wait_until_closed(|| {
                let attempt = probes.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 2 {
                        Err("still down")
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(probes.load(Ordering::SeqCst), 3);
        // Each probe came only after a full cool-down (the clock is paused: this is exact).
        assert_eq!(started.elapsed(), OPEN_FOR * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_caller_probe() {
        let (breaker, _) = breaker();
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::advance(OPEN_FOR).await;
        let hung = breaker.call(std::future::pending::<Result<(), &str>>(), |_| true);
        let cancelled = tokio::time::timeout(Duration::from_secs(1), hung).await;
        assert!(cancelled.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        succeed(&breaker).await.unwrap();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_on_a_closed_breaker_returns_at_once_without_probing() {
        let (breaker, _) = breaker();
        breaker
            .wait_until_closed(|| async { Err::<(), _>("must not be called") })
            .await;
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
