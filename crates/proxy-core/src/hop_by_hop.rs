//! Hop-by-hop header fields (RFC 9110, 7.6.1): meaningful for one
//! connection only, never forwarded in either direction; nor are the fields
//! a message's `Connection` header names.

use crate::codec::{list_tokens, HeaderFields};

/// The fields that are always hop-by-hop.
const HOP_BY_HOP: [&[u8]; 9] = [
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

/// Whether `name` (any case) is always hop-by-hop.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The field names a head's `Connection` fields declare hop-by-hop, besides
/// the fixed ones. Allocates only when there are some (rare).
pub fn connection_named(fields: &HeaderFields) -> Vec<&[u8]> {
    let mut named = Vec::new();
    for v in fields.values(b"connection") {
        named.extend(list_tokens(v));
    }
    named
}

/// Whether a field is dropped when forwarding: hop-by-hop, or named in
/// `named` (from [`connection_named`]).
pub fn is_dropped(name: &[u8], named: &[&[u8]]) -> bool {
    is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_named_fields() {
        for name in [
            "connection",
            "Transfer-Encoding",
            "te",
            "keep-alive",
            "proxy-connection",
            "Upgrade",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        assert!(!is_hop_by_hop(b"content-type"));
        let mut buf = bytes::BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let head = crate::codec::parse_response(&mut buf, &http::Method::GET, &Default::default())
            .unwrap()
            .unwrap();
        let named = connection_named(head.fields());
        assert!(is_dropped(b"x-secret", &named));
        assert!(is_dropped(b"Connection", &named));
        assert!(!is_dropped(b"content-length", &named));
    }
}
