use anyhow::Context;
use imgpipe_ingest::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("reading configuration")?;
    imgpipe_infra::telemetry::init(&config.log);
    let app = Application::build(&config)
        .await
        .context("starting ingest")?;
    app.run(imgpipe_infra::ops::shutdown_token())
        .await
        .context("serving")
}
