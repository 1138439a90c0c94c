//! Child processes and their supervision: start, restart with back-off when
//! one dies, stop on request, add and remove children at runtime, stop all
//! with SIGTERM (then SIGKILL after a grace period).
//!
//! Each child has a desired state: `Run` (restart whenever it dies),
//! `Stopped` (an operator stopped it with `ctl kill`; stays down until
//! `ctl start`) or `Removed` (scaled away; terminated and forgotten).
//! Each child's pid is written to `<run_dir>/<name>.pid` while it runs, so
//! operators and tests can signal a single process.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// The role (`web`, `worker`, `lb`), for `ps` and `scale`.
    pub role: String,
    /// Where it serves, for `ps`.
    pub addr: Option<std::net::SocketAddr>,
    /// The program; `None` is the scalestack binary itself.
    pub program: Option<PathBuf>,
    pub args: Vec<OsString>,
}

impl ChildSpec {
    /// A child called `name` of `role` started with `args`.
    pub fn new(name: &str, role: &str, addr: Option<std::net::SocketAddr>, args: Vec<OsString>) -> Self {
        ChildSpec {
            name: name.to_owned(),
            role: role.to_owned(),
            addr,
            program: None,
            args,
        }
    }

    /// The same, running another program (an engine such as redis-server).
    pub fn program(mut self, program: PathBuf) -> Self {
        self.program = Some(program);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Run,
    Stopped,
    Removed,
}

/// One child as `ctl ps` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChildStatus {
    pub name: String,
    pub role: String,
    pub addr: Option<std::net::SocketAddr>,
    /// `running`, `restarting`, `stopped` or `exited`.
    pub state: String,
    pub pid: Option<u32>,
    /// Unplanned restarts so far.
    pub restarts: u64,
    /// Unix seconds of the current process's start.
    pub since: Option<u64>,
}

struct Child {
    desired: watch::Sender<Desired>,
    status: Arc<Mutex<ChildStatus>>,
    task: JoinHandle<()>,
}

/// Why a supervisor operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SupervisorError {
    #[error("no process named {0:?}")]
    Unknown(String),
    #[error("a process named {0:?} already exists")]
    Exists(String),
}

/// Running supervision of a changing set of children.
pub struct Supervisor {
    exe: PathBuf,
    run_dir: PathBuf,
    children: Mutex<BTreeMap<String, Child>>,
}

