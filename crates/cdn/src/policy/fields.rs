//! The header view every decision reads: anything that can list its
//! `(name, value)` fields, so `proxy-core`'s heads and plain pairs in tests
//! are read the same way.

/// A read-only view of header fields. Only [`Fields::fields`] is required;
/// names compare ASCII case-insensitively.
pub trait Fields {
    /// The fields (name, value) in the order they arrived.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The values of the fields named `name`, in order.
    fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the field named `name`.
    fn value<'a>(&'a self, name: &'a [u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Whether a field named `name` is present (even empty).
    fn has(&self, name: &[u8]) -> bool {
        self.fields().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

impl Fields for proxy_core::HeaderFields {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for proxy_core::RequestHead {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for proxy_core::ResponseHead {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
    }
}

impl Fields for [(&[u8], &[u8])] {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (*n, *v))
    }
}

impl<const N: usize> Fields for [(&[u8], &[u8]); N] {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (*n, *v))
    }
}

impl Fields for [(&str, &str)] {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }
}

impl<const N: usize> Fields for [(&str, &str); N] {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }
}

impl Fields for [(Vec<u8>, Vec<u8>)] {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl Fields for Vec<(Vec<u8>, Vec<u8>)> {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl<T: Fields + ?Sized> Fields for &T {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        (**self).fields()
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
