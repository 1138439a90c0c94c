//! Active health checks: `GET <path>` on a fresh connection to every
//! backend each interval; `rise` passes make a backend healthy, `fall`
//! failures unhealthy. A fresh connection (not the pool) is used on purpose:
//! the check must see what a new request would see.

use crate::backend::{Backend, BackendSet};
use crate::config::HealthConfig;
use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probes every backend once, concurrently.
pub(crate) async fn check_all(backends: &BackendSet, config: &HealthConfig) {
    let mut set = tokio::task::JoinSet::new();
    for b in backends.snapshot().iter() {
        let b = b.clone();
        let config = config.clone();
        set.spawn(async move { check_and_record(&b, &config).await });
    }
    while set.join_next().await.is_some() {}
}

/// Probes one backend and records the verdict.
pub(crate) async fn check_and_record(b: &Backend, config: &HealthConfig) {
    let passed = probe(b, config).await;
    if let Some(now_healthy) = b.record_check(passed, config.rise, config.fall) {
        if now_healthy {
            tracing::info!(backend = %b.addr, "backend is healthy");
        } else {
            tracing::warn!(backend = %b.addr, "backend failed its health checks");
        }
    }
}

/// The check loop; runs until aborted.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.health.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first round ran in build()
    loop {
        tick.tick().await;
        check_all(&shared.backends, &shared.config.health).await;
    }
}

/// One check: true when the backend answers 2xx within the timeout.
async fn probe(b: &Backend, config: &HealthConfig) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(b.addr).await?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: scalestack-lb-health\r\nConnection: close\r\n\r\n",
            config.path, b.addr
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let m = s.read(&mut buf[n..]).await?;
            if m == 0 {
                break;
            }
            n += m;
        }
        std::io::Result::Ok(n >= 12 && buf.starts_with(b"HTTP/1.") && buf[9] == b'2')
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(config.timeout_ms), attempt).await,
        Ok(Ok(true))
    )
}
