//! `scalestack up`: reads a topology, prepares the shared state, starts every
//! component (the roles as child processes of the same binary, and the
//! engines it runs) under one supervisor in dependency order (engines,
//! web tier and workers, load balancer, CDN edges), serves a
//! dashboard, a control API, its own `/metrics` and a Prometheus target
//! list, scales roles at runtime, and stops everything cleanly on Ctrl-C.

pub mod autoscale;
pub mod autoscaler;
pub mod component;
pub mod control;
pub mod ctl;
pub mod logs;
pub mod metrics;
pub mod nats;
pub mod postgres;
pub mod prometheus;
pub mod reshard;
pub mod role;
pub mod site_failure;
pub mod sites;
pub mod supervisor;
pub mod topology;

pub use role::Role;
pub use topology::Topology;

use anyhow::Context;
use backends::BackendsConfig;
use component::Component;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use supervisor::{ChildSpec, ChildStatus, Launch, Supervisor};

/// The built-in topology used when none is given: a CDN edge and the load
/// balancer in front of three web servers.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../topologies/web-tier.toml");

/// How long a level of components may take to become ready at start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running topology: its children and how to change them.
pub struct Orchestrator {
    topology: Topology,
    backends: BackendsConfig,
    data_dir: PathBuf,
    run_dir: PathBuf,
    supervisor: Arc<Supervisor>,
    metrics: metrics::UpMetrics,
    http: reqwest::Client,
    /// One scale operation at a time.
    scaling: tokio::sync::Mutex<()>,
    /// One writer of the target list at a time.
    targets_file: std::sync::Mutex<()>,
    /// The PostgreSQL clusters (one per replica set), when `up` runs them
    /// (`ctl reshard` may add one).
    clusters: std::sync::Mutex<Vec<Arc<postgres::PgCluster>>>,
    /// Their failover controllers, and what stops them.
    controllers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    controller_stop: tokio::sync::watch::Sender<()>,
    /// `up`'s own handle on the job queue (depth for the autoscaler, dead
    /// jobs for `ctl jobs`), once the engines run.
    queue: std::sync::OnceLock<Arc<dyn domain::ports::JobQueue>>,
    /// `up`'s own handle on the SQL store (the business figures).
    store: std::sync::OnceLock<Arc<dyn domain::ports::Store>>,
    /// `up`'s own handle on a sharded SQL store (`ctl shards`).
    shards: std::sync::OnceLock<store_postgres::ShardedStore>,
    /// The autoscaled tiers' state.
    autoscale: autoscaler::AutoscaleState,
}

/// Why a scale request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// Refused, nothing changed (an unknown role, a count out of range, a
    /// port clash).
    #[error("{0}")]
    Invalid(String),
    /// Started, then failed part-way (a copy that never became ready).
    #[error("{0}")]
    Failed(String),
}

impl Orchestrator {
    /// An orchestrator of `topology` with no child yet, its state under
    /// `data_dir` (absolute) and the children's configurations under
    /// `<data_dir>/run`; `exe` is the binary started for every role.
    fn new(topology: Topology, exe: PathBuf, data_dir: PathBuf) -> anyhow::Result<Self> {
        let mut backends = topology.resolve(&data_dir);
        if topology.is_multi_site() {
            // The shared `up` uses the database alone (migrations, the
            // queue's depth); the caches are the sites'.
            backends.cache = backends::CacheTier::default();
            backends.sessions = backends::SessionsTier::Embedded;
        }
        let run_dir = data_dir.join("run");
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let metrics = metrics::UpMetrics::new();
        let supervisor = Arc::new(Supervisor::new(exe, run_dir.clone(), metrics.supervisor.clone()));
        Ok(Orchestrator {
            supervisor,
            topology,
            backends,
            data_dir,
            run_dir,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the HTTP client")?,
            scaling: tokio::sync::Mutex::new(()),
            targets_file: std::sync::Mutex::new(()),
            clusters: std::sync::Mutex::new(Vec::new()),
            controllers: std::sync::Mutex::new(Vec::new()),
            controller_stop: tokio::sync::watch::channel(()).0,
            queue: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
            shards: std::sync::OnceLock::new(),
            autoscale: autoscaler::AutoscaleState::default(),
        })
    }

