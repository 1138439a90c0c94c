//! Writing answers: from a stored object (with `Age`, `Cache-Status`, a
//! `304` for a matching conditional request, `206`/`416` for a range, no
//! body for `HEAD`), and the head of an answer streamed from the origin
//! (its fields minus hop-by-hop and edge-only ones). Pure byte building;
//! the connection writes the result.

use proxy_core::codec::push_decimal;
use proxy_core::downstream::reason;
use proxy_core::hop_by_hop::{connection_named, is_dropped};
use proxy_core::relay::field;
use proxy_core::ResponseHead;

use super::range::{self, RangeAnswer};
use super::stored::StoredHead;
use crate::policy::{age_field, is_edge_only, not_modified, Fields, DELTA_MAX};
use crate::store::Object;

/// Response fields the edge consumes and never sends to a client: the
/// edge-targeted directives and the purge tags.
pub fn is_edge_field(name: &[u8]) -> bool {
    is_edge_only(name)
        || name.eq_ignore_ascii_case(b"surrogate-key")
        || name.eq_ignore_ascii_case(b"cache-tag")
}

/// What the client asked that shapes an answer from storage.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// `HEAD`: no body.
    pub head_only: bool,
    /// The request, for conditionals (`If-None-Match`, …) and `Range`;
    /// `None` when neither applies (a coalesced waiter's answer to a
    /// request with conditionals still passes it).
    pub request: Option<&'a proxy_core::RequestHead>,
    /// Whether the connection stays open.
    pub keep_alive: bool,
}

/// The status line.
fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn end_head(out: &mut Vec<u8>, cache_status: &str, keep_alive: bool) {
    field(out, b"cache-status", cache_status.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `ttl` parameter of `Cache-Status`: freshness left, negative once
/// stale.
pub fn ttl_param(stored: &StoredHead<'_>, now: u64) -> i64 {
    let f = stored.freshness();
    let age = f.age(now) as i64;
    (f.lifetime.min(DELTA_MAX) as i64) - age
}

/// Writes the answer to a request from `object` into `out` (head, and the
/// body when it is small: returns the body slice still to write after
/// `out`, empty when none). `cache_status` is the whole field value.
pub fn from_storage<'o>(
    out: &mut Vec<u8>,
    object: &'o Object,
    stored: &StoredHead<'_>,
    now: u64,
    cache_status: &str,
    asked: Asked<'_>,
) -> Written<'o> {
    let status = stored.status();
    let age = stored.freshness().age(now);
    let body = object.body();
    let fields = stored.all_fields();
    if let Some(req) = asked.request {
        let conditional = req.has(b"if-none-match") || req.has(b"if-modified-since");
        if conditional
            && (200..300).contains(&status)
            && not_modified(req.method.as_str().as_bytes(), req, &fields)
        {
            status_line(out, 304);
            out.extend_from_slice(stored.client_fields());
            field(out, b"age", age_field(age).as_bytes());
            end_head(out, cache_status, asked.keep_alive);
            return Written::done(304, 0);
        }
    }
    let ranged = match asked.request {
        Some(req) if status == 200 && req.method == http::Method::GET => range::answer(
            req.value(b"range"),
            req.value(b"if-range"),
            fields.value(b"etag"),
            fields.value(b"last-modified"),
            body.len() as u64,
        ),
        _ => RangeAnswer::Full,
    };
    let (status, part) = match ranged {
        RangeAnswer::Full => (status, &body[..]),
        RangeAnswer::Partial { start, end } => (206, &body[start as usize..=end as usize]),
        RangeAnswer::Unsatisfiable => (416, &body[..0]),
    };
    status_line(out, status);
    out.extend_from_slice(stored.client_fields());
    field(out, b"age", age_field(age).as_bytes());
    match ranged {
        RangeAnswer::Full => {}
        RangeAnswer::Partial { start, end } => {
            let v = format!("bytes {start}-{end}/{}", body.len());
            field(out, b"content-range", v.as_bytes());
        }
        RangeAnswer::Unsatisfiable => {
            let v = format!("bytes */{}", body.len());
            field(out, b"content-range", v.as_bytes());
        }
    }
    if has_body_status(status) {
        content_length(out, part.len() as u64);
    }
    end_head(out, cache_status, asked.keep_alive);
    if asked.head_only || !has_body_status(status) {
        return Written::done(status, 0);
    }
    // Small bodies go out in the same write as the head.
    if part.len() <= 16 * 1024 {
        out.extend_from_slice(part);
        return Written::done(status, part.len() as u64);
    }
    Written {
        status,
        body_len: part.len() as u64,
        rest: part,
    }
}

/// What [`from_storage`] wrote.
#[derive(Debug)]
pub struct Written<'o> {
    /// The status answered.
    pub status: u16,
    /// Body bytes of the answer.
    pub body_len: u64,
    /// Body bytes still to write after the head buffer (large bodies are
    /// not copied into it).
    pub rest: &'o [u8],
}

