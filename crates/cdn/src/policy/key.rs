//! The primary cache key (RFC 9111 2: method and target URI) and the
//! request inputs that must never decide what a stored object contains.
//!
//! The key is the method class (`GET` and `HEAD` share one: a `HEAD` is
//! answered from a stored `GET`), the host (lowercased, without a trailing
//! dot or the default port `:80`) and the path and query. The path's
//! percent-escapes are normalised (RFC 3986 6.2.2: hex in upper case,
//! unreserved characters decoded); the query keeps only the parameters
//! [`QueryParams`] says and is sorted by parameter name (stably, so the
//! order of a repeated parameter's values, which an origin may read, is
//! kept).
//!
//! **Nothing unkeyed reaches the origin.** A parameter left out of the key,
//! or a different parameter order, must not change the origin's answer, or
//! one client could store an answer others get (cache poisoning): so the
//! server forwards [`origin_target`] (exactly the keyed path and query),
//! not the client's spelling. Likewise the request fields in
//! [`UNKEYED_FIELDS`] (`X-Forwarded-Host`, `X-Original-URL`, …), which
//! frameworks read to build absolute URLs or reroute a request, are
//! stripped before forwarding (or the request is refused, see
//! [`UnkeyedPolicy`]); the edge sets its own `X-Forwarded-*` from what it
//! knows. Fields the origin names in `Vary` are keyed, so they are safe.
//!
//! `Cookie` is forwarded and not keyed, as RFC 9111 has it: an origin that
//! personalises on it says `private` or `Vary: Cookie`. Varnish's built-in
//! VCL instead passes every request carrying a cookie; we do not, because
//! cookies are not scoped by port, so the browser sends the application's
//! session cookie to the edge with every asset request and such a rule
//! would leave nothing cached. `Authorization` is governed by RFC 9111 3.5
//! (see [`super::storable()`]).

use super::fields::Fields;
use super::Config;

/// Which query parameters key an object (and reach the origin). A pattern
/// is a parameter name, or a prefix followed by `*` (`utm_*`); names
/// compare exactly (case-sensitive, as origins read them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryParams {
    /// Every parameter keys the object (the default).
    #[default]
    All,
    /// These parameters are dropped (tracking tags: `utm_*`, `fbclid`).
    Ignore(Vec<String>),
    /// Only these parameters are kept; every other one is dropped.
    Keep(Vec<String>),
}

impl QueryParams {
    fn keeps(&self, name: &[u8]) -> bool {
        let matches = |pats: &[String]| {
            pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix.as_bytes()),
                None => name == p.as_bytes(),
            })
        };
        match self {
            QueryParams::All => true,
            QueryParams::Ignore(p) => !matches(p),
            QueryParams::Keep(p) => matches(p),
        }
    }
}

/// The method class of the key: `GET` for `GET` and `HEAD`, `None` for
/// any other method (never looked up nor stored).
pub fn method_class(method: &[u8]) -> Option<&'static str> {
    match method {
        b"GET" | b"HEAD" => Some("GET"),
        _ => None,
    }
}

/// The host as keyed: lowercased, without a trailing dot or a `:80` port.
pub fn normalise_host(host: &[u8]) -> Vec<u8> {
    let mut h = host.trim_ascii().to_ascii_lowercase();
    if h.ends_with(b":80") {
        h.truncate(h.len() - 3);
    }
    if h.ends_with(b".") {
        h.pop();
    }
    h
}

/// The path and query the object is keyed by and the origin is sent:
/// percent-escapes normalised, query parameters filtered by
/// [`Config::query`] and sorted stably by name, empty ones and a bare `?`
/// dropped. `None` unless `target` is in origin form (starts with `/`).
pub fn origin_target(cfg: &Config, target: &[u8]) -> Option<Vec<u8>> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let mut out = normalise_escapes(path);
    if let Some(q) = query {
        let mut params: Vec<Vec<u8>> = q
            .split(|&b| b == b'&')
            .filter(|p| !p.is_empty())
            .map(normalise_escapes)
            .filter(|p| cfg.query.keeps(param_name(p)))
            .collect();
        params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
        if !params.is_empty() {
            out.push(b'?');
            out.extend_from_slice(&params.join(&b'&'));
        }
    }
    Some(out)
}

