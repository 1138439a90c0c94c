//! The answer cache: the fast path for the queries nearly every resolver
//! sends (one question of class IN, perhaps an OPT with nothing but a
//! client subnet), which skips decoding and encoding with `hickory-proto`.
//!
//! The first such query of a kind (its name in lower case, type, flags,
//! size limit, the subnet's family and source prefix, and for `www` and
//! `cdn` the region, site and scope it was placed in) is answered by
//! [`Zone::respond`]'s full path, and its bytes are kept. The next one is
//! answered by copying them and patching what differs: the id, the
//! question's name as asked (its case), and the subnet's address bytes,
//! which are the answer's last bytes (the OPT is the last record, the
//! subnet its only option). A query the strict scan here does not take in
//! full goes the full way. Health changes need no invalidation: the site
//! chosen is part of the key.

use crate::answer::{Answer, LocatedBy, Transport, Zone};
use crate::geo::{FxBuild, Location, SiteMask};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Arc;

/// Entries kept at most; past this the cache starts over.
const MAX_ENTRIES: usize = 4096;

/// A query's client subnet, as sent.
#[derive(Debug, Clone, Copy)]
struct Subnet<'a> {
    family: u16,
    source: u8,
    addr: &'a [u8],
}

/// What the scan found in a query it takes in full.
struct Scanned<'a> {
    /// The question's name in wire form, as asked.
    qname: &'a [u8],
    qtype: u16,
    /// RD and CD, which the answer copies.
    flags: (u8, u8),
    /// The OPT's payload size, when there is one.
    edns: Option<u16>,
    subnet: Option<Subnet<'a>>,
}

/// Takes the plain queries only: QR=0, QUERY, no TC, one question of class
/// IN with a name of letters, digits, `-` and `_` (no compression), at most
/// one additional record which is an OPT of version 0 with no flag but DO
/// and no option but a well-formed client subnet, and nothing after it.
fn scan(p: &[u8]) -> Option<Scanned<'_>> {
    if p.len() < 17 || p[2] & 0xfa != 0 || p[3] & 0x4f != 0 {
        // QR, opcode, AA, TC; Z, and a request's RCODE must be 0.
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let additional = count(10);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || additional > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 || i + 1 + len > p.len() {
            return None;
        }
        if !p[i + 1..i + 1 + len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        i += 1 + len;
    }
    if i - 12 > 255 || i + 4 > p.len() {
        return None;
    }
    let qname = &p[12..i];
    let qtype = count(i);
    if count(i + 2) != 1 {
        return None;
    }
    i += 4;
    let mut scanned = Scanned {
        qname,
        qtype,
        flags: (p[2] & 0x01, p[3] & 0x10),
        edns: None,
        subnet: None,
    };
    if additional == 0 {
        return (i == p.len()).then_some(scanned);
    }
    // OPT: root name, type 41, class = payload, TTL = ext-rcode, version,
    // flags; then the options.
    let opt = p.get(i..i + 11)?;
    if opt[0] != 0 || opt[1..3] != [0, 41] || opt[5] != 0 || opt[6] != 0 || opt[7] & 0x7f != 0 || opt[8] != 0
    {
        return None;
    }
    scanned.edns = Some(u16::from_be_bytes([opt[3], opt[4]]));
    let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
    let rdata = &p[i + 11..];
    if rdata.len() != rdlen {
        return None;
    }
    if rdlen == 0 {
        return Some(scanned);
    }
    // Exactly one option, a client subnet.
    if rdlen < 8
        || rdata[0..2] != [0, 8]
        || usize::from(u16::from_be_bytes([rdata[2], rdata[3]])) != rdlen - 4
    {
        return None;
    }
    let family = u16::from_be_bytes([rdata[4], rdata[5]]);
    let (source, scope) = (rdata[6], rdata[7]);
    let width = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    let addr = &rdata[8..];
    if source > width || scope != 0 || addr.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    // No bit set past the source prefix.
    if source % 8 != 0 && addr[addr.len() - 1] & (0xff >> (source % 8)) != 0 {
        return None;
    }
    scanned.subnet = Some(Subnet { family, source, addr });
    Some(scanned)
}

/// What distinguishes one cached answer from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: Vec<u8>,
    qtype: u16,
    flags: (u8, u8),
    /// The largest answer allowed (the transport and the client decide).
    limit: usize,
    edns: bool,
    subnet: Option<(u16, u8)>,
    /// For `www` and `cdn`: region, site, scope, located by the subnet.
    geo: Option<(usize, usize, u8, bool)>,
}

/// A kept answer.
pub struct Cached {
    key: Key,
    bytes: Vec<u8>,
    truncated: Vec<u8>,
    /// The client subnet's address bytes at the end of the answer (0: the
    /// answer carries no subnet).
    subnet_tail: usize,
    pub(crate) meta: Meta,
    /// The metric handles of the answer, filled at its first count.
    pub(crate) counters: std::sync::OnceLock<crate::metrics::Counters>,
}

