//! Test backends (real HTTP servers on their own runtime, so `kill` closes
//! every socket at once, as a dying process does) and a load balancer on
//! port 0 in front of them.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{self, post};
use axum::Router;
use lb::{BackendSpec, LbConfig, LoadBalancer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
pub struct BackendState {
    pub name: String,
    /// Requests other than health checks.
    pub hits: AtomicU64,
    pub posts: AtomicU64,
    /// Answer 500 to everything but health checks.
    pub failing: AtomicBool,
    /// Fail the health check.
    pub sick: AtomicBool,
    pub last_headers: Mutex<HeaderMap>,
}

/// An HTTP server that says who it is.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    /// The thread running the backend's own runtime, and how to stop it.
    running: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl TestBackend {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on a given port (0 for any): used to restart a killed one.
    pub fn start_on(port: u16) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind test backend");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: addr.port().to_string(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/readyz", routing::get(readyz))
            .route("/slow/{ms}", routing::get(slow))
            .route("/echo", post(echo))
            .route("/hang", post(hang))
            .route("/headers", routing::get(headers))
            .route("/big/{mib}", routing::get(big))
            .fallback(who)
            .with_state(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router).await.unwrap();
            });
            let _ = runtime.block_on(stop_rx);
            // Dropping the runtime here, outside any async context, drops
            // every task and so closes every socket before `kill` returns.
            drop(runtime);
        });
        TestBackend {
            addr,
            state,
            running: Some((stop_tx, thread)),
        }
    }

    /// Stops at once: when this returns, the listener and every open
    /// connection are closed.
    pub fn kill(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            addr: self.addr,
            weight: 1,
        }
    }

    pub fn hits(&self) -> u64 {
        self.state.hits.load(SeqCst)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn failing(s: &BackendState) -> bool {
    s.hits.fetch_add(1, SeqCst);
    s.failing.load(SeqCst)
}

async fn readyz(State(s): State<Arc<BackendState>>) -> StatusCode {
    if s.sick.load(SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn who(State(s): State<Arc<BackendState>>) -> impl IntoResponse {
    if failing(&s) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failing".to_string());
    }
    (StatusCode::OK, s.name.clone())
}

async fn slow(State(s): State<Arc<BackendState>>, Path(ms): Path<u64>) -> String {
    s.hits.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    s.name.clone()
}

async fn echo(State(s): State<Arc<BackendState>>, body: axum::body::Bytes) -> String {
    s.hits.fetch_add(1, SeqCst);
    s.posts.fetch_add(1, SeqCst);
    format!("{} {}", s.name, body.len())
}

async fn hang(State(s): State<Arc<BackendState>>) -> String {
    s.hits.fetch_add(1, SeqCst);
    s.posts.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    s.name.clone()
}

async fn big(State(s): State<Arc<BackendState>>, Path(mib): Path<usize>) -> Vec<u8> {
    s.hits.fetch_add(1, SeqCst);
    vec![b'x'; mib << 20]
}

async fn headers(State(s): State<Arc<BackendState>>, h: HeaderMap) -> String {
    s.hits.fetch_add(1, SeqCst);
    *s.last_headers.lock().unwrap() = h;
    s.name.clone()
}

/// A load balancer serving on port 0.
pub struct TestLb {
    pub url: String,
    pub addr: SocketAddr,
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A configuration with fast health checks, for tests.
pub fn config(backends: &[&TestBackend]) -> LbConfig {
    let mut c = LbConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        backends: backends.iter().map(|b| b.spec()).collect(),
        access_log: false,
        ..Default::default()
    };
    c.health.interval_ms = 100;
    c.health.timeout_ms = 200;
    c
}

pub async fn start_lb(config: LbConfig) -> TestLb {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    }
    let lb = LoadBalancer::build(config).await.expect("lb starts");
    let addr: SocketAddr = format!("127.0.0.1:{}", lb.port()).parse().unwrap();
    let admin = format!("http://127.0.0.1:{}", lb.admin_port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lb.run_until_stopped(
        async {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    TestLb {
        url: format!("http://{addr}"),
        addr,
        admin,
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestLb {
    /// `GET` on the admin API (`/metrics`, `/backends`), as text.
    pub async fn admin_text(&self, path: &str) -> String {
        client()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin request")
            .text()
            .await
            .unwrap()
    }

    /// `GET` on the admin API, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.admin_text(path).await).expect("admin JSON")
    }

    /// Starts the graceful shutdown; await `task` for its end.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A client without connection reuse surprises: a fresh pool per test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET through the LB; returns (status, body).
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sends raw bytes and reads until the server closes or 2 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, Duration::from_secs(2)).await
}

pub async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until `f` holds, polling; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
