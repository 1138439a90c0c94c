//! The relay: one buffered request to an upstream and its answer streamed
//! back, with the decisions left to the proxy through [`ProxyHooks`]: which
//! peer, how the request is rewritten, what is seen or added of the
//! response, whether a failed attempt goes to another peer. The hooks are a
//! generic parameter (monomorphised, no boxing) and the relay allocates
//! nothing per request beyond the response head's field ranges.
//!
//! Responses are streamed as they arrive: `Content-Length` bodies as is,
//! chunked bodies passed through verbatim (the framing is tracked only to
//! find the message's end, so the upstream connection can be reused) or
//! decoded for HTTP/1.0 clients; bodies delimited by the upstream closing
//! the connection are passed on and close the client connection too. The
//! head and as much body as has arrived go out in one write.

use crate::client::{BodyError, Client, Response, SendError};
use crate::codec::{push_decimal, Framing, RequestHead, ResponseHead};
use crate::deadline::Timer;
use crate::downstream::reason;
use crate::hop_by_hop::{connection_named, is_dropped};
use http::Method;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;

/// What a proxy decides about each request. Only [`ProxyHooks::select`]
/// has no default.
pub trait ProxyHooks {
    /// What the proxy holds while a peer works on the request (an in-flight
    /// count, a metrics handle); dropped when the answer has been relayed
    /// or the attempt failed.
    type Peer;

    /// Picks the peer for the next attempt; `None` when there is none (left).
    fn select(&mut self) -> Option<(SocketAddr, Self::Peer)>;

    /// Encodes the request for the upstream into `out` (empty): request
    /// line, fields, body. The default is [`encode_request`].
    fn encode_request(&mut self, head: &RequestHead, body: &[u8], out: &mut Vec<u8>) {
        encode_request(head, body, out);
    }

    /// A response head arrived from `peer`, `elapsed` after the request was
    /// sent.
    fn on_response(&mut self, _peer: &Self::Peer, _head: &ResponseHead, _elapsed: Duration) {}

    /// An attempt on `peer` failed: whether to try another peer. The default
    /// retries when [`SendError::retry_safe`] says so.
    fn retry(&mut self, _peer: Self::Peer, error: &SendError, method: &Method) -> bool {
        error.retry_safe(method)
    }

    /// Whether the client connection may stay open after this answer, asked
    /// when the response head is written (a proxy that began to stop while
    /// the upstream worked says no, and the head says `connection: close`).
    /// Default: yes.
    fn client_keep_alive(&mut self) -> bool {
        true
    }

    /// Whether an end-to-end field of the response is passed to the client
    /// (hop-by-hop ones and `Content-Length` never are; the relay writes
    /// the framing itself). Default: all.
    fn keep_response_field(&mut self, _name: &[u8], _value: &[u8]) -> bool {
        true
    }

    /// Appends fields (`name: value\r\n` each) to the response head the
    /// client gets. Default: none.
    fn add_response_fields(&mut self, _head: &ResponseHead, _out: &mut Vec<u8>) {}

    /// The body broke off after the head was sent to the client (the
    /// client connection is then closed: the only honest signal left).
    fn on_body_error(&mut self, _peer: &Self::Peer, _error: &BodyError) {}
}

/// What the response writer needs to know about the client.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    /// HTTP/1.1 client (can take chunked bodies).
    pub http11: bool,
    /// Whether the client connection may carry another request.
    pub keep_alive: bool,
    /// Longest one write to the client may take.
    pub write_timeout: Duration,
}

/// Why no upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No peer to try, or none accepted a connection.
    Unavailable,
    /// The peer failed after the request was sent.
    BadGateway,
    /// The peer did not answer within the response timeout.
    Timeout,
}

impl Failure {
    /// 503, 502 or 504.
    pub fn status(self) -> u16 {
        match self {
            Failure::Unavailable => 503,
            Failure::BadGateway => 502,
            Failure::Timeout => 504,
        }
    }
}

impl From<&SendError> for Failure {
    fn from(e: &SendError) -> Self {
        match e {
            SendError::Connect(_) => Failure::Unavailable,
            SendError::Broken(_) | SendError::BadResponse(_) => Failure::BadGateway,
            SendError::Timeout => Failure::Timeout,
        }
    }
}

/// How a relayed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// The upstream's status and whether the client connection may carry
    /// another request (false also when the client went away mid-answer),
    /// or why no upstream answered: the proxy then answers itself.
    pub result: Result<(u16, bool), Failure>,
    /// The last peer tried.
    pub peer: Option<SocketAddr>,
}

/// Per-connection scratch space: the request encoded for the upstream, the
/// response encoded for the client. Reused from one request to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The request as encoded for the upstream.
    pub request: Vec<u8>,
    /// The response (head and body pieces) as written to the client.
    pub response: Vec<u8>,
}

impl Scratch {
    /// Capacity kept between requests (a large body's is given back).
    pub const KEPT: usize = 64 * 1024;

