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

/// Checks a service's dependencies; `Err` carries what is not reachable.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
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

/// `/healthz` and `/readyz` of a worker; `consumer` is its consume loop's health.
pub fn router(readiness: Arc<dyn Readiness>, consumer: Option<ConsumerHealth>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
        Some(Err(error)) => {
            tracing::error!(error = %error, "liveness check failed");
            Some(Check::Consumer)
        }
        _ => None,
    };
    answer("ok", "stalled", failing)
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, Json<Status>) {
    let consumer = state.consumer.as_ref().map(ConsumerHealth::ready);
    let failing = if let Some(Err(error)) = consumer {
        tracing::warn!(error = %error, "not ready");
        Some(Check::Consumer)
    } else if let Err(error) = state.readiness.check().await {
        tracing::warn!(error = %error, "not ready");
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
