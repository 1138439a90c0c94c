//! Validation (RFC 9111 4.3): the conditional request sent for a stored
//! response, which stored responses a `304` freshens and how their fields
//! are updated; and invalidation after an unsafe method (4.4).

use super::cache_control::{EdgePolicy, FieldList};
use super::fields::Fields;
use super::key::{normalise_host, primary_key};
use super::{parse_http_date, Config};

/// The request fields that make a request conditional. The server removes
/// the client's own before sending the cache's conditional request (and
/// answers the client's conditions itself from the stored response).
pub const CONDITIONAL_FIELDS: [&str; 5] = [
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
];

/// The fields to add to the origin request that revalidates `stored`:
/// `If-None-Match` with the stored `ETag` (when it is one well-formed
/// entity-tag) and `If-Modified-Since` with the stored `Last-Modified`
/// (when it is a valid HTTP-date). Empty when the response has no usable
/// validator: the server then fetches it whole.
pub fn conditional_fields(stored: &impl Fields) -> Vec<(&'static [u8], Vec<u8>)> {
    let mut out = Vec::new();
    let mut etags = stored.values(b"etag");
    if let (Some(etag), None) = (etags.next(), etags.next()) {
        let etag = etag.trim_ascii();
        if is_entity_tag(etag) {
            out.push((&b"if-none-match"[..], etag.to_vec()));
        }
    }
    if let Some(lm) = stored.value(b"last-modified") {
        if parse_http_date(lm).is_some() {
            out.push((&b"if-modified-since"[..], lm.trim_ascii().to_vec()));
        }
    }
    out
}

/// `"…"` or `W/"…"` with no quote inside (RFC 9110 8.8.3).
fn is_entity_tag(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"W/").unwrap_or(v);
    v.len() >= 2
        && v[0] == b'"'
        && v[v.len() - 1] == b'"'
        && v[1..v.len() - 1]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

fn opaque(etag: &[u8]) -> &[u8] {
    let t = etag.trim_ascii();
    t.strip_prefix(b"W/").unwrap_or(t)
}

/// Whether a `304` (`update`) freshens the stored response `stored` (RFC
/// 9111 4.3.4): a strong `ETag` in the `304` selects stored responses with
/// the same strong `ETag`; otherwise a weak `ETag` or a `Last-Modified`
/// selects those that match it (weak comparison; the server then updates
/// the most recent of them); a `304` with no validator selects a stored
/// response without one only when it is the only one stored
/// (`only_stored`).
pub fn updates_stored(stored: &impl Fields, update: &impl Fields, only_stored: bool) -> bool {
    let new_etag = update.value(b"etag").map(<[u8]>::trim_ascii);
    let old_etag = stored.value(b"etag").map(<[u8]>::trim_ascii);
    if let Some(n) = new_etag.filter(|e| is_entity_tag(e)) {
        if !n.starts_with(b"W/") {
            return old_etag.is_some_and(|o| !o.starts_with(b"W/") && o == n);
        }
        return old_etag.is_some_and(|o| opaque(o) == opaque(n));
    }
    let new_lm = update.value(b"last-modified").and_then(parse_http_date);
    if let Some(n) = new_lm {
        return stored.value(b"last-modified").and_then(parse_http_date) == Some(n);
    }
    only_stored && old_etag.is_none() && !stored.has(b"last-modified")
}

/// Fields of a `304` never copied into the stored response, besides the
/// hop-by-hop ones (RFC 9111 3.1, `proxy-core`'s list): the framing and
/// coding of the stored body (`Content-Length`, `Content-Encoding`,
/// `Content-Range`), `Proxy-Authentication-Info`, and `Set-Cookie` (meant
/// for the client whose request validated, never for everyone).
pub const NOT_UPDATED: [&str; 5] = [
    "content-length",
    "content-encoding",
    "content-range",
    "proxy-authentication-info",
    "set-cookie",
];

