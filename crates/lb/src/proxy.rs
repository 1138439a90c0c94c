//! The data path: accept, read a request with [`crate::http1`], choose a
//! backend, forward over the keep-alive pool, retry when it is safe, stream
//! the answer back.
//!
//! Retry rules (a request is tried on at most `1 + retries` backends):
//! - the backend refused the connection or could not be reached: nothing
//!   was sent, any method is retried;
//! - it failed or timed out after the request was sent: only idempotent
//!   methods are retried; a `POST` that reached a backend is never replayed,
//!   the client gets 502 (or 504) and decides.
//!
//! Requests are read in full before forwarding (bounded by
//! `limits.max_body_bytes`): a slow client never holds a backend connection,
//! and a refused attempt can be replayed elsewhere.

use crate::backend::{Backend, InFlight, RequestResult};
use crate::config::Algorithm;
use crate::forwarding::{self, Peer};
use crate::http1::{self, BodyFraming, ReadError, RequestHead};
use crate::selection;
use crate::upstream::{self, ClientSide, SendError};
use crate::Shared;
use bytes::BytesMut;
use http::Method;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts until the load balancer stops (or the task is dropped);
/// connections above the limit get 503.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
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
        match shared.connection_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_connection(stream, peer, &shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                shared.metrics.count_response(503);
                tokio::spawn(async move {
                    let mut stream = stream;
                    let body = br#"{"error":"too many connections"}"#;
                    let write = http1::write_simple(&mut stream, 503, body, &[("retry-after", "1")], false);
                    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                });
            }
        }
    }
}

/// Scratch capacity a connection keeps between requests.
const SCRATCH_KEPT: usize = 64 * 1024;

/// What a client connection carries from one request to the next.
struct Connection<'a> {
    peer: Peer,
    /// Scratch space: the request encoded for the backend, the response
    /// encoded for the client.
    request: Vec<u8>,
    out: Vec<u8>,
    timer: http1::Timer<'a>,
}

/// Decrements the open-connection gauge when a connection ends.
struct ConnectionGauge<'a>(&'a prometheus::IntGauge);

impl Drop for ConnectionGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one client connection: requests in sequence while keep-alive
/// holds and the load balancer is not stopping.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connections.inc();
    let _gauge = ConnectionGauge(&shared.metrics.connections);
    let limits = shared.read_limits;
    let mut stopping = shared.stopping.clone();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let deadline = shared.clock.deadline();
    let t = http1::Timer {
        clock: &shared.clock,
        deadline: &deadline,
    };
    let mut conn = Connection {
        peer: Peer::new(peer, &shared.config.trusted_proxies),
        request: Vec::with_capacity(1024),
        out: Vec::with_capacity(1024),
        timer: t,
    };
    // A new connection gets the header timeout for its first byte; between
    // requests of a kept-alive one, the idle timeout.
    let mut first_byte = limits.header_timeout;
    loop {
        if *stopping.borrow() {
            break;
        }
        // Between requests a stop closes the connection at once; a request
        // that has begun to arrive is read and served.
        let read = if buf.is_empty() {
            tokio::select! {
                biased;
                r = http1::read_head(&mut stream, &mut buf, &limits, first_byte, t) => Some(r),
                _ = stopping.wait_for(|s| *s) => None,
            }
        } else {
            Some(http1::read_head(&mut stream, &mut buf, &limits, first_byte, t).await)
        };
        let read = match read {
            Some(r) => r,
            None if buf.is_empty() => break,
            None => http1::read_head(&mut stream, &mut buf, &limits, first_byte, t).await,
        };
        first_byte = limits.idle_timeout;
        let head = match read {
            Ok(h) => h,
            Err(e) => return refuse(&mut stream, shared, &e).await,
        };
        if head.expect_continue && head.body != BodyFraming::None {
            if matches!(head.body, BodyFraming::Length(n) if n > limits.max_body_bytes) {
                return refuse(&mut stream, shared, &ReadError::BodyTooLarge).await;
            }
            if stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return;
            }
        }
        let body =
            match http1::read_body(&mut stream, &mut buf, head.body, &limits, &shared.body_budget, t).await {
                Ok(b) => b,
                Err(e) => return refuse(&mut stream, shared, &e).await,
            };
        // HTTP/1.0 clients get one request per connection.
        let keep_alive = head.keep_alive && head.minor_version == 1 && !*stopping.borrow();
        let served = proxy_request(shared, &mut stream, &mut conn, head, body, keep_alive).await;
        // The scratch buffers keep their capacity between requests; not
        // that of a large body (the budget gave those bytes back already).
        for scratch in [&mut conn.request, &mut conn.out] {
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::with_capacity(1024);
            }
        }
        match served {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    let _ = stream.shutdown().await;
}

/// Answers a request that could not be read, then closes the connection.
async fn refuse(stream: &mut TcpStream, shared: &Shared, e: &ReadError) {
    let Some(status) = e.status() else { return };
    tracing::debug!(error = %e, status, "request refused");
    shared.metrics.count_response(status);
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    if http1::write_simple(stream, status, body.as_bytes(), &[], false)
        .await
        .is_ok()
    {
        lingering_close(stream).await;
    }
}

/// Half-closes and discards what the client still sends for a moment, so
/// the kernel does not reset the connection (and destroy our answer) when
/// unread request bytes are pending.
async fn lingering_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > (1 << 20) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Why no backend answered.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// No available backend, or none accepted a connection.
    Unavailable,
    /// The backend failed after the request was sent.
    BadGateway,
    /// The backend did not answer within `upstream_timeout_ms`.
    Timeout,
}