    /// 1 KiB each.
    pub fn new() -> Self {
        Scratch {
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
        }
    }

    /// Gives back the capacity a large message left behind.
    pub fn trim(&mut self) {
        for v in [&mut self.request, &mut self.response] {
            if v.capacity() > Self::KEPT {
                *v = Vec::with_capacity(1024);
            }
        }
    }
}

/// Forwards one request (its body read in full) and streams the answer to
/// `io`, trying peers as `hooks` decide.
#[allow(clippy::too_many_arguments)]
pub async fn relay<H: ProxyHooks, W: AsyncWrite + Unpin>(
    client: &Client,
    hooks: &mut H,
    head: &RequestHead,
    body: &[u8],
    downstream: &Downstream,
    io: &mut W,
    scratch: &mut Scratch,
    t: Timer<'_>,
) -> Relayed {
    scratch.request.clear();
    hooks.encode_request(head, body, &mut scratch.request);
    let mut last_failure = Failure::Unavailable;
    let mut last_peer = None;
    while let Some((addr, peer)) = hooks.select() {
        last_peer = Some(addr);
        let sent = Instant::now();
        match client.send(addr, &scratch.request, &head.method, t).await {
            Ok(response) => {
                hooks.on_response(&peer, response.head(), sent.elapsed());
                let status = response.status();
                let keep = relay_response(
                    client,
                    hooks,
                    &peer,
                    response,
                    &head.method,
                    downstream,
                    io,
                    &mut scratch.response,
                    t,
                )
                .await;
                return Relayed {
                    result: Ok((status, keep.unwrap_or(false))),
                    peer: last_peer,
                };
            }
            Err(e) => {
                last_failure = Failure::from(&e);
                if !hooks.retry(peer, &e, &head.method) {
                    break;
                }
            }
        }
    }
    Relayed {
        result: Err(last_failure),
        peer: last_peer,
    }
}

/// Streams the response to the client and gives the upstream connection
/// back to the pool when the message ended cleanly. Returns whether the
/// client connection may carry another request; an error means it must be
/// dropped.
#[allow(clippy::too_many_arguments)]
async fn relay_response<H: ProxyHooks, W: AsyncWrite + Unpin>(
    client: &Client,
    hooks: &mut H,
    peer: &H::Peer,
    mut response: Response,
    method: &Method,
    side: &Downstream,
    io: &mut W,
    out: &mut Vec<u8>,
    t: Timer<'_>,
) -> io::Result<bool> {
    let framing = response.framing();
    let decode = framing == Framing::Chunked && !side.http11;
    let mut keep = side.keep_alive && framing != Framing::UntilClose && !decode && hooks.client_keep_alive();
    out.clear();
    encode_response_head(hooks, response.head(), method, side.http11, keep, out);
    loop {
        let ended = response
            .drain_into(out, !decode)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if ended {
            break;
        }
        if !out.is_empty() {
            t.write_all(io, out, side.write_timeout).await?;
            out.clear();
        }
        if let Err(e) = response.read_more(client.config().response_timeout, t).await {
            hooks.on_body_error(peer, &e);
            t.write_all(io, out, side.write_timeout).await?;
            return Ok(false);
        }
    }
    if decode {
        // Close-delimited towards an HTTP/1.0 client.
        keep = false;
    }
    t.write_all(io, out, side.write_timeout).await?;
    out.clear();
    response.release(client);
    Ok(keep)
}

