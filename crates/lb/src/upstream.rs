//! The backend side of the proxy: an HTTP/1.1 client with a keep-alive pool
//! per backend, written for this one job so the request and its response are
//! handled in the client connection's own task (no hand-off to a connection
//! task and back, as a general-purpose client does) and so the retry rules
//! know exactly what happened: refused connect, stale pooled connection,
//! failure after sending, or timeout.
//!
//! Responses are streamed to the client as they arrive: `Content-Length`
//! bodies as is, chunked bodies passed through verbatim (the chunk framing is
//! tracked only to find the message's end, so the connection can be reused),
//! or decoded for HTTP/1.0 clients; bodies delimited by the backend closing
//! the connection are passed on and close the client connection too.

use crate::backend::Backend;
use crate::http1::{is_hop_by_hop_bytes, Timer};
use bytes::{Buf, BytesMut};
use http::Method;
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// Pool and timeouts shared by every backend.
pub(crate) struct Upstream {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
}

/// A pooled connection.
pub(crate) struct IdleConn {
    stream: TcpStream,
    /// Its read buffer, empty, kept to save an allocation per request.
    buf: BytesMut,
    since: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(io::Error),
    /// The connection broke after (part of) the request was sent and before
    /// a response head arrived: the backend may have acted on it.
    Broken(io::Error),
    /// No response head within the upstream timeout.
    Timeout,
    /// The backend sent something that is not an HTTP/1.x response.
    BadResponse(&'static str),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head, with the connection it arrived on.
pub(crate) struct Response {
    pub status: u16,
    /// `buf[..head_len]` is the response head (the ranges below point into
    /// it); what follows is body read along with it.
    head_len: usize,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    framing: Framing,
    /// Whether the backend allows another request on this connection.
    reusable: bool,
    conn: TcpStream,
    buf: BytesMut,
}

impl Upstream {
    pub(crate) fn new(config: &crate::LbConfig) -> Self {
        let timeout = Duration::from_millis(config.limits.upstream_timeout_ms);
        Upstream {
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(2)),
            max_idle_per_backend: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// Takes a live pooled connection (with its buffer), or opens one.
    async fn connection(&self, b: &Backend) -> Result<(TcpStream, BytesMut), SendError> {
        while let Some(idle) = b.take_idle() {
            if idle.since.elapsed() < self.idle_timeout && is_open(&idle.stream) {
                return Ok((idle.stream, idle.buf));
            }
        }
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(b.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timeout",
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok((stream, BytesMut::with_capacity(8 * 1024)))
    }

    /// Sends a request (head and body encoded in `request`) and reads the
    /// response head.
    pub(crate) async fn send(
        &self,
        b: &Backend,
        request: &[u8],
        method: &Method,
        t: Timer<'_>,
    ) -> Result<Response, SendError> {
        let (mut conn, mut buf) = self.connection(b).await?;
        if let Err(e) = conn.write_all(request).await {
            return Err(SendError::Broken(e));
        }
        t.deadline.set_after(t.clock, self.timeout);
        loop {
            match t.deadline.guard(t.clock, conn.read_buf(&mut buf)).await {
                None => return Err(SendError::Timeout),
                Some(Err(e)) => return Err(SendError::Broken(e)),
                Some(Ok(0)) => {
                    return Err(SendError::Broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a response",
                    )))
                }
                Some(Ok(_)) => {}
            }
            match parse_response(&mut buf, method)? {
                Parsed::Partial => {
                    if buf.len() > MAX_RESPONSE_HEAD {
                        return Err(SendError::BadResponse("response head too large"));
                    }
                }
                Parsed::Interim => continue,
                Parsed::Complete(parts) => {
                    let ResponseParts {
                        status,
                        head_len,
                        reason,
                        headers,
                        framing,
                        reusable,
                    } = parts;
                    return Ok(Response {
                        status,
                        head_len,
                        reason,
                        headers,
                        framing,
                        reusable,
                        conn,
                        buf,
                    });
                }
            }
        }
    }
}

/// A pooled connection the backend has closed is readable with EOF (or an
/// error) before we write to it; checking costs one non-blocking read.
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

enum Parsed {
    Partial,
    /// A 1xx was read and dropped; read on.
    Interim,
    Complete(ResponseParts),
}

struct ResponseParts {
    status: u16,
    head_len: usize,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    framing: Framing,
    reusable: bool,
}

fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Parses a response head at the start of `buf`; a 1xx is consumed, a
/// complete head is left in place (its ranges point into `buf`).
fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Parsed, SendError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let used = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(SendError::BadResponse("malformed response head")),
    };
    let status = r.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(SendError::BadResponse("protocol upgrades are not proxied"));
        }
        buf.advance(used);
        return Ok(Parsed::Interim);
    }
    let base: &[u8] = buf;
    let reason = offset(base, r.reason.unwrap_or("").as_bytes());
    let mut headers = Vec::with_capacity(r.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = r.version == Some(0);
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(SendError::BadResponse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(SendError::BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&c| c == b',').next().unwrap_or(&[]);
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !chunked {
                // Any other final coding is delimited by the close.
                close = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&c| c == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && r.version == Some(0) {
                    close = false;
                }
            }
        }
        headers.push((offset(base, name.as_bytes()), offset(base, h.value)));
    }
    let bodiless = *method == Method::HEAD || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if close && length.is_none() {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reusable = !close && framing != Framing::UntilClose;
    Ok(Parsed::Complete(ResponseParts {
        status,
        head_len: used,
        reason,
        headers,
        framing,
        reusable,
    }))
}

