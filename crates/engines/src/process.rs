//! Engine processes: spawning them so they never outlive their owner,
//! signalling them, waiting for them to go, and reading their log files.

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How much of a log file the error messages quote, at most.
const TAIL_BYTES: u64 = 8 * 1024;

/// Ties `cmd`'s process to us: it is SIGKILLed when its [`Child`] handle is
/// dropped, and sent `death_signal` when the thread that spawned it exits.
pub(crate) fn tie_to_owner(cmd: &mut Command, death_signal: Signal) {
    cmd.kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the async-signal-safe prctl(2) call. It runs after the uid and gid
    // changes that `Command::uid`/`gid` make, which would otherwise clear the
    // parent-death signal.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(death_signal)).map_err(std::io::Error::from)
        });
    }
}

fn nix_pid(pid: u32) -> anyhow::Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?,
    ))
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    match kill(nix_pid(pid)?, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
    }
}

/// Whether a process `pid` exists (a zombie counts).
pub(crate) fn alive(pid: u32) -> bool {
    match nix_pid(pid) {
        Ok(p) => matches!(kill(p, None), Ok(()) | Err(Errno::EPERM)),
        Err(_) => false,
    }
}

/// Whether `child` has exited, reaping it if so. An error (the handle no
/// longer knows the process) counts as exited.
pub(crate) fn has_exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// Waits, blocking the thread, until `child` exits and is reaped; `false`
/// when it still runs after `timeout`. For `Drop` and other sync contexts,
/// after a signal that ends the process promptly.
pub(crate) fn reap_blocking(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if has_exited(child) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `child` exits; `false` after `timeout`.
pub(crate) async fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, child.wait()).await.is_ok()
}

/// Waits until the process `pid`, which is not our child, is gone; `false`
/// after `timeout`.
pub(crate) async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn accepts_tcp(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}

/// Opens (creating it) the log file an engine's stdout and stderr append to.
pub(crate) fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))
}

/// The last `lines` lines of the log file at `path` (from its last 8 KiB),
/// indented for quoting in an error message; a note if it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let tail: Vec<String> = all[start..].iter().map(|l| format!("    {l}")).collect();
            format!("last lines of {}:\n{}", path.display(), tail.join("\n"))
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_quotes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert!(tail.ends_with("    line 98\n    line 99\n    line 100"), "{tail}");
        assert!(log_tail(&dir.path().join("missing.log"), 3).contains("unreadable"));
    }

    #[test]
    fn a_process_that_does_not_exist_is_not_alive() {
        assert!(alive(std::process::id()));
        // Pids are below 2^22 on Linux.
        assert!(!alive(i32::MAX as u32));
        signal(i32::MAX as u32, Signal::SIGTERM).unwrap();
    }
}

/// The one process of a server engine we started (Redis, NATS): spawned
/// tied to us with its output in a log file, signalled, stopped and reaped.
/// Dropping it kills the process (SIGKILL).
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// `redis`, `nats`: how logs and errors name the engine.
    engine: &'static str,
    name: String,
    child: std::sync::Mutex<Option<Child>>,
}

impl ServerProcess {
    /// No process yet.
    pub(crate) fn new(engine: &'static str, name: &str) -> Self {
        ServerProcess {
            engine,
            name: name.to_owned(),
            child: std::sync::Mutex::new(None),
        }
    }

    /// Spawns `cmd` with stdin closed and stdout and stderr appended to
    /// `log`, tied to us (SIGTERM when the spawning thread exits).
    pub(crate) fn spawn(&self, mut cmd: Command, log: &Path, port: u16) -> anyhow::Result<()> {
        let log = open_log(log)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        tie_to_owner(&mut cmd, Signal::SIGTERM);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", cmd.as_std().get_program().to_string_lossy()))?;
        tracing::info!(node = %self.name, pid = ?child.id(), port, "{} started", self.engine);
        *self.lock() = Some(child);
        Ok(())
    }

    /// How the process ended, if it has (it stays reapable by `stop`).
    pub(crate) fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.lock().as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The pid while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut child = self.lock();
        let running = child.as_mut()?;
        if has_exited(running) {
            *child = None;
            return None;
        }
        running.id()
    }

    /// SIGKILL (a real crash), and reaped: its ports refuse connections
    /// when this returns.
    pub(crate) fn kill9(&self) -> anyhow::Result<()> {
        let Some(mut child) = self.lock().take() else {
            anyhow::bail!("{} {} is not running", self.engine, self.name);
        };
        if let Some(pid) = child.id() {
            signal(pid, Signal::SIGKILL)?;
        }
        reap_blocking(&mut child, Duration::from_secs(5));
        tracing::info!(node = %self.name, "{} killed", self.engine);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `timeout` (an error then). Nothing if it
    /// is not running.
    pub(crate) async fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.lock().take() else {
            return Ok(());
        };
        let Some(pid) = child.id() else {
            return Ok(()); // already reaped
        };
        signal(pid, Signal::SIGTERM)?;
        if !wait_exit(&mut child, timeout).await {
            signal(pid, Signal::SIGKILL)?;
            let _ = child.wait().await;
            anyhow::bail!(
                "{} {} ignored SIGTERM for {timeout:?} and was killed",
                self.engine,
                self.name
            );
        }
        tracing::info!(node = %self.name, "{} stopped", self.engine);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(pid) = child.id() {
                let _ = signal(pid, Signal::SIGKILL);
            }
            reap_blocking(&mut child, Duration::from_secs(2));
        }
    }
}
