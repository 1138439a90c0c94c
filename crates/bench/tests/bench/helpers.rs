//! Starts the `bench serve` backend in-process on an ephemeral port.

use bench::{ServeConfig, Server};
use std::net::SocketAddr;
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
