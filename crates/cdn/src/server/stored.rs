//! The head of a stored object, in the form a hit needs: the freshness facts
//! computed once when the response was stored (so a hit parses nothing),
//! then the fields a client gets, then the edge-only fields (kept for a
//! `304` update and for the freshness rules, never sent).
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! u8 version (1) | u16 status | u8 flags | 5 × u64 (lifetime, initial_age,
//! response_time, stale_while_revalidate, stale_if_error) | u32 length of
//! the client fields | client fields "name: value\r\n"… | edge-only fields …
//! ```
//!
//! The fields were parsed by `proxy-core`'s strict codec before they got
//! here, so no value holds CR or LF and the text splits into lines safely.

use bytes::{BufMut, Bytes};

use super::answer::is_edge_field;
use crate::policy::{Fields, Freshness};

const VERSION: u8 = 1;
const PREFIX: usize = 1 + 2 + 1 + 5 * 8 + 4;

const HEURISTIC: u8 = 1;
const NO_CACHE: u8 = 2;
const REVALIDATE_WHEN_STALE: u8 = 4;
const STALE_FORBIDDEN: u8 = 8;
const IMMUTABLE: u8 = 16;
const HAS_VARY: u8 = 32;

/// Encodes a stored head: `status`, its `freshness`, and the `fields` the
/// stored copy keeps (already filtered by the caller); edge-only fields
/// go after the client's.
pub fn encode<'a>(
    status: u16,
    freshness: &Freshness,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Bytes {
    let mut client = Vec::with_capacity(256);
    let mut edge = Vec::new();
    let mut has_vary = false;
    for (name, value) in fields {
        let out = if is_edge_field(name) {
            &mut edge
        } else {
            &mut client
        };
        has_vary |= name.eq_ignore_ascii_case(b"vary");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let flags = [
        (freshness.heuristic, HEURISTIC),
        (freshness.no_cache, NO_CACHE),
        (freshness.revalidate_when_stale, REVALIDATE_WHEN_STALE),
        (freshness.stale_forbidden, STALE_FORBIDDEN),
        (freshness.immutable, IMMUTABLE),
        (has_vary, HAS_VARY),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0u8, |acc, (_, bit)| acc | bit);
    let mut out = Vec::with_capacity(PREFIX + client.len() + edge.len());
    out.put_u8(VERSION);
    out.put_u16(status);
    out.put_u8(flags);
    for v in [
        freshness.lifetime,
        freshness.initial_age,
        freshness.response_time,
        freshness.stale_while_revalidate,
        freshness.stale_if_error,
    ] {
        out.put_u64(v);
    }
    out.put_u32(client.len() as u32);
    out.extend_from_slice(&client);
    out.extend_from_slice(&edge);
    Bytes::from(out)
}

/// A view of an encoded head. [`StoredHead::parse`] checks the layout once;
/// the accessors then index without checks failing.
#[derive(Debug, Clone, Copy)]
pub struct StoredHead<'a> {
    raw: &'a [u8],
    client_end: usize,
}

impl<'a> StoredHead<'a> {
    /// Reads an encoded head; `None` if it is not one (another version, or
    /// torn: the disk tier's checksums make that unlikely, but a head that
    /// does not parse is a miss, never a panic).
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        if raw.len() < PREFIX || raw[0] != VERSION {
            return None;
        }
        let len = u32::from_be_bytes(raw[PREFIX - 4..PREFIX].try_into().ok()?) as usize;
        let client_end = PREFIX.checked_add(len).filter(|e| *e <= raw.len())?;
        Some(StoredHead { raw, client_end })
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        u16::from_be_bytes([self.raw[1], self.raw[2]])
    }

    fn flag(&self, bit: u8) -> bool {
        self.raw[3] & bit != 0
    }

    fn u64_at(&self, i: usize) -> u64 {
        let at = 4 + i * 8;
        u64::from_be_bytes(self.raw[at..at + 8].try_into().expect("checked length"))
    }

    /// Whether the response had a `Vary` field (else every request matches
    /// its single variant).
    pub fn has_vary(&self) -> bool {
        self.flag(HAS_VARY)
    }

    /// The freshness facts as computed when stored.
    pub fn freshness(&self) -> Freshness {
        Freshness {
            lifetime: self.u64_at(0),
            heuristic: self.flag(HEURISTIC),
            initial_age: self.u64_at(1),
            response_time: self.u64_at(2),
            stale_while_revalidate: self.u64_at(3),
            stale_if_error: self.u64_at(4),
            no_cache: self.flag(NO_CACHE),
            revalidate_when_stale: self.flag(REVALIDATE_WHEN_STALE),
            stale_forbidden: self.flag(STALE_FORBIDDEN),
            immutable: self.flag(IMMUTABLE),
        }
    }

    /// The field lines a client gets, as they go on the wire.
    pub fn client_fields(&self) -> &'a [u8] {
        &self.raw[PREFIX..self.client_end]
    }

    /// Every stored field (the client's and the edge-only ones).
    pub fn all_fields(&self) -> StoredFields<'a> {
        StoredFields(&self.raw[PREFIX..])
    }
}

/// Field lines `name: value\r\n…` read as [`Fields`].
#[derive(Debug, Clone, Copy)]
pub struct StoredFields<'a>(pub &'a [u8]);

impl Fields for StoredFields<'_> {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness() -> Freshness {
        Freshness {
            lifetime: 60,
            heuristic: false,
            initial_age: 3,
            response_time: 1_700_000_000,
            stale_while_revalidate: 30,
            stale_if_error: 300,
            no_cache: false,
            revalidate_when_stale: true,
            stale_forbidden: false,
            immutable: true,
        }
    }

    #[test]
    fn a_head_round_trips_and_splits_edge_only_fields() {
        let fields: [(&[u8], &[u8]); 4] = [
            (b"Content-Type", b"image/jpeg"),
            (b"CDN-Cache-Control", b"max-age=600"),
            (b"ETag", b"\"abc\""),
            (b"Vary", b"Accept-Encoding"),
        ];
        let raw = encode(203, &freshness(), fields.iter().copied());
        let head = StoredHead::parse(&raw).unwrap();
        assert_eq!(head.status(), 203);
        assert_eq!(head.freshness(), freshness());
        assert!(head.has_vary());
        assert_eq!(
            head.client_fields(),
            b"Content-Type: image/jpeg\r\nETag: \"abc\"\r\nVary: Accept-Encoding\r\n"
        );
        let all = head.all_fields();
        assert_eq!(all.value(b"cdn-cache-control"), Some(&b"max-age=600"[..]));
        assert_eq!(all.value(b"etag"), Some(&b"\"abc\""[..]));
        assert_eq!(all.pairs().count(), 4);
    }

    #[test]
    fn what_is_not_an_encoded_head_is_refused() {
        assert!(StoredHead::parse(b"").is_none());
        assert!(StoredHead::parse(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        let raw = encode(200, &freshness(), std::iter::empty());
        assert!(StoredHead::parse(&raw).is_some());
        assert!(StoredHead::parse(&raw[..raw.len() - 1]).is_none(), "a cut prefix");
        let raw = encode(200, &freshness(), [(&b"a"[..], &b"b"[..])].into_iter());
        assert!(StoredHead::parse(&raw[..raw.len() - 1]).is_none(), "torn");
    }
}
