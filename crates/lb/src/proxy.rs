//! The data path: accept, read a request with `proxy_core::downstream`,
//! hand it to `proxy_core::relay` with [`LbHooks`], the balancer's policy:
//! which backend, what the request carries (`X-Forwarded-*`, request id),
//! whether a failed attempt goes elsewhere, and the metrics and passive
//! ejection each outcome feeds.
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
use crate::forwarding::{self, Peer, RequestId};
use crate::selection;
use crate::shared::Shared;
use http::Method;
use proxy_core::codec::{RequestHead, ResponseHead};
use proxy_core::downstream::{self, ReadError};
use proxy_core::relay::{field, Downstream, Failure, ProxyHooks, Scratch};
use proxy_core::serve::{Next, RequestReader};
use proxy_core::{BodyError, SendError, Timer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Accepts until the load balancer stops (or the task is dropped);
/// connections above the limit get 503.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let on_full = || shared.metrics.count_response(503);
    let serve = |stream, peer| {
        let shared = shared.clone();
        async move { serve_connection(stream, peer, &shared).await }
    };
    proxy_core::serve::accept_loop(
        listener,
        shared.connection_slots.clone(),
        shared.stopping.clone(),
        on_full,
        serve,
    )
    .await;
}

/// What a client connection carries from one request to the next.
struct Connection<'a> {
    peer: Peer,
    /// The request encoded for the backend, the response for the client.
    scratch: Scratch,
    timer: Timer<'a>,
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
    shared.metrics.connections.inc();
    let _gauge = ConnectionGauge(&shared.metrics.connections);
    let deadline = shared.clock.deadline();
    let t = Timer {
        clock: &shared.clock,
        deadline: &deadline,
    };
    let mut conn = Connection {
        peer: Peer::new(peer, &shared.config.trusted_proxies),
        scratch: Scratch::new(),
        timer: t,
    };
    let mut requests = RequestReader::new(
        &shared.read_limits,
        &shared.body_budget,
        shared.stopping.clone(),
        t,
    );
    loop {
        let (head, body, keep_alive) = match requests.next(&mut stream).await {
            Next::Request {
                head,
                body,
                keep_alive,
            } => (head, body, keep_alive),
            Next::Refused(e) => return refuse(&mut stream, shared, &e).await,
            Next::Done => break,
        };
        let served = proxy_request(shared, &mut stream, &mut conn, head, body, keep_alive).await;
        // The scratch buffers keep their capacity between requests; not
        // that of a large body (the budget gave those bytes back already).
        conn.scratch.trim();
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
    if downstream::write_simple(stream, status, body.as_bytes(), &[], false)
        .await
        .is_ok()
    {
        downstream::lingering_close(stream).await;
    }
}

/// The error page of a failure.
fn failure_message(f: Failure) -> &'static str {
    match f {
        Failure::Unavailable => r#"{"error":"no backend available"}"#,
        Failure::BadGateway => r#"{"error":"bad gateway: the backend failed before answering"}"#,
        Failure::Timeout => r#"{"error":"gateway timeout: the backend did not answer in time"}"#,
    }
}

/// Forwards one request and writes the answer. Returns whether the client
/// connection may carry another request.
async fn proxy_request(
    shared: &Shared,
    stream: &mut TcpStream,
    conn: &mut Connection<'_>,
    head: RequestHead,
    body: downstream::Body,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let Connection {
        peer,
        scratch,
        timer: t,
    } = conn;
    let t = *t;
    let started = shared.config.access_log.then(Instant::now);
    let key = match shared.config.algorithm {
        Algorithm::ConsistentHash => forwarding::hash_key(&shared.config.hash_key, &head, peer.addr.ip()),
        _ => 0,
    };
    let mut hooks = LbHooks {
        shared,
        client: peer,
        key,
        attempts: 1 + shared.config.retries as usize,
        tried: Vec::new(),
        request_id: None,
        has_request_id: false,
    };
    let side = Downstream {
        http11: head.minor_version == 1,
        keep_alive,
        write_timeout: shared.read_limits.body_timeout,
    };
    let relayed = proxy_core::relay(
        &shared.upstream,
        &mut hooks,
        &head,
        &body.bytes,
        &side,
        stream,
        scratch,
        t,
    )
    .await;
    let request_id = hooks.request_id.as_ref().map_or("-", RequestId::as_str);
    let (status, keep) = match relayed.result {
        // A client gone mid-answer still had its request served: it is
        // counted and logged, then its connection is dropped.
        Ok(answered) => answered,
        Err(f) => {
            let status = f.status();
            let extra: &[(&str, &str)] = match f {
                Failure::Unavailable => &[("retry-after", "1"), ("x-request-id", request_id)],
                _ => &[("x-request-id", request_id)],
            };
            downstream::write_simple(stream, status, failure_message(f).as_bytes(), extra, keep_alive)
                .await?;
            (status, keep_alive)
        }
    };
    shared.metrics.count_response(status);
    if shared.config.access_log {
        tracing::info!(
            target: "scalestack::access",
            client = %peer.addr,
            method = %head.method,
            path = head.target(),
            status,
            backend = relayed.peer.map(|a| a.to_string()).unwrap_or_default(),
            request_id,
            ms = started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0),
        );
    }
    Ok(keep)
}