/// The stored response's fields after a `304` (RFC 9111 3.2, 4.3.4):
/// every field of `update` replaces all stored fields of that name (in the
/// `304`'s order, after the kept ones), except [`NOT_UPDATED`]'s, the
/// fields a `Connection` field of the `304` names, and the fields the
/// `304`'s policy names in `private="…"` / `no-cache="…"` (never stored).
/// Everything else the stored response had is kept. The server then
/// recomputes [`super::Freshness`] from the result with the `304`'s
/// request and response times.
pub fn freshen_fields(stored: &impl Fields, update: &impl Fields) -> Vec<(Vec<u8>, Vec<u8>)> {
    let policy = EdgePolicy::of(update);
    let mut excluded: Vec<Vec<u8>> = NOT_UPDATED.iter().map(|n| n.as_bytes().to_vec()).collect();
    for v in update.values(b"connection") {
        excluded.extend(super::list_tokens(v).map(<[u8]>::to_ascii_lowercase));
    }
    for list in [&policy.cc.private, &policy.cc.no_cache].into_iter().flatten() {
        if let FieldList::Named(names) = list {
            excluded.extend(names.iter().cloned());
        }
    }
    let is_excluded = |n: &[u8]| {
        proxy_core::hop_by_hop::is_hop_by_hop(n) || excluded.iter().any(|e| e.eq_ignore_ascii_case(n))
    };
    let replaced: Vec<Vec<u8>> = update
        .pairs()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| !is_excluded(n))
        .collect();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = stored
        .pairs()
        .filter(|(n, _)| !replaced.iter().any(|r| r.eq_ignore_ascii_case(n)))
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    out.extend(
        update
            .pairs()
            .filter(|(n, _)| !is_excluded(n))
            .map(|(n, v)| (n.to_vec(), v.to_vec())),
    );
    out
}

/// Whether a client's conditional `GET`/`HEAD` (`req`) is answered `304`
/// from the stored response `stored` (RFC 9111 4.3.2, RFC 9110 13.2.2):
/// `If-None-Match` decides when present (weak comparison against the
/// stored `ETag`, `*` matches any stored response) and `If-Modified-Since`
/// is then ignored; otherwise `If-Modified-Since` matches when the stored
/// `Last-Modified` (or, lacking it, `Date`) is not later than it. A
/// malformed date or a stored response without the validator asked about
/// never matches (the full response is sent).
pub fn not_modified(method: &[u8], req: &impl Fields, stored: &impl Fields) -> bool {
    if !matches!(method, b"GET" | b"HEAD") {
        return false;
    }
    if req.has(b"if-none-match") {
        let Some(etag) = stored.value(b"etag").map(<[u8]>::trim_ascii) else {
            return req.values(b"if-none-match").any(|v| v.trim_ascii() == b"*");
        };
        return req.values(b"if-none-match").any(|v| {
            v.trim_ascii() == b"*"
                || super::list_tokens(v).any(|t| is_entity_tag(t) && opaque(t) == opaque(etag))
        });
    }
    let Some(since) = req.value(b"if-modified-since").and_then(parse_http_date) else {
        return false;
    };
    stored
        .value(b"last-modified")
        .or_else(|| stored.value(b"date"))
        .and_then(parse_http_date)
        .is_some_and(|lm| lm <= since)
}

