//! The client side of a proxy: reads requests off a client connection with
//! limits and deadlines (so a slow or silent client cannot hold its slot),
//! buffers their bodies within a shared budget, and writes the small
//! responses a proxy makes itself.

use crate::codec::{parse_request, ChunkError, ChunkedDecoder, Framing, HeadError, HeadLimits, RequestHead};
use crate::deadline::Timer;
use crate::error::Fault;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request could not be read. Each maps to one status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed (or idled out) between requests: no response owed.
    #[error("connection closed")]
    Closed,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request timed out")]
    Timeout,
    /// Too many request bodies held at once: try again later.
    #[error("too many request bodies in flight; retry later")]
    Busy,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("i/o error")]
    Io,
}

impl ReadError {
    /// The status answered to the client, if any (`None`: just close).
    pub fn status(&self) -> Option<u16> {
        match self {
            ReadError::Closed | ReadError::Io => None,
            ReadError::HeadersTooLarge => Some(431),
            ReadError::BodyTooLarge => Some(413),
            ReadError::Timeout => Some(408),
            ReadError::Busy => Some(503),
            ReadError::BadRequest(_) => Some(400),
        }
    }

    /// Whose fault it is: the client's, but for a full body budget (the
    /// proxy's own capacity).
    pub fn fault(&self) -> Fault {
        match self {
            ReadError::Busy => Fault::Internal,
            _ => Fault::Client,
        }
    }
}

impl From<HeadError> for ReadError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => ReadError::HeadersTooLarge,
            HeadError::Invalid(why) => ReadError::BadRequest(why),
        }
    }
}

impl From<ChunkError> for ReadError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Invalid(why) => ReadError::BadRequest(why),
            ChunkError::TrailersTooLarge => ReadError::HeadersTooLarge,
        }
    }
}

/// Limits the reader enforces.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// Time for a whole head, from its first byte.
    pub header_timeout: Duration,
    /// Time for a whole body (and for each write of a response).
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl ReadLimits {
    fn head(&self) -> HeadLimits {
        HeadLimits {
            max_bytes: self.max_header_bytes,
            max_fields: self.max_headers,
        }
    }
}

/// Reads until the timer's deadline; `Ok(0)` is EOF.
async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    t: Timer<'_>,
) -> Result<usize, ReadError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match t.guard(io.read_buf(buf)).await {
        None => Err(ReadError::Timeout),
        Some(Err(_)) => Err(ReadError::Io),
        Some(Ok(n)) => Ok(n),
    }
}

/// Reads one request head. Waits up to `first_byte` for its first byte
/// (the idle timeout between requests of a keep-alive connection; the
/// header timeout for a new connection's first request, so connections that
/// never send a byte cannot hold their slots for long), then up to
/// `header_timeout` for the rest: a client trickling its headers
/// (slowloris) is cut off with 408 however slowly it trickles.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limits: &ReadLimits,
    first_byte: Duration,
    t: Timer<'_>,
) -> Result<RequestHead, ReadError> {
    let mut started = false;
    if buf.is_empty() {
        t.set(first_byte);
    }
    let head_limits = limits.head();
    loop {
        if !buf.is_empty() {
            if !started {
                started = true;
                t.set(limits.header_timeout);
            }
            if let Some(head) = parse_request(buf, &head_limits)? {
                return Ok(head);
            }
        }
        match read_more(io, buf, t).await {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::BadRequest("connection closed mid-request")),
            Ok(_) => {}
            Err(ReadError::Timeout) if buf.is_empty() => return Err(ReadError::Closed),
            Err(e) => return Err(e),
        }
    }
}

