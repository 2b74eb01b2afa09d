use anyhow::Context;
use imgpipe_webhooks::{Config, Webhooks};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let webhooks = Webhooks::build(&config)
        .await
        .context("starting the webhooks service")?;
    webhooks
        .run(imgpipe_infra::ops::shutdown_token())
        .await
        .context("running the webhooks service")
}