/// Whether `method` is safe (RFC 9110 9.2.1): `GET`, `HEAD`, `OPTIONS`,
/// `TRACE`. Any other method's success invalidates.
pub fn is_safe(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The primary keys ([`primary_key`]) to invalidate after the response
/// `status`/`resp` to an unsafe `method` on `host` + `target` (RFC 9111
/// 4.4): nothing for a safe method or an error status (not 2xx or 3xx);
/// otherwise the target URI and the URIs in `Location` and
/// `Content-Location` whose host is the same (a relative reference is
/// resolved against the target; `http` and `https` both count, as the key
/// has no scheme; anything with userinfo or another scheme is ignored).
/// The server drops every variant stored under each key.
pub fn invalidated_keys(
    cfg: &Config,
    method: &[u8],
    status: u16,
    host: &[u8],
    target: &[u8],
    resp: &impl Fields,
) -> Vec<Vec<u8>> {
    if is_safe(method) || !(200..400).contains(&status) {
        return Vec::new();
    }
    let mut keys = Vec::new();
    keys.extend(primary_key(cfg, b"GET", host, target));
    let own = normalise_host(host);
    for name in [&b"location"[..], b"content-location"] {
        let Some(v) = resp.value(name) else { continue };
        if let Some((h, t)) = resolve(v.trim_ascii(), &own, target) {
            if normalise_host(&h) == own {
                keys.extend(primary_key(cfg, b"GET", &h, &t));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Resolves a URI reference against `host` + `base` (an origin-form
/// target) into (host, origin-form target); `None` for what we cannot or
/// will not resolve.
fn resolve(r: &[u8], host: &[u8], base: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if r.is_empty() || r.iter().any(|b| b.is_ascii_control() || *b == b' ') {
        return None;
    }
    let lower = r.to_ascii_lowercase();
    let rest = if lower.starts_with(b"http://") {
        Some(&r[7..])
    } else if lower.starts_with(b"https://") {
        Some(&r[8..])
    } else if r.starts_with(b"//") {
        Some(&r[2..])
    } else {
        None
    };
    if let Some(rest) = rest {
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.is_empty() || authority.contains(&b'@') {
            return None;
        }
        let path = &rest[end..];
        let target = if path.first() == Some(&b'/') {
            path.to_vec()
        } else {
            [&b"/"[..], path].concat()
        };
        return Some((authority.to_vec(), target));
    }
    // Another scheme (`mailto:`, `javascript:`): not ours.
    let colon = r.iter().position(|&b| b == b':');
    let slash = r.iter().position(|&b| matches!(b, b'/' | b'?' | b'#'));
    if let Some(c) = colon {
        if slash.is_none_or(|s| c < s) {
            return None;
        }
    }
    if r[0] == b'/' {
        return Some((host.to_vec(), r.to_vec()));
    }
    let base_path = match base.iter().position(|&b| b == b'?') {
        Some(i) => &base[..i],
        None => base,
    };
    if r[0] == b'?' {
        return Some((host.to_vec(), [base_path, r].concat()));
    }
    let dir = match base_path.iter().rposition(|&b| b == b'/') {
        Some(i) => &base_path[..=i],
        None => &b"/"[..],
    };
    Some((host.to_vec(), [dir, r].concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_request_from_validators() {
        let s = [
            ("ETag", "\"v1\""),
            ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ];
        assert_eq!(
            conditional_fields(&s),
            vec![
                (&b"if-none-match"[..], b"\"v1\"".to_vec()),
                (
                    &b"if-modified-since"[..],
                    b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()
                )
            ]
        );
        assert_eq!(
            conditional_fields(&[("ETag", "W/\"w\"")]),
            vec![(&b"if-none-match"[..], b"W/\"w\"".to_vec())]
        );
        // Malformed or ambiguous validators are not sent.
        assert!(conditional_fields(&[("ETag", "v1")]).is_empty());
        assert!(conditional_fields(&[("ETag", "\"a\""), ("ETag", "\"b\"")]).is_empty());
        assert!(conditional_fields(&[("Last-Modified", "yesterday")]).is_empty());
        assert!(conditional_fields(&[("Content-Type", "text/plain")]).is_empty());
    }

    #[test]
    fn which_stored_response_a_304_freshens() {
        let strong = [("ETag", "\"a\"")];
        assert!(updates_stored(&strong, &[("ETag", "\"a\"")], false));
        assert!(!updates_stored(&strong, &[("ETag", "\"b\"")], true));
        assert!(!updates_stored(
            &[("ETag", "W/\"a\"")],
            &[("ETag", "\"a\"")],
            true
        ));
        // Weak comparison for a weak validator.
        assert!(updates_stored(&strong, &[("ETag", "W/\"a\"")], false));
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(updates_stored(
            &[("Last-Modified", lm)],
            &[("Last-Modified", lm)],
            false
        ));
        assert!(!updates_stored(
            &[("Last-Modified", lm)],
            &[("Last-Modified", "Mon, 07 Nov 1994 08:49:37 GMT")],
            true
        ));
        // No validator anywhere: only the sole stored response.
        assert!(updates_stored(&[("X", "1")], &[("Date", lm)], true));
        assert!(!updates_stored(&[("X", "1")], &[("Date", lm)], false));
        assert!(!updates_stored(&strong, &[("Date", lm)], true));
    }

    #[test]
    fn a_304_replaces_fields_but_not_the_body_framing() {
        let stored = [
            ("Content-Type", "text/html"),
            ("Content-Length", "1234"),
            ("Content-Encoding", "gzip"),
            ("Cache-Control", "max-age=10"),
            ("ETag", "\"a\""),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
            ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ];
        let update = [
            ("Cache-Control", "max-age=600"),
            ("Date", "Mon, 07 Nov 1994 08:49:37 GMT"),
            ("Content-Length", "0"),
            ("Content-Encoding", "br"),
            ("X-Multi", "3"),
            ("Set-Cookie", "sid=1"),
            ("Connection", "x-hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
        ];
        let got = freshen_fields(&stored, &update);
        let get = |n: &'static str| -> Vec<&[u8]> { got.values(n.as_bytes()).collect() };
        assert_eq!(get("content-length"), [&b"1234"[..]]);
        assert_eq!(get("content-encoding"), [&b"gzip"[..]]);
        assert_eq!(get("cache-control"), [&b"max-age=600"[..]]);
        assert_eq!(get("date"), [&b"Mon, 07 Nov 1994 08:49:37 GMT"[..]]);
        assert_eq!(get("x-multi"), [&b"3"[..]]);
        assert_eq!(get("etag"), [&b"\"a\""[..]]);
        assert_eq!(get("content-type"), [&b"text/html"[..]]);
        assert!(get("set-cookie").is_empty());
        assert!(get("x-hop").is_empty());
        assert!(get("connection").is_empty());
        assert!(get("keep-alive").is_empty());
    }

    #[test]
    fn a_304_keeps_the_edge_policy_and_private_fields_out() {
        let stored = [("CDN-Cache-Control", "max-age=60"), ("Cache-Control", "no-store")];
        let update = [
            ("CDN-Cache-Control", "max-age=120, private=\"x-user\""),
            ("X-User", "bob"),
        ];
        let got = freshen_fields(&stored, &update);
        assert_eq!(
            got.value(b"cdn-cache-control"),
            Some(&b"max-age=120, private=\"x-user\""[..])
        );
        assert_eq!(got.value(b"cache-control"), Some(&b"no-store"[..]));
        assert!(!got.has(b"x-user"));
    }

    #[test]
    fn unsafe_success_invalidates_target_location_and_content_location() {
        let c = Config::default();
        let keys = |m: &str, s: u16, resp: &[(&str, &str)]| -> Vec<String> {
            invalidated_keys(&c, m.as_bytes(), s, b"a.test", b"/dir/item?x=1", &resp)
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        };
        assert!(keys("GET", 200, &[]).is_empty());
        assert!(keys("HEAD", 200, &[]).is_empty());
        assert!(keys("POST", 404, &[]).is_empty());
        assert!(keys("POST", 500, &[]).is_empty());
        assert_eq!(keys("POST", 201, &[]), ["GET\na.test\n/dir/item?x=1"]);
        assert_eq!(keys("PATCH", 302, &[]), ["GET\na.test\n/dir/item?x=1"]);
        let got = keys(
            "PUT",
            200,
            &[("Location", "/new"), ("Content-Location", "http://A.test/dir/c")],
        );
        assert_eq!(
            got,
            [
                "GET\na.test\n/dir/c",
                "GET\na.test\n/dir/item?x=1",
                "GET\na.test\n/new"
            ]
        );
        // Relative references resolve against the target.
        let got = keys("DELETE", 204, &[("Location", "other")]);
        assert!(got.contains(&"GET\na.test\n/dir/other".to_string()));
        let got = keys("DELETE", 204, &[("Location", "?y=2")]);
        assert!(got.contains(&"GET\na.test\n/dir/item?y=2".to_string()));
        // Other hosts, userinfo, other schemes: ignored.
        for loc in [
            "http://b.test/x",
            "//b.test/x",
            "https://u@a.test/x",
            "mailto:x@a.test",
            "javascript:alert(1)",
        ] {
            assert_eq!(keys("POST", 200, &[("Location", loc)]).len(), 1, "{loc}");
        }
        assert_eq!(keys("POST", 200, &[("Location", "https://a.test")]).len(), 2);
    }

    #[test]
    fn client_conditionals_answered_from_storage() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let stored = [("ETag", "\"a\""), ("Last-Modified", lm)];
        assert!(not_modified(
            b"GET",
            &[("If-None-Match", "\"x\", W/\"a\"")],
            &stored
        ));
        assert!(not_modified(b"HEAD", &[("If-None-Match", "*")], &stored));
        assert!(!not_modified(b"GET", &[("If-None-Match", "\"b\"")], &stored));
        // If-None-Match decides; If-Modified-Since is then ignored.
        assert!(!not_modified(
            b"GET",
            &[("If-None-Match", "\"b\""), ("If-Modified-Since", lm)],
            &stored
        ));
        assert!(not_modified(b"GET", &[("If-Modified-Since", lm)], &stored));
        assert!(not_modified(
            b"GET",
            &[("If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT")],
            &stored
        ));
        assert!(!not_modified(
            b"GET",
            &[("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT")],
            &stored
        ));
        assert!(!not_modified(
            b"GET",
            &[("If-Modified-Since", "garbage")],
            &stored
        ));
        assert!(!not_modified(b"POST", &[("If-None-Match", "*")], &stored));
        assert!(!not_modified(b"GET", &[("Accept", "*/*")], &stored));
        // Date stands in for a missing Last-Modified.
        assert!(not_modified(
            b"GET",
            &[("If-Modified-Since", lm)],
            &[("Date", lm)]
        ));
        assert!(!not_modified(
            b"GET",
            &[("If-None-Match", "\"a\"")],
            &[("Date", lm)]
        ));
    }

    #[test]
    fn safe_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(is_safe(m.as_bytes()));
        }
        for m in ["POST", "PUT", "DELETE", "PATCH", "PURGE"] {
            assert!(!is_safe(m.as_bytes()));
        }
        assert_eq!(CONDITIONAL_FIELDS.len(), 5);
    }
}
