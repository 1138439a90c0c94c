//! Starts the `bench serve` backend and the `bench origin` in-process on
//! ephemeral ports, and asks the origin for its counts.

use bench::{Origin, OriginConfig, ServeConfig, Server, COUNT_PATH};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tokio::sync::oneshot;

/// A running backend; dropping it stops the server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// `http://ADDR/` plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("server thread panicked");
            if !std::thread::panicking() {
                result.expect("server failed");
            }
        }
    }
}

/// Binds the backend on 127.0.0.1:0 on its own two-thread runtime, so the load
/// generator (which builds its own runtimes) runs beside it.
pub fn spawn_server() -> TestServer {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let config = ServeConfig {
                listen: "127.0.0.1:0".parse()?,
                body_bytes: 13,
            };
            let server = Server::build(&config).await?;
            addr_tx.send(server.local_addr()?)?;
            server
                .run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    });
    let addr = addr_rx.recv().expect("server did not start");
    TestServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Binds the origin on 127.0.0.1:0 (2 KiB / 100 KiB objects, 1 KiB Zipf
/// objects, a 20 ms slow key) on its own two-thread runtime.
pub fn spawn_origin() -> TestServer {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let config = OriginConfig {
                listen: "127.0.0.1:0".parse()?,
                small_bytes: 2048,
                large_bytes: 100 * 1024,
                zipf_bytes: 1024,
                slow: Duration::from_millis(20),
                max_age: 3600,
            };
            let origin = Origin::build(&config).await?;
            addr_tx.send(origin.local_addr()?)?;
            origin
                .run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    });
    let addr = addr_rx.recv().expect("origin did not start");
    TestServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// A response read whole from a `Connection: close` exchange.
pub struct Answer {
    pub status: u16,
    /// The head's lines after the status line, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head[9..12].parse().expect("status");
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// The origin's count of requests matching `query` (`prefix=…`, `path=…` or empty).
pub fn count(origin: &TestServer, query: &str) -> u64 {
    let path = if query.is_empty() {
        COUNT_PATH.to_owned()
    } else {
        format!("{COUNT_PATH}?{query}")
    };
    let answer = get(origin.addr, &path);
    assert_eq!(answer.status, 200, "{}", answer.head);
    String::from_utf8(answer.body)
        .expect("utf-8")
        .trim()
        .parse()
        .expect("a number")
}