fn param_name(p: &[u8]) -> &[u8] {
    match p.iter().position(|&b| b == b'=') {
        Some(i) => &p[..i],
        None => p,
    }
}

/// RFC 3986 6.2.2.1-2: `%7e` → `~`, `%2f` → `%2F`; a `%` not followed by
/// two hex digits is kept as is.
fn normalise_escapes(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() && s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit() {
            let v = hex(s[i + 1]) * 16 + hex(s[i + 2]);
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v);
            } else {
                out.push(b'%');
                out.push(s[i + 1].to_ascii_uppercase());
                out.push(s[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The primary key of a request: method class, normalised host and
/// [`origin_target`], joined by newlines (which none of them can hold).
/// `None` for a method that is never cached or a target not in origin
/// form.
pub fn primary_key(cfg: &Config, method: &[u8], host: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let class = method_class(method)?;
    let target = origin_target(cfg, target)?;
    let mut key = Vec::with_capacity(class.len() + host.len() + target.len() + 2);
    key.extend_from_slice(class.as_bytes());
    key.push(b'\n');
    key.extend_from_slice(&normalise_host(host));
    key.push(b'\n');
    key.extend_from_slice(&target);
    Some(key)
}

/// Request fields that frameworks and origins read (to build absolute
/// URLs, pick a scheme, reroute a request or override its method) but that
/// are not part of the key: a client must not be able to make the origin
/// answer differently through them. Lowercase.
pub const UNKEYED_FIELDS: [&str; 16] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "front-end-https",
    "forwarded",
];

/// Whether `name` is one of [`UNKEYED_FIELDS`] (case-insensitive).
pub fn is_unkeyed(name: &[u8]) -> bool {
    UNKEYED_FIELDS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
}

/// What to do with a client request carrying unkeyed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnkeyedPolicy {
    /// Remove them before anything else reads the request (the default):
    /// the origin never sees a client's value.
    Strip,
    /// Refuse the request (`400`): for deployments that want attempts
    /// visible.
    Refuse,
}

/// What [`unkeyed_action`] decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnkeyedAction {
    /// No unkeyed field: forward as is.
    Forward,
    /// Remove the fields with these (lowercase) names, then go on.
    Strip(Vec<&'static str>),
    /// Answer `400` without looking up or forwarding.
    Refuse,
}

/// Decides what to do with `req`'s unkeyed fields under
/// [`Config::unkeyed`].
pub fn unkeyed_action(cfg: &Config, req: &impl Fields) -> UnkeyedAction {
    let found: Vec<&'static str> = UNKEYED_FIELDS
        .iter()
        .copied()
        .filter(|f| req.has(f.as_bytes()))
        .collect();
    if found.is_empty() {
        UnkeyedAction::Forward
    } else if cfg.unkeyed == UnkeyedPolicy::Refuse {
        UnkeyedAction::Refuse
    } else {
        UnkeyedAction::Strip(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(cfg: &Config, m: &str, h: &str, t: &str) -> Option<String> {
        primary_key(cfg, m.as_bytes(), h.as_bytes(), t.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn get_and_head_share_a_class_and_others_have_none() {
        let c = Config::default();
        assert_eq!(k(&c, "GET", "a.test", "/x"), Some("GET\na.test\n/x".into()));
        assert_eq!(k(&c, "HEAD", "a.test", "/x"), k(&c, "GET", "a.test", "/x"));
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            assert_eq!(k(&c, m, "a.test", "/x"), None, "{m}");
        }
        assert_eq!(k(&c, "GET", "a.test", "http://a.test/x"), None);
        assert_eq!(k(&c, "GET", "a.test", "*"), None);
    }

    #[test]
    fn hosts_normalise() {
        let c = Config::default();
        let want = k(&c, "GET", "a.test", "/");
        assert_eq!(k(&c, "GET", "A.Test", "/"), want);
        assert_eq!(k(&c, "GET", "a.test:80", "/"), want);
        assert_eq!(k(&c, "GET", "a.test.", "/"), want);
        assert_ne!(k(&c, "GET", "a.test:8080", "/"), want);
        assert_ne!(k(&c, "GET", "b.test", "/"), want);
    }

    #[test]
    fn paths_normalise_escapes_only() {
        let c = Config::default();
        let t = |s: &str| String::from_utf8(origin_target(&c, s.as_bytes()).unwrap()).unwrap();
        assert_eq!(t("/%7euser/%2f%41"), "/~user/%2FA");
        assert_eq!(t("/a%zz%2"), "/a%zz%2");
        assert_eq!(t("/A"), "/A");
        assert_ne!(t("/a"), t("/A"));
        assert_eq!(t("/x#frag"), "/x");
    }

    #[test]
    fn query_order_is_normalised_but_repeated_values_keep_theirs() {
        let c = Config::default();
        let t = |s: &str| String::from_utf8(origin_target(&c, s.as_bytes()).unwrap()).unwrap();
        assert_eq!(t("/p?b=2&a=1"), "/p?a=1&b=2");
        assert_eq!(t("/p?a=2&b=1&a=1"), "/p?a=2&a=1&b=1");
        assert_eq!(t("/p?"), "/p");
        assert_eq!(t("/p?&&x&"), "/p?x");
        assert_ne!(t("/p?a=1"), t("/p?a=2"));
    }

    #[test]
    fn ignored_and_kept_parameters() {
        let ignore = Config {
            query: QueryParams::Ignore(vec!["utm_*".into(), "fbclid".into()]),
            ..Config::default()
        };
        assert_eq!(
            k(&ignore, "GET", "a", "/p?utm_source=x&v=2&fbclid=9&utm_medium=y"),
            Some("GET\na\n/p?v=2".into())
        );
        assert_eq!(
            k(&ignore, "GET", "a", "/p?fbclid2=1"),
            Some("GET\na\n/p?fbclid2=1".into())
        );
        let keep = Config {
            query: QueryParams::Keep(vec!["v".into(), "w".into()]),
            ..Config::default()
        };
        assert_eq!(
            k(&keep, "GET", "a", "/p?z=1&w=3&v=2"),
            Some("GET\na\n/p?v=2&w=3".into())
        );
        assert_eq!(k(&keep, "GET", "a", "/p?z=1"), Some("GET\na\n/p".into()));
        // What reaches the origin is exactly what is keyed.
        assert_eq!(origin_target(&keep, b"/p?z=1&v=2").unwrap(), b"/p?v=2");
    }

    #[test]
    fn unkeyed_fields_are_stripped_or_refused() {
        let c = Config::default();
        assert_eq!(
            unkeyed_action(&c, &[("Host", "a"), ("Accept", "*/*")]),
            UnkeyedAction::Forward
        );
        let req = [
            ("X-Forwarded-Host", "evil.test"),
            ("x-original-url", "/admin"),
            ("Host", "a"),
        ];
        assert_eq!(
            unkeyed_action(&c, &req),
            UnkeyedAction::Strip(vec!["x-forwarded-host", "x-original-url"])
        );
        let refuse = Config {
            unkeyed: UnkeyedPolicy::Refuse,
            ..Config::default()
        };
        assert_eq!(unkeyed_action(&refuse, &req), UnkeyedAction::Refuse);
        for f in [
            "X-Rewrite-URL",
            "x-forwarded-scheme",
            "X-HTTP-Method-Override",
            "Forwarded",
        ] {
            assert!(is_unkeyed(f.as_bytes()), "{f}");
        }
        assert!(!is_unkeyed(b"accept-encoding"));
    }
}
