//! What a backend sees of a client's request, encoded straight from the
//! client's bytes (no header map in between):
//! - the request line, always as HTTP/1.1 (the backend side keeps alive);
//! - the client's header fields in their order, minus hop-by-hop ones and
//!   those the client's `Connection` header names, minus `Content-Length`
//!   and `Expect` (the proxy read the whole body and sends its own length);
//! - `X-Forwarded-For`, `-Proto` and `-Host` replaced, unless the peer is a
//!   trusted proxy: then its values are kept and the address is appended to
//!   the chain, so a client cannot forge its address (`Forwarded` and
//!   `X-Real-IP` from an untrusted peer are dropped for the same reason);
//! - an `X-Request-Id` kept when the client sent exactly one well-formed
//!   one, generated otherwise;
//! - the body, with its length.
//!
//! Also the consistent-hash key, read from the same fields.

use crate::config::HashKey;
use crate::selection::stable_hash;
use proxy_core::codec::RequestHead;
use proxy_core::hop_by_hop::{connection_named, is_dropped};
use proxy_core::relay::{encode_request_end, encode_request_line, field, is_framing_field};
use std::net::{IpAddr, SocketAddr};

/// The client of a connection, worked out once per connection.
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// `addr`'s IP as text, for `X-Forwarded-For`.
    ip: String,
    /// A trusted proxy: its `X-Forwarded-*` headers are kept.
    trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted_proxies: &[IpAddr]) -> Self {
        Peer {
            addr,
            ip: addr.ip().to_string(),
            trusted: trusted_proxies.contains(&addr.ip()),
        }
    }
}

/// A request id: up to 128 characters of `[A-Za-z0-9._:-]`, on the stack.
pub(crate) struct RequestId {
    bytes: [u8; RequestId::MAX],
    len: u8,
}

impl RequestId {
    const MAX: usize = 128;

    /// A client's id, if well-formed.
    fn parse(v: &[u8]) -> Option<Self> {
        let ok = (1..=Self::MAX).contains(&v.len())
            && v.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
        ok.then(|| {
            let mut bytes = [0; Self::MAX];
            bytes[..v.len()].copy_from_slice(v);
            RequestId {
                bytes,
                len: v.len() as u8,
            }
        })
    }

    /// 128 random bits in hex.
    fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u128>();
        let mut bytes = [0; Self::MAX];
        for (i, b) in bytes[..32].iter_mut().enumerate() {
            *b = HEX[(n >> (124 - 4 * i) & 0xf) as usize];
        }
        RequestId { bytes, len: 32 }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("-")
    }
}

