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
use bytes::BytesMut;
use proxy_core::downstream::{self, ReadError};
use proxy_core::{Client, ClientConfig, Clock, Framing, PoolConfig, ReadLimits, Timer};
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
        let listener = reuseport_listener(config.listen)
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
        let threads = match shared.config.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let mut workers = Vec::new();
        for i in 1..threads {
            let listener = reuseport_listener(addr).with_context(|| format!("cannot listen on {addr}"))?;
            let shared = shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("cdn-worker-{i}"))
                .spawn(move || {
                    proxy_core::pool::set_thread_slot(i);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        accept_loop(listener, shared.clone()).await;
                        wait_for_connections(&shared, grace).await;
                    });
                    std::io::Result::Ok(())
                })
                .context("starting a worker thread")?;
            workers.push(worker);
        }
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

/// A listener other threads can share the address of.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Waits until every connection permit is back (no connection open), at
/// most `grace`; returns whether they all came back.
async fn wait_for_connections(shared: &Shared, grace: Duration) -> bool {
    let all = shared.config.limits.max_connections as u32;
    tokio::time::timeout(grace, shared.connection_slots.acquire_many(all))
        .await
        .is_ok()
}

/// Accepts until the edge stops; connections above the limit get 503.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (stream, _peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match shared.connection_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_connection(stream, &shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let body = br#"{"error":"too many connections"}"#;
                    let write =
                        downstream::write_simple(&mut stream, 503, body, &[("retry-after", "1")], false);
                    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                });
            }
        }
    }
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
    let _ = stream.set_nodelay(true);
    shared.metrics.connections.inc();
    let _gauge = ConnectionGauge(&shared.metrics.connections);
    let limits = shared.read_limits;
    let mut stopping = shared.stopping.clone();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(8 * 1024);
    let deadline = shared.clock.deadline();
    let t = Timer {
        clock: &shared.clock,
        deadline: &deadline,
    };
    let mut first_byte = limits.header_timeout;
    loop {
        if *stopping.borrow() {
            break;
        }
        let read = if buf.is_empty() {
            tokio::select! {
                biased;
                r = downstream::read_head(&mut stream, &mut buf, &limits, first_byte, t) => Some(r),
                _ = stopping.wait_for(|s| *s) => None,
            }
        } else {
            Some(downstream::read_head(&mut stream, &mut buf, &limits, first_byte, t).await)
        };
        let read = match read {
            Some(r) => r,
            None if buf.is_empty() => break,
            None => downstream::read_head(&mut stream, &mut buf, &limits, first_byte, t).await,
        };
        first_byte = limits.idle_timeout;
        let head = match read {
            Ok(h) => h,
            Err(e) => return refuse(&mut stream, shared, &e).await,
        };
        if head.expect_continue && head.body != Framing::None {
            if matches!(head.body, Framing::Length(n) if n > limits.max_body_bytes) {
                return refuse(&mut stream, shared, &ReadError::BodyTooLarge).await;
            }
            if stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return;
            }
        }
        let body =
            match downstream::read_body(&mut stream, &mut buf, head.body, &limits, &shared.body_budget, t)
                .await
            {
                Ok(b) => b,
                Err(e) => return refuse(&mut stream, shared, &e).await,
            };
        let keep_alive = head.keep_alive && head.minor_version == 1 && !*stopping.borrow();
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
