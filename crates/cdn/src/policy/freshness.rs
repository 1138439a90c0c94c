//! Freshness (RFC 9111 4.2): a stored response's lifetime and age, and what
//! it may be used for at a given moment: fresh, stale while a background
//! refresh runs (RFC 5861), stale because the client accepts it, stale
//! because the origin failed (`stale-if-error`, grace), or only after
//! validation.
//!
//! Who may forbid stale content (RFC 9111 4.2.4): `must-revalidate`,
//! `proxy-revalidate` and an unqualified `no-cache` forbid every kind of
//! stale answer. `s-maxage` implies `proxy-revalidate` (5.2.2.10), which
//! forbids the client's `max-stale` and the configured grace, but *not* the
//! same response's own `stale-while-revalidate` / `stale-if-error`: those
//! are the origin's explicit permission in the very response (the common
//! `s-maxage=1, stale-while-revalidate=59` means exactly that).

use super::cache_control::{CacheControl, Delta, EdgePolicy, FieldList, MaxStale};
use super::fields::Fields;
use super::{parse_http_date, Config, DELTA_MAX};

/// The freshness facts of one stored response, computed once when it is
/// stored (or updated by a `304`), then asked about at any `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The freshness lifetime in seconds ([`lifetime`]).
    pub lifetime: u64,
    /// Whether the lifetime is heuristic (RFC 9111 4.2.2).
    pub heuristic: bool,
    /// The corrected initial age in seconds ([`initial_age`]).
    pub initial_age: u64,
    /// When the response was received (seconds since the epoch).
    pub response_time: u64,
    /// Seconds past its lifetime the response may be served while it is
    /// refreshed in the background (`stale-while-revalidate`; 0 when absent
    /// or forbidden).
    pub stale_while_revalidate: u64,
    /// Seconds past its lifetime the response may be served when the origin
    /// fails (`stale-if-error`; 0 when absent or forbidden).
    pub stale_if_error: u64,
    /// Unqualified `no-cache`: every reuse needs a successful validation.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: once stale, no
    /// `max-stale` and no grace.
    pub revalidate_when_stale: bool,
    /// `must-revalidate`, `proxy-revalidate` or unqualified `no-cache`: no
    /// stale answer of any kind.
    pub stale_forbidden: bool,
    /// `immutable` (RFC 8246): while fresh, the client's reload directives
    /// are not worth an origin request.
    pub immutable: bool,
}

/// What a stored response may be used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh: serve it.
    Fresh,
    /// Stale within `stale-while-revalidate`: serve it and refresh it in
    /// the background (once per object, the server's job).
    StaleWhileRevalidate,
    /// Stale, but the client accepts it (`max-stale`): serve it.
    StaleAccepted,
    /// Validate first (a conditional request when it has validators, see
    /// [`super::revalidate`]); with the request's `only-if-cached` the
    /// server answers `504` instead.
    Revalidate,
}

impl Freshness {
    /// Computes the facts of a response with status `status` and fields
    /// `resp`, judged by `policy` (from [`super::storable()`]), whose request
    /// was sent at `request_time` and whose head arrived at
    /// `response_time`.
    pub fn new(
        cfg: &Config,
        status: u16,
        policy: &EdgePolicy,
        resp: &impl Fields,
        request_time: u64,
        response_time: u64,
    ) -> Freshness {
        let (lifetime, heuristic) = lifetime(cfg, status, policy, resp, response_time);
        let cc = &policy.cc;
        let forbidden = forbids_all_stale(cc);
        let window = |d: Option<Delta>| match d {
            Some(Delta::Secs(s)) if !forbidden => s,
            _ => 0,
        };
        Freshness {
            lifetime,
            heuristic,
            initial_age: initial_age(resp, request_time, response_time),
            response_time,
            stale_while_revalidate: window(cc.stale_while_revalidate),
            stale_if_error: window(cc.stale_if_error),
            no_cache: cc.no_cache == Some(FieldList::All),
            revalidate_when_stale: cc.revalidate_when_stale(),
            stale_forbidden: forbidden,
            immutable: cc.immutable,
        }
    }