impl Supervisor {
    /// Starts every child and its supervision loop.
    pub fn start(exe: PathBuf, run_dir: PathBuf, specs: Vec<ChildSpec>) -> Self {
        let s = Supervisor {
            exe,
            run_dir,
            children: Mutex::new(BTreeMap::new()),
        };
        for spec in specs {
            let _ = s.add(spec);
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new child.
    pub fn add(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        let mut children = self.lock();
        if children.contains_key(&spec.name) {
            return Err(SupervisorError::Exists(spec.name));
        }
        let (desired, rx) = watch::channel(Desired::Run);
        let status = Arc::new(Mutex::new(ChildStatus {
            name: spec.name.clone(),
            role: spec.role.clone(),
            addr: spec.addr,
            state: "starting".into(),
            pid: None,
            restarts: 0,
            since: None,
        }));
        let name = spec.name.clone();
        let task = tokio::spawn(supervise(
            self.exe.clone(),
            self.run_dir.clone(),
            spec,
            rx,
            status.clone(),
        ));
        children.insert(
            name,
            Child {
                desired,
                status,
                task,
            },
        );
        Ok(())
    }

    /// Every child, by name.
    pub fn ps(&self) -> Vec<ChildStatus> {
        self.lock()
            .values()
            .map(|c| c.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Names of the children of a role, in order.
    pub fn names_of(&self, role: &str) -> Vec<String> {
        self.ps()
            .into_iter()
            .filter(|c| c.role == role)
            .map(|c| c.name)
            .collect()
    }

    /// Sends `signal` to a child and keeps it down until [`Self::resume`].
    pub fn kill(&self, name: &str, signal: Signal) -> Result<ChildStatus, SupervisorError> {
        let children = self.lock();
        let child = children
            .get(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        child.desired.send_replace(Desired::Stopped);
        let status = child.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(pid) = status.pid {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        tracing::warn!(child = name, ?signal, "stopped by the operator");
        Ok(status)
    }

    /// Starts again a child stopped with [`Self::kill`].
    pub fn resume(&self, name: &str) -> Result<(), SupervisorError> {
        let children = self.lock();
        let child = children
            .get(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        child.desired.send_replace(Desired::Run);
        Ok(())
    }

    /// Terminates a child (SIGTERM, its graceful shutdown) and forgets it.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        let child = self
            .lock()
            .remove(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        child.desired.send_replace(Desired::Removed);
        let _ = child.task.await;
        Ok(())
    }

    /// Stops every child and waits for them, front to back: the load
    /// balancer first (it stops accepting and finishes what it forwards,
    /// while the web servers still answer), then the web servers, then the
    /// workers (each finishing the job in hand), then the rest (the engines
    /// they use).
    pub async fn stop(&self) {
        let mut tiers: std::collections::BTreeMap<u8, Vec<Child>> = Default::default();
        for c in std::mem::take(&mut *self.lock()).into_values() {
            let rank = match c.status.lock().unwrap_or_else(|e| e.into_inner()).role.as_str() {
                "lb" => 0,
                "web" => 1,
                "worker" => 2,
                _ => 3,
            };
            tiers.entry(rank).or_default().push(c);
        }
        for tier in tiers.into_values() {
            for c in &tier {
                c.desired.send_replace(Desired::Removed);
            }
            for c in tier {
                let _ = c.task.await;
            }
        }
    }
}

fn command(exe: &PathBuf, spec: &ChildSpec) -> Command {
    let mut cmd = Command::new(spec.program.as_ref().unwrap_or(exe));
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

fn set(status: &Mutex<ChildStatus>, f: impl FnOnce(&mut ChildStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn supervise(
    exe: PathBuf,
    run_dir: PathBuf,
    spec: ChildSpec,
    mut desired: watch::Receiver<Desired>,
    status: Arc<Mutex<ChildStatus>>,
) {
    let pid_file = run_dir.join(format!("{}.pid", spec.name));
    let mut backoff = FIRST_BACKOFF;
    loop {
        let now = *desired.borrow_and_update();
        match now {
            Desired::Removed => break,
            Desired::Stopped => {
                set(&status, |s| {
                    s.state = "stopped".into();
                    s.pid = None;
                });
                if desired.changed().await.is_err() {
                    break;
                }
                continue;
            }
            Desired::Run => {}
        }
        let started = Instant::now();
        let mut child = match command(&exe, &spec).spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(child = %spec.name, error = %e, "cannot start child");
                set(&status, |s| s.state = "restarting".into());
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        set(&status, |s| {
            s.state = "running".into();
            s.pid = Some(pid);
            s.since = Some(unix_now());
        });
        tracing::info!(child = %spec.name, pid, "child started");
        // Wait for the process to end, or to be told to remove it.
        let exit = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                changed = desired.changed() => {
                    if changed.is_err() || *desired.borrow() == Desired::Removed {
                        terminate(&spec.name, &mut child).await;
                        break None;
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        let Some(exit) = exit else { break };
        set(&status, |s| s.pid = None);
        if *desired.borrow() != Desired::Run {
            continue;
        }
        backoff = if started.elapsed() >= HEALTHY_RUN {
            FIRST_BACKOFF
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        set(&status, |s| {
            s.state = "restarting".into();
            s.restarts += 1;
        });
        tracing::warn!(child = %spec.name, pid, status = ?exit.ok(), restart_in_ms = backoff.as_millis() as u64, "child exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = desired.changed() => {}
        }
    }
    set(&status, |s| {
        s.state = "exited".into();
        s.pid = None;
    });
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
