//! `scalestack up`: reads a topology, prepares the shared state, starts every
//! role as a child process (the same binary with another subcommand),
//! restarts children that die, serves a dashboard and control API, scales
//! roles at runtime, and stops everything cleanly on Ctrl-C.

pub mod control;
pub mod ctl;
pub mod postgres;
pub mod supervisor;
pub mod topology;

pub use topology::Topology;

use anyhow::Context;
use backends::BackendsConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use supervisor::{ChildSpec, ChildStatus, Supervisor};

/// The built-in topology used when none is given: the load balancer in
/// front of three web servers.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../topologies/web-tier.toml");

/// A running topology: its children and how to change them.
pub struct Orchestrator {
    topology: Topology,
    backends: BackendsConfig,
    run_dir: PathBuf,
    supervisor: Supervisor,
    http: reqwest::Client,
    /// One scale operation at a time.
    scaling: tokio::sync::Mutex<()>,
    /// The PostgreSQL cluster, when `up` runs one.
    cluster: Option<Arc<postgres::PgCluster>>,
}

/// Why a scale request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl Orchestrator {
    /// Every child as `ctl ps` shows it.
    pub fn ps(&self) -> Vec<ChildStatus> {
        let mut all = self.supervisor.ps();
        if let Some(c) = &self.cluster {
            all.extend(c.ps());
        }
        all
    }

    /// Signals a process: a supervised child (which then stays down until
    /// `start`) or a PostgreSQL node (which the cluster watcher handles).
    pub fn kill(
        &self,
        name: &str,
        signal: nix::sys::signal::Signal,
    ) -> Result<ChildStatus, supervisor::SupervisorError> {
        if let Some(status) = self.cluster.as_ref().and_then(|c| c.kill(name, signal)) {
            return Ok(status);
        }
        self.supervisor.kill(name, signal)
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Starts or stops copies of `role` (`web` or `worker`) until `count`
    /// run. New web servers join the load balancer once ready; removed ones
    /// are drained first (no new requests, in-flight ones finish), then
    /// taken out and stopped with SIGTERM.
    pub async fn scale(&self, role: &str, count: usize) -> Result<Vec<ChildStatus>, ScaleError> {
        let _one_at_a_time = self.scaling.lock().await;
        let (min, start_port) = match role {
            "web" => (1, self.topology.web.listen),
            "worker" => (0, self.topology.worker.metrics_listen),
            _ => {
                return Err(ScaleError::Invalid(format!(
                    "cannot scale {role:?}: only web and worker"
                )))
            }
        };
        if count < min || count > 64 {
            return Err(ScaleError::Invalid(format!("{role} count must be {min} to 64")));
        }
        if start_port.port() as usize + count > 65536 {
            return Err(ScaleError::Invalid(format!("{role}: ports run past 65535")));
        }
        let current = self.supervisor.names_of(role).len();
        for index in current..count {
            self.start_copy(role, index).await?;
        }
        for index in (count..current).rev() {
            self.stop_copy(role, index).await?;
        }
        self.write_lb_config()?;
        Ok(self.ps())
    }

    async fn start_copy(&self, role: &str, index: usize) -> Result<(), ScaleError> {
        let taken: Vec<SocketAddr> = self.ps().iter().filter_map(|c| c.addr).collect();
        // (ps includes the PostgreSQL nodes, whose ports copies must not take.)
        let spec = match role {
            "web" => {
                let (name, config) = self.topology.web_config(index, &self.backends);
                if taken.contains(&config.listen) || self.reserved().contains(&config.listen) {
                    return Err(ScaleError::Invalid(format!(
                        "{} is already in use",
                        config.listen
                    )));
                }
                web_spec(&self.run_dir, &name, &config).map_err(|e| ScaleError::Failed(e.to_string()))?
            }
            _ => {
                let (name, config) = self.topology.worker_config(index, &self.backends);
                if taken.contains(&config.metrics_listen) || self.reserved().contains(&config.metrics_listen)
                {
                    return Err(ScaleError::Invalid(format!(
                        "{} is already in use",
                        config.metrics_listen
                    )));
                }
                worker_spec(&self.run_dir, &name, &config).map_err(|e| ScaleError::Failed(e.to_string()))?
            }
        };
        let (name, addr) = (spec.name.clone(), spec.addr);
        self.supervisor
            .add(spec)
            .map_err(|e| ScaleError::Failed(e.to_string()))?;
        tracing::info!(child = %name, "scaled up");
        if role != "web" {
            return Ok(());
        }
        let addr = addr.expect("web servers have an address");
        if !wait_ok(addr, "/readyz", Duration::from_secs(30)).await {
            let _ = self.supervisor.remove(&name).await;
            return Err(ScaleError::Failed(format!("{name} did not become ready in 30 s")));
        }
        if let Some(lb) = &self.topology.lb {
            let url = format!("http://{}/backends", lb.admin_listen);
            let body = serde_json::json!({ "addr": addr.to_string(), "weight": 1 });
            let r = self.http.post(&url).json(&body).send().await;
            match r {
                Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT => {}
                other => {
                    return Err(ScaleError::Failed(format!(
                        "adding {addr} to the lb failed: {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn stop_copy(&self, role: &str, index: usize) -> Result<(), ScaleError> {
        let name = format!("{role}-{}", index + 1);
        let addr = self
            .ps()
            .into_iter()
            .find(|c| c.name == name)
            .and_then(|c| c.addr);
        if let (Some(lb), Some(addr), "web") = (&self.topology.lb, addr, role) {
            self.drain_from_lb(lb.admin_listen, addr).await?;
        }
        self.supervisor
            .remove(&name)
            .await
            .map_err(|e| ScaleError::Failed(e.to_string()))?;
        tracing::info!(child = %name, "scaled down");
        Ok(())
    }

    /// Drains a backend, waits for its requests in flight, removes it.
    async fn drain_from_lb(&self, admin: SocketAddr, addr: SocketAddr) -> Result<(), ScaleError> {
        let base = format!("http://{admin}/backends");
        let fail = |what: &str, e: &dyn std::fmt::Debug| ScaleError::Failed(format!("{what} {addr}: {e:?}"));
        self.http
            .post(format!("{base}/{addr}/drain"))
            .send()
            .await
            .map_err(|e| fail("draining", &e))?;
        for _ in 0..300 {
            let list: Vec<lb::BackendStatus> = self
                .http
                .get(&base)
                .send()
                .await
                .map_err(|e| fail("watching", &e))?
                .json()
                .await
                .map_err(|e| fail("watching", &e))?;
            if list.iter().all(|b| b.addr != addr || b.in_flight == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.http
            .delete(format!("{base}/{addr}"))
            .send()
            .await
            .map_err(|e| fail("removing", &e))?;
        Ok(())
    }

    /// Addresses of the LB and the control API, which copies must not take.
    fn reserved(&self) -> Vec<SocketAddr> {
        let mut r = vec![self.topology.control.listen];
        if let Some(lb) = &self.topology.lb {
            r.extend([lb.listen, lb.admin_listen]);
        }
        r
    }

    /// Rewrites `lb.toml` with the current web servers, so a restarted LB
    /// starts with the backends of now, not those of the topology file.
    fn write_lb_config(&self) -> Result<(), ScaleError> {
        let Some(mut config) = self.topology.lb_config() else {
            return Ok(());
        };
        config.backends = self
            .ps()
            .iter()
            .filter(|c| c.role == "web")
            .filter_map(|c| c.addr)
            .map(|addr| lb::BackendSpec { addr, weight: 1 })
            .collect();
        write_config(&self.run_dir, "lb", &config)
            .map(|_| ())
            .map_err(|e| ScaleError::Failed(e.to_string()))
    }
}

/// The managed Redis: `redis-server` with a generated configuration under
/// `<data>/redis`, supervised like any other child.
fn redis_spec(topology: &Topology, data_dir: &Path) -> anyhow::Result<ChildSpec> {
    let dir = data_dir.join("redis");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("redis.conf");
    let listen = topology.redis.addr();
    std::fs::write(
        &conf,
        engines::redis::server_conf(listen.port(), &dir, &dir.join("redis.log")),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    Ok(ChildSpec::new("redis", "redis", Some(listen), vec![conf.into()])
        .program(engines::redis::locate_server()?))
}

fn web_spec(run_dir: &Path, name: &str, config: &app::WebConfig) -> anyhow::Result<ChildSpec> {
    let path = write_config(run_dir, name, config)?;
    Ok(ChildSpec::new(
        name,
        "web",
        Some(config.listen),
        vec!["web".into(), "--config".into(), path.into()],
    ))
}

fn worker_spec(run_dir: &Path, name: &str, config: &worker::WorkerConfig) -> anyhow::Result<ChildSpec> {
    let path = write_config(run_dir, name, config)?;
    Ok(ChildSpec::new(
        name,
        "worker",
        Some(config.metrics_listen),
        vec!["worker".into(), "--config".into(), path.into()],
    ))
}

/// Starts the topology and supervises it until `shutdown` resolves.
///
/// `exe` is the binary started for every child (normally
/// `std::env::current_exe()`).
pub async fn run(topology: Topology, exe: PathBuf, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&topology.data.dir)?;
    let backends = topology.backends(&data_dir);
    // Engines first: the migrations below need the database.
    let cluster = match topology.needs_managed_postgres() {
        true => Some(Arc::new(
            postgres::PgCluster::start(&topology.postgres, &data_dir)
                .await
                .context("starting the PostgreSQL cluster")?,
        )),
        false => None,
    };
    let (cluster_stop, cluster_stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = cluster.clone().map(|c| {
        tokio::spawn(async move {
            c.watch(async {
                let _ = cluster_stopped.await;
            })
            .await
        })
    });
    // Migrations run once here, before any child, so copies never race them.
    backends::Backends::connect(&backends)
        .await
        .context("preparing the embedded backends")?;
    let run_dir = data_dir.join("run");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let control_listener = tokio::net::TcpListener::bind(topology.control.listen)
        .await
        .with_context(|| format!("cannot listen on {} (control API)", topology.control.listen))?;

    let mut specs = Vec::new();
    for (name, config) in topology.web_configs(&backends) {
        specs.push(web_spec(&run_dir, &name, &config)?);
    }
    for (name, config) in topology.worker_configs(&backends) {
        specs.push(worker_spec(&run_dir, &name, &config)?);
    }
    if topology.needs_managed_redis() {
        specs.insert(0, redis_spec(&topology, &data_dir)?);
    }
    if let Some(config) = topology.lb_config() {
        let path = write_config(&run_dir, "lb", &config)?;
        specs.push(ChildSpec::new(
            "lb",
            "lb",
            Some(config.listen),
            vec!["lb".into(), "--config".into(), path.into()],
        ));
    }

    let orchestrator = Arc::new(Orchestrator {
        supervisor: Supervisor::start(exe, run_dir.clone(), specs),
        topology,
        backends,
        run_dir,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?,
        scaling: tokio::sync::Mutex::new(()),
        cluster: cluster.clone(),
    });
    let control = tokio::spawn(control::serve(control_listener, orchestrator.clone()));
    let public = orchestrator.topology.public_url();
    let ready = wait_ready(&orchestrator.topology, &orchestrator.http);
    tokio::pin!(shutdown);
    tokio::select! {
        ok = ready => {
            if ok {
                println!(
                    "scalestack is up: {public}  (dashboard http://{}, data in {})",
                    orchestrator.topology.control.listen,
                    data_dir.display()
                );
            } else {
                tracing::warn!("not ready after 60 s; still supervising");
            }
            shutdown.await;
        }
        _ = &mut shutdown => {}
    }
    println!("scalestack: stopping");
    control.abort();
    orchestrator.supervisor.stop().await;
    let _ = cluster_stop.send(());
    if let Some(w) = watcher {
        let _ = w.await;
    }
    if let Some(c) = cluster {
        c.stop().await;
    }
    Ok(())
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    // Children get absolute paths so they do not depend on a working directory.
    dir.canonicalize()
        .with_context(|| format!("resolving data directory {}", dir.display()))
}

fn write_config<T: serde::Serialize>(run_dir: &Path, name: &str, config: &T) -> anyhow::Result<PathBuf> {
    let path = run_dir.join(format!("{name}.toml"));
    let text = toml::to_string(config).context("serialising child configuration")?;
    // Written aside and renamed: a child (re)starting meanwhile never reads half a file.
    let tmp = run_dir.join(format!(".{name}.toml.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits until every web server and then the public address answer
/// `/readyz` (at most 60 s).
async fn wait_ready(topology: &Topology, http: &reqwest::Client) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut addrs: Vec<_> = topology.web_addrs().collect();
    if let Some(lb) = &topology.lb {
        addrs.push(lb.listen);
    }
    for addr in addrs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !wait_ok(addr, "/readyz", left).await {
            return false;
        }
    }
    // Up means every web server is in the LB's rotation, not just one.
    let Some(lb) = &topology.lb else { return true };
    let url = format!("http://{}/backends", lb.admin_listen);
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(list) = r.json::<Vec<lb::BackendStatus>>().await {
                if list.len() == topology.web.count && list.iter().all(|b| b.healthy) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `path` on `addr` until it answers 200 or `limit` passes.
async fn wait_ok(addr: SocketAddr, path: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if http_ok(addr, path).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: true on a 200 answer.
pub async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
