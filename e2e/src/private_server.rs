//! A stack tool (Tansu, s3s-fs) that a test runs on its own free port and directory, so it can
//! kill and restart it without disturbing the shared stack every other test uses.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The command line for a port and a data directory.
type CommandLine = Box<dyn Fn(u16, &Path) -> Vec<OsString> + Send>;

/// One private server process. Dropping it kills the process, also when the test panics (then
/// its directory and log are kept for a look).
pub struct PrivateServer {
    tool: &'static str,
    dir: PathBuf,
    port: u16,
    command_line: CommandLine,
    process: Option<Child>,
}

impl PrivateServer {
    /// Starts `tool` (from where `scripts/stack` installs it) in a fresh directory, which is
    /// also its working directory, with `command_line(port, dir)`.
    pub fn start(
        tool: &'static str,
        command_line: impl Fn(u16, &Path) -> Vec<OsString> + Send + 'static,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("imgpipe-{tool}-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("creating the private server's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            tool,
            dir,
            port,
            command_line: Box::new(command_line),
            process: None,
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An outage as abrupt as a crash: SIGKILL, no goodbye to the clients.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Restarts on the same port with the same directory, so its data is back.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until the port accepts connections (not yet that the server answers requests).
    pub async fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "private {} not listening after 30 s (log in {})",
                self.tool,
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self) {
        let binary = tool_path(self.tool);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.tool)))
            .expect("opening the private server's log");
        let stderr = log.try_clone().expect("cloning the log handle");
        let process = Command::new(&binary)
            .current_dir(&self.dir)
            .args((self.command_line)(self.port, &self.dir))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} (scripts/stack up installs it): {e}",
                    binary.display()
                )
            });
        self.process = Some(process);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "private {}'s data and log kept in {}",
                self.tool,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where `scripts/stack` installs its tools: `$IMGPIPE_TOOLS_DIR/bin`, by default
/// `~/.cache/imgpipe/tools/bin`.
pub fn tool_path(tool: &str) -> PathBuf {
    let tools = std::env::var_os("IMGPIPE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("imgpipe/tools")
        });
    tools.join("bin").join(tool)
}
