//! What request and response heads share: the head's bytes with its header
//! fields as ranges into them, the checks both directions make on a head,
//! and the rules that decide how a body is delimited.

use super::HeadError;
use bytes::Bytes;
use std::ops::Range;

/// The header fields of a head, kept as the bytes that arrived with ranges
/// into them: nothing is copied or allocated per field.
#[derive(Debug, Clone)]
pub struct HeaderFields {
    raw: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderFields {
    pub(crate) fn new(raw: Bytes, fields: Vec<(Range<usize>, Range<usize>)>) -> Self {
        HeaderFields { raw, fields }
    }

    /// The whole head as it arrived (start line, fields, blank line).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub(crate) fn slice(&self, r: &Range<usize>) -> &[u8] {
        &self.raw[r.clone()]
    }

    /// The fields (name, value) in the order they arrived.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the head has no field at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The values of the fields named `name` (ASCII case-insensitive).
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the field named `name`.
    pub fn value<'a>(&'a self, name: &'a [u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Whether a comma-separated list field (`Connection`) holds `token`.
    pub fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        self.values(name)
            .any(|v| list_tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
    }
}

/// The elements of a comma-separated header value, trimmed, empty ones
/// skipped.
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// How a message body is delimited: one type for requests and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// What the framing fields of a head declare, before the direction's own
/// rules (a request without either has no body, a response reads to the
/// close) apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declared {
    Nothing,
    Length(u64),
    Chunked,
}

/// Reads the framing fields, refusing every combination two parsers could
/// read differently (the same rules in both directions): `Content-Length`
/// together with `Transfer-Encoding`, several `Content-Length` fields (even
/// equal ones), a length that is not plain digits (`+5`, ` 5 `, `0x5`,
/// `5, 5`), any transfer coding but a lone `chunked`, and
/// `Transfer-Encoding` in an HTTP/1.0 message.
pub(crate) fn declared_framing(fields: &HeaderFields, minor_version: u8) -> Result<Declared, HeadError> {
    let mut te = fields.values(b"transfer-encoding");
    let mut cl = fields.values(b"content-length");
    if let Some(first_te) = te.next() {
        if cl.next().is_some() {
            return Err(HeadError::Invalid("both Content-Length and Transfer-Encoding"));
        }
        if minor_version == 0 {
            return Err(HeadError::Invalid("Transfer-Encoding in an HTTP/1.0 message"));
        }
        if te.next().is_some() || !first_te.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::Invalid(
                "only a lone chunked transfer coding is accepted",
            ));
        }
        return Ok(Declared::Chunked);
    }
    match (cl.next(), cl.next()) {
        (None, _) => Ok(Declared::Nothing),
        (Some(s), None) => parse_length(s)
            .map(Declared::Length)
            .ok_or(HeadError::Invalid("invalid Content-Length")),
        (Some(_), Some(_)) => Err(HeadError::Invalid("several Content-Length headers")),
    }
}

/// A `Content-Length` value: 1 to 19 ASCII digits, nothing else.
pub(crate) fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Checks what `httparse` lets through and a proxy must not: bare LF line
/// ends (a peer may split the message differently) and control characters
/// (but tab) in field values.
pub(crate) fn check_head_bytes<'a>(
    head: &[u8],
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<(), HeadError> {
    if head.first() == Some(&b'\n') || head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        return Err(HeadError::Invalid("bare LF in head"));
    }
    if values.any(|v| v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)) {
        return Err(HeadError::Invalid("invalid header value"));
    }
    Ok(())
}

/// The range of `part` (a sub-slice of `base`) within `base`.
pub(crate) fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Appends `n` in decimal without going through `fmt`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b" 5",
            b"5 ",
            b"0x5",
            b"5,5",
            b"5, 5",
            b"12345678901234567890",
        ] {
            assert_eq!(parse_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn list_tokens_are_trimmed() {
        let t: Vec<&[u8]> = list_tokens(b" keep-alive ,, X-A,close").collect();
        assert_eq!(t, [&b"keep-alive"[..], b"X-A", b"close"]);
    }
}
