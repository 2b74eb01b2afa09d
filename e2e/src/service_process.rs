//! The one way a test runs a service as a process of its own, so it can SIGKILL it: the test
//! executable again, running [`run_service_from_env`] from an ignored `#[test] fn
//! service_child()`, which does what the service's `main` does.
//!
//! The service binaries themselves are not used: e2e cannot name them with `CARGO_BIN_EXE_*`
//! (another package's), `cargo test -p imgpipe-e2e` does not build them, and the copies in a
//! shared target dir may be another worktree's build.
// A test harness: a setup step that fails is the test failing, with the panic saying where.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Names the service a child process runs.
pub const CHILD_ENV: &str = "IMGPIPE_E2E_CHILD";

/// Runs the service named by [`CHILD_ENV`] (`ingest`, `processor` or `projector`) as its
/// `main` does, until SIGTERM; does nothing when the variable is unset. A test that starts
/// [`ServiceProcess`]es calls it from an ignored `#[test] fn service_child()`, since the child
/// is that test executable again.
pub fn run_service_from_env() {
    let Ok(service) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let shutdown = imgpipe_infra::ops::shutdown_token();
        match service.as_str() {
            "ingest" => {
                let config = imgpipe_ingest::Config::from_env().expect("ingest config");
                imgpipe_infra::telemetry::init(&config.log);
                let app = imgpipe_ingest::Application::build(&config)
                    .await
                    .expect("ingest builds");
                app.run(shutdown).await.expect("ingest runs");
            }
            "processor" => {
                let config = imgpipe_processor::Config::from_env().expect("processor config");
                imgpipe_infra::telemetry::init(&config.log);
                let processor = imgpipe_processor::Processor::build(&config)
                    .await
                    .expect("processor builds");
                processor.run(shutdown).await.expect("processor runs");
            }
            "projector" => {
                let config = imgpipe_projector::Config::from_env().expect("projector config");
                imgpipe_infra::telemetry::init(&config.log);
                let projector = imgpipe_projector::Projector::build(&config)
                    .await
                    .expect("projector builds");
                projector.run(shutdown).await.expect("projector runs");
            }
            other => panic!("unknown service {other}"),
        }
    });
}

/// Where a service process's output goes.
#[derive(Debug, Clone)]
pub enum ServiceOutput {
    /// Stdout and stderr appended to this file, across restarts.
    LogFile(PathBuf),
    /// Stderr to the test's own (so a failing run shows it), stdout dropped.
    TestStderr,
}

/// A service process, SIGKILLed when dropped so a failing test leaves none behind.
pub struct ServiceProcess {
    name: &'static str,
    env: Vec<(String, String)>,
    output: ServiceOutput,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `name` (see [`run_service_from_env`]) with `env` on top of the test's own
    /// environment.
    pub fn start(name: &'static str, env: Vec<(String, String)>, output: ServiceOutput) -> Self {
        let mut service = Self {
            name,
            env,
            output,
            child: None,
        };
        service.spawn();
        service
    }

    /// Starts the process again (after [`ServiceProcess::kill`]).
    pub fn spawn(&mut self) {
        let (stdout, stderr) = match &self.output {
            ServiceOutput::LogFile(path) => {
                let log = std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                (Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
            }
            ServiceOutput::TestStderr => (Stdio::null(), Stdio::inherit()),
        };
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "service_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, self.name)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no offset commit, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