/// A request body and its share of the memory budget, given back when the
/// body is dropped.
pub struct Body {
    /// The whole body, chunk framing removed.
    pub bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Takes `n` bytes of the body budget (or says the proxy is busy).
fn reserve(
    budget: &Arc<Semaphore>,
    held: &mut Option<OwnedSemaphorePermit>,
    n: u64,
) -> Result<(), ReadError> {
    if n == 0 {
        return Ok(());
    }
    let n = u32::try_from(n).map_err(|_| ReadError::BodyTooLarge)?;
    let permit = budget
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| ReadError::Busy)?;
    match held {
        Some(p) => p.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Reads the whole body (a proxy buffers requests, so a slow client never
/// holds an upstream connection and a failed attempt can be retried),
/// within `budget`, the bytes all connections together may hold (one
/// permit per byte).
pub async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    limits: &ReadLimits,
    budget: &Arc<Semaphore>,
    t: Timer<'_>,
) -> Result<Body, ReadError> {
    let mut held = None;
    let bytes = match framing {
        Framing::None | Framing::UntilClose => Bytes::new(),
        Framing::Length(n) => {
            if n > limits.max_body_bytes {
                return Err(ReadError::BodyTooLarge);
            }
            reserve(budget, &mut held, n)?;
            t.set(limits.body_timeout);
            let n = n as usize;
            while buf.len() < n {
                if read_more(io, buf, t).await? == 0 {
                    return Err(ReadError::BadRequest("connection closed mid-body"));
                }
            }
            buf.split_to(n).freeze()
        }
        Framing::Chunked => {
            t.set(limits.body_timeout);
            let mut body = BytesMut::new();
            let mut decoder = ChunkedDecoder::new();
            loop {
                if !buf.is_empty() {
                    let mut total = body.len() as u64;
                    let (used, done) = decoder.feed(
                        buf,
                        |size| {
                            total += size;
                            if total > limits.max_body_bytes {
                                return Err(ReadError::BodyTooLarge);
                            }
                            reserve(budget, &mut held, size)
                        },
                        |data| body.extend_from_slice(data),
                    )?;
                    bytes::Buf::advance(buf, used);
                    if done {
                        break body.freeze();
                    }
                }
                if read_more(io, buf, t).await? == 0 {
                    return Err(ReadError::BadRequest("connection closed mid-body"));
                }
            }
        }
    };
    Ok(Body { bytes, _budget: held })
}

/// Half-closes and discards what the client still sends for a moment, so
/// the kernel does not reset the connection (and destroy our answer) when
/// unread request bytes are pending. Up to 1 s and 1 MiB.
pub async fn lingering_close(stream: &mut tokio::net::TcpStream) {
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

/// The reason phrase of a status, `Unknown` for unregistered ones.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Writes a small complete JSON response generated by the proxy itself,
/// with `extra` header fields, in one write.
pub async fn write_simple<W: AsyncWrite + Unpin>(
    io: &mut W,
    status: u16,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<()> {
    let status = if (100..600).contains(&status) { status } else { 500 };
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::codec::push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    for (k, v) in extra {
        // Only well-formed fields: a value never carries a line break.
        let valid_name = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        let valid_value = v.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
        if valid_name && valid_value {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"content-length: ");
    crate::codec::push_decimal(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    io.write_all(&out).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Clock;

    fn limits() -> ReadLimits {
        ReadLimits {
            max_header_bytes: 1024,
            max_headers: 8,
            max_body_bytes: 64,
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(200),
        }
    }

    async fn read(raw: &[u8]) -> Result<(RequestHead, Bytes), ReadError> {
        let clock = Clock::new();
        let sweeper = tokio::spawn(clock.clone().run());
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let mut io = raw;
        let mut buf = BytesMut::new();
        let head = read_head(&mut io, &mut buf, &limits(), limits().idle_timeout, t).await;
        let result = match head {
            Ok(head) => read_body(
                &mut io,
                &mut buf,
                head.body,
                &limits(),
                &Arc::new(Semaphore::new(1 << 20)),
                t,
            )
            .await
            .map(|b| (head, b.bytes)),
            Err(e) => Err(e),
        };
        sweeper.abort();
        result
    }

    #[tokio::test]
    async fn plain_requests() {
        let (h, b) = read(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(
            (&h.method, h.target(), h.keep_alive),
            (&http::Method::GET, "/a?b=1", true)
        );
        assert!(b.is_empty());
        let (h, b) = read(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!((&b[..], h.keep_alive), (&b"abc"[..], false));
        let (h, _) = read(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert!(!h.keep_alive);
    }

    #[tokio::test]
    async fn chunked_bodies() {
        let (_, b) = read(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(&b[..], b"abcde");
    }

    #[tokio::test]
    async fn smuggling_attempts_are_refused() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nz\r\nabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for raw in bad {
            let r = read(raw).await;
            assert!(
                matches!(r, Err(ReadError::BadRequest(_))),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        let r = read(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
        assert_eq!(r.unwrap_err(), ReadError::HeadersTooLarge);
        let big = "a".repeat(2000);
        let r = read(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
        assert_eq!(r.unwrap_err(), ReadError::HeadersTooLarge);
        let r = read(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n").await;
        assert_eq!(r.unwrap_err(), ReadError::BodyTooLarge);
        let chunk = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n{}\r\n0\r\n\r\n",
            "a".repeat(65)
        );
        assert_eq!(read(chunk.as_bytes()).await.unwrap_err(), ReadError::BodyTooLarge);
    }

    #[tokio::test]
    async fn a_full_budget_makes_the_proxy_busy() {
        let clock = Clock::new();
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let budget = Arc::new(Semaphore::new(4));
        let mut buf = BytesMut::from(&b"abcde"[..]);
        let r = read_body(&mut &b""[..], &mut buf, Framing::Length(5), &limits(), &budget, t).await;
        assert_eq!(r.err(), Some(ReadError::Busy));
        let mut buf = BytesMut::from(&b"4\r\nabcd\r\n0\r\n\r\n"[..]);
        let body = read_body(&mut &b""[..], &mut buf, Framing::Chunked, &limits(), &budget, t)
            .await
            .unwrap();
        assert_eq!((&body.bytes[..], budget.available_permits()), (&b"abcd"[..], 0));
        drop(body);
        assert_eq!(budget.available_permits(), 4, "given back with the body");
    }

    #[tokio::test]
    async fn stalled_clients_time_out() {
        let clock = Clock::new();
        let sweeper = tokio::spawn(clock.clone().run());
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = BytesMut::new();
        let r = read_head(&mut server, &mut buf, &limits(), limits().idle_timeout, t).await;
        assert_eq!(r.unwrap_err(), ReadError::Timeout);
        // An idle connection that never sent a byte is closed quietly.
        let (_c, mut s) = tokio::io::duplex(1024);
        let r = read_head(&mut s, &mut BytesMut::new(), &limits(), limits().idle_timeout, t).await;
        assert_eq!(r.unwrap_err(), ReadError::Closed);
        sweeper.abort();
    }

    #[tokio::test]
    async fn simple_responses_are_complete() {
        let mut out = Vec::new();
        write_simple(
            &mut out,
            503,
            b"{}",
            &[("retry-after", "1"), ("bad\r\n", "x"), ("x", "a\r\nb")],
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n{}"
        );
    }
}