impl Written<'_> {
    fn done(status: u16, body_len: u64) -> Self {
        Written {
            status,
            body_len,
            rest: &[],
        }
    }
}

/// Statuses that carry a body (and so a `Content-Length`).
fn has_body_status(status: u16) -> bool {
    status >= 200 && status != 204 && status != 304
}

/// How a body streamed from the origin is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    None,
    /// The origin's declared length.
    Length(u64),
    /// Chunked (an HTTP/1.1 client, length unknown).
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Writes the head of an answer streamed from the origin: its status and
/// fields minus hop-by-hop, framing, `Age` when `drop_age`, and edge-only
/// ones, then the framing this edge uses. Returns the framing.
pub fn streamed_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    head_only: bool,
    http10_client: bool,
    cache_status: &str,
    keep_alive: bool,
) -> Framing {
    status_line(out, resp.status);
    let named = connection_named(resp.fields());
    for (name, value) in resp.iter() {
        if is_dropped(name, &named) || name.eq_ignore_ascii_case(b"content-length") || is_edge_field(name) {
            continue;
        }
        field(out, name, value);
    }
    let framing = match resp.framing {
        proxy_core::Framing::None => {
            if has_body_status(resp.status) && !head_only {
                content_length(out, 0);
            }
            Framing::None
        }
        proxy_core::Framing::Length(n) => {
            content_length(out, n);
            if head_only {
                Framing::None
            } else {
                Framing::Length(n)
            }
        }
        _ if head_only => Framing::None,
        _ if http10_client => Framing::Close,
        _ => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    end_head(out, cache_status, keep_alive && framing != Framing::Close);
    framing
}

/// Appends one piece of a streamed body in `framing`.
pub fn body_piece(out: &mut Vec<u8>, framing: Framing, data: &[u8]) {
    match framing {
        Framing::None => {}
        Framing::Length(_) | Framing::Close => out.extend_from_slice(data),
        Framing::Chunked => {
            if data.is_empty() {
                return;
            }
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends the end of a streamed body in `framing`.
pub fn body_end(out: &mut Vec<u8>, framing: Framing) {
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Freshness;
    use crate::store::{CacheKey, ObjectMeta};
    use bytes::{Bytes, BytesMut};
    use std::time::SystemTime;

    fn object(body: &'static [u8]) -> Object {
        let f = Freshness {
            lifetime: 60,
            heuristic: false,
            initial_age: 0,
            response_time: 1000,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            no_cache: false,
            revalidate_when_stale: false,
            stale_forbidden: false,
            immutable: false,
        };
        let fields: [(&[u8], &[u8]); 2] = [(b"ETag", b"\"v1\""), (b"Surrogate-Control", b"max-age=60")];
        let head = super::super::stored::encode(200, &f, fields.iter().copied());
        Object::new(
            CacheKey::from("k"),
            ObjectMeta::new(SystemTime::now()),
            head,
            Bytes::from_static(body),
        )
    }

    fn request(raw: &str) -> proxy_core::RequestHead {
        let mut b = BytesMut::from(raw.as_bytes());
        proxy_core::codec::parse_request(&mut b, &Default::default())
            .unwrap()
            .unwrap()
    }

    fn answer(req: &str, head_only: bool) -> String {
        let o = object(b"0123456789");
        let stored = StoredHead::parse(o.head()).unwrap();
        let req = request(req);
        let mut out = Vec::new();
        let asked = Asked {
            head_only,
            request: Some(&req),
            keep_alive: true,
        };
        let w = from_storage(&mut out, &o, &stored, 1010, "e; hit", asked);
        assert!(w.rest.is_empty());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_hit_has_age_cache_status_and_no_edge_fields() {
        let a = answer("GET / HTTP/1.1\r\nHost: a\r\n\r\n", false);
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(
            a.contains("age: 10\r\n") && a.contains("cache-status: e; hit\r\n"),
            "{a}"
        );
        assert!(!a.to_lowercase().contains("surrogate-control"), "{a}");
        assert!(a.ends_with("\r\n\r\n0123456789"), "{a}");
    }

    #[test]
    fn head_conditional_and_ranges() {
        let a = answer("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", true);
        assert!(
            a.contains("content-length: 10\r\n") && a.ends_with("\r\n\r\n"),
            "{a}"
        );
        let a = answer(
            "GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"v1\"\r\n\r\n",
            false,
        );
        assert!(
            a.starts_with("HTTP/1.1 304 ") && !a.contains("content-length"),
            "{a}"
        );
        let a = answer("GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=2-4\r\n\r\n", false);
        assert!(
            a.starts_with("HTTP/1.1 206 ") && a.contains("content-range: bytes 2-4/10\r\n"),
            "{a}"
        );
        assert!(
            a.ends_with("content-length: 3\r\ncache-status: e; hit\r\n\r\n234"),
            "{a}"
        );
        let a = answer("GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=20-\r\n\r\n", false);
        assert!(
            a.starts_with("HTTP/1.1 416 ") && a.contains("content-range: bytes */10\r\n"),
            "{a}"
        );
    }
}
