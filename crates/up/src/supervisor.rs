//! Child processes and their supervision: start, restart with back-off when
//! one dies, stop all with SIGTERM (then SIGKILL after a grace period).
//!
//! Each child's pid is written to `<run_dir>/<name>.pid` while it runs, so
//! operators and tests can signal a single process.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Grace period between SIGTERM and SIGKILL at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before dying restarts without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// What to run for one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub args: Vec<OsString>,
}

impl ChildSpec {
    /// A child called `name` started with `args`.
    pub fn new(name: &str, args: Vec<OsString>) -> Self {
        ChildSpec {
            name: name.to_owned(),
            args,
        }
    }
}

/// Running supervision of a set of children.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts every child and its supervision loop.
    pub fn start(exe: PathBuf, run_dir: PathBuf, specs: Vec<ChildSpec>) -> Self {
        let (stop, rx) = watch::channel(false);
        let tasks = specs
            .into_iter()
            .map(|spec| tokio::spawn(supervise(exe.clone(), run_dir.clone(), spec, rx.clone())))
            .collect();
        Supervisor { stop, tasks }
    }

    /// Stops every child (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and
    /// waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn command(exe: &PathBuf, spec: &ChildSpec) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(&spec.args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        // Own process group: a Ctrl-C in the terminal reaches `up` alone,
        // which then stops the children in order instead of racing them.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the async-signal-safe prctl(2) call.
    unsafe {
        cmd.pre_exec(|| {
            // A child must not outlive `up`, even when `up` is SIGKILLed.
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)).map_err(std::io::Error::from)
        });
    }
    cmd
}

async fn supervise(exe: PathBuf, run_dir: PathBuf, spec: ChildSpec, mut stop: watch::Receiver<bool>) {
    let pid_file = run_dir.join(format!("{}.pid", spec.name));
    let mut backoff = FIRST_BACKOFF;
    let mut starts = 0u64;
    while !*stop.borrow() {
        let started = Instant::now();
        let mut child = match command(&exe, &spec).spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(child = %spec.name, error = %e, "cannot start child");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        starts += 1;
        let pid = child.id().unwrap_or(0);
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        tracing::info!(child = %spec.name, pid, starts, "child started");
        tokio::select! {
            status = child.wait() => {
                let _ = std::fs::remove_file(&pid_file);
                if *stop.borrow() {
                    break;
                }
                backoff = if started.elapsed() >= HEALTHY_RUN { FIRST_BACKOFF } else { (backoff * 2).min(MAX_BACKOFF) };
                tracing::warn!(child = %spec.name, pid, status = ?status.ok(), restart_in_ms = backoff.as_millis() as u64, "child exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
            _ = stop.changed() => {
                terminate(&spec.name, &mut child).await;
                let _ = std::fs::remove_file(&pid_file);
                break;
            }
        }
    }
}

async fn terminate(name: &str, child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => tracing::info!(child = name, pid, status = ?status.ok(), "child stopped"),
        Err(_) => {
            tracing::warn!(child = name, pid, "child ignored SIGTERM; killing");
            let _ = child.kill().await;
        }
    }
}
