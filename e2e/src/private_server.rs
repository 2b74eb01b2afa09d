//! A stack tool (Tansu, s3s-fs, PostgreSQL) that a test runs on its own free port and
//! directory, so it can kill and restart it without disturbing the shared stack every other
//! test uses.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The command line for a port and a data directory.
type CommandLine = Box<dyn Fn(u16, &Path) -> Vec<OsString> + Send + Sync>;

/// One private server process. Dropping it kills the process, also when the test panics (then
/// its directory and log are kept for a look).
pub struct PrivateServer {
    tool: &'static str,
    program: PathBuf,
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
        command_line: impl Fn(u16, &Path) -> Vec<OsString> + Send + Sync + 'static,
    ) -> Self {
        Self::start_program(tool, tool_path(tool), command_line)
    }

    /// Like [`PrivateServer::start`], with the program named by its path.
    pub fn start_program(
        tool: &'static str,
        program: PathBuf,
        command_line: impl Fn(u16, &Path) -> Vec<OsString> + Send + Sync + 'static,
    ) -> Self {
        let dir = private_dir(tool);
        let mut server = Self::new(tool, program, dir, Box::new(command_line));
        server.spawn();
        server
    }

    /// A Tansu broker of the test's own, storing into its private directory (Tansu resolves a
    /// sqlite path against its working directory).
    pub fn tansu() -> Self {
        Self::start("tansu", |port, _| {
            let listener = format!("tcp://127.0.0.1:{port}");
            [
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
                "--storage-engine",
                "sqlite://tansu.db",
            ]
            .into_iter()
            .map(Into::into)
            .collect()
        })
    }

    /// An s3s-fs of the test's own, with `scripts/stack`'s command line and credentials.
    pub fn s3s_fs() -> Self {
        Self::start("s3s-fs", |port, dir| {
            let data = dir.join("data");
            std::fs::create_dir_all(&data).expect("the private store's data directory");
            let port = port.to_string();
            ["--host", "127.0.0.1", "--port", &port]
                .into_iter()
                .chain([
                    "--access-key",
                    "imgpipe",
                    "--secret-key",
                    "imgpipe-local-secret",
                ])
                .map(Into::into)
                .chain([data.into_os_string()])
                .collect()
        })
    }

    /// A PostgreSQL server of the test's own (trust authentication, user `postgres`, database
    /// `postgres`), from the machine's PostgreSQL binaries.
    pub fn postgres() -> Self {
        let bin = postgres_bin_dir();
        let dir = private_dir("postgres");
        let user = PostgresUser::owning(&dir);
        let output = user
            .command(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (program, leading) = user.invocation(bin.join("postgres"));
        let command_line = move |port: u16, dir: &Path| -> Vec<OsString> {
            let mut args = leading.clone();
            args.extend(postgres_args(port, dir));
            args
        };
        let mut server = Self::new("postgres", program, dir, Box::new(command_line));
        server.spawn();
        server
    }

    fn new(tool: &'static str, program: PathBuf, dir: PathBuf, command_line: CommandLine) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        Self {
            tool,
            program,
            dir,
            port,
            command_line,
            process: None,
        }
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

    /// How many times the server's log says it panicked. A Tansu 0.6 task can panic and leave
    /// the process listening but failing every request, as a supervisor's liveness probe would
    /// catch.
    pub fn panics_logged(&self) -> usize {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.tool)))
            .map(|log| log.matches("panicked at").count())
            .unwrap_or(0)
    }

    /// Whether the process has exited by itself (a server that refused to start, say).
    pub fn exited(&mut self) -> bool {
        self.process
            .as_mut()
            .is_none_or(|process| !matches!(process.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) {
        let binary = self.program.clone();
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

fn private_dir(tool: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imgpipe-{tool}-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("creating the private server's directory");
    dir
}

/// Who runs the private PostgreSQL's programs: this user, or, as root, the `postgres` user
/// through `setpriv` (PostgreSQL refuses root); `setpriv` execs, so a SIGKILL reaches the
/// server itself.
struct PostgresUser {
    /// `setpriv`'s arguments, as root.
    setpriv: Option<Vec<OsString>>,
}

impl PostgresUser {
    /// The user for a server in `dir`; as root, `dir` is given to the `postgres` user.
    fn owning(dir: &Path) -> Self {
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0"));
        if !as_root {
            return Self { setpriv: None };
        }
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown of the private database's directory");
        assert!(status.success(), "chown failed");
        let setpriv = [
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
            "--",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        Self {
            setpriv: Some(setpriv),
        }
    }

    /// The program to start, and the arguments before `program`'s own, to run `program` as
    /// this user.
    fn invocation(&self, program: PathBuf) -> (PathBuf, Vec<OsString>) {
        match &self.setpriv {
            Some(setpriv) => {
                let mut args = setpriv.clone();
                args.push(program.into());
                (PathBuf::from("setpriv"), args)
            }
            None => (program, Vec::new()),
        }
    }

    fn command(&self, program: PathBuf) -> Command {
        let (program, args) = self.invocation(program);
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

/// The server's own arguments: its data in `dir/data`, its socket in `dir`, loopback only,
/// and no fsync (its data must survive the server's SIGKILL, not the machine's crash).
fn postgres_args(port: u16, dir: &Path) -> Vec<OsString> {
    [
        "-D".into(),
        dir.join("data").into_os_string(),
        "-p".into(),
        port.to_string().into(),
        "-k".into(),
        dir.as_os_str().to_owned(),
    ]
    .into_iter()
    .chain(
        [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]
        .map(OsString::from),
    )
    .collect()
}

/// The newest PostgreSQL's binaries (Debian: `/usr/lib/postgresql/<major>/bin`).
fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(root)
        .expect("PostgreSQL's binaries in /usr/lib/postgresql (scripts/stack installs them)")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors
        .last()
        .expect("a PostgreSQL version in /usr/lib/postgresql");
    root.join(major.to_string()).join("bin")
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
