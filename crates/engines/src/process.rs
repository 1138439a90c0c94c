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
