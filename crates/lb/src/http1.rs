//! The client side of the proxy: a strict HTTP/1.1 request reader and a
//! response writer. Strict on purpose: whatever two HTTP parsers could read
//! differently (request smuggling) is refused with 400 and the connection is
//! closed: `Content-Length` together with `Transfer-Encoding`, several
//! `Content-Length`s, any transfer coding but a lone `chunked`, malformed
//! chunk sizes, bare LF line ends, obsolete line folding.

use crate::deadline::{Clock, Deadline};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A parsed request head. The head's bytes are kept as they arrived and the
/// header fields are ranges into them: nothing is copied or allocated per
/// header, and the request is re-encoded for the backend straight from the
/// client's bytes.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub body: BodyFraming,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    pub expect_continue: bool,
    raw: Bytes,
    target: Range<usize>,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl RequestHead {
    /// The request target, origin-form (`/path?query`) or `*`.
    pub fn target(&self) -> &str {
        // Checked to be ASCII when parsed.
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("/")
    }

    /// The header fields (name, value) in the order they arrived.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// The values of the fields named `name` (ASCII case-insensitive).
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the field named `name`.
    pub fn value<'a>(&'a self, name: &'a [u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Whether a comma-separated list field (`Connection`) holds `token`.
    pub fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        self.values(name)
            .any(|v| list_tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
    }
}

/// The elements of a comma-separated header value, trimmed.
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

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
    /// The status answered to the client, if any.
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
}

/// Limits the reader enforces.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The clock and this connection's deadline slot.
#[derive(Clone, Copy)]
pub struct Timer<'a> {
    pub clock: &'a Clock,
    pub deadline: &'a Deadline,
}

impl Timer<'_> {
    fn set(&self, after: Duration) {
        self.deadline.set_after(self.clock, after);
    }

    /// Writes all of `bytes` to the client within `within`: a client that
    /// stops reading cannot hold its connection (and a backend's) for ever.
    pub async fn write_all<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        bytes: &[u8],
        within: Duration,
    ) -> std::io::Result<()> {
        self.set(within);
        match self.deadline.guard(self.clock, io.write_all(bytes)).await {
            Some(r) => r,
            None => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its response in time",
            )),
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
    match t.deadline.guard(t.clock, io.read_buf(buf)).await {
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
    loop {
        if !buf.is_empty() {
            if !started {
                started = true;
                t.set(limits.header_timeout);
            }
            if let Some(head) = parse_head(buf, limits)? {
                return Ok(head);
            }
            if buf.len() >= limits.max_header_bytes {
                return Err(ReadError::HeadersTooLarge);
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

const STACK_HEADERS: usize = 128;

fn parse_head(buf: &mut BytesMut, limits: &ReadLimits) -> Result<Option<RequestHead>, ReadError> {
    // Header slots on the stack, uninitialised: this runs once per request.
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, std::mem::MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let used = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadersTooLarge),
        Err(_) => return Err(ReadError::BadRequest("malformed request head")),
    };
    if used > limits.max_header_bytes {
        return Err(ReadError::HeadersTooLarge);
    }
    // httparse accepts bare LF line ends; a proxy must not, since a backend
    // may split the message differently.
    if buf[..used].windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || buf[0] == b'\n' {
        return Err(ReadError::BadRequest("bare LF in request head"));
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| ReadError::BadRequest("invalid method"))?;
    let path = req.path.unwrap_or("");
    if !(path.starts_with('/') || (path == "*" && method == Method::OPTIONS)) {
        return Err(ReadError::BadRequest("request target must be origin-form"));
    }
    let minor_version = req.version.unwrap_or(1);
    let base = buf.as_ptr() as usize;
    let range = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let target = range(path.as_bytes());
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        // Control characters (but tab) have no place in a value.
        if h.value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ReadError::BadRequest("invalid header value"));
        }
        fields.push((range(h.name.as_bytes()), range(h.value)));
    }
    let head = RequestHead {
        method,
        minor_version,
        body: BodyFraming::None,
        keep_alive: false,
        expect_continue: false,
        raw: buf.split_to(used).freeze(),
        target,
        fields,
    };
    let body = framing(&head)?;
    if minor_version == 1 && head.values(b"host").count() != 1 {
        return Err(ReadError::BadRequest("HTTP/1.1 requires exactly one Host header"));
    }
    let keep_alive = if minor_version == 1 {
        !head.has_token(b"connection", b"close")
    } else {
        head.has_token(b"connection", b"keep-alive")
    };
    let expect_continue = head
        .value(b"expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        body,
        keep_alive,
        expect_continue,
        ..head
    }))
}

/// Parses a complete head with generous limits (tests of other modules).
#[cfg(test)]
pub(crate) fn parse_for_test(raw: &[u8]) -> RequestHead {
    let limits = ReadLimits {
        max_header_bytes: 64 * 1024,
        max_headers: 64,
        max_body_bytes: 1 << 20,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    };
    parse_head(&mut BytesMut::from(raw), &limits)
        .expect("a valid head")
        .expect("a complete head")
}

