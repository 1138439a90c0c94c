//! Serving clients, the part every proxy of ours shares: thread per core
//! (each thread a single-threaded runtime with its own `SO_REUSEPORT`
//! listener and its own slot of the upstream pool, as nginx's workers), an
//! accept loop bounded by a connection semaphore, and a [`RequestReader`]
//! that hands a connection's requests over one by one, read in full with
//! [`downstream`](crate::downstream)'s limits. What to do with a request is
//! the proxy's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::codec::{Framing, RequestHead};
use crate::deadline::Timer;
use crate::downstream::{self, Body, ReadError, ReadLimits};

/// A listener other threads can share the address of (`SO_REUSEPORT`).
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// The worker threads for `configured` (0: one per core).
pub fn thread_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
}

/// Starts `threads - 1` OS threads named `{name}-worker-{i}` (the caller's
/// runtime is the first), each with a single-threaded runtime, pool slot
/// `i` and its own listener on `addr`, running `serve(listener)` to its
/// end. Join the handles after a stop.
pub fn spawn_workers<F, Fut>(
    addr: SocketAddr,
    threads: usize,
    name: &str,
    serve: F,
) -> std::io::Result<Vec<std::thread::JoinHandle<std::io::Result<()>>>>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    let mut workers = Vec::new();
    for i in 1..threads {
        let listener = reuseport_listener(addr)?;
        // A listener moves between runtimes as a std one.
        let listener = listener.into_std()?;
        let serve = serve.clone();
        let worker = std::thread::Builder::new()
            .name(format!("{name}-worker-{i}"))
            .spawn(move || {
                crate::pool::set_thread_slot(i);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener).await;
                    std::io::Result::Ok(())
                })
            })?;
        workers.push(worker);
    }
    Ok(workers)
}

/// Waits until every connection permit of `slots` (`all` of them) is back,
/// at most `grace`. True when they all came back.
pub async fn wait_for_connections(slots: &Semaphore, all: usize, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    while slots.available_permits() < all {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Accepts until `stopping` turns true: each connection holds a permit of
/// `slots` while `serve` runs it (in a task of its own); above the limit a
/// connection gets `503` (after `on_full`, for the proxy's metrics) and is
/// closed.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
    on_full: impl Fn(),
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let connection = serve(stream, peer);
                tokio::spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(_) => {
                on_full();
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

/// What [`RequestReader::next`] found on the connection.
pub enum Next {
    /// A whole request; `keep_alive` says whether the connection may carry
    /// another after it (HTTP/1.1, the client's wish, not stopping).
    Request {
        /// The head.
        head: RequestHead,
        /// The body, read in full (budgeted).
        body: Body,
        /// Whether the connection may carry another request.
        keep_alive: bool,
    },
    /// A request that could not be read: answer
    /// [`ReadError::status`] (if any), then close.
    Refused(ReadError),
    /// The connection is over (closed, idle past its timeout, or the
    /// server is stopping between requests).
    Done,
}

/// Reads a client connection's requests in sequence: a new connection gets
/// the header timeout for its first byte, a kept-alive one the idle
/// timeout between requests; a stop closes it between requests, while a
/// request that has begun to arrive is read and served.
pub struct RequestReader<'a> {
    buf: BytesMut,
    first_byte: Duration,
    limits: &'a ReadLimits,
    budget: &'a Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
    t: Timer<'a>,
}

impl<'a> RequestReader<'a> {
    /// A reader with `limits`, request bodies charged to `budget`.
    pub fn new(
        limits: &'a ReadLimits,
        budget: &'a Arc<Semaphore>,
        stopping: watch::Receiver<bool>,
        t: Timer<'a>,
    ) -> Self {
        RequestReader {
            buf: BytesMut::with_capacity(8 * 1024),
            first_byte: limits.header_timeout,
            limits,
            budget,
            stopping,
            t,
        }
    }

    /// The next request on `stream`.
    pub async fn next(&mut self, stream: &mut TcpStream) -> Next {
        let (limits, t) = (self.limits, self.t);
        if *self.stopping.borrow() {
            return Next::Done;
        }
        let read = if self.buf.is_empty() {
            tokio::select! {
                biased;
                r = downstream::read_head(stream, &mut self.buf, limits, self.first_byte, t) => Some(r),
                _ = self.stopping.wait_for(|s| *s) => None,
            }
        } else {
            Some(downstream::read_head(stream, &mut self.buf, limits, self.first_byte, t).await)
        };
        let read = match read {
            Some(r) => r,
            None if self.buf.is_empty() => return Next::Done,
            None => downstream::read_head(stream, &mut self.buf, limits, self.first_byte, t).await,
        };
        self.first_byte = limits.idle_timeout;
        let head = match read {
            Ok(h) => h,
            Err(ReadError::Closed) => return Next::Done,
            Err(e) => return Next::Refused(e),
        };
        if head.expect_continue && head.body != Framing::None {
            if matches!(head.body, Framing::Length(n) if n > limits.max_body_bytes) {
                return Next::Refused(ReadError::BodyTooLarge);
            }
            if stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return Next::Done;
            }
        }
        let body = match downstream::read_body(stream, &mut self.buf, head.body, limits, self.budget, t).await
        {
            Ok(b) => b,
            Err(e) => return Next::Refused(e),
        };
        // HTTP/1.0 clients get one request per connection.
        let keep_alive = head.keep_alive && head.minor_version == 1 && !*self.stopping.borrow();
        Next::Request {
            head,
            body,
            keep_alive,
        }
    }
}