    /// Every child as `ctl ps` shows it; a running PostgreSQL node shows
    /// its part (`primary`, `replica`, `fenced`), one without a process
    /// `down`.
    pub fn ps(&self) -> Vec<ChildStatus> {
        let mut all = self.supervisor.ps();
        let clusters = self.clusters();
        if !clusters.is_empty() {
            for c in all.iter_mut().filter(|c| c.role == Role::Postgres) {
                let part = clusters.iter().find_map(|cluster| cluster.part(&c.name));
                c.state = match (c.pid, part) {
                    (Some(_), Some(part)) => part.into(),
                    _ => "down".into(),
                };
            }
        }
        all
    }

    /// [`Orchestrator::ps`], and with several sites every site's processes
    /// as its `up` lists them (a site that does not answer within a second
    /// adds none: its `site-NAME` row already says it is down).
    pub async fn ps_everywhere(&self) -> Vec<ChildStatus> {
        let mut all = self.ps();
        let sites: Vec<SocketAddr> = self
            .supervisor
            .components()
            .iter()
            .filter(|c| c.role == Role::Site)
            .filter_map(|c| c.metrics)
            .collect();
        for control in sites {
            let answer = self
                .http
                .get(format!("http://{control}/api/ps"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(r) = answer {
                if let Ok(ps) = r.json::<Vec<ChildStatus>>().await {
                    all.extend(ps.into_iter().map(|c| ChildStatus {
                        via: Some(control),
                        ..c
                    }));
                }
            }
        }
        all
    }

    fn clusters(&self) -> Vec<Arc<postgres::PgCluster>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the PostgreSQL cluster of replica set `set` (creating it on a
    /// first run) with its failover controller.
    async fn start_set(&self, set: &postgres::ManagedPostgres) -> anyhow::Result<Arc<postgres::PgCluster>> {
        let cluster = postgres::PgCluster::start(
            set,
            set.components(
                self.topology
                    .sites
                    .first()
                    .map_or(&self.topology.site.name, |s| &s.name),
            ),
            &self.data_dir,
            self.supervisor.clone(),
            self.metrics.failovers.clone(),
        )
        .await
        .with_context(|| format!("starting the PostgreSQL cluster {}", set.set_name().unwrap_or("")))?;
        let cluster = Arc::new(cluster);
        let mut stopped = self.controller_stop.subscribe();
        let controller = tokio::spawn(cluster.clone().control(async move {
            let _ = stopped.changed().await;
        }));
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(controller);
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cluster.clone());
        Ok(cluster)
    }

    /// Signals a process. A child the supervisor restarts on its own stays
    /// down until `start`; one whose controller decides (a PostgreSQL node)
    /// is left to it: a replica is restarted, a primary failed over.
    pub fn kill(
        &self,
        name: &str,
        signal: nix::sys::signal::Signal,
    ) -> Result<ChildStatus, supervisor::SupervisorError> {
        let component = self
            .supervisor
            .component(name)
            .ok_or_else(|| supervisor::SupervisorError::Unknown(name.into()))?;
        let mut status = match component.restart {
            component::RestartPolicy::Always => self.supervisor.kill(name, signal)?,
            component::RestartPolicy::ByController => self.supervisor.signal(name, signal)?,
        };
        if let Some(shown) = self.ps().into_iter().find(|c| c.name == name) {
            status.state = shown.state;
        }
        Ok(status)
    }

    /// Starts again a process stopped with `kill` (an engine too).
    pub fn start(&self, name: &str) -> Result<Option<ChildStatus>, supervisor::SupervisorError> {
        self.supervisor.resume(name)?;
        Ok(self.ps().into_iter().find(|c| c.name == name))
    }

    /// The job queue, once the engines run.
    pub fn queue(&self) -> Result<&Arc<dyn domain::ports::JobQueue>, domain::BackendError> {
        self.queue
            .get()
            .ok_or_else(|| domain::BackendError::Unavailable("the queue is not connected yet".into()))
    }

    /// The shard map and every set's rows and load (`ctl shards`).
    pub async fn shard_report(&self) -> Result<store_postgres::ShardReport, domain::StoreError> {
        self.shards
            .get()
            .ok_or_else(|| {
                domain::StoreError::Unavailable("the SQL store is not sharded (or not connected yet)".into())
            })?
            .report()
            .await
    }

    /// What waits in the queue and what runs.
    pub async fn queue_depth(&self) -> Result<domain::QueueDepth, domain::BackendError> {
        self.queue()?.depth().await
    }

    /// The autoscaled tiers' state (`ctl autoscale`).
    pub fn autoscale_state(&self) -> std::collections::BTreeMap<Role, autoscaler::TierState> {
        self.autoscale.snapshot()
    }

    /// The business's figures over the last `days` days, from the store.
    pub async fn business(&self, days: i64) -> Result<domain::business::BusinessFigures, domain::StoreError> {
        let store = self
            .store
            .get()
            .ok_or_else(|| domain::StoreError::Unavailable("the store is not connected yet".into()))?;
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64
            / 86_400_000;
        store.business(today, days).await
    }

    /// The collected log lines that pass `filter` (`ctl logs`).
    pub fn logs(&self, filter: &logs::LogFilter) -> Result<Vec<serde_json::Value>, String> {
        if self.topology.logs.is_none() {
            return Err("this topology collects no logs ([logs])".into());
        }
        logs::search(&self.data_dir, filter).map_err(|e| e.to_string())
    }

    /// The supervisor of every child.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// `up`'s metrics in the text exposition format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.ps())
    }

    /// The Prometheus `file_sd` list of every child with metrics, and `up`.
    pub fn targets(&self) -> Vec<metrics::TargetGroup> {
        metrics::targets(
            self.topology.control.listen,
            &self.topology.site.name,
            &self.supervisor.components(),
        )
    }

    /// Rewrites `<data>/prometheus/targets.json` from the current children.
    fn publish_targets(&self) {
        let _one_writer = self.targets_file.lock().unwrap_or_else(|e| e.into_inner());
        let path = metrics::targets_path(&self.data_dir);
        if let Err(e) = metrics::write_targets(&path, &self.targets()) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the target list");
        }
    }