/// Decides the body framing, refusing every ambiguous combination.
fn framing(head: &RequestHead) -> Result<BodyFraming, ReadError> {
    let mut te = head.values(b"transfer-encoding");
    let mut cl = head.values(b"content-length");
    if let Some(first_te) = te.next() {
        if cl.next().is_some() {
            return Err(ReadError::BadRequest("both Content-Length and Transfer-Encoding"));
        }
        if head.minor_version == 0 {
            return Err(ReadError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if te.next().is_some() || !first_te.eq_ignore_ascii_case(b"chunked") {
            return Err(ReadError::BadRequest(
                "only a lone chunked transfer coding is accepted",
            ));
        }
        return Ok(BodyFraming::Chunked);
    }
    match (cl.next(), cl.next()) {
        (None, _) => Ok(BodyFraming::None),
        (Some(s), None) => {
            if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
                return Err(ReadError::BadRequest("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ReadError::BadRequest("invalid Content-Length"))?;
            Ok(if n == 0 {
                BodyFraming::None
            } else {
                BodyFraming::Length(n)
            })
        }
        (Some(_), Some(_)) => Err(ReadError::BadRequest("several Content-Length headers")),
    }
}

/// A request body and its share of the memory budget, given back when the
/// body is dropped.
pub struct Body {
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

/// Reads the whole body (the proxy buffers requests, so a slow client never
/// holds a backend connection and a failed attempt can be retried), within
/// `budget`, the bytes all connections together may hold.
pub async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    framing: BodyFraming,
    limits: &ReadLimits,
    budget: &Arc<Semaphore>,
    t: Timer<'_>,
) -> Result<Body, ReadError> {
    let mut held = None;
    let bytes = match framing {
        BodyFraming::None => Bytes::new(),
        BodyFraming::Length(n) => {
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
        BodyFraming::Chunked => {
            t.set(limits.body_timeout);
            read_chunked(io, buf, limits.max_body_bytes, t, |n| {
                reserve(budget, &mut held, n)
            })
            .await?
        }
    };
    Ok(Body { bytes, _budget: held })
}

/// Finds a CRLF-terminated line at the start of `buf`, reading more as
/// needed; returns its length without the CRLF.
async fn line<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    t: Timer<'_>,
) -> Result<usize, ReadError> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            if pos == 0 || buf[pos - 1] != b'\r' {
                return Err(ReadError::BadRequest("bare LF in chunked body"));
            }
            return Ok(pos - 1);
        }
        if buf.len() > max {
            return Err(ReadError::BadRequest("chunk line too long"));
        }
        if read_more(io, buf, t).await? == 0 {
            return Err(ReadError::BadRequest("connection closed mid-body"));
        }
    }
}

async fn read_chunked<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_body: u64,
    t: Timer<'_>,
    mut reserve: impl FnMut(u64) -> Result<(), ReadError>,
) -> Result<Bytes, ReadError> {
    let mut body = BytesMut::new();
    loop {
        let len = line(io, buf, 1024, t).await?;
        let size_line = &buf[..len];
        let size_part = size_line.split(|&b| b == b';').next().unwrap_or(&[]);
        if size_part.is_empty() || size_part.len() > 15 || !size_part.iter().all(u8::is_ascii_hexdigit) {
            return Err(ReadError::BadRequest("invalid chunk size"));
        }
        let size = u64::from_str_radix(std::str::from_utf8(size_part).unwrap_or("x"), 16)
            .map_err(|_| ReadError::BadRequest("invalid chunk size"))?;
        buf.advance(len + 2);
        if size == 0 {
            // Trailers: lines up to an empty one; dropped, not forwarded.
            let mut trailer_bytes = 0;
            loop {
                let len = line(io, buf, 8192, t).await?;
                buf.advance(len + 2);
                if len == 0 {
                    return Ok(body.freeze());
                }
                trailer_bytes += len;
                if trailer_bytes > 8192 {
                    return Err(ReadError::HeadersTooLarge);
                }
            }
        }
        if body.len() as u64 + size > max_body {
            return Err(ReadError::BodyTooLarge);
        }
        reserve(size)?;
        let need = size as usize + 2;
        while buf.len() < need {
            if read_more(io, buf, t).await? == 0 {
                return Err(ReadError::BadRequest("connection closed mid-body"));
            }
        }
        if &buf[size as usize..need] != b"\r\n" {
            return Err(ReadError::BadRequest("chunk data not followed by CRLF"));
        }
        body.extend_from_slice(&buf[..size as usize]);
        buf.advance(need);
    }
}

/// Hop-by-hop headers: meaningful for one connection only, never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_bytes(name.as_str().as_bytes())
}

/// [`is_hop_by_hop`] on a raw header name (requests and responses are
/// relayed without parsing them into a `HeaderMap`).
pub fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"keep-alive",
        b"proxy-connection",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Writes a response head. `length` is `Some` for a known body length;
/// `None` means chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
pub fn encode_head(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if is_hop_by_hop(name) || name == http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        crate::upstream::push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a small complete response generated by the proxy itself.
pub async fn write_simple<W: AsyncWrite + Unpin>(
    io: &mut W,
    status: u16,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<()> {
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    let mut out = Vec::with_capacity(256 + body.len());
    encode_head(
        &mut out,
        status,
        &headers,
        Some(body.len() as u64),
        false,
        keep_alive,
    );
    out.extend_from_slice(body);
    io.write_all(&out).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (&Method::GET, "/a?b=1", true)
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
}
