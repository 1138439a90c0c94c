//! Whether a response may be stored by a shared cache (RFC 9111 3 and 3.5),
//! read through the edge's policy (RFC 9213: `CDN-Cache-Control`, then
//! `Surrogate-Control`, then `Cache-Control`), and which fields are removed
//! first; plus the edge-only fields never forwarded to clients.
//!
//! Choices beyond the RFC's letter, each as Varnish and nginx make it:
//! - Only `GET` responses are stored. `HEAD` is answered from a stored
//!   `GET` (same key class, see [`super::key`]) and a `HEAD` miss should be
//!   fetched as `GET`, as Varnish does: a stored bodiless `HEAD` answer
//!   could not serve a later `GET`.
//! - `206` is not stored: a range is answered from a stored full response,
//!   and partial responses are never combined (a range miss should be
//!   fetched without `Range`).
//! - A response carrying `Set-Cookie` is refused unless the origin allows
//!   it explicitly (`private="Set-Cookie"` or `no-cache="Set-Cookie"`: the
//!   field is then stripped before storing) or the configuration says
//!   [`SetCookiePolicy::StoreWithout`]. Storing one user's cookie and
//!   handing it to everyone is the classic shared-cache session leak;
//!   Varnish's built-in VCL (hit-for-miss) and nginx's `proxy_cache`
//!   (unless `proxy_ignore_headers Set-Cookie`) both refuse.
//! - `Vary: *` is refused: it could never be matched (RFC 9111 4.1).

use super::cache_control::{EdgePolicy, FieldList};
use super::fields::Fields;
use super::{CacheControl, Config};

/// What to do with a response carrying `Set-Cookie` that does not name it
/// in `private` or `no-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCookiePolicy {
    /// Do not store it (the default; Varnish and nginx refuse too).
    Refuse,
    /// Store it without its `Set-Cookie` fields (Fastly's choice for
    /// cacheable responses): the origin's cookie reaches only the client
    /// whose request missed.
    StoreWithout,
}

/// The status codes cacheable by default (RFC 9110 15.1): a response with
/// one of them may be stored without explicit freshness and given a
/// heuristic lifetime.
pub const HEURISTIC_STATUSES: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The status codes this cache understands for `must-understand` (RFC 9111
/// 5.2.2.3): the heuristically cacheable ones but `206` (never stored), and
/// the redirects whose caching rules are those of any final response.
pub const UNDERSTOOD_STATUSES: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Whether `status` is heuristically cacheable ([`HEURISTIC_STATUSES`]).
pub fn heuristically_cacheable(status: u16) -> bool {
    HEURISTIC_STATUSES.contains(&status)
}

/// A storable response: the policy it was judged by and the fields to
/// remove from the stored copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// The edge's directives for this response (kept for freshness).
    pub policy: EdgePolicy,
    /// Field names (lowercase) to remove before storing (see also
    /// [`Storable::keeps`]): those named by `private="…"` and
    /// `no-cache="…"` (never sent from the cache; a `304` does not bring
    /// them back), those the response's `Connection` names, and
    /// `Set-Cookie` under
    /// [`SetCookiePolicy::StoreWithout`]. The edge-only fields
    /// ([`edge_only_fields`]) are kept in storage (a `304` and the
    /// freshness rules still read them) and removed when answering.
    pub strip: Vec<Vec<u8>>,
}