    /// Starts or stops copies of `role` (`web` or `worker`) until `count`
    /// run. A new copy is waited for until ready (at most 30 s); new web
    /// servers then join the load balancer; removed ones
    /// are drained first (no new requests, in-flight ones finish), then
    /// taken out and stopped with SIGTERM.
    pub async fn scale(&self, role: &str, count: usize) -> Result<Vec<ChildStatus>, ScaleError> {
        let result = self.scale_role(role, count).await;
        let label = Role::parse(role).map_or("unknown", Role::as_str);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ScaleError::Invalid(_)) => "refused",
            Err(ScaleError::Failed(_)) => "failed",
        };
        self.metrics
            .scale_operations
            .with_label_values(&[label, outcome])
            .inc();
        self.publish_targets();
        result
    }

    async fn scale_role(&self, role: &str, count: usize) -> Result<Vec<ChildStatus>, ScaleError> {
        let _one_at_a_time = self.scaling.lock().await;
        let Some((role, range)) = Role::parse(role).and_then(|r| Some((r, r.scale_range()?))) else {
            let names: Vec<&str> = Role::scalable().map(Role::as_str).collect();
            return Err(ScaleError::Invalid(format!(
                "cannot scale {role:?}: only {}",
                names.join(" and ")
            )));
        };
        if !range.contains(&count) {
            return Err(ScaleError::Invalid(format!(
                "{role} count must be {} to {}",
                range.start(),
                range.end()
            )));
        }
        if !self.topology.copies_fit(role, count) {
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

    async fn start_copy(&self, role: Role, index: usize) -> Result<(), ScaleError> {
        let component = self
            .topology
            .copy(role, index)
            .ok_or_else(|| ScaleError::Invalid(format!("{role} does not run in copies")))?;
        // Its ports against every other component's (the engines' and the
        // load balancer's included) and `up`'s own.
        let others = self.supervisor.components();
        let taken = self.topology.control_binds().chain(component::binds_of(&others));
        for (owner, bind) in taken {
            if let Some(mine) = component.binds.iter().find(|b| b.overlaps(&bind)) {
                return Err(ScaleError::Invalid(
                    component::PortClash {
                        first: component.name.clone(),
                        first_bind: *mine,
                        second: owner.to_owned(),
                        second_bind: bind,
                    }
                    .to_string(),
                ));
            }
        }
        let spec = self
            .child_spec(&component)
            .map_err(|e| ScaleError::Failed(e.to_string()))?;
        self.supervisor
            .add(spec)
            .map_err(|e| ScaleError::Failed(e.to_string()))?;
        tracing::info!(child = %component.name, "scaled up");
        self.publish_targets();
        if !component.ready.wait(Duration::from_secs(30)).await {
            let _ = self.supervisor.remove(&component.name).await;
            return Err(ScaleError::Failed(format!(
                "{} did not become ready in 30 s",
                component.name
            )));
        }
        if role != Role::Web {
            return Ok(());
        }
        let addr = component.addr.expect("web servers have an address");
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

    async fn stop_copy(&self, role: Role, index: usize) -> Result<(), ScaleError> {
        let Some(component) = self.topology.copy(role, index) else {
            return Ok(());
        };
        if let (Some(lb), Some(addr), Role::Web) = (&self.topology.lb, component.addr, role) {
            self.drain_from_lb(lb.admin_listen, addr).await?;
        }
        self.supervisor
            .remove(&component.name)
            .await
            .map_err(|e| ScaleError::Failed(e.to_string()))?;
        tracing::info!(child = %component.name, "scaled down");
        self.publish_targets();
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

    /// Rewrites `lb.toml` with the current web servers, so a restarted LB
    /// starts with the backends of now, not those of the topology file.
    fn write_lb_config(&self) -> Result<(), ScaleError> {
        let Some(mut config) = self.topology.lb_config() else {
            return Ok(());
        };
        config.backends = self
            .supervisor
            .components()
            .iter()
            .filter(|c| c.role == Role::Web)
            .filter_map(|c| c.addr)
            .map(|addr| lb::BackendSpec { addr, weight: 1 })
            .collect();
        write_config(&self.run_dir, "lb", &config)
            .map(|_| ())
            .map_err(|e| ScaleError::Failed(e.to_string()))
    }

    /// How to run `component`: its configuration written under the run
    /// directory and the program to start. (PostgreSQL nodes are launched
    /// by their cluster, which prepares their data directories first.)
    fn child_spec(&self, component: &Component) -> anyhow::Result<ChildSpec> {
        let name = component.name.as_str();
        let scalestack =
            |sub: &str, path: PathBuf| Launch::Scalestack(vec![sub.into(), "--config".into(), path.into()]);
        let launch = match component.role {
            Role::Web => {
                let index = copy_index(name)?;
                let config = self.topology.web_config(index, &self.backends).1;
                scalestack("web", write_config(&self.run_dir, name, &config)?)
            }
            Role::Worker => {
                let index = copy_index(name)?;
                let config = self.topology.worker_config(index, &self.backends).1;
                scalestack("worker", write_config(&self.run_dir, name, &config)?)
            }
            Role::Lb => {
                let config = self.topology.lb_config().context("no [lb] section")?;
                scalestack("lb", write_config(&self.run_dir, "lb", &config)?)
            }
            Role::Cdn => {
                let index = copy_index(name)?;
                let config = self
                    .topology
                    .cdn_config(index, &self.data_dir)
                    .context("no [cdn] section")?;
                scalestack("cdn", write_config(&self.run_dir, name, &config)?)
            }
            Role::Redis => redis_launch(&self.topology, &self.data_dir)?,
            Role::Nats => self.topology.nats.launch(name, &self.data_dir)?,
            Role::Dns => {
                let index = name
                    .strip_prefix("ns")
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .with_context(|| format!("{name} is not a name server"))?;
                let config = self.topology.dns_config(index).context("no [dns] section")?;
                scalestack("dns", write_config(&self.run_dir, name, &config)?)
            }
            Role::Site => {
                let site = name
                    .strip_prefix("site-")
                    .context("a site's up is named site-NAME")?;
                self.topology.site_launch(site, &self.data_dir)?
            }
            Role::Prometheus => self
                .topology
                .prometheus
                .as_ref()
                .context("no [prometheus] section")?
                .launch(&self.data_dir)?,
            Role::NodeExporter => self
                .topology
                .prometheus
                .as_ref()
                .context("no [prometheus] section")?
                .node_exporter_launch()?,
            Role::Logs => self
                .topology
                .logs
                .as_ref()
                .context("no [logs] section")?
                .launch(&self.data_dir)?,
            Role::Postgres => anyhow::bail!("postgres nodes are launched by their cluster"),
        };
        Ok(ChildSpec::new(component.clone(), launch))
    }

    /// Connects to the stores (applying migrations) and keeps the queue.
    async fn connect_backends(&self) -> anyhow::Result<()> {
        let b = backends::Backends::connect(&self.backends)
            .await
            .context("preparing the backends")?;
        let _ = self.queue.set(b.queue);
        let _ = self.store.set(b.store);
        if let Some(shards) = b.shards {
            let _ = self.shards.set(shards);
            self.recover_moves();
        }
        Ok(())
    }

    /// Starts the components in dependency order, each level once the one
    /// before is ready (the PostgreSQL cluster first, migrations before the
    /// first component that is no engine), then waits until the topology
    /// serves. True when everything became ready.
    async fn start_all(&self) -> anyhow::Result<bool> {
        let components = self.topology.components();
        let mut migrated = false;
        let mut all_ready = true;
        for level in component::start_levels(&components) {
            if !migrated && level.iter().any(|r| !r.is_engine()) {
                // Migrations run once here, before any child that uses the
                // stores, so copies never race them.
                self.connect_backends().await?;
                migrated = true;
            }
            let members: Vec<&Component> = components.iter().filter(|c| level.contains(&c.role)).collect();
            for c in &members {
                if c.role == Role::Postgres {
                    continue; // started by the cluster, in its own order
                }
                self.supervisor.add(self.child_spec(c)?)?;
            }
            self.publish_targets();
            let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
            for c in members {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !c.ready.wait(left).await {
                    tracing::warn!(child = %c.name, "not ready after {READY_TIMEOUT:?}; starting the rest anyway");
                    all_ready = false;
                }
            }
        }
        if !migrated {
            self.connect_backends().await?;
        }
        Ok(all_ready && wait_in_rotation(&self.topology, &self.http).await)
    }
}

/// The index of copy `web-3` (2).
fn copy_index(name: &str) -> anyhow::Result<usize> {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
        .with_context(|| format!("{name} is not a copy"))
}

/// The managed Redis: `redis-server` with a generated configuration under
/// `<data>/redis`.
fn redis_launch(topology: &Topology, data_dir: &Path) -> anyhow::Result<Launch> {
    let dir = data_dir.join("redis");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("redis.conf");
    let listen = topology.redis.addr();
    std::fs::write(
        &conf,
        engines::redis::server_conf(listen.port(), &dir, &dir.join("redis.log")),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    Ok(Launch::Program {
        program: engines::redis::locate_server()?,
        args: vec![conf.into()],
    })
}

/// Starts the topology and supervises it until `shutdown` resolves.
///
/// `exe` is the binary started for every child (normally
/// `std::env::current_exe()`).
pub async fn run(
    mut topology: Topology,
    exe: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&topology.data.dir)?;
    if topology.needs_managed_postgres() && topology.postgres.sets > 1 {
        // Sets `ctl reshard` added come back with the configured ones.
        let on_disk = postgres::ManagedPostgres::sets_on_disk(&data_dir);
        if on_disk > topology.postgres.sets {
            tracing::info!(
                configured = topology.postgres.sets,
                on_disk,
                "running the replica sets resharding added"
            );
            topology = topology
                .with_sets(on_disk)
                .context("the replica sets resharding added no longer fit the topology")?;
        }
    }
    let control_listen = topology.control.listen;
    let orchestrator = Arc::new(Orchestrator::new(topology, exe, data_dir.clone())?);
    if let Some(logs) = orchestrator
        .topology
        .logs
        .as_ref()
        .filter(|_| !orchestrator.topology.is_multi_site())
    {
        // Before any child starts: every line of every child is collected.
        orchestrator
            .supervisor
            .ship_logs_to(logs::LogSink::start(logs.listen, logs.buffer_lines));
    }
    let control_listener = tokio::net::TcpListener::bind(control_listen)
        .await
        .with_context(|| format!("cannot listen on {control_listen} (control API)"))?;
    let control = tokio::spawn(control::serve(control_listener, orchestrator.clone()));
    let o = &orchestrator;
    let started = async {
        // Engines first: the migrations need the database.
        if o.topology.needs_managed_postgres() {
            for set in o.topology.postgres.per_set() {
                o.start_set(&set).await?;
            }
        }
        o.start_all().await
    };
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        ready = started => Some(ready),
        _ = &mut shutdown => None,
    };
    let result = match outcome {
        Some(Err(e)) => Err(e),
        Some(Ok(ready)) => {
            if ready && o.topology.is_multi_site() {
                println!("{}", o.topology.sites_banner(&data_dir));
            } else if ready {
                let cdn = o
                    .topology
                    .cdn_url()
                    .map(|url| format!("cdn {url}, "))
                    .unwrap_or_default();
                println!(
                    "scalestack is up: {}  ({cdn}dashboard http://{}, data in {})",
                    o.topology.public_url(),
                    o.topology.control.listen,
                    data_dir.display()
                );
            } else {
                tracing::warn!("not ready after 60 s; still supervising");
            }
            let autoscalers = autoscaler::spawn(orchestrator.clone());
            shutdown.await;
            autoscalers.iter().for_each(|t| t.abort());
            Ok(())
        }
        None => Ok(()),
    };
    println!("scalestack: stopping");
    control.abort();
    // The controllers first: nodes the supervisor stops are no failures.
    let _ = orchestrator.controller_stop.send(());
    let controllers =
        std::mem::take(&mut *orchestrator.controllers.lock().unwrap_or_else(|e| e.into_inner()));
    for c in controllers {
        let _ = c.await;
    }
    orchestrator.supervisor.stop().await;
    result
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

/// Up means every web server is in the load balancer's rotation, not just
/// one: waits (at most 60 s) until the LB lists them all healthy.
async fn wait_in_rotation(topology: &Topology, http: &reqwest::Client) -> bool {
    let Some(lb) = topology.lb.as_ref().filter(|_| !topology.is_multi_site()) else {
        return true;
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn orchestrator(text: &str, data_dir: &Path) -> Orchestrator {
        let topology = Topology::parse(text).unwrap();
        Orchestrator::new(topology, PathBuf::from("/bin/false"), data_dir.to_path_buf()).unwrap()
    }

    #[test]
    fn an_edge_is_launched_as_scalestack_cdn_with_its_configuration_written() {
        let dir = tempfile::tempdir().unwrap();
        let o = orchestrator(include_str!("../../../topologies/cdn.toml"), dir.path());
        let edge = o.topology.cdn_component(1).unwrap();
        let spec = o.child_spec(&edge).unwrap();
        assert_eq!(spec.component, edge);
        let path = dir.path().join("run").join("cdn-2.toml");
        let Launch::Scalestack(args) = &spec.launch else {
            panic!("the same binary, not {:?}", spec.launch)
        };
        let expected: Vec<OsString> = vec!["cdn".into(), "--config".into(), path.clone().into()];
        assert_eq!(args, &expected);
        let written: cdn::config::CdnConfig =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(Some(&written), o.topology.cdn_config(1, dir.path()).as_ref());
        assert_eq!((written.listen.port(), written.admin_listen.port()), (8082, 8093));
        assert_eq!(written.name, "local-cdn-2");
        let disk = written.disk.expect("cdn.toml has a disk tier");
        assert_eq!(
            disk.dir,
            dir.path().join("cdn-2"),
            "under the resolved data directory"
        );
    }

    #[test]
    fn web_servers_are_handed_the_edges_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let o = orchestrator(crate::DEFAULT_TOPOLOGY, dir.path());
        let web = o.topology.copy(Role::Web, 2).unwrap();
        o.child_spec(&web).unwrap();
        let text = std::fs::read_to_string(dir.path().join("run").join("web-3.toml")).unwrap();
        let written: app::WebConfig = toml::from_str(&text).unwrap();
        assert_eq!(written.settings.media_base_url, "http://127.0.0.1:8081");
        assert_eq!(written.settings.cdn_purge_urls, ["http://127.0.0.1:8092"]);
        assert_eq!(written.listen.port(), 9103);
    }

    #[test]
    fn an_edge_without_a_cdn_section_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = Topology::parse(crate::DEFAULT_TOPOLOGY).unwrap();
        let edge = with.cdn_component(0).unwrap();
        let o = orchestrator("", dir.path());
        let e = o.child_spec(&edge).unwrap_err();
        assert!(e.to_string().contains("no [cdn] section"), "{e}");
    }
}