    /// The current age at `now` (RFC 9111 4.2.3): the corrected initial
    /// age plus the time resident here, clamped to [`DELTA_MAX`].
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.response_time))
            .min(DELTA_MAX)
    }

    /// Whether the response is fresh at `now` (lifetime > age).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.lifetime > self.age(now)
    }

    /// Seconds of freshness left at `now` (0 once stale).
    pub fn ttl(&self, now: u64) -> u64 {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// Seconds the response has been stale at `now` (0 while fresh).
    pub fn staleness(&self, now: u64) -> u64 {
        self.age(now).saturating_sub(self.lifetime)
    }

    /// What the stored response may be used for at `now`, for a request
    /// with directives `req` ([`CacheControl::of_request`]). The request's
    /// `no-cache`, `max-age` and `min-fresh` count only with
    /// [`Config::client_revalidation`] (and not on a fresh `immutable`
    /// response); `max-stale` always counts unless the response requires
    /// revalidation when stale.
    pub fn reuse(&self, cfg: &Config, req: &CacheControl, now: u64) -> Reuse {
        if self.no_cache {
            return Reuse::Revalidate;
        }
        let age = self.age(now);
        let fresh = self.lifetime > age;
        if cfg.client_revalidation && !(fresh && self.immutable) {
            let client_refuses = req.no_cache.is_some()
                || match req.max_age {
                    Some(Delta::Secs(m)) => age > m,
                    Some(Delta::Invalid) => true,
                    None => false,
                }
                || req.min_fresh.is_some_and(|m| self.ttl(now) < m);
            if client_refuses {
                return Reuse::Revalidate;
            }
        }
        if fresh {
            return Reuse::Fresh;
        }
        let stale = age - self.lifetime;
        let accepted = match req.max_stale {
            Some(MaxStale::Any) => true,
            Some(MaxStale::Secs(m)) => stale <= m,
            None => false,
        };
        if accepted && !self.revalidate_when_stale {
            return Reuse::StaleAccepted;
        }
        if stale <= self.stale_while_revalidate && self.stale_while_revalidate > 0 {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Revalidate
    }

    /// Whether the stored response may answer at `now` because the origin
    /// failed (refused, timed out, answered 5xx): within the response's
    /// `stale-if-error`, the request's `stale-if-error`, or the configured
    /// grace ([`Config::grace_secs`]); the last two not when the response
    /// requires revalidation once stale (`s-maxage` included). A fresh
    /// response always may, unless it is `no-cache`; once stale,
    /// `no-cache`, `must-revalidate` and `proxy-revalidate` forbid it.
    pub fn serve_on_error(&self, cfg: &Config, req: &CacheControl, now: u64) -> bool {
        if self.no_cache {
            return false;
        }
        if self.is_fresh(now) {
            return true;
        }
        if self.stale_forbidden {
            return false;
        }
        let mut window = self.stale_if_error;
        if !self.revalidate_when_stale {
            // The client's and the operator's permissions, which
            // `s-maxage` (implying `proxy-revalidate`) overrides.
            if let Some(Delta::Secs(s)) = req.stale_if_error {
                window = window.max(s);
            }
            window = window.max(cfg.grace_secs);
        }
        self.staleness(now) <= window && window > 0
    }

    /// Until when (seconds since the epoch) the response can answer without
    /// the origin in any of the ways above: the end of its freshness plus
    /// the longest stale window (`stale-while-revalidate`,
    /// `stale-if-error`, grace where allowed). A store may drop it after
    /// that unless it has validators worth a conditional request.
    pub fn useful_until(&self, cfg: &Config) -> u64 {
        let grace = if self.revalidate_when_stale || self.no_cache {
            0
        } else {
            cfg.grace_secs
        };
        let stale = self.stale_while_revalidate.max(self.stale_if_error).max(grace);
        self.response_time
            .saturating_add(self.lifetime.saturating_sub(self.initial_age))
            .saturating_add(stale)
    }
}

/// `must-revalidate`, `proxy-revalidate`, unqualified `no-cache`: no stale
/// answer of any kind.
fn forbids_all_stale(cc: &CacheControl) -> bool {
    cc.must_revalidate || cc.proxy_revalidate || cc.no_cache == Some(FieldList::All)
}

/// The freshness lifetime in seconds, and whether it is heuristic (RFC
/// 9111 4.2.1, 4.2.2), first match wins: `s-maxage`, `max-age` (an invalid
/// one gives 0: stale), `Expires - Date` (only when the policy came from
/// `Cache-Control`; an invalid `Expires`, or several different ones, give
/// 0; a missing `Date` is `response_time`), then the heuristic
/// [`Config::heuristic_fraction`] of `Date - Last-Modified` capped at
/// [`Config::heuristic_cap_secs`], only for a heuristically cacheable
/// status or a `public` response; otherwise 0.
pub fn lifetime(
    cfg: &Config,
    status: u16,
    policy: &EdgePolicy,
    resp: &impl Fields,
    response_time: u64,
) -> (u64, bool) {
    let cc = &policy.cc;
    if let Some(d) = cc.s_maxage {
        return (d.secs().unwrap_or(0), false);
    }
    if let Some(d) = cc.max_age {
        return (d.secs().unwrap_or(0), false);
    }
    let date = date_value(resp).unwrap_or(response_time);
    if policy.use_expires() && resp.has(b"expires") {
        let mut values = resp.values(b"expires");
        let first = values.next().unwrap_or_default();
        if values.any(|v| v.trim_ascii() != first.trim_ascii()) {
            return (0, false);
        }
        return match parse_http_date(first) {
            Some(exp) => (exp.saturating_sub(date).min(DELTA_MAX), false),
            None => (0, false),
        };
    }
    if super::storable::heuristically_cacheable(status) || cc.public {
        if let Some(lm) = resp.value(b"last-modified").and_then(parse_http_date) {
            let since = date.saturating_sub(lm) as f64;
            let h = (since * cfg.heuristic_fraction.max(0.0)) as u64;
            return (h.min(cfg.heuristic_cap_secs), true);
        }
    }
    (0, false)
}

fn date_value(resp: &impl Fields) -> Option<u64> {
    resp.value(b"date").and_then(parse_http_date)
}

/// The corrected initial age (RFC 9111 4.2.3): the larger of the apparent
/// age (`response_time - Date`, never negative) and the `Age` field plus
/// the response delay (`response_time - request_time`). An invalid `Age`
/// counts as 0; several `Age` fields count as their largest valid value.
pub fn initial_age(resp: &impl Fields, request_time: u64, response_time: u64) -> u64 {
    let age_value = resp
        .values(b"age")
        .filter_map(|v| {
            let v = v.trim_ascii();
            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                .then(|| {
                    std::str::from_utf8(v)
                        .ok()?
                        .parse::<u64>()
                        .ok()
                        .or(Some(DELTA_MAX))
                })
                .flatten()
        })
        .max()
        .unwrap_or(0)
        .min(DELTA_MAX);
    let date = date_value(resp).unwrap_or(response_time);
    let apparent_age = response_time.saturating_sub(date);
    let response_delay = response_time.saturating_sub(request_time);
    apparent_age
        .max(age_value.saturating_add(response_delay))
        .min(DELTA_MAX)
}

/// The `Age` field value for an answer whose current age is `age` seconds
/// (RFC 9111 5.1), clamped to [`DELTA_MAX`]. Every answer from storage
/// carries one, `Age: 0` included.
pub fn age_field(age: u64) -> String {
    age.min(DELTA_MAX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::format_http_date;

    const T0: u64 = 1_700_000_000;

    fn fr(cfg: &Config, status: u16, resp: &[(&str, &str)]) -> Freshness {
        Freshness::new(cfg, status, &EdgePolicy::of(&resp), &resp, T0, T0)
    }

    fn life(status: u16, resp: &[(&str, &str)]) -> (u64, bool) {
        lifetime(&Config::default(), status, &EdgePolicy::of(&resp), &resp, T0)
    }

    fn req(s: &str) -> CacheControl {
        CacheControl::parse([s.as_bytes()])
    }

    #[test]
    fn lifetime_precedence() {
        let date = format_http_date(T0);
        let exp = format_http_date(T0 + 300);
        let lm = format_http_date(T0 - 10_000);
        let all = [
            ("Cache-Control", "max-age=60, s-maxage=120"),
            ("Date", &date),
            ("Expires", &exp),
            ("Last-Modified", &lm),
        ];
        assert_eq!(life(200, &all), (120, false));
        assert_eq!(
            life(200, &[("Cache-Control", "max-age=60"), ("Expires", &exp)]),
            (60, false)
        );
        assert_eq!(
            life(200, &[("Date", &date), ("Expires", &exp), ("Last-Modified", &lm)]),
            (300, false)
        );
        assert_eq!(
            life(200, &[("Date", &date), ("Last-Modified", &lm)]),
            (1_000, true)
        );
        // No Date: response_time stands in.
        assert_eq!(life(200, &[("Expires", &exp)]), (300, false));
    }

    #[test]
    fn invalid_explicit_freshness_is_stale() {
        let exp = format_http_date(T0 + 300);
        assert_eq!(life(200, &[("Cache-Control", "max-age=abc")]), (0, false));
        assert_eq!(
            life(200, &[("Cache-Control", "max-age=5, max-age=9")]),
            (0, false)
        );
        assert_eq!(life(200, &[("Expires", "0")]), (0, false));
        assert_eq!(
            life(
                200,
                &[("Expires", &exp), ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")]
            ),
            (0, false)
        );
        assert_eq!(life(200, &[("Expires", &exp), ("Expires", &exp)]), (300, false));
        // Expires in the past.
        assert_eq!(life(200, &[("Expires", &format_http_date(T0 - 5))]), (0, false));
    }

    #[test]
    fn heuristic_only_where_allowed_and_capped() {
        let date = format_http_date(T0);
        let lm = format_http_date(T0 - 100 * 86_400);
        let r = [("Date", date.as_str()), ("Last-Modified", lm.as_str())];
        assert_eq!(life(200, &r), (86_400, true));
        assert_eq!(life(404, &r), (86_400, true));
        assert_eq!(life(302, &r), (0, false));
        assert_eq!(life(500, &r), (0, false));
        let rp = [
            ("Date", date.as_str()),
            ("Last-Modified", lm.as_str()),
            ("Cache-Control", "public"),
        ];
        assert_eq!(life(302, &rp), (86_400, true));
        let cfg = Config {
            heuristic_fraction: 0.5,
            heuristic_cap_secs: 1_000_000_000,
            ..Config::default()
        };
        assert_eq!(
            lifetime(&cfg, 200, &EdgePolicy::of(&r), &r, T0),
            (50 * 86_400, true)
        );
        // Last-Modified in the future: nothing.
        let r = [
            ("Date", date.as_str()),
            ("Last-Modified", &*format_http_date(T0 + 5)),
        ];
        assert_eq!(life(200, &r), (0, true));
        // Without Last-Modified: stored but stale.
        assert_eq!(life(200, &[]), (0, false));
    }

    #[test]
    fn targeted_policy_ignores_expires() {
        let exp = format_http_date(T0 + 300);
        let r = [("Expires", exp.as_str()), ("CDN-Cache-Control", "public")];
        assert_eq!(life(500, &r).0, 0);
        let r = [
            ("Cache-Control", "max-age=5"),
            ("CDN-Cache-Control", "max-age=600"),
        ];
        assert_eq!(life(200, &r), (600, false));
    }

    #[test]
    fn age_follows_rfc_9111_4_2_3() {
        // Apparent age from Date.
        let r = [("Date", &*format_http_date(T0 - 30))];
        assert_eq!(initial_age(&r, T0 - 2, T0), 30);
        // Age plus the response delay wins when larger.
        let r = [("Date", &*format_http_date(T0)), ("Age", "100")];
        assert_eq!(initial_age(&r, T0 - 2, T0), 102);
        // A Date in the future never makes a negative age.
        let r = [("Date", &*format_http_date(T0 + 1000))];
        assert_eq!(initial_age(&r, T0, T0), 0);
        // Invalid Age ignored; several: the largest; huge: clamped.
        assert_eq!(initial_age(&[("Age", "-5")], T0, T0), 0);
        assert_eq!(
            initial_age(&[("Age", "x"), ("Age", "7"), ("Age", "3")], T0, T0),
            7
        );
        assert_eq!(
            initial_age(&[("Age", "999999999999999999999999")], T0, T0),
            DELTA_MAX
        );
        let f = fr(
            &Config::default(),
            200,
            &[("Cache-Control", "max-age=60"), ("Age", "10")],
        );
        assert_eq!(f.age(T0), 10);
        assert_eq!(f.age(T0 + 5), 15);
        assert_eq!(f.ttl(T0 + 5), 45);
        assert_eq!(age_field(f.age(T0 + 5)), "15");
        assert_eq!(age_field(u64::MAX), "2147483648");
    }

    #[test]
    fn fresh_then_stale() {
        let cfg = Config::default();
        let f = fr(&cfg, 200, &[("Cache-Control", "max-age=60")]);
        assert!(f.is_fresh(T0 + 59));
        assert!(!f.is_fresh(T0 + 60));
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 59), Reuse::Fresh);
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 60), Reuse::Revalidate);
        assert_eq!(f.staleness(T0 + 70), 10);
    }

    #[test]
    fn stale_while_revalidate_window() {
        let cfg = Config::default();
        let f = fr(
            &cfg,
            200,
            &[("Cache-Control", "max-age=60, stale-while-revalidate=30")],
        );
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 61), Reuse::StaleWhileRevalidate);
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 90), Reuse::StaleWhileRevalidate);
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 91), Reuse::Revalidate);
        // s-maxage does not cancel the response's own permission.
        let f = fr(
            &cfg,
            200,
            &[("Cache-Control", "s-maxage=1, stale-while-revalidate=59")],
        );
        assert_eq!(f.reuse(&cfg, &req(""), T0 + 30), Reuse::StaleWhileRevalidate);
        // must-revalidate, proxy-revalidate and no-cache do.
        for cc in [
            "max-age=1, must-revalidate, stale-while-revalidate=59",
            "max-age=1, proxy-revalidate, stale-while-revalidate=59",
        ] {
            let f = fr(&cfg, 200, &[("Cache-Control", cc)]);
            assert_eq!(f.reuse(&cfg, &req(""), T0 + 30), Reuse::Revalidate, "{cc}");
        }
    }

    #[test]
    fn no_cache_always_revalidates() {
        let cfg = Config::default();
        let f = fr(&cfg, 200, &[("Cache-Control", "no-cache, max-age=600")]);
        assert_eq!(f.reuse(&cfg, &req(""), T0), Reuse::Revalidate);
        assert!(!f.serve_on_error(&cfg, &req(""), T0));
        // Qualified no-cache does not.
        let f = fr(&cfg, 200, &[("Cache-Control", "no-cache=\"x-a\", max-age=600")]);
        assert_eq!(f.reuse(&cfg, &req(""), T0), Reuse::Fresh);
    }

    #[test]
    fn max_stale_unless_revalidation_required() {
        let cfg = Config::default();
        let f = fr(&cfg, 200, &[("Cache-Control", "max-age=60")]);
        assert_eq!(f.reuse(&cfg, &req("max-stale"), T0 + 1000), Reuse::StaleAccepted);
        assert_eq!(f.reuse(&cfg, &req("max-stale=10"), T0 + 70), Reuse::StaleAccepted);
        assert_eq!(f.reuse(&cfg, &req("max-stale=10"), T0 + 71), Reuse::Revalidate);
        for cc in [
            "max-age=60, must-revalidate",
            "s-maxage=60",
            "max-age=60, proxy-revalidate",
        ] {
            let f = fr(&cfg, 200, &[("Cache-Control", cc)]);
            assert_eq!(
                f.reuse(&cfg, &req("max-stale"), T0 + 61),
                Reuse::Revalidate,
                "{cc}"
            );
        }
    }

    #[test]
    fn client_revalidation_is_a_knob() {
        let off = Config::default();
        let on = Config {
            client_revalidation: true,
            ..Config::default()
        };
        let f = fr(&off, 200, &[("Cache-Control", "max-age=60")]);
        for r in ["no-cache", "max-age=0", "min-fresh=59"] {
            assert_eq!(f.reuse(&off, &req(r), T0 + 10), Reuse::Fresh, "{r}");
            assert_eq!(f.reuse(&on, &req(r), T0 + 10), Reuse::Revalidate, "{r}");
        }
        assert_eq!(f.reuse(&on, &req("max-age=10"), T0 + 10), Reuse::Fresh);
        assert_eq!(f.reuse(&on, &req("min-fresh=50"), T0 + 10), Reuse::Fresh);
        assert_eq!(f.reuse(&on, &req("max-age=x"), T0 + 10), Reuse::Revalidate);
        let pragma = CacheControl::of_request(&[("Pragma", "no-cache")]);
        assert_eq!(f.reuse(&on, &pragma, T0), Reuse::Revalidate);
        // A fresh immutable response is not refetched on reload.
        let f = fr(&on, 200, &[("Cache-Control", "max-age=60, immutable")]);
        assert_eq!(f.reuse(&on, &req("no-cache"), T0 + 10), Reuse::Fresh);
    }

    #[test]
    fn stale_on_error_windows() {
        let cfg = Config::default();
        let none = req("");
        let f = fr(&cfg, 200, &[("Cache-Control", "max-age=60, stale-if-error=300")]);
        assert!(f.serve_on_error(&cfg, &none, T0 + 10));
        assert!(f.serve_on_error(&cfg, &none, T0 + 360));
        assert!(!f.serve_on_error(&cfg, &none, T0 + 361));
        // Grace alone (10 s by default).
        let f = fr(&cfg, 200, &[("Cache-Control", "max-age=60")]);
        assert!(f.serve_on_error(&cfg, &none, T0 + 70));
        assert!(!f.serve_on_error(&cfg, &none, T0 + 71));
        let nograce = Config {
            grace_secs: 0,
            ..Config::default()
        };
        assert!(!f.serve_on_error(&nograce, &none, T0 + 61));
        // The request's stale-if-error widens it.
        assert!(f.serve_on_error(&nograce, &req("stale-if-error=100"), T0 + 150));
        // s-maxage forbids grace but not its own stale-if-error.
        let f = fr(&cfg, 200, &[("Cache-Control", "s-maxage=60")]);
        assert!(!f.serve_on_error(&cfg, &none, T0 + 61));
        assert!(!f.serve_on_error(&cfg, &req("stale-if-error=100"), T0 + 61));
        let f = fr(&cfg, 200, &[("Cache-Control", "s-maxage=60, stale-if-error=30")]);
        assert!(f.serve_on_error(&cfg, &none, T0 + 90));
        // must-revalidate forbids everything once stale.
        let f = fr(
            &cfg,
            200,
            &[("Cache-Control", "max-age=60, must-revalidate, stale-if-error=300")],
        );
        assert!(f.serve_on_error(&cfg, &none, T0 + 59));
        assert!(!f.serve_on_error(&cfg, &req("stale-if-error=100"), T0 + 61));
        // Surrogate-Control's max-age=N+M.
        let f = fr(&nograce, 200, &[("Surrogate-Control", "max-age=60+30")]);
        assert!(f.serve_on_error(&nograce, &none, T0 + 90));
        assert!(!f.serve_on_error(&nograce, &none, T0 + 91));
    }

    #[test]
    fn useful_until_covers_the_longest_window() {
        let cfg = Config::default();
        let f = fr(
            &cfg,
            200,
            &[
                (
                    "Cache-Control",
                    "max-age=60, stale-while-revalidate=30, stale-if-error=300",
                ),
                ("Age", "20"),
            ],
        );
        assert_eq!(f.useful_until(&cfg), T0 + 40 + 300);
        let f = fr(&cfg, 200, &[("Cache-Control", "max-age=60")]);
        assert_eq!(f.useful_until(&cfg), T0 + 60 + 10);
        let f = fr(&cfg, 200, &[("Cache-Control", "s-maxage=60")]);
        assert_eq!(f.useful_until(&cfg), T0 + 60);
    }
}
