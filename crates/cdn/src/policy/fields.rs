//! The header view every decision reads: anything that can list its
//! `(name, value)` fields, so `proxy-core`'s heads and plain pairs in tests
//! are read the same way.

/// A read-only view of header fields. Only [`Fields::pairs`] is required;
/// names compare ASCII case-insensitively.
pub trait Fields {
    /// The fields (name, value) in the order they arrived.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The values of the fields named `name`, in order.
    fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the field named `name`.
    fn value<'a>(&'a self, name: &'a [u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Whether a field named `name` is present (even empty).
    fn has(&self, name: &[u8]) -> bool {
        self.pairs().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

impl Fields for proxy_core::HeaderFields {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for proxy_core::RequestHead {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for proxy_core::ResponseHead {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for [(&[u8], &[u8])] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (*n, *v))
    }
}

impl<const N: usize> Fields for [(&[u8], &[u8]); N] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (*n, *v))
    }
}

impl Fields for [(&str, &str)] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }
}

impl<const N: usize> Fields for [(&str, &str); N] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }
}

impl Fields for [(Vec<u8>, Vec<u8>)] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl Fields for Vec<(Vec<u8>, Vec<u8>)> {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl<T: Fields + ?Sized> Fields for &T {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        (**self).pairs()
    }
}

/// The elements of a comma-separated header value, trimmed, empty ones
/// skipped (quoted commas are not special: use it for token lists).
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{primary_key, unkeyed_action, Config, UnkeyedAction};
    use proxy_core::codec::{parse_request, HeadLimits};

    #[test]
    fn proxy_core_heads_are_read_without_conversion() {
        let mut buf = bytes::BytesMut::from(
            &b"GET /a?b=2&a=1 HTTP/1.1\r\nHost: Edge.Test\r\nX-Forwarded-Host: evil.test\r\nVary-Me: 1\r\n\r\n"[..],
        );
        let head = parse_request(&mut buf, &HeadLimits::default()).unwrap().unwrap();
        let cfg = Config::default();
        assert_eq!(
            unkeyed_action(&cfg, &head),
            UnkeyedAction::Strip(vec!["x-forwarded-host"])
        );
        assert_eq!(
            unkeyed_action(&cfg, head.fields()),
            UnkeyedAction::Strip(vec!["x-forwarded-host"])
        );
        let key = primary_key(
            &cfg,
            head.method.as_str().as_bytes(),
            Fields::value(&head, b"host").unwrap(),
            head.target().as_bytes(),
        );
        assert_eq!(key.unwrap(), b"GET\nedge.test\n/a?a=1&b=2");
        assert_eq!(Fields::pairs(&head).count(), 3);
    }

    #[test]
    fn names_are_case_insensitive_and_values_ordered() {
        let h = [("Vary", "a"), ("X", "1"), ("vary", "b")];
        assert_eq!(h.values(b"VARY").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
        assert_eq!(h.value(b"x"), Some(&b"1"[..]));
        assert!(h.has(b"X"));
        assert!(!h.has(b"y"));
        assert_eq!(list_tokens(b" a, ,b ,").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
    }
}
