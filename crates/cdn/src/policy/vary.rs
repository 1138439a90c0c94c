//! `Vary` (RFC 9111 4.1): which request fields pick one of several stored
//! variants of a URL, and the secondary key built from them.
//!
//! Values are normalised before comparing, as 4.1 allows: lines of the same
//! field are combined into one list, whitespace around list elements,
//! parameters and `=` is removed and runs inside values become one space,
//! field names are case-insensitive. `Accept-Encoding` is reduced to the
//! codings that matter ([`super::Config::key_encodings`], those with a
//! non-zero `q`, sorted), so the many spellings browsers send share a
//! handful of variants. An absent field only matches an absent field.
//! `Vary: *` never matches (and is not stored, see [`super::storable()`]).

use super::fields::Fields;
use super::Config;

/// A response's `Vary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary` (or only empty ones): one variant per URL.
    None,
    /// `*` anywhere in it: never matches a later request.
    Star,
    /// The named request fields, lowercased, sorted, without duplicates.
    Fields(Vec<Vec<u8>>),
}

impl Vary {
    /// Reads every `Vary` line of `resp`. Elements that are not field
    /// names are skipped.
    pub fn of(resp: &impl Fields) -> Vary {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for v in resp.values(b"vary") {
            for t in super::list_tokens(v) {
                if t == b"*" {
                    return Vary::Star;
                }
                if t.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    names.push(t.to_ascii_lowercase());
                }
            }
        }
        names.sort();
        names.dedup();
        if names.is_empty() {
            Vary::None
        } else {
            Vary::Fields(names)
        }
    }
}

/// The secondary key of request `req` under `vary`: for each named field in
/// order, its name and normalised value (or a marker for "absent"). `None`
/// for `Vary: *`: no request matches. Two requests select the same variant
/// exactly when their secondary keys are equal; `Vary::None` gives the
/// empty key.
pub fn secondary_key(cfg: &Config, vary: &Vary, req: &impl Fields) -> Option<Vec<u8>> {
    let names = match vary {
        Vary::Star => return None,
        Vary::None => return Some(Vec::new()),
        Vary::Fields(n) => n,
    };
    let mut key = Vec::new();
    for name in names {
        key.extend_from_slice(name);
        if name == b"accept-encoding" {
            key.push(b':');
            key.extend_from_slice(&accept_encoding(cfg, req));
        } else if req.has(name) {
            key.push(b':');
            let mut first = true;
            for line in req.values(name) {
                for item in split_list(line) {
                    let item = normalise_item(item);
                    if item.is_empty() {
                        continue;
                    }
                    if !first {
                        key.push(b',');
                    }
                    first = false;
                    key.extend_from_slice(&item);
                }
            }
        } else {
            key.push(0);
        }
        key.push(b'\n');
    }
    Some(key)
}

/// Which of the configured codings the request accepts (q > 0; `*` stands
/// for every one not named), sorted and comma-joined. An absent or empty
/// field accepts none of them (the origin then answers `identity`).
fn accept_encoding(cfg: &Config, req: &impl Fields) -> Vec<u8> {
    let mut named: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut star = None;
    for line in req.values(b"accept-encoding") {
        for item in split_list(line) {
            let mut parts = item.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
            let mut ok = true;
            for p in parts {
                let p = p.trim_ascii();
                if p.len() > 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                    ok = q_positive(p[2..].trim_ascii());
                }
            }
            if coding == b"*" {
                star = Some(ok);
            } else if !coding.is_empty() {
                named.push((coding, ok));
            }
        }
    }
    let mut out: Vec<&str> = cfg
        .key_encodings
        .iter()
        .filter(
            |c| match named.iter().find(|(n, _)| n.as_slice() == c.as_bytes()) {
                Some((_, ok)) => *ok,
                None => star.unwrap_or(false),
            },
        )
        .map(String::as_str)
        .collect();
    out.sort_unstable();
    out.dedup();
    out.join(",").into_bytes()
}

/// Whether a qvalue is above zero; a malformed one counts as 1 (the
/// coding was listed, so the client most likely wants it).
fn q_positive(q: &[u8]) -> bool {
    match std::str::from_utf8(q).ok().and_then(|s| s.parse::<f64>().ok()) {
        Some(v) => v > 0.0,
        None => true,
    }
}

/// Splits a list value on commas outside quoted strings.
fn split_list(v: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut i) = (0, false, 0);
    while i < v.len() {
        match v[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&v[start.min(v.len())..]);
    out
}

