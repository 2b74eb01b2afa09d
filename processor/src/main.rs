use anyhow::Context;
use imgpipe_processor::{Config, Processor};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let processor = Processor::build(&config)
        .await
        .context("starting the processor")?;
    processor
        .run(imgpipe_infra::ops::shutdown_token())
        .await
        .context("running the processor")
}
