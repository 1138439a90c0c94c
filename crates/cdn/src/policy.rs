//! What the cache decides, as pure functions: no I/O, the clock and every
//! input passed in, so each rule is a unit test that needs no process.
//!
//! The rules follow RFC 9111 for a *shared* cache, RFC 9213
//! (`CDN-Cache-Control`), RFC 5861 (`stale-while-revalidate`,
//! `stale-if-error`) and Edge Architecture's `Surrogate-Control`. Inputs are
//! plain: a status as `u16`, a method as bytes, header fields behind the
//! [`Fields`] view, which `proxy-core`'s heads implement (so the server
//! calls these functions on what it parsed, without conversions), as do
//! slices of `(name, value)` pairs. Times are whole seconds since the Unix
//! epoch (`u64`): HTTP's dates and ages have no finer grain.
//!
//! The pieces, in the order a request meets them:
//! - [`key`]: the primary cache key, the query parameters that key it, and
//!   the unkeyed request fields stripped (or refused) before anything else;
//! - [`cache_control`]: the directive sets, and which field (edge-targeted
//!   or not) rules a response at the edge;
//! - [`storable`](mod@storable): whether a response may be stored at all, and what is
//!   removed from it first;
//! - [`freshness`]: lifetime, age, and what a stored response may be used
//!   for now (fresh, stale while revalidating, stale on error);
//! - [`vary`]: the secondary key that picks a variant;
//! - [`revalidate`]: conditional requests, the `304` update, and what an
//!   unsafe method invalidates.

pub mod cache_control;
pub mod fields;
pub mod freshness;
pub mod key;
pub mod revalidate;
pub mod storable;
pub mod vary;

pub use cache_control::{CacheControl, Delta, EdgePolicy, FieldList, MaxStale, PolicySource};
pub use fields::{list_tokens, Fields};
pub use freshness::{age_field, initial_age, lifetime, Freshness, Reuse};
pub use key::{
    is_unkeyed, method_class, normalise_host, origin_target, primary_key, unkeyed_action, QueryParams,
    UnkeyedAction, UnkeyedPolicy, UNKEYED_FIELDS,
};
pub use revalidate::{
    conditional_fields, freshen_fields, invalidated_keys, is_safe, not_modified, updates_stored,
    CONDITIONAL_FIELDS, NOT_UPDATED,
};
pub use storable::{
    edge_only_fields, heuristically_cacheable, is_edge_only, storable, NotStorable, SetCookiePolicy, Storable,
};
pub use vary::{secondary_key, Vary};

/// The knobs of every decision in [`policy`](self), in one place. Build it
/// with `Config::default()` and change what differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The fraction of `Date - Last-Modified` a response without explicit
    /// freshness is heuristically fresh for (RFC 9111 4.2.2). Default 0.1
    /// (the RFC's example, as Squid and Traffic Server use).
    pub heuristic_fraction: f64,
    /// The cap on a heuristic freshness lifetime, in seconds. Default 86 400
    /// (one day).
    pub heuristic_cap_secs: u64,
    /// How long past its freshness a stored response may still answer when
    /// the origin fails (refused, timed out, 5xx), on top of what
    /// `stale-if-error` grants, in seconds: an out-of-band contract in RFC
    /// 9111 4.2.4's sense, so `must-revalidate`, `proxy-revalidate`,
    /// `s-maxage` and `no-cache` still forbid it. Default 10 (Varnish's
    /// `default_grace`).
    pub grace_secs: u64,
    /// Which query parameters key an object. Default [`QueryParams::All`].
    pub query: QueryParams,
    /// Whether a response carrying `Set-Cookie` may be stored. Default
    /// [`SetCookiePolicy::Refuse`] (as Varnish and nginx do).
    pub set_cookie: SetCookiePolicy,
    /// Whether the client's `no-cache`, `max-age` and `min-fresh` request
    /// directives are honoured. RFC 9111 words them as preferences; Varnish
    /// and nginx ignore them so that a client (or a reload button) cannot
    /// force origin traffic. Default `false`. `max-stale`,
    /// `only-if-cached` and `no-store` are always honoured.
    pub client_revalidation: bool,
    /// What to do with a request carrying an unkeyed field
    /// ([`key::UNKEYED_FIELDS`]). Default [`UnkeyedPolicy::Strip`].
    pub unkeyed: UnkeyedPolicy,
    /// The content codings `Accept-Encoding` is normalised to in the
    /// secondary key (lowercase): a request's value keys only which of these
    /// it accepts, so `gzip, deflate, br` and `br;q=1, gzip` share a
    /// variant. Default `["br", "gzip", "zstd"]`.
    pub key_encodings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heuristic_fraction: 0.1,
            heuristic_cap_secs: 86_400,
            grace_secs: 10,
            query: QueryParams::All,
            set_cookie: SetCookiePolicy::Refuse,
            client_revalidation: false,
            unkeyed: UnkeyedPolicy::Strip,
            key_encodings: vec!["br".into(), "gzip".into(), "zstd".into()],
        }
    }
}

