//! The minimal backend (`bench serve`): answers every request with `200`,
//! `content-type: text/plain` and the same body, on keep-alive HTTP/1.1
//! connections served by hyper. Its accept loop and graceful shutdown
//! ([`serve`]) also run `bench origin`.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long in-flight connections get to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the backend serves and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Size of the response body in bytes (13 by default on the command line: `Hello, world!`).
    pub body_bytes: usize,
}

/// A bound backend, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    body: Bytes,
}

impl Server {
    /// Binds the listener; call from inside a tokio runtime.
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            body: body_of(config.body_bytes),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The port actually bound (useful after binding port 0).
    pub fn port(&self) -> anyhow::Result<u16> {
        Ok(self.local_addr()?.port())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open
    /// connections finish their current request (for up to 5 s) and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let body = self.body;
        serve(self.listener, shutdown, move |_request| {
            let mut response = Response::new(Full::new(body.clone()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            async move { response }
        })
        .await
    }
}

/// Serves keep-alive HTTP/1.1 connections on `listener`, each request
/// answered by `handler`, until `shutdown` completes; then stops accepting,
/// lets open connections finish their current request (for up to 5 s) and
/// returns.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    // Out of file descriptors and similar: back off rather than spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, handler.clone(), stop_rx.clone()));
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// Serves one keep-alive connection until the client closes it or shutdown.
async fn serve_connection<H, F>(stream: tokio::net::TcpStream, handler: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::select! {
        // Errors here are clients going away mid-request; nothing to do about them.
        _ = connection.as_mut() => {}
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// `n` bytes of `Hello, world!` repeated (exactly that text for the default 13).
fn body_of(n: usize) -> Bytes {
    Bytes::from(
        b"Hello, world!"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect::<Vec<u8>>(),
    )
}

/// Resolves on SIGINT or SIGTERM (on Unix; on other systems Ctrl-C only).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            // Without signal handlers fall back to Ctrl-C alone.
            _ => ctrl_c().await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

/// Resolves on Ctrl-C; never, if Ctrl-C cannot be listened for.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_requested_size() {
        assert_eq!(body_of(13), Bytes::from_static(b"Hello, world!"));
        assert_eq!(body_of(0).len(), 0);
        assert_eq!(body_of(20), Bytes::from_static(b"Hello, world!Hello, "));
    }
}
