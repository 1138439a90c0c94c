//! The object file: a fixed header, the metadata and head, then the body,
//! each checksummed, so a torn, truncated or corrupt file is recognised.
//!
//! ```text
//! 0   8  magic "SSCDN\0\x01\0"
//! 8   1  flags (bit 0: soft purged; rewritten in place, not checksummed)
//! 9   3  zero
//! 12  4  meta length (u32 LE)
//! 16  8  body length (u64 LE)
//! 24  4  CRC-32 of bytes 12..24 and the meta
//! 28  4  CRC-32 of the body
//! 32     meta: key, variant, url, head (u32 length + bytes each), tag count
//!        (u32) and tags, requested_at, stored_at, fresh_for (u64 seconds +
//!        u32 nanoseconds each, times since the Unix epoch)
//!        then the body
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::store::object::{CacheKey, Object, ObjectMeta};

pub(crate) const MAGIC: &[u8; 8] = b"SSCDN\0\x01\0";
pub(crate) const HEADER_LEN: usize = 32;
/// Offset of the flags byte.
pub(crate) const FLAGS_AT: u64 = 8;
pub(crate) const FLAG_SOFT_PURGED: u8 = 1;

/// Why a file is not a valid object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    Magic,
    Length,
    MetaChecksum,
    BodyChecksum,
    Meta,
}

/// What the header says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) flags: u8,
    pub(crate) meta_len: u64,
    pub(crate) body_len: u64,
    meta_crc: u32,
    body_crc: u32,
    fields: [u8; 12],
}

impl Header {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, Invalid> {
        // Unknown flags and non-zero padding are refused too: every byte
        // outside the checksums is checked.
        if &bytes[..8] != MAGIC || bytes[8] & !FLAG_SOFT_PURGED != 0 || bytes[9..12] != [0; 3] {
            return Err(Invalid::Magic);
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Ok(Header {
            flags: bytes[8],
            meta_len: u32_at(12) as u64,
            body_len: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            meta_crc: u32_at(24),
            body_crc: u32_at(28),
            fields: bytes[12..24].try_into().expect("12 bytes"),
        })
    }

    /// The file length this header implies.
    pub(crate) fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.meta_len + self.body_len
    }

    pub(crate) fn check_meta(&self, meta: &[u8]) -> Result<(), Invalid> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.fields);
        crc.update(meta);
        if crc.finalize() == self.meta_crc {
            Ok(())
        } else {
            Err(Invalid::MetaChecksum)
        }
    }

    pub(crate) fn check_body(&self, body: &[u8]) -> Result<(), Invalid> {
        if crc32fast::hash(body) == self.body_crc {
            Ok(())
        } else {
            Err(Invalid::BodyChecksum)
        }
    }
}

/// The header and meta of `object`'s file (the body follows them).
pub(crate) fn encode(object: &Object, flags: u8) -> Vec<u8> {
    let meta = encode_meta(object);
    let body = object.body();
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[flags, 0, 0, 0]);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[12..24]);
    crc.update(&meta);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&meta);
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    // Times before the epoch do not occur for stored responses; clamp.
    put_duration(out, t.duration_since(UNIX_EPOCH).unwrap_or_default());
}

fn encode_meta(object: &Object) -> Vec<u8> {
    let meta = object.meta();
    let mut out = Vec::new();
    put_bytes(&mut out, object.key().as_bytes());
    put_bytes(&mut out, &meta.variant);
    put_bytes(&mut out, &meta.url);
    put_bytes(&mut out, object.head());
    out.extend_from_slice(&(meta.tags.len() as u32).to_le_bytes());
    for tag in &meta.tags {
        put_bytes(&mut out, tag);
    }
    put_time(&mut out, meta.requested_at);
    put_time(&mut out, meta.stored_at);
    put_duration(&mut out, meta.fresh_for);
    out
}

/// The decoded meta section.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) key: CacheKey,
    pub(crate) head: Bytes,
    pub(crate) meta: ObjectMeta,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Meta);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Invalid> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<Bytes, Invalid> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    fn duration(&mut self) -> Result<Duration, Invalid> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Invalid::Meta);
        }
        Ok(Duration::new(secs, nanos))
    }
    fn time(&mut self) -> Result<SystemTime, Invalid> {
        UNIX_EPOCH.checked_add(self.duration()?).ok_or(Invalid::Meta)
    }
}

/// Decodes a meta section whose checksum was verified.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta, Invalid> {
    let mut r = Reader(bytes);
    let key = CacheKey::from(r.bytes()?);
    let variant = r.bytes()?;
    let url = r.bytes()?;
    let head = r.bytes()?;
    let count = r.u32()?;
    let mut tags = Vec::new();
    for _ in 0..count {
        tags.push(r.bytes()?);
    }
    let requested_at = r.time()?;
    let stored_at = r.time()?;
    let fresh_for = r.duration()?;
    if !r.0.is_empty() {
        return Err(Invalid::Meta);
    }
    Ok(Meta {
        key,
        head,
        meta: ObjectMeta {
            variant,
            url,
            tags,
            requested_at,
            stored_at,
            fresh_for,
        },
    })
}

/// Decodes a whole file, checking its length and both checksums.
pub(crate) fn decode(file: &[u8]) -> Result<(Object, u8), Invalid> {
    let header: &[u8; HEADER_LEN] = file
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Invalid::Length)?;
    let header = Header::parse(header)?;
    if header.file_len() != file.len() as u64 {
        return Err(Invalid::Length);
    }
    let meta_end = HEADER_LEN + header.meta_len as usize;
    let meta = &file[HEADER_LEN..meta_end];
    header.check_meta(meta)?;
    let body = &file[meta_end..];
    header.check_body(body)?;
    let Meta { key, head, meta } = decode_meta(meta)?;
    let object = Object::new(key, meta, head, Bytes::copy_from_slice(body));
    Ok((object, header.flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Object {
        let meta = ObjectMeta::new(UNIX_EPOCH + Duration::new(1_700_000_000, 123))
            .with_requested_at(UNIX_EPOCH + Duration::new(1_699_999_999, 999_999_999))
            .with_fresh_for(Duration::from_millis(1500))
            .with_variant("gzip")
            .with_url("cdn/photos/1")
            .with_tag("photo-1")
            .with_tag("photos");
        Object::new(
            "GET cdn /photos/1".into(),
            meta,
            Bytes::from_static(b"HTTP/1.1 200 OK\r\nVary: accept-encoding\r\n\r\n"),
            Bytes::from_static(b"the body"),
        )
    }

    fn file_of(object: &Object) -> Vec<u8> {
        let mut file = encode(object, 0);
        file.extend_from_slice(object.body());
        file
    }

    #[test]
    fn an_object_survives_the_round_trip() {
        let o = sample();
        let (back, flags) = decode(&file_of(&o)).unwrap();
        assert_eq!(flags, 0);
        assert_eq!(back.key(), o.key());
        assert_eq!(back.meta(), o.meta());
        assert_eq!(back.head(), o.head());
        assert_eq!(back.body(), o.body());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let file = file_of(&sample());
        for len in 0..file.len() {
            assert!(decode(&file[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_err(), "flipped byte {at}");
        }
        let mut extended = file.clone();
        extended.push(0);
        assert_eq!(decode(&extended).unwrap_err(), Invalid::Length);
    }

    #[test]
    fn the_flags_byte_is_outside_the_checksums() {
        let mut file = file_of(&sample());
        file[FLAGS_AT as usize] = FLAG_SOFT_PURGED;
        assert_eq!(decode(&file).unwrap().1, FLAG_SOFT_PURGED);
    }
}
