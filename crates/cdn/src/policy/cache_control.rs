//! Cache directives: `Cache-Control` (RFC 9111 5.2), the edge-targeted
//! `CDN-Cache-Control` (RFC 9213) and `Surrogate-Control` parsed into one
//! typed set, and the choice of which of them rules a response at the edge.
//!
//! Parsing never fails: unknown directives are skipped, names compare
//! case-insensitively, arguments may be tokens or quoted strings (RFC 9111
//! 5.2: recipients accept both forms). Invalid numbers are kept as
//! [`Delta::Invalid`], which the freshness rules read as "stale" (RFC 9111
//! 4.2.1 encourages exactly that). A directive given twice with different
//! arguments is treated as invalid too (4.2.1: "either the first occurrence
//! should be used or the response should be considered stale"; we take the
//! restrictive branch), except in `CDN-Cache-Control`, an RFC 8941
//! Dictionary, where the last value of a key wins as RFC 8941 says.

use super::fields::Fields;
use super::DELTA_MAX;

/// A delta-seconds argument (RFC 9111 1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// A valid value, clamped to [`DELTA_MAX`].
    Secs(u64),
    /// Missing, not a non-negative integer, or given twice with different
    /// values.
    Invalid,
}

impl Delta {
    /// The seconds, `None` when invalid.
    pub fn secs(self) -> Option<u64> {
        match self {
            Delta::Secs(s) => Some(s),
            Delta::Invalid => None,
        }
    }

    fn parse(arg: Option<&[u8]>) -> Delta {
        let Some(arg) = arg else {
            return Delta::Invalid;
        };
        if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
            return Delta::Invalid;
        }
        // Digits only: overflow means "very large", clamped (1.2.2).
        let mut v: u64 = 0;
        for &d in arg {
            v = v.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        }
        Delta::Secs(v.min(DELTA_MAX))
    }
}

/// The argument of `no-cache` and `private`: unqualified, or limited to
/// named fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldList {
    /// The directive applies to the whole response.
    All,
    /// The directive applies only to these fields (lowercased).
    Named(Vec<Vec<u8>>),
}

impl FieldList {
    /// Whether the list names `field` (case-insensitive); `All` names every
    /// field.
    pub fn names(&self, field: &[u8]) -> bool {
        match self {
            FieldList::All => true,
            FieldList::Named(v) => v.iter().any(|n| n.eq_ignore_ascii_case(field)),
        }
    }

    fn merge(old: Option<FieldList>, new: FieldList) -> FieldList {
        match (old, new) {
            (Some(FieldList::All), _) | (_, FieldList::All) => FieldList::All,
            (Some(FieldList::Named(mut a)), FieldList::Named(b)) => {
                for n in b {
                    if !a.contains(&n) {
                        a.push(n);
                    }
                }
                FieldList::Named(a)
            }
            (None, n) => n,
        }
    }
}

/// The request's `max-stale` (RFC 9111 5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// No argument: any staleness is accepted.
    Any,
    /// At most this many seconds stale.
    Secs(u64),
}

/// The directives of a `Cache-Control`-like field, request or response.
/// Absent directives are `None` / `false` (the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age` (both directions).
    pub max_age: Option<Delta>,
    /// `s-maxage` (response; implies `proxy-revalidate`).
    pub s_maxage: Option<Delta>,
    /// `no-store` (both directions; `no-store-remote` in `Surrogate-Control`).
    pub no_store: bool,
    /// `no-cache`, unqualified or with field names (response), or
    /// unqualified (request).
    pub no_cache: Option<FieldList>,
    /// `private`, unqualified or with field names (response).
    pub private: Option<FieldList>,
    /// `must-revalidate` (response).
    pub must_revalidate: bool,
    /// `proxy-revalidate` (response).
    pub proxy_revalidate: bool,
    /// `must-understand` (response).
    pub must_understand: bool,
    /// `public` (response).
    pub public: bool,
    /// `immutable` (response, RFC 8246).
    pub immutable: bool,
    /// `no-transform` (both directions).
    pub no_transform: bool,
    /// `stale-while-revalidate` (response, RFC 5861).
    pub stale_while_revalidate: Option<Delta>,
    /// `stale-if-error` (both directions, RFC 5861).
    pub stale_if_error: Option<Delta>,
    /// `max-stale` (request); an invalid argument leaves it `None`.
    pub max_stale: Option<MaxStale>,
    /// `min-fresh` (request); an invalid argument leaves it `None`.
    pub min_fresh: Option<u64>,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
}