/// The response head the client gets: the status line as HTTP/1.1, the
/// upstream's end-to-end fields the hooks keep, the fields they add, then
/// the framing the relay itself writes.
fn encode_response_head<H: ProxyHooks>(
    hooks: &mut H,
    head: &ResponseHead,
    method: &Method,
    http11: bool,
    keep: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    let phrase = head.reason();
    if phrase.is_empty() {
        out.extend_from_slice(reason(head.status).as_bytes());
    } else {
        out.extend_from_slice(phrase);
    }
    out.extend_from_slice(b"\r\n");
    let named = connection_named(head.fields());
    let mut head_length: Option<&[u8]> = None;
    for (name, value) in head.iter() {
        if name.eq_ignore_ascii_case(b"content-length") {
            head_length = Some(value);
            continue;
        }
        if is_dropped(name, &named) || !hooks.keep_response_field(name, value) {
            continue;
        }
        field(out, name, value);
    }
    hooks.add_response_fields(head, out);
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // HEAD: the length the GET would have.
        Framing::None => {
            if let (Some(l), true) = (head_length, *method == Method::HEAD) {
                field(out, b"content-length", l);
            }
        }
        Framing::Chunked if http11 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Chunked | Framing::UntilClose => {}
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The plain forwarding of a request: the request line as HTTP/1.1 (the
/// upstream side keeps alive), the client's fields in their order minus
/// hop-by-hop ones, those its `Connection` names, `Content-Length` and
/// `Expect` (the body was read in full and carries its own length), then
/// the body. Appends to `out`.
pub fn encode_request(head: &RequestHead, body: &[u8], out: &mut Vec<u8>) {
    encode_request_line(head, out);
    let named = connection_named(head.fields());
    for (name, value) in head.iter() {
        if is_dropped(name, &named) || is_framing_field(name) {
            continue;
        }
        field(out, name, value);
    }
    encode_request_end(head, body, out);
}

/// `METHOD target HTTP/1.1\r\n`.
pub fn encode_request_line(head: &RequestHead, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Fields a proxy that buffers the body never forwards: `Content-Length`
/// (it writes its own) and `Expect` (it answered the 100-continue itself).
pub fn is_framing_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"expect")
}

/// The body's length (when there is a body, or the method expects one),
/// the blank line and the body.
pub fn encode_request_end(head: &RequestHead, body: &[u8], out: &mut Vec<u8>) {
    if !body.is_empty() || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;
    use crate::codec::{parse_request, HeadLimits};
    use crate::deadline::Clock;
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn request(raw: &[u8]) -> RequestHead {
        parse_request(&mut BytesMut::from(raw), &HeadLimits::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_plain_forwarding_drops_hop_by_hop_fields() {
        let head = request(
            b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
              Keep-Alive: timeout=5\r\nTE: trailers\r\nExpect: 100-continue\r\nContent-Length: 3\r\nX-Keep: 1\r\n\r\n",
        );
        let mut out = Vec::new();
        encode_request(&head, b"abc", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /u HTTP/1.1\r\nHost: x\r\nX-Keep: 1\r\ncontent-length: 3\r\n\r\nabc"
        );
    }

    /// Hooks that record what they saw and tag the response.
    struct Tagging {
        peers: Vec<SocketAddr>,
        seen: Vec<u16>,
        failures: usize,
    }

    impl ProxyHooks for Tagging {
        type Peer = SocketAddr;

        fn select(&mut self) -> Option<(SocketAddr, SocketAddr)> {
            let p = self.peers.pop()?;
            Some((p, p))
        }

        fn on_response(&mut self, _peer: &SocketAddr, head: &ResponseHead, _elapsed: Duration) {
            self.seen.push(head.status);
        }

        fn retry(&mut self, _peer: SocketAddr, error: &SendError, method: &Method) -> bool {
            self.failures += 1;
            error.retry_safe(method)
        }

        fn keep_response_field(&mut self, name: &[u8], _value: &[u8]) -> bool {
            !name.eq_ignore_ascii_case(b"x-internal")
        }

        fn add_response_fields(&mut self, _head: &ResponseHead, out: &mut Vec<u8>) {
            field(out, b"x-via", b"test");
        }
    }

    async fn upstream(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(answer).await.unwrap();
            let _ = s.read(&mut buf).await;
        });
        addr
    }

    async fn run(hooks: &mut Tagging, http11: bool) -> (Relayed, String) {
        let clock = Clock::new();
        let sweeper = tokio::spawn(clock.clone().run());
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let client = Client::new(ClientConfig::default());
        let head = request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let side = Downstream {
            http11,
            keep_alive: true,
            write_timeout: Duration::from_secs(5),
        };
        let mut out = Vec::new();
        let relayed = relay(
            &client,
            hooks,
            &head,
            b"",
            &side,
            &mut out,
            &mut Scratch::new(),
            t,
        )
        .await;
        sweeper.abort();
        (relayed, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn responses_are_rewritten_by_the_hooks_and_refused_peers_skipped() {
        let refused = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let good = upstream(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Internal: secret\r\nX-A: 1\r\n\
              Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        let mut hooks = Tagging {
            peers: vec![good, refused],
            seen: vec![],
            failures: 0,
        };
        let (relayed, out) = run(&mut hooks, true).await;
        assert_eq!(
            relayed,
            Relayed {
                result: Ok((200, true)),
                peer: Some(good)
            }
        );
        assert_eq!((hooks.seen, hooks.failures), (vec![200], 1));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nx-via: test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_for_http10_clients() {
        let good = upstream(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let mut hooks = Tagging {
            peers: vec![good],
            seen: vec![],
            failures: 0,
        };
        let (relayed, out) = run(&mut hooks, false).await;
        assert_eq!(relayed.result, Ok((200, false)));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nx-via: test\r\nconnection: close\r\n\r\nabcde"
        );
    }

    #[tokio::test]
    async fn an_invalid_response_is_a_bad_gateway() {
        let bad = upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd").await;
        let mut hooks = Tagging {
            peers: vec![bad],
            seen: vec![],
            failures: 0,
        };
        let (relayed, out) = run(&mut hooks, true).await;
        assert_eq!(
            relayed,
            Relayed {
                result: Err(Failure::BadGateway),
                peer: Some(bad)
            }
        );
        assert!(out.is_empty(), "nothing of it reached the client");
        assert_eq!(Failure::BadGateway.status(), 502);
    }
}