impl Storable {
    /// Whether the stored copy keeps the field `name`: not when it is in
    /// [`Storable::strip`], nor a hop-by-hop field (RFC 9111 3.1:
    /// `Connection` and the fields it names, `Keep-Alive`,
    /// `Transfer-Encoding`, …; `proxy-core`'s list), whose meaning ended
    /// with the connection that carried it.
    pub fn keeps(&self, name: &[u8]) -> bool {
        !proxy_core::hop_by_hop::is_hop_by_hop(name)
            && !self.strip.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Why a response is not stored (each is a hit-for-miss reason for the
/// server, and a label for its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// The request method is not `GET`.
    Method,
    /// Not a final status we store (`1xx`, `304`), or a status not
    /// understood under `must-understand`.
    Status,
    /// A `206`: partial content is never stored.
    Partial,
    /// The request said `no-store`.
    RequestNoStore,
    /// The response said `no-store` (and no `must-understand` with an
    /// understood status overrides it).
    NoStore,
    /// Unqualified `private`.
    Private,
    /// The request carried `Authorization` and the response none of
    /// `public`, `must-revalidate`, `s-maxage` (RFC 9111 3.5).
    Authorization,
    /// The response sets a cookie (see [`SetCookiePolicy`]).
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// No explicit freshness, not `public`, and a status that is not
    /// heuristically cacheable.
    NoFreshness,
}

impl NotStorable {
    /// A short lowercase label (for `Cache-Status` details and metrics).
    pub fn label(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::Partial => "partial",
            NotStorable::RequestNoStore => "request-no-store",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Decides whether a shared cache may store the response (`status`,
/// `resp`) to the request (`method`, `req`), RFC 9111 3 with the choices in
/// this module's docs. Checks, in order: method, status, the request's
/// `no-store`, `must-understand` / `no-store`, `private`, `Authorization`,
/// `Set-Cookie`, `Vary: *`, and finally that some freshness can be
/// determined (explicit `max-age` / `s-maxage` / `Expires`, `public`, or a
/// heuristically cacheable status).
pub fn storable(
    cfg: &Config,
    method: &[u8],
    req: &impl Fields,
    status: u16,
    resp: &impl Fields,
) -> Result<Storable, NotStorable> {
    if method != b"GET" {
        return Err(NotStorable::Method);
    }
    if status == 206 {
        return Err(NotStorable::Partial);
    }
    if !(200..=599).contains(&status) || status == 304 {
        return Err(NotStorable::Status);
    }
    if CacheControl::parse(req.values(b"cache-control")).no_store {
        return Err(NotStorable::RequestNoStore);
    }
    let policy = EdgePolicy::of(resp);
    let cc = &policy.cc;
    if cc.must_understand {
        // Understood: no-store is ignored (5.2.2.3); not understood: no.
        if !UNDERSTOOD_STATUSES.contains(&status) {
            return Err(NotStorable::Status);
        }
    } else if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    let mut strip: Vec<Vec<u8>> = Vec::new();
    match &cc.private {
        Some(FieldList::All) => return Err(NotStorable::Private),
        Some(FieldList::Named(names)) => strip.extend(names.iter().cloned()),
        None => {}
    }
    if let Some(FieldList::Named(names)) = &cc.no_cache {
        strip.extend(names.iter().cloned());
    }
    for v in resp.values(b"connection") {
        strip.extend(super::list_tokens(v).map(<[u8]>::to_ascii_lowercase));
    }
    if req.has(b"authorization") && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some()) {
        return Err(NotStorable::Authorization);
    }
    if resp.has(b"set-cookie") && !strip.iter().any(|n| n == b"set-cookie") {
        match cfg.set_cookie {
            SetCookiePolicy::Refuse => return Err(NotStorable::SetCookie),
            SetCookiePolicy::StoreWithout => strip.push(b"set-cookie".to_vec()),
        }
    }
    if super::vary::Vary::of(resp) == super::vary::Vary::Star {
        return Err(NotStorable::VaryStar);
    }
    let explicit =
        cc.max_age.is_some() || cc.s_maxage.is_some() || (policy.use_expires() && resp.has(b"expires"));
    if !(explicit || cc.public || heuristically_cacheable(status)) {
        return Err(NotStorable::NoFreshness);
    }
    strip.sort();
    strip.dedup();
    Ok(Storable { policy, strip })
}

const EDGE_ONLY: [&[u8]; 2] = [b"cdn-cache-control", b"surrogate-control"];

/// The response fields meant for this edge alone, stripped before an
/// answer goes to a client (stored or not): `CDN-Cache-Control` (RFC 9213
/// lets a CDN forward it; we do not, so a second CDN layer behind us is not
/// assumed) and `Surrogate-Control` (Edge Architecture: consumed by the
/// surrogate). Lowercase.
pub fn edge_only_fields() -> &'static [&'static [u8]] {
    &EDGE_ONLY
}

/// Whether `name` is an edge-only field (case-insensitive).
pub fn is_edge_only(name: &[u8]) -> bool {
    EDGE_ONLY.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        method: &str,
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<Storable, NotStorable> {
        storable(&Config::default(), method.as_bytes(), &req, status, &resp)
    }

    fn ok(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> bool {
        check("GET", req, status, resp).is_ok()
    }

    #[test]
    fn only_get_final_full_responses_are_stored() {
        let fresh = [("Cache-Control", "max-age=60")];
        assert!(ok(&[], 200, &fresh));
        for m in ["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get"] {
            assert_eq!(
                check(m, &[], 200, &fresh).unwrap_err(),
                NotStorable::Method,
                "{m}"
            );
        }
        assert_eq!(check("GET", &[], 100, &fresh).unwrap_err(), NotStorable::Status);
        assert_eq!(check("GET", &[], 304, &fresh).unwrap_err(), NotStorable::Status);
        assert_eq!(check("GET", &[], 206, &fresh).unwrap_err(), NotStorable::Partial);
        assert_eq!(check("GET", &[], 600, &fresh).unwrap_err(), NotStorable::Status);
    }

    #[test]
    fn heuristic_statuses_store_without_explicit_freshness() {
        for s in HEURISTIC_STATUSES.iter().filter(|&&s| s != 206) {
            assert!(ok(&[], *s, &[]), "{s}");
        }
        for s in [201, 302, 303, 307, 400, 403, 500, 502, 503] {
            assert_eq!(
                check("GET", &[], s, &[]).unwrap_err(),
                NotStorable::NoFreshness,
                "{s}"
            );
        }
        // Explicit freshness or public makes any final status storable.
        assert!(ok(&[], 500, &[("Cache-Control", "max-age=5")]));
        assert!(ok(&[], 302, &[("Cache-Control", "s-maxage=5")]));
        assert!(ok(&[], 302, &[("Expires", "Sun, 06 Nov 2094 08:49:37 GMT")]));
        assert!(ok(&[], 403, &[("Cache-Control", "public")]));
        // A malformed max-age still counts as present (stored, but stale).
        assert!(ok(&[], 500, &[("Cache-Control", "max-age=abc")]));
    }

    #[test]
    fn no_store_on_either_side() {
        assert_eq!(
            check("GET", &[], 200, &[("Cache-Control", "no-store, max-age=9")]).unwrap_err(),
            NotStorable::NoStore
        );
        assert_eq!(
            check(
                "GET",
                &[("Cache-Control", "no-store")],
                200,
                &[("Cache-Control", "max-age=9")]
            )
            .unwrap_err(),
            NotStorable::RequestNoStore
        );
    }

    #[test]
    fn must_understand_overrides_no_store_only_for_understood_statuses() {
        let r = [("Cache-Control", "must-understand, no-store, max-age=60")];
        assert!(ok(&[], 200, &r));
        assert!(ok(&[], 301, &r));
        assert_eq!(check("GET", &[], 299, &r).unwrap_err(), NotStorable::Status);
        assert_eq!(check("GET", &[], 418, &r).unwrap_err(), NotStorable::Status);
    }

    #[test]
    fn private_unqualified_refuses_and_qualified_strips() {
        assert_eq!(
            check("GET", &[], 200, &[("Cache-Control", "private, max-age=60")]).unwrap_err(),
            NotStorable::Private
        );
        let s = check(
            "GET",
            &[],
            200,
            &[("Cache-Control", "private=\"X-User\", max-age=60")],
        )
        .unwrap();
        assert!(s.strip.contains(&b"x-user".to_vec()));
        let s = check("GET", &[], 200, &[("Cache-Control", "no-cache=\"X-Token\"")]).unwrap();
        assert!(s.strip.contains(&b"x-token".to_vec()));
        assert!(!s.strip.contains(&b"cdn-cache-control".to_vec()));
    }

    #[test]
    fn authorization_needs_public_must_revalidate_or_s_maxage() {
        let auth = [("Authorization", "Bearer x")];
        assert_eq!(
            check("GET", &auth, 200, &[("Cache-Control", "max-age=60")]).unwrap_err(),
            NotStorable::Authorization
        );
        assert_eq!(
            check("GET", &auth, 200, &[]).unwrap_err(),
            NotStorable::Authorization
        );
        assert!(ok(&auth, 200, &[("Cache-Control", "public, max-age=60")]));
        assert!(ok(
            &auth,
            200,
            &[("Cache-Control", "must-revalidate, max-age=60")]
        ));
        assert!(ok(&auth, 200, &[("Cache-Control", "s-maxage=60")]));
    }

    #[test]
    fn set_cookie_refused_unless_allowed() {
        let r = [("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1")];
        assert_eq!(check("GET", &[], 200, &r).unwrap_err(), NotStorable::SetCookie);
        let cfg = Config {
            set_cookie: SetCookiePolicy::StoreWithout,
            ..Config::default()
        };
        let s = storable(&cfg, b"GET", &[("a", "b")], 200, &r).unwrap();
        assert!(s.strip.contains(&b"set-cookie".to_vec()));
        let r = [
            ("Cache-Control", "max-age=60, private=\"Set-Cookie\""),
            ("set-cookie", "sid=1"),
        ];
        assert!(check("GET", &[], 200, &r)
            .unwrap()
            .strip
            .contains(&b"set-cookie".to_vec()));
        let r = [
            ("Cache-Control", "max-age=60, no-cache=set-cookie"),
            ("set-cookie", "sid=1"),
        ];
        assert!(ok(&[], 200, &r));
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_not_kept() {
        let s = check(
            "GET",
            &[],
            200,
            &[
                ("Cache-Control", "max-age=5"),
                ("Connection", "X-Conn"),
                ("Private-Ish", "1"),
            ],
        )
        .unwrap();
        assert!(!s.keeps(b"X-Conn"));
        assert!(!s.keeps(b"transfer-encoding"));
        assert!(!s.keeps(b"Keep-Alive"));
        assert!(s.keeps(b"content-type"));
        assert!(s.keeps(b"cdn-cache-control"));
        let s = check("GET", &[], 200, &[("Cache-Control", "max-age=5, private=x-user")]).unwrap();
        assert!(!s.keeps(b"X-User"));
    }

    #[test]
    fn vary_star_is_refused() {
        assert_eq!(
            check(
                "GET",
                &[],
                200,
                &[("Cache-Control", "max-age=5"), ("Vary", "Accept, *")]
            )
            .unwrap_err(),
            NotStorable::VaryStar
        );
    }

    #[test]
    fn edge_fields_rule_over_cache_control() {
        // CDN-Cache-Control allows what Cache-Control forbids, and back.
        assert!(ok(
            &[],
            500,
            &[("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")]
        ));
        assert_eq!(
            check(
                "GET",
                &[],
                200,
                &[("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")]
            )
            .unwrap_err(),
            NotStorable::NoStore
        );
        assert_eq!(
            check(
                "GET",
                &[],
                200,
                &[("Cache-Control", "public"), ("Surrogate-Control", "no-store")]
            )
            .unwrap_err(),
            NotStorable::NoStore
        );
        // A targeted field makes Expires irrelevant (RFC 9213 2.1).
        assert_eq!(
            check(
                "GET",
                &[],
                500,
                &[
                    ("Expires", "Sun, 06 Nov 2094 08:49:37 GMT"),
                    ("CDN-Cache-Control", "must-revalidate")
                ]
            )
            .unwrap_err(),
            NotStorable::NoFreshness
        );
    }

    #[test]
    fn edge_only_fields_are_named() {
        assert!(is_edge_only(b"CDN-Cache-Control"));
        assert!(is_edge_only(b"surrogate-control"));
        assert!(!is_edge_only(b"cache-control"));
        assert_eq!(edge_only_fields().len(), 2);
        assert_eq!(NotStorable::SetCookie.label(), "set-cookie");
    }
}
