//! A scripted origin that counts what it is asked, an edge in front of it,
//! and a raw HTTP/1.1 client (so tests see exactly the bytes the edge
//! sends, and can send what a browser would not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdn::CdnConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the origin received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, fields and body; `Content-Length` added.
    Plain {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// These bytes exactly, then the connection closes.
    Raw(Vec<u8>),
    /// Never answer (until the connection is dropped).
    Hang,
}

impl Reply {
    pub fn ok(headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::status(200, headers, body)
    }

    pub fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Plain {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(mut self, by: Duration) -> Reply {
        if let Reply::Plain { delay, .. } = &mut self {
            *delay = by;
        }
        self
    }
}

type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A scripted origin: `script(request, n)` answers the `n`th request
/// (from 1) for the request's path.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    /// The connections' tasks, so a stop also cuts kept-alive ones.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    pub async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap(), Arc::new(script)).await
    }

    async fn start_on(addr: SocketAddr, script: Script) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight: Arc<AtomicUsize> = Arc::default();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (s, f, m, c) = (
            seen.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (script, s, f, m) = (script.clone(), s.clone(), f.clone(), m.clone());
                let handle = tokio::spawn(serve(conn, script, s, f, m));
                c.lock().unwrap().push(handle.abort_handle());
            }
        });
        Origin {
            addr,
            seen,
            max_in_flight,
            task,
            conns,
        }
    }

    /// Requests received for `path` (the target without its query).
    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.split('?').next() == Some(path))
            .count()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The most requests it was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops listening and cuts every open connection (connections are
    /// refused from now on).
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Listens again on the same address with another script.
    pub async fn restart(&self, script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Origin {
        self.stop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        Origin::start_on(self.addr, Arc::new(script)).await
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    mut conn: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut conn, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let request = Seen {
            method,
            target,
            headers,
        };
        let path = request.target.split('?').next().unwrap_or("").to_string();
        let n = {
            let mut all = seen.lock().unwrap();
            all.push(request.clone());
            all.iter()
                .filter(|s| s.target.split('?').next() == Some(&path))
                .count()
        };
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        max_in_flight.fetch_max(now, Ordering::SeqCst);
        let reply = script(&request, n);
        let keep = match reply {
            Reply::Plain {
                status,
                headers,
                body,
                delay,
            } => {
                tokio::time::sleep(delay).await;
                let mut out = format!("HTTP/1.1 {status} X\r\n");
                for (n, v) in &headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                let bodyless = request.method == "HEAD" || status == 304 || status == 204;
                if !headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    && status != 304
                {
                    out.push_str(&format!("content-length: {}\r\n", body.len()));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                if !bodyless {
                    bytes.extend_from_slice(&body);
                }
                conn.write_all(&bytes).await.is_ok()
            }
            Reply::Raw(bytes) => {
                let _ = conn.write_all(&bytes).await;
                false
            }
            Reply::Hang => {
                let mut b = [0u8; 1];
                let _ = conn.read(&mut b).await;
                false
            }
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            return;
        }
    }
}

async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i);
        }
        let mut chunk = [0u8; 8192];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An edge running in this process.
pub struct TestEdge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A configuration for an edge in front of `origin` on free ports.
pub fn config(origin: SocketAddr) -> CdnConfig {
    CdnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        origin,
        name: "edge".into(),
        threads: 1,
        access_log: false,
        memory_bytes: 16 << 20,
        max_object_bytes: 1 << 20,
        ..CdnConfig::default()
    }
}

impl TestEdge {
    pub async fn start(config: CdnConfig) -> TestEdge {
        let edge = cdn::Edge::build(config).await.expect("edge builds");
        let (addr, admin) = (edge.addr(), edge.admin_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            edge.run_until_stopped(stop, Duration::from_secs(1))
                .await
                .unwrap();
        });
        TestEdge {
            addr,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the edge and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[]).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: cdn.test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if method == "POST" || method == "PUT" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("Connection: close\r\n\r\n");
        raw(self.addr, req.as_bytes(), method == "HEAD").await
    }

    /// `POST /purge?{query}` on the admin port: the status and the number
    /// purged.
    pub async fn purge(&self, query: &str) -> (u16, String) {
        let req = format!(
            "POST /purge?{query} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let r = raw(self.admin, req.as_bytes(), false).await;
        (r.status, r.text())
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let req = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        raw(self.admin, req, false).await.text()
    }

    /// A counter or gauge of `/metrics` (first line starting so).
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status().split(';').nth(1).map(str::trim) == Some("hit")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Sends `request` on a new connection and reads the answer to its end
/// (the request asks the connection to close).
pub async fn raw(addr: SocketAddr, request: &[u8], head_only: bool) -> Resp {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request).await.unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut all)).await;
    let _ = read.expect("the answer within 20 s");
    parse(&all, head_only)
}

/// Parses a whole answer (Content-Length, chunked, or until close).
pub fn parse(all: &[u8], head_only: bool) -> Resp {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(all)));
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &all[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2..];
    }
}

/// Waits until `check` holds (polling), at most 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}
