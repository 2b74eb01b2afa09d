use anyhow::Context;
use imgpipe_projector::{Config, Projector};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let projector = Projector::build(&config)
        .await
        .context("starting the projector")?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            imgpipe_infra::ops::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    projector
        .run(shutdown)
        .await
        .context("running the projector")
}
