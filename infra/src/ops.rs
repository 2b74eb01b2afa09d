//! The operational HTTP endpoints every worker serves: `/healthz` (liveness: the worker's own
//! loop is not stuck; a dependency's outage does not fail it, so an orchestrator does not
//! restart every worker when the broker is down) and `/readyz` (its dependencies answer and its
//! consumer is making progress). The answers say which check failed, never the error's text
//! (that goes to the log: it can name hosts and users).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::consume::ConsumerHealth;
use crate::BoxError;

/// Checks a service's dependencies; `Err` names the first that does not answer.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), DependencyDown>> + Send + '_>>;
}

/// What a service depends on, as the readiness log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Broker,
    Storage,
    Database,
}

impl Dependency {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Storage => "storage",
            Self::Database => "database",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dependency did not answer a readiness check. Not an [`crate::InfraError`]: it is the
/// check's verdict, which carries the failed call's error (of whatever type) as its source.
#[derive(Debug, thiserror::Error)]
#[error("{dependency} does not answer")]
pub struct DependencyDown {
    pub dependency: Dependency,
    #[source]
    pub source: BoxError,
}

impl DependencyDown {
    pub fn new(dependency: Dependency, source: impl Into<BoxError>) -> Self {
        Self {
            dependency,
            source: source.into(),
        }
    }
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
    /// The check that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    failing: Option<Check>,
}

/// What `/healthz` and `/readyz` check.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Check {
    /// The consume loop: not stalled with lag to serve.
    Consumer,
    /// The broker, the bucket, the database: whatever the service needs.
    Dependencies,
}

#[derive(Clone)]
struct OpsState {
    readiness: Arc<dyn Readiness>,
    consumer: Option<ConsumerHealth>,
}

/// Liveness: the service's own loop only, never its dependencies. The Kubernetes manifests'
/// liveness probes use it (`e2e/tests/deploy.rs` holds them to these paths).
pub const LIVENESS_PATH: &str = "/healthz";
/// Readiness: the dependencies answer and the consume loop is making progress.
pub const READINESS_PATH: &str = "/readyz";

/// `/healthz` and `/readyz` of a worker; `consumer` is its consume loop's health.
pub fn router(readiness: Arc<dyn Readiness>, consumer: Option<ConsumerHealth>) -> Router {
    Router::new()
        .route(LIVENESS_PATH, get(healthz))
        .route(READINESS_PATH, get(readyz))
        .with_state(OpsState {
            readiness,
            consumer,
        })
}

fn answer(
    ok: &'static str,
    failed: &'static str,
    failing: Option<Check>,
) -> (StatusCode, Json<Status>) {
    let code = match failing {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let status = if failing.is_none() { ok } else { failed };
    (code, Json(Status { status, failing }))
}

async fn healthz(State(state): State<OpsState>) -> (StatusCode, Json<Status>) {
    let failing = match state.consumer.as_ref().map(ConsumerHealth::live) {
        Some(Err(stall)) => {
            tracing::error!(
                reason = %stall.reason, stalled_secs = stall.for_secs,
                "liveness check failed: consumer stalled"
            );
            Some(Check::Consumer)
        }
        _ => None,
    };
    answer("ok", "stalled", failing)
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, Json<Status>) {
    let consumer = state.consumer.as_ref().map(ConsumerHealth::ready);
    let failing = if let Some(Err(stall)) = consumer {
        tracing::warn!(
            reason = %stall.reason, stalled_secs = stall.for_secs,
            "not ready: consumer stalled"
        );
        Some(Check::Consumer)
    } else if let Err(down) = state.readiness.check().await {
        tracing::warn!(
            dependency = %down.dependency, error = %down.source,
            "not ready: a dependency does not answer"
        );
        Some(Check::Dependencies)
    } else {
        None
    };
    answer("ready", "not-ready", failing)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// A token cancelled on SIGINT or SIGTERM: what every `main` hands its service.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            token.cancel();
        }
    });
    token
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Answers as configured; a failure's text names a user, which must not reach the answer.
    struct Dependencies(bool);

    impl Readiness for Dependencies {
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), DependencyDown>> + Send + '_>> {
            let up = self.0;
            Box::pin(async move {
                match up {
                    true => Ok(()),
                    false => Err(DependencyDown::new(
                        Dependency::Database,
                        "password authentication failed for user \"imgpipe\"",
                    )),
                }
            })
        }
    }

    fn state(dependencies_up: bool, consumer: Option<ConsumerHealth>) -> State<OpsState> {
        State(OpsState {
            readiness: Arc::new(Dependencies(dependencies_up)),
            consumer,
        })
    }

    fn body(answer: (StatusCode, Json<Status>)) -> (u16, String) {
        let (code, Json(status)) = answer;
        (code.as_u16(), serde_json::to_string(&status).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_the_failing_check_and_never_the_error() {
        assert_eq!(
            body(readyz(state(true, None)).await),
            (200, r#"{"status":"ready"}"#.to_string())
        );
        assert_eq!(
            body(readyz(state(false, None)).await),
            (
                503,
                r#"{"status":"not-ready","failing":"dependencies"}"#.to_string()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_consumer_fails_readiness_then_liveness() {
        let stall_after = Duration::from_secs(30);
        let health = ConsumerHealth::new(stall_after);
        health.set_assignment([]);
        tokio::time::advance(stall_after).await;
        health.record_lag([(0, 5)]);
        let not_ready = (
            503,
            r#"{"status":"not-ready","failing":"consumer"}"#.to_string(),
        );
        assert_eq!(
            body(readyz(state(true, Some(health.clone()))).await),
            not_ready
        );
        assert_eq!(
            body(healthz(state(true, Some(health.clone()))).await),
            (200, r#"{"status":"ok"}"#.to_string())
        );
        tokio::time::advance(stall_after * crate::consume::health::LIVENESS_FACTOR).await;
        health.record_lag([(0, 5)]);
        assert_eq!(
            body(healthz(state(true, Some(health))).await),
            (
                503,
                r#"{"status":"stalled","failing":"consumer"}"#.to_string()
            )
        );
    }
}
