//! Running the real `coordinator` and `gate-sidecar` binaries as child processes.
//!
//! Binaries are looked up next to the running executable (`target/<profile>/`), which is where
//! `cargo test --workspace` and `cargo build` put them. Each child's stderr goes to a log file in
//! the scenario's work directory, so a failing run can be read afterwards.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The directory holding the workspace's binaries for the profile this program was built with.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    // Test executables live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a workspace binary, failing with a hint when it has not been built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` (same profile) first",
            path.display()
        );
    }
    Ok(path)
}

/// Builds the coordinator and sidecar binaries with the same profile as this program. Only for
/// programs started by `cargo run` (cargo releases its lock before running them).
pub fn build_binaries(release: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "sluice-coordinator",
        "-p",
        "sluice-gate-sidecar",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of the coordinator and sidecar failed: {status}");
    }
    Ok(())
}

/// A free loopback TCP port (bound and released; good enough for tests on one machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Process ids of the live [`Proc`]s, for [`end_children_on_signal`].
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Makes SIGINT and SIGTERM end every live [`Proc`] before this process exits (status 130):
/// a signal skips destructors, so without this a benchmark stopped by `kill` or Ctrl-C would
/// leave its coordinator, sidecars and broker running. For binaries; call once at start.
pub fn end_children_on_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        let name = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        });
        let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        eprintln!("{name}: ending {} child process(es)", pids.len());
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(130);
    });
    Ok(())
}

/// A child process that is killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `program args`, stderr and stdout appended to `log`, `RUST_LOG` from
    /// `SLUICE_CHILD_LOG` (default `info`).
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let level = std::env::var("SLUICE_CHILD_LOG").unwrap_or("info".into());
        Self::spawn_logging(name, program, args, log, &level)
    }

    /// [`Proc::spawn`] with `RUST_LOG=level`.
    pub fn spawn_logging(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        level: &str,
    ) -> Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(child.id());
        }
        Ok(Self {
            name: name.into(),
            child,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&pid| pid != self.child.id());
        }
    }

    /// The exit status if the process has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited unexpectedly: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_tcp(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until a Unix socket file exists and accepts connections.
pub fn wait_for_unix(path: &Path, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {} after {within:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs `scripts/<name>` (an install script: cached, safe to run concurrently) and returns what
/// it printed, trimmed (a path or classpath); `what` names the step in the error.
pub fn install_script(name: &str, what: &str) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