/// What the response writer needs to know about the client.
pub(crate) struct ClientSide<'a> {
    pub method: &'a Method,
    /// HTTP/1.1 client (can take chunked bodies).
    pub http11: bool,
    pub keep_alive: bool,
    pub request_id: &'a str,
    /// Longest a write to the client may take (the body timeout).
    pub write_timeout: Duration,
}

impl Response {
    /// Streams the response to the client and gives the backend connection
    /// back to the pool when the message ended cleanly. Returns whether the
    /// client connection may carry another request; an error means the
    /// client connection must be dropped.
    pub(crate) async fn relay<W: AsyncWrite + Unpin>(
        mut self,
        client: &mut W,
        out: &mut Vec<u8>,
        side: &ClientSide<'_>,
        upstream: &Upstream,
        b: &Backend,
        t: Timer<'_>,
    ) -> io::Result<bool> {
        let decode = self.framing == Framing::Chunked && !side.http11;
        let mut keep = side.keep_alive && self.framing != Framing::UntilClose && !decode;
        out.clear();
        self.encode_head(out, side, keep);
        self.buf.advance(self.head_len);

        let mut remaining = match self.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = ChunkTracker::default();
        let mut ended = self.framing == Framing::None || remaining == 0 && self.framing == Framing::Length(0);
        while !ended {
            match self.framing {
                Framing::None => ended = true,
                Framing::Length(_) => {
                    let take = remaining.min(self.buf.len() as u64) as usize;
                    out.extend_from_slice(&self.buf[..take]);
                    self.buf.advance(take);
                    remaining -= take as u64;
                    ended = remaining == 0;
                }
                Framing::Chunked => {
                    let (used, done) = chunks
                        .feed(&self.buf, |data| {
                            if decode {
                                out.extend_from_slice(data)
                            }
                        })
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if !decode {
                        out.extend_from_slice(&self.buf[..used]);
                    }
                    self.buf.advance(used);
                    ended = done;
                }
                Framing::UntilClose => {
                    out.extend_from_slice(&self.buf);
                    self.buf.clear();
                }
            }
            if ended {
                break;
            }
            if !out.is_empty() {
                t.write_all(client, out, side.write_timeout).await?;
                out.clear();
            }
            t.deadline.set_after(t.clock, upstream.timeout);
            let read = t.deadline.guard(t.clock, self.conn.read_buf(&mut self.buf)).await;
            match read {
                Some(Ok(0)) if self.framing == Framing::UntilClose => ended = true,
                Some(Ok(0)) | Some(Err(_)) | None => {
                    // The backend died mid-body: the head is out, so the only
                    // honest signal left is closing the client connection.
                    tracing::warn!(request_id = side.request_id, backend = %b.addr, "backend response cut short");
                    b.metrics.other_errors.inc();
                    t.write_all(client, out, side.write_timeout).await?;
                    return Ok(false);
                }
                Some(Ok(_)) => {}
            }
        }
        if decode {
            // Close-delimited towards an HTTP/1.0 client.
            keep = false;
        }
        t.write_all(client, out, side.write_timeout).await?;
        out.clear();
        if self.reusable && self.buf.is_empty() {
            b.put_idle(
                IdleConn {
                    stream: self.conn,
                    buf: self.buf,
                    since: Instant::now(),
                },
                upstream.max_idle_per_backend,
            );
        }
        Ok(keep)
    }

