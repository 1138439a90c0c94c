//! The one supervisor of every component's process (the scalestack roles
//! and the engines alike): start, restart with one back-off policy when one
//! dies, stop on request, add and remove children at runtime, stop all in
//! reverse dependency order with each child's stop signal (then SIGKILL
//! after its grace period).
//!
//! Each child has a desired state: `Run` (restart whenever it dies; a
//! component restarted by a controller waits for its word first),
//! `Stopped` (an operator stopped it with `ctl kill`, or a controller
//! fenced it; stays down until `ctl start` / [`Supervisor::resume`]) or
//! `Removed` (scaled away; terminated and forgotten).
//! Each child's pid is written to `<run_dir>/<name>.pid` while it runs, so
//! operators and tests can signal a single process.

use crate::component::{self, Component, RestartPolicy};
use crate::role::Role;
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

/// Default grace period between the stop signal and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The restart back-off of every child: the delay starts at `first`,
/// doubles after each crash up to `max`, and falls back to `first` after a
/// run of at least `healthy_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Default 200 ms.
    pub first: Duration,
    /// Default 10 s.
    pub max: Duration,
    /// Default 10 s.
    pub healthy_run: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            healthy_run: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before the next start of a child whose previous delay was
    /// `previous` and whose process ran for `ran_for`.
    pub fn next(&self, previous: Duration, ran_for: Duration) -> Duration {
        if ran_for >= self.healthy_run {
            self.first
        } else {
            (previous * 2).clamp(self.first, self.max)
        }
    }
}

/// How a child's process is started.
#[derive(Clone)]
pub enum Launch {
    /// The scalestack binary itself with these arguments.
    Scalestack(Vec<OsString>),
    /// Another program (an engine such as redis-server).
    Program { program: PathBuf, args: Vec<OsString> },
    /// A command an engine prepares anew at each start (postgres, run as
    /// its own user).
    Command(Arc<dyn Fn() -> anyhow::Result<Command> + Send + Sync>),
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Scalestack(args) => f.debug_tuple("Scalestack").field(args).finish(),
            Launch::Program { program, args } => f
                .debug_struct("Program")
                .field("program", program)
                .field("args", args)
                .finish(),
            Launch::Command(_) => f.write_str("Command(..)"),
        }
    }
}

/// What to run for one component.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub component: Component,
    pub launch: Launch,
    /// Sent to stop it (and when `up` dies). Default SIGTERM.
    pub stop_signal: Signal,
    /// How long it may take to stop before a SIGKILL. Default [`STOP_GRACE`].
    pub stop_grace: Duration,
}

impl ChildSpec {
    /// `component` started by `launch`, stopped with SIGTERM.
    pub fn new(component: Component, launch: Launch) -> Self {
        ChildSpec {
            component,
            launch,
            stop_signal: Signal::SIGTERM,
            stop_grace: STOP_GRACE,
        }
    }

    /// The same, stopped with `signal` and given `grace` before a SIGKILL.
    pub fn stopped_with(mut self, signal: Signal, grace: Duration) -> Self {
        self.stop_signal = signal;
        self.stop_grace = grace;
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
    pub role: Role,
    /// The site it runs in.
    #[serde(default)]
    pub site: String,
    pub addr: Option<std::net::SocketAddr>,
    /// `starting`, `running`, `restarting`, `down` (waiting for its
    /// controller), `stopped` or `exited`; a PostgreSQL node shows its
    /// part instead of `running` (`primary`, `replica`, `fenced`).
    pub state: String,
    pub pid: Option<u32>,
    /// Unplanned restarts so far.
    pub restarts: u64,
    /// Unix seconds of the current process's start.
    pub since: Option<u64>,
    /// The control address of the `up` that runs it, when another (a
    /// site's, in the shared `up`'s `ps?everywhere`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<std::net::SocketAddr>,
}

struct Child {
    component: Component,
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

/// The supervisor's counters, registered by whoever builds it.
#[derive(Clone)]
pub struct SupervisorMetrics {
    /// Unplanned restarts per child (`name`, `role`, `site`).
    pub restarts: prometheus::IntCounterVec,
}

impl SupervisorMetrics {
    /// Registers `child_restarts_total` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let restarts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("child_restarts_total", "Unplanned restarts per child process"),
            &["name", "role", "site"],
        )?;
        registry.register(Box::new(restarts.clone()))?;
        Ok(SupervisorMetrics { restarts })
    }
}

/// Running supervision of a changing set of children.
pub struct Supervisor {
    exe: PathBuf,
    run_dir: PathBuf,
    backoff: Backoff,
    metrics: SupervisorMetrics,
    children: Mutex<BTreeMap<String, Child>>,
    /// Bumped whenever a child's state changes, for controllers to wake on.
    events: Arc<watch::Sender<u64>>,
    /// Where a copy of every child's lines goes (`[logs]`); without it the
    /// children write to `up`'s own output directly.
    log_sink: std::sync::OnceLock<Arc<crate::logs::LogSink>>,
}