/// Encodes `head` and `body` for a backend into `out` (cleared first);
/// returns the request's id.
pub(crate) fn encode_request(out: &mut Vec<u8>, head: &RequestHead, body: &[u8], peer: &Peer) -> RequestId {
    out.clear();
    encode_request_line(head, out);
    // Names the client's Connection header declares hop-by-hop (rare:
    // no allocation unless there are some).
    let named = connection_named(head.fields());
    let trusted = peer.trusted;
    let kept_id = {
        let mut ids = head.values(b"x-request-id");
        match (ids.next(), ids.next()) {
            (Some(v), None) => RequestId::parse(v),
            _ => None,
        }
    };
    let (mut has_proto, mut has_host) = (false, false);
    for (name, value) in head.iter() {
        let dropped = is_dropped(name, &named)
            || is_framing_field(name)
            || name.eq_ignore_ascii_case(b"x-forwarded-for")
            // Other spellings of the client's address: only ours reach the
            // backend, unless the peer is a trusted proxy.
            || (!trusted && (name.eq_ignore_ascii_case(b"forwarded") || name.eq_ignore_ascii_case(b"x-real-ip")))
            || (name.eq_ignore_ascii_case(b"x-request-id") && kept_id.is_none());
        if dropped {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            if !trusted {
                continue;
            }
            has_proto = true;
        } else if name.eq_ignore_ascii_case(b"x-forwarded-host") {
            if !trusted {
                continue;
            }
            has_host = true;
        }
        field(out, name, value);
    }

    out.extend_from_slice(b"x-forwarded-for: ");
    if trusted {
        for prev in head.values(b"x-forwarded-for") {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer.ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if !has_host {
        if let Some(host) = head.value(b"host") {
            field(out, b"x-forwarded-host", host);
        }
    }
    let id = kept_id.unwrap_or_else(|| {
        let id = RequestId::generate();
        field(out, b"x-request-id", id.as_str().as_bytes());
        id
    });
    encode_request_end(head, body, out);
    id
}

/// The consistent-hash key of a request; the client IP when the configured
/// cookie or header is absent.
pub(crate) fn hash_key(key: &HashKey, head: &RequestHead, ip: IpAddr) -> u64 {
    let by_ip = || match ip {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Header(name) => head
            .value(name.as_str().as_bytes())
            .map(stable_hash)
            .unwrap_or_else(by_ip),
        HashKey::Cookie(name) => head
            .values(b"cookie")
            .flat_map(|v| v.split(|&b| b == b';'))
            .filter_map(|c| {
                let c = c.trim_ascii();
                let eq = c.iter().position(|&b| b == b'=')?;
                Some((&c[..eq], &c[eq + 1..]))
            })
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| stable_hash(v))
            .unwrap_or_else(by_ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_for_test(raw: &[u8]) -> RequestHead {
        let limits = proxy_core::HeadLimits::default();
        proxy_core::codec::parse_request(&mut bytes::BytesMut::from(raw), &limits)
            .expect("a valid head")
            .expect("a complete head")
    }

    fn encoded(raw: &str, body: &[u8], peer: &Peer) -> (String, String) {
        let head = parse_for_test(raw.as_bytes());
        let mut out = Vec::new();
        let id = encode_request(&mut out, &head, body, peer);
        (String::from_utf8(out).unwrap(), id.as_str().to_owned())
    }

    fn untrusted() -> Peer {
        Peer::new("10.0.0.1:5".parse().unwrap(), &[])
    }

    #[test]
    fn forwarded_headers_are_not_trusted_blindly() {
        let raw = "GET /a HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Request-Id: r1\r\n\r\n";
        let (out, _) = encoded(raw, b"", &untrusted());
        let spoofed = "GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
        let (dropped, _) = encoded(spoofed, b"", &untrusted());
        assert!(!dropped.contains("6.6.6.6"), "{dropped}");
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: app.example\r\nX-Request-Id: r1\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app.example\r\n\r\n"
        );
        let trusted = Peer::new("10.0.0.1:5".parse().unwrap(), &["10.0.0.1".parse().unwrap()]);
        let (out, _) = encoded(raw, b"", &trusted);
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil.example\r\nX-Request-Id: r1\r\nx-forwarded-for: 6.6.6.6, 10.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_fields_stay_behind_and_the_body_carries_its_own_length() {
        let raw = "POST /u HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                   Keep-Alive: timeout=5\r\nTE: trailers\r\nExpect: 100-continue\r\n\
                   Content-Length: 3\r\nX-Keep: 1\r\nX-Request-Id: r2\r\n\r\n";
        let (out, id) = encoded(raw, b"abc", &untrusted());
        assert_eq!(
            out,
            "POST /u HTTP/1.1\r\nHost: x\r\nX-Keep: 1\r\nX-Request-Id: r2\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: x\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(id, "r2");
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed_and_single() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: bad id\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (out, id) = encoded(raw, b"", &untrusted());
            assert_eq!(id.len(), 32, "{raw:?}");
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
            assert!(out.ends_with(&format!("x-request-id: {id}\r\n\r\n")), "{out}");
            assert_eq!(
                out.matches("x-request-id").count() + out.matches("X-Request-Id").count(),
                1
            );
        }
        let (_, a) = encoded("GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", &untrusted());
        let (_, b) = encoded("GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", &untrusted());
        assert_ne!(a, b);
    }

    #[test]
    fn hash_key_falls_back_to_the_client_ip() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let head =
            parse_for_test(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; session=xyz\r\nX-User: u7\r\n\r\n");
        let by_cookie = hash_key(&HashKey::Cookie("session".into()), &head, ip);
        assert_eq!(by_cookie, stable_hash(b"xyz"));
        let missing = hash_key(&HashKey::Cookie("other".into()), &head, ip);
        assert_eq!(missing, hash_key(&HashKey::ClientIp, &head, ip));
        let by_header = hash_key(&HashKey::Header("x-user".parse().unwrap()), &head, ip);
        assert_eq!(by_header, stable_hash(b"u7"));
    }
}
