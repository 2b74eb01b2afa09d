//! What every consuming worker (processor, projector, webhook deliverer) runs beside its
//! consume loop, started and stopped the one way: the ops endpoint (`/healthz`, `/readyz`,
//! `/metrics`), the metrics' upkeep, and the lag reporter that feeds the consumer's health.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consume::health::HealthSnapshot;
use crate::consume::lag::{self, Positions};
use crate::consume::ConsumerHealth;
use crate::log_reader::LogReader;
use crate::ops::{self, Readiness};

/// What the side tasks need.
pub struct Sidecars<P> {
    pub ops_listener: TcpListener,
    pub readiness: Arc<dyn Readiness>,
    pub health: ConsumerHealth,
    pub metrics: PrometheusHandle,
    /// Reads the partitions' ends; `positions` says where the group stands.
    pub lag_reader: LogReader,
    pub positions: P,
}

/// The running side tasks.
pub struct Running {
    ops: JoinHandle<std::io::Result<()>>,
    upkeep: JoinHandle<()>,
    lag: Option<JoinHandle<()>>,
    stop_lag: CancellationToken,
}

impl<P: Positions> Sidecars<P> {
    /// Starts them; the ops endpoint and the upkeep end with `shutdown`, the lag reporter with
    /// it or with [`Running::stop`]. `record` puts each health snapshot into the service's
    /// metrics.
    pub fn start(
        self,
        record: impl Fn(&HealthSnapshot) + Send + 'static,
        shutdown: &CancellationToken,
    ) -> Running {
        let ops = tokio::spawn(ops::serve(
            self.ops_listener,
            ops::router(self.readiness, Some(self.health.clone()))
                .merge(crate::metrics::router(self.metrics.clone())),
            shutdown.clone(),
        ));
        let upkeep = tokio::spawn(crate::metrics::upkeep(self.metrics, shutdown.clone()));
        let stop_lag = shutdown.child_token();
        let lag = tokio::spawn(lag::report_lag(
            self.lag_reader,
            self.positions,
            self.health,
            record,
            stop_lag.clone(),
        ));
        Running {
            ops,
            upkeep,
            lag: Some(lag),
            stop_lag,
        }
    }
}

impl Running {
    /// Stops the lag reporter (it may read a pool the caller closes next) and waits for it.
    pub async fn stop_lag(&mut self) {
        self.stop_lag.cancel();
        if let Some(lag) = self.lag.take() {
            let _ = lag.await;
        }
    }

    /// Waits for every task to end, once the shutdown began: the lag reporter first.
    pub async fn finish(mut self) {
        self.stop_lag().await;
        let _ = self.upkeep.await;
        if let Ok(Err(error)) = self.ops.await {
            tracing::warn!(error = %error, "ops endpoint stopped with an error");
        }
    }
}