impl Supervisor {
    /// Sends a copy of the lines of every child started from now on to
    /// `sink` (their output still reaches `up`'s own).
    pub fn ship_logs_to(&self, sink: Arc<crate::logs::LogSink>) {
        let _ = self.log_sink.set(sink);
    }

    /// A supervisor of no children yet; `exe` is the scalestack binary,
    /// `run_dir` where pid files go.
    pub fn new(exe: PathBuf, run_dir: PathBuf, metrics: SupervisorMetrics) -> Self {
        Supervisor {
            exe,
            run_dir,
            backoff: Backoff::default(),
            metrics,
            children: Mutex::new(BTreeMap::new()),
            events: Arc::new(watch::channel(0).0),
            log_sink: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new child and its supervision.
    pub fn add(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        let mut children = self.lock();
        let c = &spec.component;
        if children.contains_key(&c.name) {
            return Err(SupervisorError::Exists(c.name.clone()));
        }
        let (desired, rx) = watch::channel(Desired::Run);
        let status = Arc::new(Mutex::new(ChildStatus {
            name: c.name.clone(),
            role: c.role,
            site: c.site.clone(),
            addr: c.addr,
            state: "starting".into(),
            pid: None,
            restarts: 0,
            since: None,
            via: None,
        }));
        let restarts = self
            .metrics
            .restarts
            .with_label_values(&[&c.name, c.role.as_str(), &c.site]);
        let run = Run {
            exe: self.exe.clone(),
            pid_file: self.run_dir.join(format!("{}.pid", c.name)),
            backoff: self.backoff,
            status: status.clone(),
            restarts,
            events: self.events.clone(),
            log_sink: self.log_sink.get().cloned(),
        };
        let component = spec.component.clone();
        let task = tokio::spawn(run.supervise(spec, rx));
        children.insert(
            component.name.clone(),
            Child {
                component,
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

    /// One child's status.
    pub fn status(&self, name: &str) -> Option<ChildStatus> {
        self.lock()
            .get(name)
            .map(|c| c.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The declaration of every child, by name.
    pub fn components(&self) -> Vec<Component> {
        self.lock().values().map(|c| c.component.clone()).collect()
    }

    /// The declaration of one child.
    pub fn component(&self, name: &str) -> Option<Component> {
        self.lock().get(name).map(|c| c.component.clone())
    }

    /// Names of the children of a role, in order.
    pub fn names_of(&self, role: Role) -> Vec<String> {
        self.lock()
            .values()
            .filter(|c| c.component.role == role)
            .map(|c| c.component.name.clone())
            .collect()
    }

    /// A receiver that changes whenever a child's state does.
    pub fn events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// Sends `signal` to a child and keeps it down until [`Self::resume`].
    pub fn kill(&self, name: &str, signal: Signal) -> Result<ChildStatus, SupervisorError> {
        let status = self.with_child(name, |child| {
            child.desired.send_replace(Desired::Stopped);
        })?;
        if let Some(pid) = status.pid {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        tracing::warn!(child = name, ?signal, "stopped");
        Ok(status)
    }

    /// Sends `signal` to a child and lets its restart policy decide what
    /// follows (a PostgreSQL node: its controller).
    pub fn signal(&self, name: &str, signal: Signal) -> Result<ChildStatus, SupervisorError> {
        let status = self.with_child(name, |_| {})?;
        if let Some(pid) = status.pid {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        tracing::warn!(child = name, ?signal, "signalled");
        Ok(status)
    }

    /// Starts again a child that is stopped, or down waiting for its
    /// controller (after the back-off).
    pub fn resume(&self, name: &str) -> Result<(), SupervisorError> {
        self.with_child(name, |child| {
            child.desired.send_replace(Desired::Run);
        })
        .map(|_| ())
    }

    fn with_child(&self, name: &str, f: impl FnOnce(&Child)) -> Result<ChildStatus, SupervisorError> {
        let children = self.lock();
        let child = children
            .get(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        f(child);
        let status = child.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(status)
    }

    /// Terminates a child (its stop signal: its graceful shutdown) and
    /// forgets it.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        let child = self
            .lock()
            .remove(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        child.desired.send_replace(Desired::Removed);
        let _ = child.task.await;
        let c = &child.component;
        let _ = self
            .metrics
            .restarts
            .remove_label_values(&[&c.name, c.role.as_str(), &c.site]);
        Ok(())
    }

    /// Stops every child and waits for them, in the reverse order of the
    /// components' dependencies, one role at a time: the load balancer
    /// first (it stops accepting and finishes what it forwards, while the
    /// web servers still answer), then the web servers, then the workers
    /// (each finishing the job in hand), then the engines they use.
    pub async fn stop(&self) {
        let children: Vec<Child> = std::mem::take(&mut *self.lock()).into_values().collect();
        let components: Vec<Component> = children.iter().map(|c| c.component.clone()).collect();
        let mut by_role: BTreeMap<Role, Vec<Child>> = BTreeMap::new();
        for c in children {
            by_role.entry(c.component.role).or_default().push(c);
        }
        for level in component::start_levels(&components).into_iter().rev() {
            for role in level {
                let tier = by_role.remove(&role).unwrap_or_default();
                for c in &tier {
                    c.desired.send_replace(Desired::Removed);
                }
                for c in tier {
                    let _ = c.task.await;
                }
            }
        }
    }
}

/// What one child's supervision task owns.
struct Run {
    /// See [`Supervisor::ship_logs_to`].
    log_sink: Option<Arc<crate::logs::LogSink>>,
    exe: PathBuf,
    pid_file: PathBuf,
    backoff: Backoff,
    status: Arc<Mutex<ChildStatus>>,
    restarts: prometheus::IntCounter,
    events: Arc<watch::Sender<u64>>,
}

impl Run {
    fn set(&self, f: impl FnOnce(&mut ChildStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
        self.events.send_modify(|n| *n += 1);
    }

    fn command(&self, spec: &ChildSpec) -> anyhow::Result<Command> {
        let mut cmd = match &spec.launch {
            Launch::Scalestack(args) => {
                let mut cmd = Command::new(&self.exe);
                cmd.args(args);
                cmd
            }
            Launch::Program { program, args } => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Launch::Command(make) => make()?,
        };
        cmd.stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            // Own process group: a Ctrl-C in the terminal reaches `up` alone,
            // which then stops the children in order instead of racing them.
            .process_group(0);
        let death_signal = spec.stop_signal;
        // SAFETY: the closure runs in the forked child before exec (after
        // any uid change, which would clear it) and only makes the
        // async-signal-safe prctl(2) call.
        unsafe {
            cmd.pre_exec(move || {
                // A child must not outlive `up`, even when `up` is SIGKILLed.
                nix::sys::prctl::set_pdeathsig(Some(death_signal)).map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    async fn supervise(self, spec: ChildSpec, mut desired: watch::Receiver<Desired>) {
        let name = spec.component.name.clone();
        let mut backoff = self.backoff.first;
        // The delay before the next start, after an unplanned exit.
        let mut restart_in: Option<Duration> = None;
        loop {
            let now = *desired.borrow_and_update();
            match now {
                Desired::Removed => break,
                Desired::Stopped => {
                    restart_in = None;
                    self.set(|s| {
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
            if let Some(delay) = restart_in.take() {
                self.restarts.inc();
                self.set(|s| {
                    s.state = "restarting".into();
                    s.restarts += 1;
                });
                tracing::warn!(child = %name, restart_in_ms = delay.as_millis() as u64, "restarting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = desired.changed() => {
                        if *desired.borrow() != Desired::Run {
                            continue;
                        }
                    }
                }
            }
            let started = Instant::now();
            let spawned = self.command(&spec).and_then(|mut c| {
                if self.log_sink.is_some() {
                    c.stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped());
                }
                Ok(c.spawn()?)
            });
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(child = %name, error = %e, "cannot start child");
                    self.set(|s| s.state = "restarting".into());
                    tokio::time::sleep(self.backoff.max).await;
                    continue;
                }
            };
            if let Some(sink) = &self.log_sink {
                let (component, site) = (spec.component.name.clone(), spec.component.site.clone());
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(forward_lines(
                        out,
                        false,
                        sink.clone(),
                        component.clone(),
                        site.clone(),
                    ));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(forward_lines(err, true, sink.clone(), component, site));
                }
            }
            let pid = child.id().unwrap_or(0);
            let _ = std::fs::write(&self.pid_file, format!("{pid}\n"));
            self.set(|s| {
                s.state = "running".into();
                s.pid = Some(pid);
                s.since = Some(unix_now());
            });
            tracing::info!(child = %name, pid, "child started");
            // Wait for the process to end, or to be told to remove it.
            let exit = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    changed = desired.changed() => {
                        if changed.is_err() || *desired.borrow() == Desired::Removed {
                            terminate(&name, &mut child, spec.stop_signal, spec.stop_grace).await;
                            break None;
                        }
                    }
                }
            };
            let _ = std::fs::remove_file(&self.pid_file);
            let Some(exit) = exit else { break };
            self.set(|s| s.pid = None);
            if *desired.borrow() != Desired::Run {
                continue;
            }
            backoff = self.backoff.next(backoff, started.elapsed());
            restart_in = Some(backoff);
            if spec.component.restart == RestartPolicy::ByController {
                // Its controller decides whether it comes back (resume) or
                // is replaced; until then it is down.
                self.set(|s| s.state = "down".into());
                tracing::warn!(child = %name, pid, status = ?exit.ok(), "child exited; its controller decides");
                if desired.changed().await.is_err() {
                    break;
                }
                continue;
            }
            tracing::warn!(child = %name, pid, status = ?exit.ok(), "child exited");
        }
        self.set(|s| {
            s.state = "exited".into();
            s.pid = None;
        });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn terminate(name: &str, child: &mut tokio::process::Child, signal: Signal, grace: Duration) {
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), signal);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => tracing::info!(child = name, pid, status = ?status.ok(), "child stopped"),
        Err(_) => {
            tracing::warn!(
                child = name,
                pid,
                ?signal,
                "child ignored its stop signal; killing"
            );
            let _ = child.kill().await;
        }
    }
}

/// Copies a child's output line by line to `up`'s own (stdout or stderr)
/// and to the log sink.
async fn forward_lines(
    from: impl tokio::io::AsyncRead + Unpin,
    stderr: bool,
    sink: Arc<crate::logs::LogSink>,
    component: String,
    site: String,
) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if stderr {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        sink.send(&component, &site, &line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Readiness;

    fn component(name: &str, restart: RestartPolicy) -> Component {
        Component {
            name: name.into(),
            role: Role::Worker,
            site: "local".into(),
            binds: Vec::new(),
            addr: None,
            metrics: None,
            ready: Readiness::Tcp("127.0.0.1:1".parse().unwrap()),
            depends_on: Vec::new(),
            restart,
        }
    }

    /// A child that runs `script` in `sh`.
    fn shell(name: &str, restart: RestartPolicy, script: &str) -> ChildSpec {
        ChildSpec::new(
            component(name, restart),
            Launch::Program {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
            },
        )
    }

    async fn wait_for(s: &Supervisor, name: &str, what: impl Fn(&ChildStatus) -> bool) -> ChildStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = s.status(name).unwrap();
            if what(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{name}: {st:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn supervisor(dir: &std::path::Path) -> (Supervisor, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = SupervisorMetrics::register(&registry).unwrap();
        (
            Supervisor::new("/bin/false".into(), dir.to_owned(), metrics),
            registry,
        )
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (s, registry) = supervisor(dir.path());
        s.add(shell("crasher", RestartPolicy::Always, "sleep 0.05; exit 3"))
            .unwrap();
        wait_for(&s, "crasher", |st| st.restarts >= 2).await;
        let counted = registry.gather()[0].get_metric()[0].get_counter().get_value();
        assert!(counted >= 2.0, "{counted}");
        s.stop().await;
        assert!(s.ps().is_empty());
    }

    #[tokio::test]
    async fn a_child_of_a_controller_waits_for_its_word() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _registry) = supervisor(dir.path());
        let mut events = s.events();
        s.add(shell("node", RestartPolicy::ByController, "sleep 0.05; exit 3"))
            .unwrap();
        let down = wait_for(&s, "node", |st| st.state == "down").await;
        assert_eq!((down.restarts, down.pid), (0, None));
        assert!(events.has_changed().unwrap(), "controllers are woken");
        events.mark_unchanged();
        // Nobody restarts it on its own.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.status("node").unwrap().state, "down");
        s.resume("node").unwrap();
        wait_for(&s, "node", |st| st.restarts == 1).await;
        s.remove("node").await.unwrap();
        assert_eq!(
            s.remove("node").await,
            Err(SupervisorError::Unknown("node".into()))
        );
    }

    #[tokio::test]
    async fn a_killed_child_stays_down_until_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _registry) = supervisor(dir.path());
        s.add(shell("sleeper", RestartPolicy::Always, "exec sleep 60"))
            .unwrap();
        let running = wait_for(&s, "sleeper", |st| st.pid.is_some()).await;
        let pid_file = dir.path().join("sleeper.pid");
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            running.pid.unwrap().to_string()
        );
        s.kill("sleeper", Signal::SIGKILL).unwrap();
        let stopped = wait_for(&s, "sleeper", |st| st.state == "stopped").await;
        assert_eq!(stopped.restarts, 0, "an operator's stop is no crash");
        assert!(!pid_file.exists());
        s.resume("sleeper").unwrap();
        wait_for(&s, "sleeper", |st| st.state == "running").await;
        s.stop().await;
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets_after_a_healthy_run() {
        let b = Backoff::default();
        let short = Duration::from_millis(50);
        let mut d = b.first;
        let mut seen = Vec::new();
        for _ in 0..8 {
            d = b.next(d, short);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
        assert_eq!(b.next(d, Duration::from_secs(10)), b.first);
    }
}
