//! `scalestack lb`: the HTTP load balancer in front of the web tier.
//!
//! The HTTP machinery is `proxy_core`'s (the strict codec, deadlines, the
//! keep-alive pool, the upstream client and the relay); this crate is the
//! policy: it picks a backend with the configured [`selection`] algorithm
//! among those the health checks ([`health_check`]) and passive ejection
//! ([`backend`]) allow, rewrites the request ([`forwarding`]: `X-Forwarded-*`,
//! request id), decides retries, counts [`metrics`] through the relay's
//! hooks ([`proxy`]), and changes backends at runtime through the [`admin`]
//! API.
//!
//! ```text
//! client ─▶ accept (max_connections) ─▶ proxy_core::downstream::read_head/read_body
//!        ─▶ proxy_core::relay(LbHooks) ─▶ selection::choose ─▶ proxy_core::Client::send (pooled) ─▶ backend
//! ```
//!
//! Modules depend one way: `lib` ─▶ `admin`, `proxy`, `health_check` ─▶
//! `shared` ─▶ `backend`, `selection`, `metrics`, `config`.

pub mod admin;
pub mod backend;
pub mod config;
mod forwarding;
mod health_check;
pub mod metrics;
mod proxy;
pub mod selection;
mod shared;

pub use backend::{Backend, BackendSet, BackendStatus};
pub use config::{Algorithm, BackendSpec, HashKey, HealthConfig, LbConfig, Limits, OutlierConfig};

use anyhow::Context;
use proxy_core::serve;
use proxy_core::{Clock, ReadLimits};
use shared::Shared;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// A load balancer bound to its ports, not yet serving.
pub struct LoadBalancer {
    listener: TcpListener,
    admin_listener: TcpListener,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl LoadBalancer {
    /// Validates the configuration, binds both ports and runs a first round
    /// of health checks, so healthy backends take traffic from the start.
    pub async fn build(config: LbConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid lb configuration: {e}"))?;
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
        let (stop_tx, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            selector: selection::selector(config.algorithm),
            metrics: metrics::Metrics::new(),
            backends: BackendSet::default(),
            upstream: shared::upstream_client(&config),
            read_limits,
            connection_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            body_budget: Arc::new(Semaphore::new(
                config
                    .limits
                    .max_buffered_bytes
                    .min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
            stopping,
            clock: Clock::new(),
            config,
        });
        for spec in &shared.config.backends {
            shared
                .backends
                .add(Backend::new(spec, shared.metrics.backend(spec.addr)))
                .map_err(|e| anyhow::anyhow!("invalid lb configuration: {e}"))?;
        }
        health_check::check_all(&shared.backends, &shared.config.health).await;
        Ok(LoadBalancer {
            listener,
            admin_listener,
            shared,
            stop_tx,
        })
    }

    /// The public port (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// requests in flight finish (up to `grace`) and returns.
    ///
    /// Thread per core, as nginx's workers: besides the caller's runtime,
    /// `threads - 1` OS threads (0 = one per core) each run a single-threaded
    /// runtime with their own `SO_REUSEPORT` listener on the same address;
    /// the kernel spreads new connections over them and a connection lives
    /// on one thread, so the data path never crosses threads. The caller's
    /// runtime is best single-threaded too (`scalestack lb` makes it so).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let LoadBalancer {
            listener,
            admin_listener,
            shared,
            stop_tx,
        } = self;
        let addr = listener.local_addr()?;
        let threads = serve::thread_count(shared.config.threads);
        let worker_shared = shared.clone();
        let workers = serve::spawn_workers(addr, threads, "lb", move |listener| {
            let shared = worker_shared.clone();
            async move {
                proxy::accept_loop(listener, shared.clone()).await;
                wait_for_connections(&shared, grace).await;
            }
        })
        .with_context(|| format!("cannot listen on {addr} (worker threads)"))?;
        let sweeper = tokio::spawn(shared.clock.clone().run());
        let health = tokio::spawn(health_check::run(shared.clone()));
        let admin = tokio::spawn(admin::serve(admin_listener, shared.clone()));
        tracing::info!(
            listen = %addr,
            admin = %shared.config.admin_listen,
            algorithm = ?shared.config.algorithm,
            backends = shared.backends.snapshot().len(),
            threads,
            "load balancer started"
        );
        tokio::select! {
            _ = proxy::accept_loop(listener, shared.clone()) => {}
            _ = shutdown => {}
        }
        tracing::info!("load balancer stopping: no new connections, finishing requests in flight");
        let _ = stop_tx.send(true);
        if !wait_for_connections(&shared, grace).await {
            tracing::warn!("grace period over with connections still open");
        }
        for w in workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        health.abort();
        admin.abort();
        sweeper.abort();
        tracing::info!("load balancer stopped");
        Ok(())
    }
}

/// Waits until every client connection has closed (all permits are back),
/// at most `grace`. True when they all did.
async fn wait_for_connections(shared: &Shared, grace: Duration) -> bool {
    let all = shared.config.limits.max_connections;
    proxy_core::serve::wait_for_connections(&shared.connection_slots, all, grace).await
}
