//! Response heads: parsed from an upstream's bytes with the same strictness
//! as requests (a cache that stores what it reads must not read a response
//! differently from the next hop), kept as bytes with offsets.

use super::head::{check_head_bytes, declared_framing, offset, Declared};
use super::{Framing, HeadError, HeadLimits, HeaderFields, STACK_FIELDS};
use bytes::{Buf, BytesMut};
use http::Method;
use std::ops::Range;

/// A parsed final (non-1xx) response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code (200 to 599).
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// How the body is delimited, given the request's method.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is
    /// read: HTTP/1.1 without `Connection: close` (HTTP/1.0 with
    /// `keep-alive`), and a body not delimited by the close.
    pub reusable: bool,
    reason: Range<usize>,
    fields: HeaderFields,
}

impl ResponseHead {
    /// The reason phrase as sent (may be empty).
    pub fn reason(&self) -> &[u8] {
        self.fields.slice(&self.reason)
    }

    /// The header fields.
    pub fn fields(&self) -> &HeaderFields {
        &self.fields
    }
}

/// The head's field accessors (`iter`, `value`, `values`, `has_token`) are
/// those of its [`HeaderFields`].
impl std::ops::Deref for ResponseHead {
    type Target = HeaderFields;

    fn deref(&self) -> &HeaderFields {
        &self.fields
    }
}

/// Parses the response to a `method` request at the start of `buf`.
/// Interim (1xx) responses are consumed and skipped; a complete final head
/// is split off `buf` (what follows is body); `Ok(None)` means more bytes
/// are needed. The framing rules are the request's (see [`super`]); `101`
/// is refused (upgrades are not proxied). A response to `HEAD`, a 204 or a
/// 304 has no body whatever its fields say (they are still checked).
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        match parse_one(buf, method, limits)? {
            Parsed::Partial => return Ok(None),
            Parsed::Interim(used) => buf.advance(used),
            Parsed::Complete(head) => return Ok(Some(head)),
        }
    }
}

enum Parsed {
    Partial,
    /// A 1xx of this many bytes.
    Interim(usize),
    Complete(ResponseHead),
}

fn parse_one(buf: &mut BytesMut, method: &Method, limits: &HeadLimits) -> Result<Parsed, HeadError> {
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let slots = if limits.max_fields <= STACK_FIELDS {
        &mut stack[..limits.max_fields]
    } else {
        heap.resize_with(limits.max_fields, std::mem::MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut r = httparse::Response::new(&mut []);
    let used = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut r, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_bytes {
                Err(HeadError::TooLarge)
            } else {
                Ok(Parsed::Partial)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    if used > limits.max_bytes {
        return Err(HeadError::TooLarge);
    }
    check_head_bytes(&buf[..used], r.headers.iter().map(|h| h.value))?;
    let status = r.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(HeadError::Invalid("protocol upgrades are not proxied"));
        }
        return Ok(Parsed::Interim(used));
    }
    let minor_version = r.version.unwrap_or(1);
    let base: &[u8] = buf;
    let reason = offset(base, r.reason.unwrap_or("").as_bytes());
    let ranges = r
        .headers
        .iter()
        .map(|h| (offset(base, h.name.as_bytes()), offset(base, h.value)))
        .collect();
    let fields = HeaderFields::new(buf.split_to(used).freeze(), ranges);
    let declared = declared_framing(&fields, minor_version)?;
    let bodiless = *method == Method::HEAD || status == 204 || status == 304;
    let framing = match declared {
        _ if bodiless => Framing::None,
        Declared::Chunked => Framing::Chunked,
        Declared::Length(n) => Framing::Length(n),
        Declared::Nothing => Framing::UntilClose,
    };
    let close = if minor_version == 0 {
        !fields.has_token(b"connection", b"keep-alive")
    } else {
        fields.has_token(b"connection", b"close")
    };
    Ok(Parsed::Complete(ResponseHead {
        status,
        minor_version,
        framing,
        reusable: !close && framing != Framing::UntilClose,
        reason,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], method: Method) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(raw), &method, &HeadLimits::default())
    }

    fn framing(raw: &[u8], method: Method) -> (u16, Framing, bool) {
        let h = parse(raw, method).expect("valid").expect("complete");
        (h.status, h.framing, h.reusable)
    }

    #[test]
    fn framing_follows_fields_method_and_status() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", Method::GET),
            (200, Framing::Length(3), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET),
            (200, Framing::Length(0), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET
            ),
            (200, Framing::Chunked, true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET),
            (200, Framing::UntilClose, false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n",
                Method::GET
            ),
            (200, Framing::Length(3), false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::HEAD),
            (200, Framing::None, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n",
                Method::GET
            ),
            (304, Framing::None, true)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n", Method::GET),
            (200, Framing::Length(3), false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 3\r\n\r\n",
                Method::GET
            ),
            (200, Framing::Length(3), true)
        );
    }

    #[test]
    fn interim_responses_are_skipped_and_the_body_left() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Fine\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        let h = parse_response(&mut buf, &Method::POST, &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.reason(), h.value(b"x-a")),
            (200, &b"Fine"[..], Some(&b"1"[..]))
        );
        assert_eq!(&buf[..], b"ok");
        let mut partial = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2"[..]);
        assert!(
            parse_response(&mut partial, &Method::POST, &HeadLimits::default())
                .unwrap()
                .is_none()
        );
    }

    /// The strictness the request side has, for responses.
    #[test]
    fn ambiguous_responses_are_refused() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 12345678901234567890\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            // Bodiless responses are checked all the same.
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                matches!(parse(raw, Method::GET), Err(HeadError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::HEAD
            ),
            Err(HeadError::Invalid(_))
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = HeadLimits {
            max_bytes: 256,
            max_fields: 4,
        };
        let many: String = (0..5).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        let r = parse_response(&mut BytesMut::from(raw.as_bytes()), &Method::GET, &limits);
        assert_eq!(r.unwrap_err(), HeadError::TooLarge);
        let raw = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(300));
        let r = parse_response(&mut BytesMut::from(raw.as_bytes()), &Method::GET, &limits);
        assert_eq!(r.unwrap_err(), HeadError::TooLarge);
    }
}