impl Failure {
    fn status(self) -> u16 {
        match self {
            Failure::Unavailable => 503,
            Failure::BadGateway => 502,
            Failure::Timeout => 504,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::Unavailable => r#"{"error":"no backend available"}"#,
            Failure::BadGateway => r#"{"error":"bad gateway: the backend failed before answering"}"#,
            Failure::Timeout => r#"{"error":"gateway timeout: the backend did not answer in time"}"#,
        }
    }
}

/// Forwards one request and writes the answer. Returns whether the client
/// connection may carry another request.
async fn proxy_request(
    shared: &Shared,
    stream: &mut TcpStream,
    conn: &mut Connection<'_>,
    head: RequestHead,
    body: http1::Body,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let Connection {
        peer,
        request,
        out,
        timer: t,
    } = conn;
    let t = *t;
    let started = shared.config.access_log.then(Instant::now);
    let method = &head.method;
    let request_id = forwarding::encode_request(request, &head, &body.bytes, peer);
    let request_id = request_id.as_str();
    let key = match shared.config.algorithm {
        Algorithm::ConsistentHash => forwarding::hash_key(&shared.config.hash_key, &head, peer.addr.ip()),
        _ => 0,
    };

    let (result, backend) = forward(shared, method, request, key, t).await;
    let (status, keep) = match result {
        Ok((response, in_flight)) => {
            let status = response.status;
            let side = ClientSide {
                method,
                http11: head.minor_version == 1,
                // A stop that began while the backend worked closes this
                // connection after the answer: say so in it.
                keep_alive: keep_alive && !*shared.stopping.borrow(),
                request_id,
                write_timeout: shared.read_limits.body_timeout,
            };
            let keep = response
                .relay(stream, out, &side, &shared.upstream, &in_flight.0, t)
                .await;
            drop(in_flight);
            // A client gone mid-answer (`Err`) still had its request served:
            // it is counted and logged, then its connection is dropped.
            (status, keep.unwrap_or(false))
        }
        Err(f) => {
            let status = f.status();
            let extra: &[(&str, &str)] = match f {
                Failure::Unavailable => &[("retry-after", "1"), ("x-request-id", request_id)],
                _ => &[("x-request-id", request_id)],
            };
            http1::write_simple(stream, status, f.message().as_bytes(), extra, keep_alive).await?;
            (status, keep_alive)
        }
    };
    shared.metrics.count_response(status);
    if shared.config.access_log {
        tracing::info!(
            target: "scalestack::access",
            client = %peer.addr,
            %method,
            path = head.target(),
            status,
            backend = backend.map(|a| a.to_string()).unwrap_or_default(),
            request_id,
            ms = started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0),
        );
    }
    Ok(keep)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

type Forwarded = (
    Result<(upstream::Response, InFlight), Failure>,
    Option<SocketAddr>,
);

/// Tries backends until one answers or the retry rules say stop.
async fn forward(
    shared: &Shared,
    method: &Method,
    request: &[u8],
    key: u64,
    t: http1::Timer<'_>,
) -> Forwarded {
    let attempts = 1 + shared.config.retries as usize;
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(attempts);
    let mut last_failure = Failure::Unavailable;
    while tried.len() < attempts {
        let (all, version) = shared.backends.versioned_snapshot();
        let Some(b) = selection::choose(&*shared.selector, &all, &tried, key, version) else {
            break;
        };
        tried.push(b.addr);
        if tried.len() > 1 {
            shared.metrics.retries.inc();
        }
        let in_flight = InFlight::new(b.clone());
        b.metrics.requests.inc();
        let sent = Instant::now();
        match shared.upstream.send(&b, request, method, t).await {
            Ok(response) => {
                b.metrics.latency.observe(sent.elapsed().as_secs_f64());
                let result = if response.status >= 500 {
                    b.metrics.status_5xx.inc();
                    RequestResult::Failed
                } else {
                    RequestResult::Ok
                };
                note_result(&b, result, shared);
                return (Ok((response, in_flight)), Some(b.addr));
            }
            Err(SendError::Connect(e)) => {
                // Nothing was sent: any method may go elsewhere.
                b.metrics.connect_errors.inc();
                note_result(&b, RequestResult::TransportFailed, shared);
                tracing::warn!(backend = %b.addr, error = %e, "backend unreachable; trying another");
                last_failure = Failure::Unavailable;
                continue;
            }
            Err(SendError::Broken(e)) => {
                b.metrics.other_errors.inc();
                note_result(&b, RequestResult::TransportFailed, shared);
                tracing::warn!(backend = %b.addr, error = %e, %method, "backend failed before answering");
                last_failure = Failure::BadGateway;
            }
            Err(SendError::BadResponse(why)) => {
                b.metrics.other_errors.inc();
                note_result(&b, RequestResult::Failed, shared);
                tracing::warn!(backend = %b.addr, why, %method, "backend sent an invalid response");
                last_failure = Failure::BadGateway;
            }
            Err(SendError::Timeout) => {
                b.metrics.timeouts.inc();
                note_result(&b, RequestResult::Failed, shared);
                tracing::warn!(backend = %b.addr, %method, "backend timed out");
                last_failure = Failure::Timeout;
            }
        }
        // The request reached the backend: only an idempotent one may go again.
        if !is_idempotent(method) {
            return (Err(last_failure), Some(b.addr));
        }
    }
    (Err(last_failure), tried.last().copied())
}

fn note_result(b: &Backend, result: RequestResult, shared: &Shared) {
    if let Some(d) = b.record_result(result, &shared.config.outlier) {
        tracing::warn!(backend = %b.addr, ejected_for_ms = d.as_millis() as u64, "backend ejected after consecutive failures");
    }
}