/// The balancer's decisions for one request (the retry rules are the
/// module's).
struct LbHooks<'a> {
    shared: &'a Shared,
    client: &'a Peer,
    /// The consistent-hash key (0 for other algorithms).
    key: u64,
    /// Backends this request may try.
    attempts: usize,
    tried: Vec<SocketAddr>,
    /// Set when the request is encoded.
    request_id: Option<RequestId>,
    /// The backend's response carries its own `X-Request-Id`.
    has_request_id: bool,
}

impl ProxyHooks for LbHooks<'_> {
    type Peer = InFlight;

    fn select(&mut self) -> Option<(SocketAddr, InFlight)> {
        if self.tried.len() >= self.attempts {
            return None;
        }
        let shared = self.shared;
        let (all, version) = shared.backends.versioned_snapshot();
        let b = selection::choose(&*shared.selector, &all, &self.tried, self.key, version)?;
        self.tried.push(b.addr);
        if self.tried.len() > 1 {
            shared.metrics.retries.inc();
        }
        b.metrics.requests.inc();
        Some((b.addr, InFlight::new(b)))
    }

    fn encode_request(&mut self, head: &RequestHead, body: &[u8], out: &mut Vec<u8>) {
        self.request_id = Some(forwarding::encode_request(out, head, body, self.client));
    }

    fn on_response(&mut self, peer: &InFlight, head: &ResponseHead, elapsed: Duration) {
        let b = &peer.0;
        b.metrics.latency.observe(elapsed.as_secs_f64());
        let result = if head.status >= 500 {
            b.metrics.status_5xx.inc();
            RequestResult::Failed
        } else {
            RequestResult::Ok
        };
        note_result(b, result, self.shared);
    }

    fn retry(&mut self, peer: InFlight, error: &SendError, method: &Method) -> bool {
        let b = &peer.0;
        match error {
            SendError::Connect(e) => {
                b.metrics.connect_errors.inc();
                note_result(b, RequestResult::TransportFailed, self.shared);
                tracing::warn!(backend = %b.addr, error = %e, "backend unreachable; trying another");
            }
            SendError::Broken(e) => {
                b.metrics.other_errors.inc();
                note_result(b, RequestResult::TransportFailed, self.shared);
                tracing::warn!(backend = %b.addr, error = %e, %method, "backend failed before answering");
            }
            SendError::BadResponse(why) => {
                b.metrics.other_errors.inc();
                note_result(b, RequestResult::Failed, self.shared);
                tracing::warn!(backend = %b.addr, why, %method, "backend sent an invalid response");
            }
            SendError::Timeout => {
                b.metrics.timeouts.inc();
                note_result(b, RequestResult::Failed, self.shared);
                tracing::warn!(backend = %b.addr, %method, "backend timed out");
            }
        }
        // Nothing sent: any method may go elsewhere; the request reached the
        // backend: only an idempotent one may go again.
        error.retry_safe(method)
    }

    fn client_keep_alive(&mut self) -> bool {
        // A stop that began while the backend worked closes this connection
        // after the answer: say so in it.
        !*self.shared.stopping.borrow()
    }

    fn keep_response_field(&mut self, name: &[u8], _value: &[u8]) -> bool {
        self.has_request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        true
    }

    fn add_response_fields(&mut self, _head: &ResponseHead, out: &mut Vec<u8>) {
        if !self.has_request_id {
            if let Some(id) = &self.request_id {
                field(out, b"x-request-id", id.as_str().as_bytes());
            }
        }
    }

    fn on_body_error(&mut self, peer: &InFlight, error: &BodyError) {
        let request_id = self.request_id.as_ref().map_or("-", RequestId::as_str);
        tracing::warn!(request_id, backend = %peer.0.addr, %error, "backend response cut short");
        peer.0.metrics.other_errors.inc();
    }
}

fn note_result(b: &Backend, result: RequestResult, shared: &Shared) {
    if let Some(d) = b.record_result(result, &shared.config.outlier) {
        tracing::warn!(backend = %b.addr, ejected_for_ms = d.as_millis() as u64, "backend ejected after consecutive failures");
    }
}
