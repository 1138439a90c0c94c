//! `scalestack dns`: the authoritative geoDNS server of the system's zone.
//!
//! `www.<zone>` is answered with the load balancer of the nearest healthy
//! site, `cdn.<zone>` with that site's CDN edge; the apex has SOA and NS
//! records, and the name servers' own names their addresses. A client is
//! located by its EDNS Client Subnet when the query carries one, else by
//! its source address ([`geo`]); sites are skipped while their load
//! balancer fails its health checks ([`health`]). The wire format is
//! `hickory-proto`'s; the requests are handled here ([`answer`]), since a
//! generic catalog would drop the EDNS options the location needs.
//!
//! ```text
//! UDP: thread per core, SO_REUSEPORT, recvmmsg ─▶ fast::AnswerCache (else answer::Zone::respond) ─▶ rrl::Limiter ─▶ sendmmsg
//! TCP: tokio, length-prefixed, pipelined ─▶ answer::Zone::respond ─▶ send
//! health: per site, GET /readyz every interval ─▶ RiseFall ─▶ SiteStates (atomics)
//! admin: /metrics /healthz /readyz /sites
//! ```

pub mod answer;
pub mod config;
pub mod fast;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod rrl;
mod udp;

pub use config::DnsConfig;

use answer::{Transport, Zone};
use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use health::{RiseFall, SiteStates};
use metrics::Metrics;
use rrl::Limiter;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long a TCP connection may sit idle between queries (RFC 7766
/// suggests seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the answering paths share.
struct Shared {
    zone: Zone,
    states: SiteStates,
    limiter: Option<Limiter>,
    metrics: Metrics,
    config: DnsConfig,
    stop: AtomicBool,
}

/// A geoDNS server bound to its ports, not yet serving.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    admin: TcpListener,
    shared: Arc<Shared>,
    /// The health trackers, in site order (None: no health address).
    trackers: Vec<Option<RiseFall>>,
}

impl DnsServer {
    /// Validates the configuration, binds UDP, TCP and admin, and probes
    /// every site once, so the first answers already skip dead sites.
    pub async fn build(config: DnsConfig) -> anyhow::Result<DnsServer> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid dns configuration: {e}"))?;
        let zone = Zone::new(&config)?;
        let udp = reuseport_udp(config.listen)
            .with_context(|| format!("cannot listen on {} (udp)", config.listen))?;
        let listen = udp.local_addr()?;
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (tcp)"))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
        let timeout = Duration::from_millis(config.health.timeout_ms);
        let mut trackers = Vec::new();
        let states = SiteStates::new(0);
        let metrics = Metrics::new();
        for (i, site) in config.sites.iter().enumerate() {
            let up = match site.health {
                Some(addr) => health::probe(addr, timeout).await,
                None => true,
            };
            trackers.push(site.health.map(|_| RiseFall::new(up)));
            states.set(i, up);
            metrics
                .site_up
                .with_label_values(&[&site.name])
                .set(i64::from(up));
        }
        Ok(DnsServer {
            udp,
            tcp,
            admin,
            shared: Arc::new(Shared {
                zone,
                states,
                limiter: Limiter::new(&config.rrl),
                metrics,
                config,
                stop: AtomicBool::new(false),
            }),
            trackers,
        })
    }

    /// The UDP and TCP port (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then stops answering and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let DnsServer {
            udp,
            tcp,
            admin,
            shared,
            trackers,
        } = self;
        let addr = udp.local_addr()?;
        let threads = match shared.config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut sockets = vec![udp];
        for _ in 1..threads {
            sockets.push(reuseport_udp(addr).with_context(|| format!("cannot listen on {addr} (udp)"))?);
        }
        let udp_threads: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp::serve(socket, &shared))
                    .expect("spawning a thread")
            })
            .collect();
        let mut tasks = vec![
            tokio::spawn(serve_tcp(tcp, shared.clone())),
            tokio::spawn(serve_admin(admin, shared.clone())),
        ];
        for (i, tracker) in trackers.into_iter().enumerate() {
            if let Some(tracker) = tracker {
                tasks.push(tokio::spawn(watch_site(shared.clone(), i, tracker)));
            }
        }
        tracing::info!(
            listen = %addr,
            admin = %shared.config.admin_listen,
            zone = %shared.config.zone,
            sites = shared.config.sites.len(),
            regions = shared.config.regions.len(),
            threads,
            "dns server started"
        );
        shutdown.await;
        shared.stop.store(true, Ordering::Relaxed);
        for t in &tasks {
            t.abort();
        }
        for t in udp_threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("dns server stopped");
        Ok(())
    }
}

/// A UDP socket on `addr` that other sockets of this process may share
/// (`SO_REUSEPORT`: the kernel spreads the queries over them).
fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    // The stop flag is looked at this often.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_tcp_connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, peer, &shared).await {
                tracing::debug!(error = %e, %peer, "tcp connection ended");
            }
        });
    }
}

/// Length-prefixed queries, answered in order, until the client closes or
/// idles past [`TCP_IDLE`].
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 65_535];
    let mut cache = fast::AnswerCache::default();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "query body timed out"))??;
        let Some(answer) = shared.zone.respond_cached(
            &mut cache,
            &buf[..len],
            peer.ip(),
            Transport::Tcp,
            shared.states.load(),
        ) else {
            continue;
        };
        let mut out = Vec::with_capacity(answer.bytes.len() + 2);
        out.extend_from_slice(&(answer.bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&answer.bytes);
        stream.write_all(&out).await?;
        shared.metrics.answered(&shared.zone.geo, Transport::Tcp, &answer);
    }
}

/// Probes site `i` every interval and moves it up or down.
async fn watch_site(shared: Arc<Shared>, i: usize, mut tracker: RiseFall) {
    let site = &shared.config.sites[i];
    let Some(addr) = site.health else { return };
    let h = &shared.config.health;
    let timeout = Duration::from_millis(h.timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(h.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ok = health::probe(addr, timeout).await;
        if tracker.observe(ok, h.rise, h.fall) {
            shared.states.set(i, tracker.up);
            let to = if tracker.up { "up" } else { "down" };
            shared
                .metrics
                .site_up
                .with_label_values(&[&site.name])
                .set(i64::from(tracker.up));
            shared
                .metrics
                .site_changes
                .with_label_values(&[&site.name, to])
                .inc();
            if tracker.up {
                tracing::info!(site = %site.name, "site up: answers go to it again");
            } else {
                tracing::warn!(site = %site.name, health = %addr, "site down: answers skip it");
            }
        }
    }
}

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let router = Router::new()
        .route(
            "/metrics",
            get({
                let shared = shared.clone();
                move || async move { shared.metrics.registry.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/sites",
            get(move || async move {
                let (up, last_good) = shared.states.load();
                let sites: Vec<_> = shared
                    .config
                    .sites
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        serde_json::json!({
                            "name": s.name,
                            "up": up & (1 << i) != 0,
                            "last_good": last_good & (1 << i) != 0,
                            "www": s.www,
                            "cdn": s.cdn,
                            "health": s.health,
                        })
                    })
                    .collect();
                Json(sites)
            }),
        );
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}
