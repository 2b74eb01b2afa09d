use anyhow::Context;
use imgpipe_projector::{Config, Projector};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let projector = Projector::build(&config)
        .await
        .context("starting the projector")?;
    projector
        .run(imgpipe_infra::ops::shutdown_token())
        .await
        .context("running the projector")
}