/// Which field an edge's response policy was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// `CDN-Cache-Control` (RFC 9213): first in the target list.
    CdnCacheControl,
    /// `Surrogate-Control`: second.
    SurrogateControl,
    /// Plain `Cache-Control` (and `Expires`): when neither edge field has a
    /// valid, non-empty value.
    CacheControl,
}

/// The directives that rule a response at the edge, and where they came
/// from. RFC 9213 2.1: once a targeted field is chosen, `Cache-Control`
/// *and `Expires`* are ignored; [`EdgePolicy::use_expires`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePolicy {
    /// The directives in force.
    pub cc: CacheControl,
    /// The field they were read from.
    pub source: PolicySource,
}

impl EdgePolicy {
    /// Chooses, in target-list order, `CDN-Cache-Control`, then
    /// `Surrogate-Control`, then `Cache-Control`: the first edge field with
    /// a valid, non-empty value wins (RFC 9213 2.1). A targeted field that
    /// holds no directive we recognise counts as invalid, so the next one
    /// is tried.
    pub fn of(resp: &impl Fields) -> EdgePolicy {
        if let Some(cc) = parse_targeted(resp.values(b"cdn-cache-control"), Syntax::Structured) {
            return EdgePolicy {
                cc,
                source: PolicySource::CdnCacheControl,
            };
        }
        if let Some(cc) = parse_targeted(resp.values(b"surrogate-control"), Syntax::Surrogate) {
            return EdgePolicy {
                cc,
                source: PolicySource::SurrogateControl,
            };
        }
        EdgePolicy {
            cc: CacheControl::parse(resp.values(b"cache-control")),
            source: PolicySource::CacheControl,
        }
    }

    /// Whether `Expires` may be used for freshness: only when the policy
    /// came from `Cache-Control` (RFC 9213 2.1).
    pub fn use_expires(&self) -> bool {
        self.source == PolicySource::CacheControl
    }
}

/// How a field's items are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// `Cache-Control` (RFC 9111 5.2): a conflicting duplicate is invalid.
    Classic,
    /// `CDN-Cache-Control`, an RFC 8941 Dictionary: a duplicate key's last
    /// value wins.
    Structured,
    /// `Surrogate-Control`: `max-age=N+M`, `no-store-remote`.
    Surrogate,
}

fn parse_targeted<'a>(values: impl Iterator<Item = &'a [u8]>, syntax: Syntax) -> Option<CacheControl> {
    let mut cc = CacheControl::default();
    let mut any = false;
    for v in values {
        any |= cc.add_line(v, syntax);
    }
    any.then_some(cc)
}