/// The parts of an [`Answer`] besides its bytes.
#[derive(Clone)]
pub(crate) struct Meta {
    pub rcode: hickory_proto::op::ResponseCode,
    pub qtype: Option<hickory_proto::rr::RecordType>,
    pub geo: Option<(Location, usize, LocatedBy)>,
    pub rrl_key: u64,
}

/// One answering thread's cache (no lock: each thread has its own).
#[derive(Default)]
pub struct AnswerCache {
    entries: HashMap<u64, Arc<Cached>, FxBuild>,
    hits: u64,
}

impl AnswerCache {
    /// Answers kept so far, and the hits.
    pub fn stats(&self) -> (usize, u64) {
        (self.entries.len(), self.hits)
    }
}

impl Zone {
    /// [`Zone::respond`], through `cache` for the plain queries.
    pub fn respond_cached(
        &self,
        cache: &mut AnswerCache,
        packet: &[u8],
        source: IpAddr,
        transport: Transport,
        states: (SiteMask, SiteMask),
    ) -> Option<Answer> {
        let Some(q) = scan(packet) else {
            return self.respond(packet, source, transport, states);
        };
        let mut name = q.qname.to_vec();
        name.make_ascii_lowercase();
        let geo = if self.is_geo_wire(&name) {
            let (location, by) = match q.subnet {
                Some(s) if s.source > 0 => {
                    let addr = subnet_addr(s)?;
                    (self.geo.locate(addr), true)
                }
                _ => (self.geo.locate(source), false),
            };
            let site = self.geo.choose(location.region, states.0, states.1);
            Some((location.region, site, location.scope, by))
        } else {
            None
        };
        let key = Key {
            name,
            qtype: q.qtype,
            flags: q.flags,
            limit: self.limit(transport, q.edns),
            edns: q.edns.is_some(),
            subnet: q.subnet.map(|s| (s.family, s.source)),
            geo,
        };
        let hash = FxBuild::default().hash_one(&key);
        if let Some(hit) = cache.entries.get(&hash).filter(|c| c.key == key) {
            cache.hits += 1;
            let mut bytes = hit.bytes.clone();
            patch(
                &mut bytes,
                packet,
                q.qname,
                &q.subnet.map_or(&[][..], |s| s.addr)[..hit.subnet_tail],
            );
            return Some(Answer::from_cache(bytes, hit.clone()));
        }
        let answer = self.respond(packet, source, transport, states)?;
        // Keep it only if it is what this key says (the full path placed
        // the client where the scan did).
        let same_place = match (&answer.geo, &key.geo) {
            (Some((l, s, _)), Some((r, site, scope, _))) => l.region == *r && s == site && l.scope == *scope,
            (None, None) => true,
            _ => false,
        };
        if same_place {
            if cache.entries.len() >= MAX_ENTRIES {
                cache.entries.clear();
            }
            let subnet = q.subnet.map_or(&[][..], |s| s.addr);
            let subnet_tail = if answer.ends_with_subnet() && answer.bytes.ends_with(subnet) {
                subnet.len()
            } else {
                0
            };
            let cached = Arc::new(Cached {
                key,
                bytes: answer.bytes.clone(),
                truncated: answer.truncated(),
                subnet_tail,
                meta: answer.meta(),
                counters: std::sync::OnceLock::new(),
            });
            cache.entries.insert(hash, cached.clone());
            return Some(Answer::from_cache(answer.bytes, cached));
        }
        Some(answer)
    }
}

impl Cached {
    /// The truncated form of the kept answer, made `answer`'s (one built
    /// from this entry for a query): its id, question and subnet.
    pub(crate) fn truncated_like(&self, answer: &[u8]) -> Vec<u8> {
        let mut bytes = self.truncated.clone();
        let q = self.key.name.len();
        let tail = &answer[answer.len() - self.subnet_tail..];
        patch(&mut bytes, answer, &answer[12..12 + q], tail);
        bytes
    }
}

/// A kept answer made this query's: the id of `packet`, the question's
/// name as asked, the subnet's address bytes at the end.
fn patch(bytes: &mut [u8], packet: &[u8], qname: &[u8], subnet_tail: &[u8]) {
    bytes[0..2].copy_from_slice(&packet[0..2]);
    bytes[12..12 + qname.len()].copy_from_slice(qname);
    let n = bytes.len();
    bytes[n - subnet_tail.len()..].copy_from_slice(subnet_tail);
}

fn subnet_addr(s: Subnet<'_>) -> Option<IpAddr> {
    match s.family {
        1 => {
            let mut o = [0u8; 4];
            o[..s.addr.len()].copy_from_slice(s.addr);
            Some(IpAddr::from(o))
        }
        2 => {
            let mut o = [0u8; 16];
            o[..s.addr.len()].copy_from_slice(s.addr);
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}
