//! The edge server (`scalestack cdn`): client connections read with
//! `proxy-core`'s strict codec, each request decided by [`handle`] against
//! the store, the origin reached through `proxy-core`'s pooled client, and
//! the admin API ([`admin`]) on its own port.
//!
//! Thread per core, as the load balancer: each thread runs a
//! single-threaded runtime with its own `SO_REUSEPORT` listener and its own
//! slot of the origin connection pool; the store and the flights (request
//! coalescing) are shared by all threads.
//!
//! Modules depend one way: `server` ─▶ `admin`, `handle` ─▶ `answer`,
//! `origin`, `flights`, `stored`, `range`, `metrics` ─▶ `policy`, `store`.

mod admin;
mod answer;
mod flights;
mod handle;
mod metrics;
mod origin;
mod range;
mod stored;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proxy_core::downstream::{self, ReadError};
use proxy_core::serve::{self, Next, RequestReader};
use proxy_core::{Client, ClientConfig, Clock, PoolConfig, ReadLimits, Timer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::CdnConfig;
use crate::policy::{self, QueryParams, SetCookiePolicy};
use crate::store::{DiskConfig, MemoryConfig, Store, StoreConfig};
use flights::Flights;
use metrics::Metrics;

/// What every connection of an edge shares.
pub(crate) struct Shared {
    config: CdnConfig,
    policy: policy::Config,
    store: Arc<Store>,
    flights: Arc<Flights>,
    client: Client,
    clock: Arc<Clock>,
    metrics: Metrics,
    registry: telemetry::Registry,
    read_limits: ReadLimits,
    body_budget: Arc<Semaphore>,
    connection_slots: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
    coalesce_wait: Duration,
    write_timeout: Duration,
}

/// The policy's knobs from the edge's configuration.
fn policy_config(config: &CdnConfig) -> policy::Config {
    policy::Config {
        grace_secs: config.grace_secs,
        query: match (&config.query.keep, config.query.ignore.is_empty()) {
            (Some(keep), _) => QueryParams::Keep(keep.clone()),
            (None, false) => QueryParams::Ignore(config.query.ignore.clone()),
            (None, true) => QueryParams::All,
        },
        set_cookie: if config.store_set_cookie {
            SetCookiePolicy::StoreWithout
        } else {
            SetCookiePolicy::Refuse
        },
        ..policy::Config::default()
    }
}

fn store_config(config: &CdnConfig) -> StoreConfig {
    StoreConfig {
        memory: MemoryConfig {
            capacity_bytes: config.memory_bytes,
            max_object_bytes: config.max_object_bytes,
            ..MemoryConfig::default()
        },
        disk: config.disk.as_ref().map(|d| DiskConfig {
            capacity_bytes: d.capacity_bytes,
            max_object_bytes: d.max_object_bytes,
            ..DiskConfig::new(&d.dir)
        }),
    }
}

/// An edge bound to its ports, not yet serving.
pub struct Edge {
    listener: TcpListener,
    admin_listener: TcpListener,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl Edge {
    /// Validates the configuration, opens the store (the disk tier rebuilds
    /// its index) and binds both ports.
    pub async fn build(config: CdnConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid cdn configuration: {e}"))?;
        let store_config = store_config(&config);
        let store = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await?
            .context("opening the disk tier")?;
        let store = Arc::new(store);
        let listener = serve::reuseport_listener(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
        let l = &config.limits;
        let read_limits = ReadLimits {
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_body_bytes: l.max_body_bytes,
            header_timeout: Duration::from_millis(l.header_timeout_ms),
            body_timeout: Duration::from_millis(l.body_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
        };
        let client = Client::new(ClientConfig {
            connect_timeout: Duration::from_millis(l.origin_connect_timeout_ms),
            response_timeout: Duration::from_millis(l.origin_timeout_ms),
            pool: PoolConfig {
                max_idle_per_peer: l.origin_idle,
                ..PoolConfig::default()
            },
            ..ClientConfig::default()
        });
        let registry = telemetry::Registry::new();
        let metrics = Metrics::new(&registry.component("scalestack_cdn"), store.clone());
        let (stop_tx, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            policy: policy_config(&config),
            flights: Flights::new(Duration::from_secs(config.hit_for_miss_secs)),
            client,
            clock: Clock::new(),
            metrics,
            registry,
            read_limits,
            // Request bodies (passed to the origin) held at once.
            body_budget: Arc::new(Semaphore::new(256 << 20)),
            connection_slots: Arc::new(Semaphore::new(l.max_connections)),
            stopping,
            coalesce_wait: Duration::from_millis(config.coalesce_wait_ms),
            write_timeout: Duration::from_millis(l.body_timeout_ms),
            store,
            config,
        });
        Ok(Edge {
            listener,
            admin_listener,
            shared,
            stop_tx,
        })
    }

    /// The public address (useful when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("a bound listener")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// requests in flight finish (up to `grace`) and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let Edge {
            listener,
            admin_listener,
            shared,
            stop_tx,
        } = self;
        let addr = listener.local_addr()?;
        let threads = serve::thread_count(shared.config.threads);
        let worker_shared = shared.clone();
        let workers = serve::spawn_workers(addr, threads, "cdn", move |listener| {
            let shared = worker_shared.clone();
            async move {
                accept_loop(listener, shared.clone()).await;
                wait_for_connections(&shared, grace).await;
            }
        })
        .with_context(|| format!("cannot listen on {addr} (worker threads)"))?;
        let sweeper = tokio::spawn(shared.clock.clone().run());
        let admin = tokio::spawn(admin::serve(admin_listener, shared.clone()));
        tracing::info!(
            listen = %addr,
            admin = %shared.config.admin_listen,
            origin = %shared.config.origin,
            memory_bytes = shared.config.memory_bytes,
            disk = ?shared.config.disk.as_ref().map(|d| &d.dir),
            threads,
            "cdn edge started"
        );
        tokio::select! {
            _ = accept_loop(listener, shared.clone()) => {}
            _ = shutdown => {}
        }
        tracing::info!("cdn edge stopping: no new connections, finishing requests in flight");
        let _ = stop_tx.send(true);
        if !wait_for_connections(&shared, grace).await {
            tracing::warn!("grace period over with connections still open");
        }
        for w in workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        admin.abort();
        sweeper.abort();
        tracing::info!("cdn edge stopped");
        Ok(())
    }
}

/// Waits until every client connection has closed, at most `grace`.
async fn wait_for_connections(shared: &Shared, grace: Duration) -> bool {
    let all = shared.config.limits.max_connections;
    serve::wait_for_connections(&shared.connection_slots, all, grace).await
}

/// Accepts until the edge stops; connections above the limit get 503.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let on_full = || shared.metrics.answered(metrics::Outcome::Error, 0);
    let serve = |stream, _peer| {
        let shared = shared.clone();
        async move { serve_connection(stream, &shared).await }
    };
    serve::accept_loop(
        listener,
        shared.connection_slots.clone(),
        shared.stopping.clone(),
        on_full,
        serve,
    )
    .await;
}