/// The largest delta-seconds value kept (RFC 9111 1.2.2: 2^31); larger
/// values, and ages past it, are clamped to it.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// Parses an HTTP-date (IMF-fixdate, RFC 850 or asctime, RFC 9110 5.6.7)
/// into seconds since the Unix epoch; `None` for anything else.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let t = httpdate::parse_http_date(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Formats seconds since the Unix epoch as an IMF-fixdate.
pub fn format_http_date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_three_formats() {
        let want = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date(b"0"), None);
        assert_eq!(parse_http_date(b"-1"), None);
        assert_eq!(parse_http_date(b"\xff"), None);
        assert_eq!(format_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.heuristic_fraction, 0.1);
        assert_eq!(c.heuristic_cap_secs, 86_400);
        assert_eq!(c.grace_secs, 10);
        assert_eq!(c.query, QueryParams::All);
        assert_eq!(c.set_cookie, SetCookiePolicy::Refuse);
        assert!(!c.client_revalidation);
        assert_eq!(c.unkeyed, UnkeyedPolicy::Strip);
    }
}

/// Garbage in, no panic out: every parser of untrusted bytes fed seeded
/// pseudo-random input built from the bytes that matter to it.
#[cfg(test)]
mod garbage {
    use super::*;

    /// A small deterministic generator (xorshift), so a failure repeats.
    fn inputs() -> impl Iterator<Item = Vec<u8>> {
        const ALPHABET: &[u8] = b"=,;\"\\ \t/?&%#:+*-_.09aAzZmax-ges\x00\x7f\xff";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..20_000).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            (0..len)
                .map(|i| ALPHABET[((x >> (i % 8 * 8)) as usize + i * 7) % ALPHABET.len()])
                .collect()
        })
    }

    #[test]
    fn parsers_never_panic() {
        let cfg = Config::default();
        for v in inputs() {
            let s = std::str::from_utf8(&v).unwrap_or("x");
            let _ = CacheControl::parse([v.as_slice()]);
            let fields = [
                ("CDN-Cache-Control", s),
                ("Surrogate-Control", s),
                ("Cache-Control", s),
                ("Vary", s),
                ("Accept-Encoding", s),
                ("Age", s),
                ("Expires", s),
                ("Location", s),
                ("ETag", s),
                ("Last-Modified", s),
            ];
            let policy = EdgePolicy::of(&fields);
            let f = Freshness::new(&cfg, 200, &policy, &fields, 0, 10);
            let _ = f.reuse(&cfg, &CacheControl::parse([v.as_slice()]), u64::MAX);
            let _ = f.serve_on_error(&cfg, &policy.cc, u64::MAX);
            let _ = f.useful_until(&cfg);
            let _ = storable(&cfg, b"GET", &fields, 200, &fields);
            let _ = secondary_key(&cfg, &Vary::of(&fields), &fields);
            let _ = primary_key(&cfg, b"GET", &v, &v);
            let _ = origin_target(&cfg, &[b"/".as_slice(), &v].concat());
            let _ = conditional_fields(&fields);
            let _ = not_modified(b"GET", &fields, &fields);
            let _ = freshen_fields(&fields, &fields);
            let _ = invalidated_keys(
                &cfg,
                b"POST",
                200,
                b"a.test",
                &[b"/".as_slice(), &v].concat(),
                &fields,
            );
            let _ = parse_http_date(&v);
        }
    }
}