impl CacheControl {
    /// Parses every line of a `Cache-Control` field (pass
    /// `fields.values(b"cache-control")`); lines combine as one list.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for v in values {
            cc.add_line(v, Syntax::Classic);
        }
        cc
    }

    /// The request's `Cache-Control`, with `Pragma: no-cache` read as
    /// `no-cache` when `Cache-Control` is absent (RFC 9111 5.4).
    pub fn of_request(req: &impl Fields) -> CacheControl {
        let mut cc = CacheControl::parse(req.values(b"cache-control"));
        if !req.has(b"cache-control")
            && req
                .values(b"pragma")
                .any(|v| super::list_tokens(v).any(|t| t.eq_ignore_ascii_case(b"no-cache")))
        {
            cc.no_cache = Some(FieldList::All);
        }
        cc
    }

    /// Adds one field line; returns whether it held a recognised directive.
    fn add_line(&mut self, line: &[u8], syntax: Syntax) -> bool {
        let mut any = false;
        for (name, arg) in Items::new(line) {
            any |= self.add(&name, arg.as_deref(), syntax);
        }
        any
    }

    fn add(&mut self, name: &[u8], arg: Option<&[u8]>, syntax: Syntax) -> bool {
        let surrogate = syntax == Syntax::Surrogate;
        let last_wins = syntax == Syntax::Structured;
        let set_delta = |slot: &mut Option<Delta>, new: Delta| {
            if last_wins {
                *slot = Some(new);
            } else {
                set_delta(slot, new);
            }
        };
        // RFC 8941 booleans in the targeted fields: `no-store=?0` is off.
        let arg = match arg {
            Some(b"?1") => None,
            Some(b"?0") => return true,
            a => a,
        };
        let lower = name.to_ascii_lowercase();
        match lower.as_slice() {
            b"max-age" if surrogate => {
                // Surrogate-Control's `max-age=N+M`: M more seconds stale
                // when the origin cannot be reached.
                let (n, m) = match arg.and_then(|a| a.iter().position(|&b| b == b'+')) {
                    Some(i) => {
                        let a = arg.unwrap_or_default();
                        (Some(&a[..i]), Some(&a[i + 1..]))
                    }
                    None => (arg, None),
                };
                set_delta(&mut self.max_age, Delta::parse(n));
                if let Some(m) = m {
                    set_delta(&mut self.stale_if_error, Delta::parse(Some(m)));
                }
            }
            b"max-age" => set_delta(&mut self.max_age, Delta::parse(arg)),
            b"s-maxage" => set_delta(&mut self.s_maxage, Delta::parse(arg)),
            b"stale-while-revalidate" => set_delta(&mut self.stale_while_revalidate, Delta::parse(arg)),
            b"stale-if-error" => set_delta(&mut self.stale_if_error, Delta::parse(arg)),
            b"no-store" => self.no_store = true,
            b"no-store-remote" if surrogate => self.no_store = true,
            b"no-cache" => self.no_cache = Some(FieldList::merge(self.no_cache.take(), field_list(arg))),
            b"private" => self.private = Some(FieldList::merge(self.private.take(), field_list(arg))),
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"must-understand" => self.must_understand = true,
            b"public" => self.public = true,
            b"immutable" => self.immutable = true,
            b"no-transform" => self.no_transform = true,
            b"only-if-cached" => self.only_if_cached = true,
            b"max-stale" => {
                let new = match arg {
                    None => Some(MaxStale::Any),
                    a => Delta::parse(a).secs().map(MaxStale::Secs),
                };
                // Twice: the least permissive wins.
                self.max_stale = match (self.max_stale, new) {
                    (Some(MaxStale::Secs(a)), Some(MaxStale::Secs(b))) => Some(MaxStale::Secs(a.min(b))),
                    (Some(MaxStale::Secs(a)), _) | (_, Some(MaxStale::Secs(a))) => Some(MaxStale::Secs(a)),
                    (old, new) => new.or(old),
                };
            }
            b"min-fresh" => {
                if let Some(s) = Delta::parse(arg).secs() {
                    self.min_fresh = Some(self.min_fresh.map_or(s, |o| o.max(s)));
                }
            }
            _ => return false,
        }
        true
    }

    /// Whether the response requires revalidation once stale, whatever
    /// stale-serving permission it also carries: `must-revalidate`,
    /// `proxy-revalidate`, or `s-maxage` (which implies `proxy-revalidate`
    /// for a shared cache, RFC 9111 5.2.2.10).
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

fn set_delta(slot: &mut Option<Delta>, new: Delta) {
    *slot = match *slot {
        None => Some(new),
        Some(old) if old == new => Some(old),
        Some(_) => Some(Delta::Invalid),
    };
}