/// Decrements the open-connection gauge when a connection ends.
struct ConnectionGauge<'a>(&'a prometheus::IntGauge);

impl Drop for ConnectionGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one client connection: requests in sequence while keep-alive
/// holds and the edge is not stopping.
async fn serve_connection(mut stream: TcpStream, shared: &Arc<Shared>) {
    shared.metrics.connections.inc();
    let _gauge = ConnectionGauge(&shared.metrics.connections);
    let mut out = Vec::with_capacity(8 * 1024);
    let deadline = shared.clock.deadline();
    let t = Timer {
        clock: &shared.clock,
        deadline: &deadline,
    };
    let mut requests = RequestReader::new(
        &shared.read_limits,
        &shared.body_budget,
        shared.stopping.clone(),
        t,
    );
    loop {
        let (head, body, keep_alive) = match requests.next(&mut stream).await {
            Next::Request {
                head,
                body,
                keep_alive,
            } => (head, body, keep_alive),
            Next::Refused(e) => return refuse(&mut stream, shared, &e).await,
            Next::Done => break,
        };
        let mut conn = handle::Conn {
            io: &mut stream,
            t,
            out: &mut out,
        };
        let served = handle::handle(shared, &mut conn, &head, &body.bytes, keep_alive).await;
        if out.capacity() > 64 * 1024 {
            out = Vec::with_capacity(8 * 1024);
        }
        match served {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    let _ = stream.shutdown().await;
}

/// Answers a request that could not be read, then closes the connection.
async fn refuse(stream: &mut TcpStream, shared: &Shared, e: &ReadError) {
    let Some(status) = e.status() else { return };
    tracing::debug!(error = %e, status, "request refused");
    shared.metrics.answered(metrics::Outcome::Error, 0);
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    let cache_status = format!("{}; fwd=bypass; detail=bad-request", shared.config.name);
    let extra = [("cache-status", cache_status.as_str())];
    if downstream::write_simple(stream, status, body.as_bytes(), &extra, false)
        .await
        .is_ok()
    {
        downstream::lingering_close(stream).await;
    }
}