/// Trims an element, removes whitespace around `;` and `=`, and collapses
/// other whitespace runs (outside quotes) into one space.
fn normalise_item(item: &[u8]) -> Vec<u8> {
    let item = item.trim_ascii();
    let mut out: Vec<u8> = Vec::with_capacity(item.len());
    let mut quoted = false;
    let mut pending_space = false;
    let mut i = 0;
    while i < item.len() {
        let b = item[i];
        if quoted {
            out.push(b);
            if b == b'\\' && i + 1 < item.len() {
                i += 1;
                out.push(item[i]);
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b' ' || b == b'\t' {
            pending_space = true;
        } else {
            if pending_space && b != b';' && b != b'=' && !matches!(out.last(), Some(b';' | b'=')) {
                out.push(b' ');
            }
            pending_space = false;
            out.push(b);
            quoted = b == b'"';
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vary: &[(&str, &str)], req: &[(&str, &str)]) -> Option<Vec<u8>> {
        secondary_key(&Config::default(), &Vary::of(&vary), &req)
    }

    #[test]
    fn vary_parsing() {
        assert_eq!(Vary::of(&[("Vary", "")]), Vary::None);
        assert_eq!(Vary::of(&[("X", "y")]), Vary::None);
        assert_eq!(Vary::of(&[("Vary", "Accept, *")]), Vary::Star);
        assert_eq!(
            Vary::of(&[
                ("Vary", "Accept-Language, accept"),
                ("vary", "ACCEPT, bad name, ,")
            ]),
            Vary::Fields(vec![b"accept".to_vec(), b"accept-language".to_vec()])
        );
    }

    #[test]
    fn star_never_matches_and_none_always_does() {
        assert_eq!(key(&[("Vary", "*")], &[]), None);
        assert_eq!(key(&[], &[("Accept", "x")]), Some(Vec::new()));
    }

    #[test]
    fn values_are_normalised() {
        let v = [("Vary", "Accept-Language")];
        let a = key(&v, &[("Accept-Language", "en-US,  fr;q=0.5")]);
        let b = key(&v, &[("accept-language", " en-US , fr ; q = 0.5 ")]);
        let c = key(
            &v,
            &[("Accept-Language", "en-US"), ("Accept-Language", "fr;q=0.5")],
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, key(&v, &[("Accept-Language", "fr;q=0.5, en-US")]));
        // Whitespace runs inside a value become one space; quotes kept.
        let v = [("Vary", "X-A")];
        assert_eq!(key(&v, &[("X-A", "a   b")]), key(&v, &[("X-A", "a b")]));
        assert_ne!(key(&v, &[("X-A", "\"a  b\"")]), key(&v, &[("X-A", "\"a b\"")]));
        assert_ne!(key(&v, &[("X-A", "ab")]), key(&v, &[("X-A", "a b")]));
    }

    #[test]
    fn absent_only_matches_absent() {
        let v = [("Vary", "X-A")];
        assert_ne!(key(&v, &[]), key(&v, &[("X-A", "")]));
        assert_eq!(key(&v, &[]), key(&v, &[("Other", "1")]));
    }

    #[test]
    fn accept_encoding_keys_only_the_codings_that_matter() {
        let v = [("Vary", "Accept-Encoding")];
        let k = |ae: &str| key(&v, &[("Accept-Encoding", ae)]).unwrap();
        assert_eq!(k("gzip, deflate, br"), b"accept-encoding:br,gzip\n");
        assert_eq!(k("br;q=1.0, GZIP"), k("gzip, deflate, br"));
        assert_eq!(k("gzip;q=0, br"), b"accept-encoding:br\n");
        assert_eq!(k("*"), b"accept-encoding:br,gzip,zstd\n");
        assert_eq!(k("*, zstd;q=0"), b"accept-encoding:br,gzip\n");
        assert_eq!(k("identity"), b"accept-encoding:\n");
        assert_eq!(key(&v, &[]).unwrap(), k(""));
        assert_eq!(k("gzip;q=junk"), b"accept-encoding:gzip\n");
    }

    #[test]
    fn several_fields_in_order() {
        let v = [("Vary", "X-B, X-A")];
        assert_eq!(key(&v, &[("X-A", "1"), ("X-B", "2")]).unwrap(), b"x-a:1\nx-b:2\n");
    }
}
