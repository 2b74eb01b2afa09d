use anyhow::Context;
use imgpipe_processor::{Config, Processor};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let processor = Processor::build(&config)
        .await
        .context("starting the processor")?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            imgpipe_infra::ops::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    processor
        .run(shutdown)
        .await
        .context("running the processor")
}
