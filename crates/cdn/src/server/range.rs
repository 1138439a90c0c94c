//! Range requests answered from a stored full response (RFC 9110 14):
//! one byte range gives `206`, an unsatisfiable one `416`; several ranges,
//! a range that does not parse, another unit or an `If-Range` that does not
//! match give the whole response (`200`), as the RFC allows.

use crate::policy::parse_http_date;

/// What to answer to a request's `Range` for a body of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole body, `200`.
    Full,
    /// Bytes `start..=end`, `206` with `Content-Range: bytes start-end/len`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides the answer for `range` (the request's `Range`, if any) and
/// `if_range`, against a stored response with `etag`, `last_modified` and
/// a body of `len` bytes.
pub fn answer(
    range: Option<&[u8]>,
    if_range: Option<&[u8]>,
    etag: Option<&[u8]>,
    last_modified: Option<&[u8]>,
    len: u64,
) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    if let Some(cond) = if_range {
        if !if_range_holds(cond.trim_ascii(), etag, last_modified) {
            return RangeAnswer::Full;
        }
    }
    let Some(spec) = range.trim_ascii().strip_prefix(b"bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Full;
    }
    let spec = spec.trim_ascii();
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (digits(first), digits(last)) {
        // A suffix: the last N bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (Some(start), last_pos) if last.is_empty() || last_pos.is_some() => {
            if let Some(end) = last_pos {
                if end < start {
                    return RangeAnswer::Full;
                }
            }
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            let end = last_pos.map_or(len - 1, |e| e.min(len - 1));
            RangeAnswer::Partial { start, end }
        }
        _ => RangeAnswer::Full,
    }
}

/// Plain decimal digits, at most 18 of them.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 18 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// `If-Range` (RFC 9110 13.1.5): an entity-tag must match the stored one
/// strongly (no weak tags on either side); a date must equal the stored
/// `Last-Modified` exactly.
fn if_range_holds(cond: &[u8], etag: Option<&[u8]>, last_modified: Option<&[u8]>) -> bool {
    if cond.starts_with(b"\"") {
        return etag.is_some_and(|e| e.trim_ascii() == cond);
    }
    if cond.starts_with(b"W/") {
        return false;
    }
    match (parse_http_date(cond), last_modified.and_then(parse_http_date)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeAnswer::*;
    use super::*;

    fn r(range: &str, len: u64) -> RangeAnswer {
        answer(Some(range.as_bytes()), None, None, None, len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(r("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=90-", 100), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=90-1000", 100), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(r("bytes=99-99", 100), Partial { start: 99, end: 99 });
        assert_eq!(answer(None, None, None, None, 100), Full);
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(r("bytes=100-", 100), Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn what_is_ignored_gets_the_whole_body() {
        for s in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "bytes",
        ] {
            assert_eq!(r(s, 100), Full, "{s}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let a = |cond: &str, etag: Option<&str>| {
            answer(
                Some(b"bytes=0-0"),
                Some(cond.as_bytes()),
                etag.map(str::as_bytes),
                Some(lm.as_bytes()),
                10,
            )
        };
        let part = Partial { start: 0, end: 0 };
        assert_eq!(a("\"v1\"", Some("\"v1\"")), part);
        assert_eq!(a("\"v1\"", Some("\"v2\"")), Full);
        assert_eq!(a("W/\"v1\"", Some("W/\"v1\"")), Full);
        assert_eq!(a("\"v1\"", Some("W/\"v1\"")), Full);
        assert_eq!(a(lm, None), part);
        assert_eq!(a("Sun, 06 Nov 1994 08:49:38 GMT", None), Full);
        assert_eq!(a("garbage", None), Full);
    }
}
