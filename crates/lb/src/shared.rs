//! The state every connection, the health checker and the admin API share.

use crate::backend::{self, Backend, BackendSet};
use crate::config::{BackendSpec, LbConfig};
use crate::{metrics, selection};
use proxy_core::{Client, ClientConfig, Clock, HeadLimits, PoolConfig, ReadLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// State shared by every connection, the health checker and the admin API.
pub(crate) struct Shared {
    pub config: LbConfig,
    pub backends: BackendSet,
    pub selector: Box<dyn selection::Selector>,
    pub metrics: metrics::Metrics,
    /// The upstream client and its keep-alive pool (per backend, per thread).
    pub upstream: Client,
    pub read_limits: ReadLimits,
    /// One permit per open client connection.
    pub connection_slots: Arc<Semaphore>,
    /// Bytes of request bodies that may be held at once (`max_buffered_bytes`).
    pub body_budget: Arc<Semaphore>,
    /// Flips to true when shutdown starts.
    pub stopping: watch::Receiver<bool>,
    /// Coarse clock of the data path's deadlines.
    pub clock: Arc<Clock>,
}

/// The upstream client of a configuration: `upstream_timeout_ms` to
/// answer, at most 2 s of it to connect, `upstream_idle_per_backend` idle
/// connections per backend and thread kept `upstream_idle_timeout_ms`.
pub(crate) fn upstream_client(config: &LbConfig) -> Client {
    let timeout = Duration::from_millis(config.limits.upstream_timeout_ms);
    Client::new(ClientConfig {
        connect_timeout: timeout.min(Duration::from_secs(2)),
        response_timeout: timeout,
        pool: PoolConfig {
            max_idle_per_peer: config.limits.upstream_idle_per_backend,
            idle_timeout: Duration::from_millis(config.limits.upstream_idle_timeout_ms),
        },
        head: HeadLimits {
            max_bytes: 64 * 1024,
            max_fields: 128,
        },
    })
}

impl Shared {
    /// Adds a backend (not yet probed: it takes traffic after its first
    /// passed health check).
    pub(crate) fn add_backend(&self, spec: &BackendSpec) -> Result<Arc<Backend>, backend::SetError> {
        self.backends
            .add(Backend::new(spec, self.metrics.backend(spec.addr)))
    }

    /// Removes a backend (requests in flight finish) and closes its idle
    /// connections.
    pub(crate) fn remove_backend(&self, addr: SocketAddr) -> Result<Arc<Backend>, backend::SetError> {
        let b = self.backends.remove(addr)?;
        self.metrics.forget(addr);
        self.upstream.pool().forget(&addr);
        Ok(b)
    }
}
