//! Request heads: parsed from a client's bytes, kept as those bytes with
//! offsets, so a proxy re-encodes the request for the upstream straight from
//! what the client sent.

use super::head::{check_head_bytes, declared_framing, offset, Declared};
use super::{Framing, HeadError, HeadLimits, HeaderFields, STACK_FIELDS};
use bytes::BytesMut;
use http::Method;
use std::ops::Range;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// How the body is delimited: `None`, `Length` or `Chunked`.
    pub body: Framing,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    target: Range<usize>,
    fields: HeaderFields,
}

impl RequestHead {
    /// The request target, origin-form (`/path?query`) or `*`.
    pub fn target(&self) -> &str {
        // Checked to be ASCII when parsed.
        std::str::from_utf8(self.fields.slice(&self.target)).unwrap_or("/")
    }

    /// The header fields.
    pub fn fields(&self) -> &HeaderFields {
        &self.fields
    }
}

/// The head's field accessors (`iter`, `value`, `values`, `has_token`) are
/// those of its [`HeaderFields`].
impl std::ops::Deref for RequestHead {
    type Target = HeaderFields;

    fn deref(&self) -> &HeaderFields {
        &self.fields
    }
}

/// Parses a request head at the start of `buf`. A complete head is split
/// off `buf` (the body, if any, stays); `Ok(None)` means more bytes are
/// needed. Besides the rules every head follows (see [`super`]): the
/// target must be origin-form (or `*` for `OPTIONS`), and an HTTP/1.1
/// request has exactly one `Host`.
pub fn parse_request(buf: &mut BytesMut, limits: &HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    // Header slots on the stack, uninitialised: this runs once per request.
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let slots = if limits.max_fields <= STACK_FIELDS {
        &mut stack[..limits.max_fields]
    } else {
        heap.resize_with(limits.max_fields, std::mem::MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let used = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_bytes {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed request head")),
    };
    if used > limits.max_bytes {
        return Err(HeadError::TooLarge);
    }
    check_head_bytes(&buf[..used], req.headers.iter().map(|h| h.value))?;
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Invalid("invalid method"))?;
    let path = req.path.unwrap_or("");
    if !(path.starts_with('/') || (path == "*" && method == Method::OPTIONS)) {
        return Err(HeadError::Invalid("request target must be origin-form"));
    }
    let minor_version = req.version.unwrap_or(1);
    let base: &[u8] = buf;
    let target = offset(base, path.as_bytes());
    let ranges = req
        .headers
        .iter()
        .map(|h| (offset(base, h.name.as_bytes()), offset(base, h.value)))
        .collect();
    let fields = HeaderFields::new(buf.split_to(used).freeze(), ranges);
    let body = match declared_framing(&fields, minor_version)? {
        Declared::Nothing | Declared::Length(0) => Framing::None,
        Declared::Length(n) => Framing::Length(n),
        Declared::Chunked => Framing::Chunked,
    };
    if minor_version == 1 && fields.values(b"host").count() != 1 {
        return Err(HeadError::Invalid("HTTP/1.1 requires exactly one Host header"));
    }
    let keep_alive = if minor_version == 1 {
        !fields.has_token(b"connection", b"close")
    } else {
        fields.has_token(b"connection", b"keep-alive")
    };
    let expect_continue = fields
        .value(b"expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        minor_version,
        body,
        keep_alive,
        expect_continue,
        target,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(
            &mut BytesMut::from(raw),
            &HeadLimits {
                max_bytes: 1024,
                max_fields: 8,
            },
        )
    }

    #[test]
    fn plain_heads() {
        let h = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (&h.method, h.target(), h.keep_alive, h.body),
            (&Method::GET, "/a?b=1", true, Framing::None)
        );
        assert_eq!(h.values(b"X-A").collect::<Vec<_>>(), [&b"1"[..], b"2"]);
        let h = parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (Framing::Length(3), false));
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(),
            "partial"
        );
    }

    #[test]
    fn head_rules_are_enforced() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                matches!(parse(raw), Err(HeadError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}", "a".repeat(2000));
        assert_eq!(parse(big.as_bytes()).unwrap_err(), HeadError::TooLarge);
    }
}