    fn encode_head(&self, out: &mut Vec<u8>, side: &ClientSide<'_>, keep: bool) {
        let head = &self.buf[..self.head_len];
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa3(self.status).as_slice());
        out.push(b' ');
        let reason = &head[self.reason.clone()];
        if reason.is_empty() {
            let canonical = http::StatusCode::from_u16(self.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown");
            out.extend_from_slice(canonical.as_bytes());
        } else {
            out.extend_from_slice(reason);
        }
        out.extend_from_slice(b"\r\n");
        // Headers the backend's Connection header names are hop-by-hop too.
        let mut named: Vec<&[u8]> = Vec::new();
        for (n, v) in &self.headers {
            if head[n.clone()].eq_ignore_ascii_case(b"connection") {
                named.extend(head[v.clone()].split(|&c| c == b',').map(<[u8]>::trim_ascii));
            }
        }
        let mut has_request_id = false;
        let mut head_length: Option<&[u8]> = None;
        for (n, v) in &self.headers {
            let name = &head[n.clone()];
            if name.eq_ignore_ascii_case(b"content-length") {
                head_length = Some(&head[v.clone()]);
                continue;
            }
            if named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                continue;
            }
            if is_hop_by_hop_bytes(name) {
                continue;
            }
            has_request_id |= name.eq_ignore_ascii_case(b"x-request-id");
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&head[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if !has_request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(side.request_id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match self.framing {
            Framing::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            // HEAD: the length the GET would have.
            Framing::None => {
                if let (Some(l), true) = (head_length, *side.method == Method::HEAD) {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(l);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Framing::Chunked if side.http11 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Chunked | Framing::UntilClose => {}
        }
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal without going through `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn itoa3(n: u16) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Follows chunked framing to find where a message ends.
#[derive(Default)]
struct ChunkTracker {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

impl ChunkTracker {
    /// Consumes `input`; calls `on_data` with each piece of chunk data.
    /// Returns how many bytes belong to the message and whether it ended.
    fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<(usize, bool), &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            match self.state {
                Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + (c as char).to_digit(16).unwrap_or(0) as u64;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                Extension => {
                    if c == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if c != b'\n' {
                        return Err("invalid chunk size line");
                    }
                    self.state = if self.size == 0 { Trailer } else { Data };
                    self.line = 0;
                }
                Data => {
                    let take = (self.size as usize).min(input.len() - i);
                    on_data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if c != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if c != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = Size;
                    self.size = 0;
                    self.digits = 0;
                }
                Trailer => {
                    if c == b'\r' {
                        self.state = TrailerLf;
                    } else {
                        self.line += 1;
                    }
                }
                TrailerLf => {
                    if c != b'\n' {
                        return Err("invalid trailer");
                    }
                    if self.line == 0 {
                        self.state = Done;
                        return Ok((i + 1, true));
                    }
                    self.line = 0;
                    self.state = Trailer;
                }
                Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_tracking_finds_the_end_in_any_split() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut t = ChunkTracker::default();
            let mut data = Vec::new();
            let (a, done_a) = t.feed(&body[..split], |d| data.extend_from_slice(d)).unwrap();
            assert_eq!(a, split);
            assert!(!done_a || split == body.len());
            let (b, done) = t.feed(&body[split..], |d| data.extend_from_slice(d)).unwrap();
            assert_eq!((a + b, done), (body.len(), true), "split at {split}");
            assert_eq!(data, b"Wikipedia");
        }
        let mut t = ChunkTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\nEXTRA", |_| {}).unwrap(), (5, true));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiX\r\n",
            b"\r\n",
            b"4\rX",
            b"ffffffffffffffff0\r\n",
        ] {
            assert!(ChunkTracker::default().feed(bad, |_| {}).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_framing() {
        let parse = |raw: &[u8], m: Method| {
            let mut buf = BytesMut::from(raw);
            match parse_response(&mut buf, &m).ok().unwrap() {
                Parsed::Complete(p) => (p.status, p.framing, p.reusable),
                _ => panic!("incomplete"),
            }
        };
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", Method::GET),
            (200, Framing::Length(3), true)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET
            ),
            (200, Framing::Chunked, true)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET),
            (200, Framing::UntilClose, false)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n",
                Method::GET
            ),
            (200, Framing::Length(3), false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::HEAD),
            (200, Framing::None, true)
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n", Method::GET),
            (200, Framing::Length(3), false)
        );
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
        assert!(matches!(
            parse_response(&mut buf, &Method::POST),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            parse_response(&mut buf, &Method::POST),
            Ok(Parsed::Complete(_))
        ));
        let mut bad =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..]);
        assert!(parse_response(&mut bad, &Method::GET).is_err());
    }

    #[test]
    fn decimals_and_hop_by_hop_names() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for name in [
            "connection",
            "Transfer-Encoding",
            "te",
            "keep-alive",
            "proxy-connection",
        ] {
            let parsed = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_hop_by_hop_bytes(name.as_bytes()) && crate::http1::is_hop_by_hop(&parsed));
        }
        assert!(!is_hop_by_hop_bytes(b"content-type"));
    }
}
