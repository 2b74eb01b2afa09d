use anyhow::Context;
use imgpipe_ingest::{Application, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let app = Application::build(&config)
        .await
        .context("starting ingest")?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            imgpipe_infra::ops::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    app.run(shutdown).await.context("serving")
}
