//! HTTP caching for the origin: strong validators, `If-None-Match`, and the
//! `private, no-store` default that keeps users' data out of shared caches.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

/// The first 16 hex digits (64 bits) of the SHA-256 of `bytes`: short enough
/// for a URL, long enough that two deploys never collide.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// A strong entity tag (`"<hash>"`) for `bytes`.
pub fn strong_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", content_hash(bytes))
}

/// Whether the request's `If-None-Match` matches `etag`, so the answer is a
/// `304 Not Modified`. `*` matches any current representation; the
/// comparison is the weak one RFC 9110 (13.1.2) prescribes for this field.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let wanted = etag.trim_start_matches("W/");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == wanted)
}

/// The `Cache-Control` of API answers that set none: a user's data is never
/// stored by a CDN or a proxy, nor kept on disk by the browser.
pub const PRIVATE_NO_STORE: &str = "private, no-store";

/// Middleware: every answer under `/api/` (also the 404 of an unknown API
/// route) gets [`PRIVATE_NO_STORE`] unless its handler set a `Cache-Control`.
pub async fn api_no_store(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    if api {
        res.headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static(PRIVATE_NO_STORE));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inm(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, v.parse().unwrap());
        h
    }

    #[test]
    fn the_hash_follows_the_bytes() {
        let a = content_hash(b"body { color: red }");
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, content_hash(b"body { color: red }"));
        assert_ne!(a, content_hash(b"body { color: blue }"));
        // The SHA-256 of the empty string, cut to 16 hex digits.
        assert_eq!(content_hash(b""), "e3b0c44298fc1c14");
        assert_eq!(strong_etag(b""), "\"e3b0c44298fc1c14\"");
    }

    #[test]
    fn if_none_match_is_compared_weakly() {
        let tag = "\"abc\"";
        assert!(not_modified(&inm("\"abc\""), tag));
        assert!(not_modified(&inm("W/\"abc\""), tag));
        assert!(not_modified(&inm("\"x\", \"abc\""), tag));
        assert!(not_modified(&inm("*"), tag));
        assert!(!not_modified(&inm("\"abcd\""), tag));
        assert!(!not_modified(&inm("abc"), tag));
        assert!(!not_modified(&HeaderMap::new(), tag));
    }
}