fn field_list(arg: Option<&[u8]>) -> FieldList {
    match arg {
        None => FieldList::All,
        Some(a) => {
            let names: Vec<Vec<u8>> = super::list_tokens(a)
                .filter(|t| t.iter().all(|&b| is_tchar(b)))
                .map(<[u8]>::to_ascii_lowercase)
                .collect();
            // `no-cache=""` or garbage names nothing we can honour
            // precisely: read it as the whole response (the safe side).
            if names.is_empty() {
                FieldList::All
            } else {
                FieldList::Named(names)
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `name[=arg]` items of one field line; quoted arguments unescaped.
/// Items that are not well-formed are skipped up to the next comma.
struct Items<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Items<'a> {
    fn new(s: &'a [u8]) -> Self {
        Items { s, i: 0 }
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t') {
            self.i += 1;
        }
    }

    /// Skips to just past the next comma outside a quoted string.
    fn skip_item(&mut self) {
        let mut quoted = false;
        while self.i < self.s.len() {
            let b = self.s[self.i];
            self.i += 1;
            match b {
                b'\\' if quoted => self.i += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => break,
                _ => {}
            }
        }
        // An escape as the last byte stepped past the end.
        self.i = self.i.min(self.s.len());
    }
}

impl Iterator for Items<'_> {
    type Item = (Vec<u8>, Option<Vec<u8>>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.skip_ws();
            if self.i >= self.s.len() {
                return None;
            }
            let start = self.i;
            while self.i < self.s.len() && is_tchar(self.s[self.i]) {
                self.i += 1;
            }
            let name = self.s[start..self.i].to_vec();
            if name.is_empty() {
                self.skip_item();
                continue;
            }
            self.skip_ws();
            let mut arg = None;
            if self.i < self.s.len() && self.s[self.i] == b'=' {
                self.i += 1;
                self.skip_ws();
                if self.i < self.s.len() && self.s[self.i] == b'"' {
                    self.i += 1;
                    let mut v = Vec::new();
                    let mut closed = false;
                    while self.i < self.s.len() {
                        let b = self.s[self.i];
                        self.i += 1;
                        match b {
                            b'\\' if self.i < self.s.len() => {
                                v.push(self.s[self.i]);
                                self.i += 1;
                            }
                            b'"' => {
                                closed = true;
                                break;
                            }
                            _ => v.push(b),
                        }
                    }
                    if !closed {
                        return None;
                    }
                    arg = Some(v);
                } else {
                    let a = self.i;
                    // Tokens, plus `?` for structured booleans and `+` for
                    // Surrogate-Control's `max-age=N+M`.
                    while self.i < self.s.len()
                        && (is_tchar(self.s[self.i]) || matches!(self.s[self.i], b'?' | b'/'))
                    {
                        self.i += 1;
                    }
                    arg = Some(self.s[a..self.i].to_vec());
                }
            }
            self.skip_ws();
            // Structured-field parameters (`;key=value`) and anything else
            // before the comma are ignored; garbage glued to an argument
            // invalidates it (`max-age=60x` is not 60).
            let rest_start = self.i;
            self.skip_item();
            let rest = self.s[rest_start..self.i].trim_ascii();
            let rest = rest.strip_suffix(b",").unwrap_or(rest).trim_ascii();
            if !rest.is_empty() && rest[0] != b';' {
                arg = Some(b"\x00invalid".to_vec());
            }
            return Some((name, arg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse([s.as_bytes()])
    }

    #[test]
    fn every_directive_parses() {
        let c = cc(
            "max-age=60, s-maxage=120, no-store, no-cache, private, must-revalidate, \
             proxy-revalidate, must-understand, public, immutable, no-transform, \
             stale-while-revalidate=30, stale-if-error=600",
        );
        assert_eq!(c.max_age, Some(Delta::Secs(60)));
        assert_eq!(c.s_maxage, Some(Delta::Secs(120)));
        assert!(c.no_store && c.must_revalidate && c.proxy_revalidate);
        assert!(c.must_understand && c.public && c.immutable && c.no_transform);
        assert_eq!(c.no_cache, Some(FieldList::All));
        assert_eq!(c.private, Some(FieldList::All));
        assert_eq!(c.stale_while_revalidate, Some(Delta::Secs(30)));
        assert_eq!(c.stale_if_error, Some(Delta::Secs(600)));
    }

    #[test]
    fn request_directives_parse() {
        let c = cc("max-age=0, max-stale, min-fresh=5, only-if-cached, no-cache, no-store");
        assert_eq!(c.max_age, Some(Delta::Secs(0)));
        assert_eq!(c.max_stale, Some(MaxStale::Any));
        assert_eq!(c.min_fresh, Some(5));
        assert!(c.only_if_cached && c.no_store);
        assert_eq!(cc("max-stale=10").max_stale, Some(MaxStale::Secs(10)));
        assert_eq!(cc("max-stale=x").max_stale, None);
        assert_eq!(cc("max-stale, max-stale=3").max_stale, Some(MaxStale::Secs(3)));
        assert_eq!(cc("min-fresh=-1").min_fresh, None);
        assert_eq!(cc("min-fresh=1, min-fresh=9").min_fresh, Some(9));
    }

    #[test]
    fn names_are_case_insensitive_and_quoted_arguments_accepted() {
        let c = cc("Max-Age=\"60\", NO-STORE, Private=\"Set-Cookie, X-Secret\"");
        assert_eq!(c.max_age, Some(Delta::Secs(60)));
        assert!(c.no_store);
        assert_eq!(
            c.private,
            Some(FieldList::Named(vec![
                b"set-cookie".to_vec(),
                b"x-secret".to_vec()
            ]))
        );
        assert_eq!(
            cc("no-cache=set-cookie").no_cache,
            Some(FieldList::Named(vec![b"set-cookie".to_vec()]))
        );
        // A quoted comma does not end the item.
        let c = cc("no-cache=\"a,b\", max-age=5");
        assert_eq!(
            c.no_cache,
            Some(FieldList::Named(vec![b"a".to_vec(), b"b".to_vec()]))
        );
        assert_eq!(c.max_age, Some(Delta::Secs(5)));
    }

    #[test]
    fn field_lists_merge_and_unqualified_wins() {
        let c = CacheControl::parse([&b"no-cache=\"a\""[..], b"no-cache=b"]);
        assert_eq!(
            c.no_cache,
            Some(FieldList::Named(vec![b"a".to_vec(), b"b".to_vec()]))
        );
        let c = cc("private=\"a\", private");
        assert_eq!(c.private, Some(FieldList::All));
        assert!(FieldList::All.names(b"x"));
        assert_eq!(cc("private=\"\"").private, Some(FieldList::All));
    }

    #[test]
    fn malformed_numbers_are_invalid_and_huge_ones_clamped() {
        for bad in [
            "max-age",
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=60x",
            "max-age=\"\"",
            "max-age=0x10",
            "max-age=+5",
        ] {
            assert_eq!(cc(bad).max_age, Some(Delta::Invalid), "{bad}");
        }
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Some(Delta::Secs(DELTA_MAX))
        );
        assert_eq!(Delta::Invalid.secs(), None);
    }

    #[test]
    fn duplicates_agreeing_are_kept_and_conflicting_are_invalid() {
        assert_eq!(cc("max-age=5, max-age=5").max_age, Some(Delta::Secs(5)));
        assert_eq!(cc("max-age=5, max-age=6").max_age, Some(Delta::Invalid));
        let c = CacheControl::parse([&b"s-maxage=5"[..], b"s-maxage=7"]);
        assert_eq!(c.s_maxage, Some(Delta::Invalid));
    }

    #[test]
    fn garbage_is_skipped_without_losing_the_rest() {
        let c = cc(",,, =5, \"junk\", max-age=10 ,, @@@, public,");
        assert_eq!(c.max_age, Some(Delta::Secs(10)));
        assert!(c.public);
        assert_eq!(cc(""), CacheControl::default());
        assert_eq!(cc("unknown-ext=\"x\", foo"), CacheControl::default());
        // An unterminated quote ends parsing there.
        let c = cc("public, private=\"set-cookie");
        assert!(c.public);
        assert_eq!(c.private, None);
        let c = cc("\u{1}\u{7f}max-age=1");
        assert!(c.max_age.is_none() || c.max_age == Some(Delta::Secs(1)));
        // A trailing escape inside an unterminated quote.
        let c = cc("public, x=y \"a\\");
        assert!(c.public);
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        let r = [("Pragma", "no-cache")];
        assert_eq!(CacheControl::of_request(&r).no_cache, Some(FieldList::All));
        let r = [("Pragma", "no-cache"), ("Cache-Control", "max-age=5")];
        assert_eq!(CacheControl::of_request(&r).no_cache, None);
    }

    #[test]
    fn edge_targeted_fields_take_precedence_in_order() {
        let r = [
            ("Cache-Control", "no-store"),
            ("Surrogate-Control", "max-age=30"),
            ("CDN-Cache-Control", "max-age=60"),
        ];
        let p = EdgePolicy::of(&r);
        assert_eq!(p.source, PolicySource::CdnCacheControl);
        assert_eq!(p.cc.max_age, Some(Delta::Secs(60)));
        assert!(!p.cc.no_store);
        assert!(!p.use_expires());

        let r = [
            ("Cache-Control", "no-store"),
            ("Surrogate-Control", "max-age=30+600"),
        ];
        let p = EdgePolicy::of(&r);
        assert_eq!(p.source, PolicySource::SurrogateControl);
        assert_eq!(p.cc.max_age, Some(Delta::Secs(30)));
        assert_eq!(p.cc.stale_if_error, Some(Delta::Secs(600)));

        let r = [("Surrogate-Control", "no-store-remote")];
        assert!(EdgePolicy::of(&r).cc.no_store);

        // Empty or unrecognised targeted values fall through.
        let r = [
            ("CDN-Cache-Control", ""),
            ("Surrogate-Control", "content=\"ESI/1.0\""),
            ("Cache-Control", "max-age=5"),
        ];
        let p = EdgePolicy::of(&r);
        assert_eq!(p.source, PolicySource::CacheControl);
        assert_eq!(p.cc.max_age, Some(Delta::Secs(5)));
        assert!(p.use_expires());
    }

    #[test]
    fn structured_booleans_and_parameters_in_cdn_cache_control() {
        let r = [("CDN-Cache-Control", "no-store=?0, max-age=60;foo=bar, public=?1")];
        let p = EdgePolicy::of(&r);
        assert!(!p.cc.no_store);
        assert!(p.cc.public);
        assert_eq!(p.cc.max_age, Some(Delta::Secs(60)));
    }

    #[test]
    fn duplicates_in_cdn_cache_control_follow_rfc_8941() {
        let r = [
            ("CDN-Cache-Control", "max-age=5, max-age=60"),
            ("CDN-Cache-Control", "s-maxage=1"),
        ];
        let p = EdgePolicy::of(&r);
        assert_eq!(p.cc.max_age, Some(Delta::Secs(60)));
        assert_eq!(p.cc.s_maxage, Some(Delta::Secs(1)));
        let r = [("Surrogate-Control", "max-age=5, max-age=60")];
        assert_eq!(EdgePolicy::of(&r).cc.max_age, Some(Delta::Invalid));
    }

    #[test]
    fn s_maxage_implies_proxy_revalidate() {
        assert!(cc("s-maxage=5").revalidate_when_stale());
        assert!(cc("must-revalidate").revalidate_when_stale());
        assert!(cc("proxy-revalidate").revalidate_when_stale());
        assert!(!cc("max-age=5").revalidate_when_stale());
    }
}
