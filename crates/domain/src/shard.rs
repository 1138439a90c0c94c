//! Sharding's pure parts: ids that carry their logical shard, and the
//! versioned map of logical shards to the replica sets that hold them.
//!
//! **Ids** (Instagram's layout): 64 bits: the sign bit 0 (PostgreSQL's
//! BIGINT is signed), 40 bits of milliseconds since [`ID_EPOCH_MS`] (34.8
//! years; Instagram's 41-bit field, whose top bit stays 0 that long), 13
//! bits of logical shard, 10 bits of sequence. They sort by time, so a cursor over ids pages
//! correctly across shards, and any id names its shard without a lookup.
//! A user's logical shard is chosen at sign-up; the user's photos and the
//! feed entries written for the user carry the same one, so everything a
//! user owns lives together. They exceed 2^53 within weeks of the epoch:
//! JavaScript's numbers cannot hold them, so when the store adopts them the
//! API must carry ids as strings (as Twitter's `id_str` does) and the page
//! must never parse them as numbers.
//!
//! **Logical shards**: [`LOGICAL_SHARDS`] = 8192, the 13 bits. Many small
//! logical shards on few physical replica sets (Notion's 480 on 32
//! databases, Instagram's thousands on a dozen) make resharding a move of
//! whole logical shards from one set to another, never a split of one:
//! the system can grow to 8192 replica sets before ids must change, and a
//! hot logical shard can be given a set of its own. 8192 and not more
//! because the bits come out of the sequence (1024 ids per millisecond per
//! replica set) and the timestamp.
//!
//! **The map** ([`ShardMap`]): which replica set holds each logical shard,
//! as ranges, with an epoch that every change raises; routers follow it
//! by epoch.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bits of the logical shard in an id.
const SHARD_BITS: u32 = 13;
/// Bits of the sequence in an id.
const SEQUENCE_BITS: u32 = 10;
/// Bits of the timestamp in an id (under the sign bit).
const TIME_BITS: u32 = 40;

/// The number of logical shards: every id has 13 bits for its shard.
pub const LOGICAL_SHARDS: u16 = 1 << SHARD_BITS;
/// Ids per millisecond per replica set (10 bits).
pub const IDS_PER_MILLI: u16 = 1 << SEQUENCE_BITS;
/// The ids' epoch: 2026-01-01T00:00:00Z, in milliseconds since the Unix
/// epoch. Ids run out 2^40 ms (34.8 years) later.
pub const ID_EPOCH_MS: i64 = 1_767_225_600_000;

/// A logical shard: `0..LOGICAL_SHARDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct LogicalShard(u16);

impl LogicalShard {
    /// Shard `n`, if `n < LOGICAL_SHARDS`.
    pub fn new(n: u16) -> Option<LogicalShard> {
        (n < LOGICAL_SHARDS).then_some(LogicalShard(n))
    }

    /// Its number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The logical shard of a new user named `username`: a hash of the
    /// name (FNV-1a, stable across processes and releases), so sign-ups
    /// spread evenly and any web server places a name the same way.
    pub fn for_username(username: &str) -> LogicalShard {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in username.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Fold the high bits in: FNV's low bits alone spread less well.
        LogicalShard(((hash ^ (hash >> 32)) % u64::from(LOGICAL_SHARDS)) as u16)
    }
}

impl TryFrom<u16> for LogicalShard {
    type Error = String;
    fn try_from(n: u16) -> Result<Self, String> {
        LogicalShard::new(n).ok_or_else(|| format!("logical shard {n} is not below {LOGICAL_SHARDS}"))
    }
}

impl From<LogicalShard> for u16 {
    fn from(s: LogicalShard) -> u16 {
        s.0
    }
}

impl fmt::Display for LogicalShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An id in the sharded layout (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardedId(i64);

impl ShardedId {
    /// The id made at `unix_ms` in `shard` with sequence `sequence` (taken
    /// modulo [`IDS_PER_MILLI`]); `None` before the epoch or after its 69
    /// years.
    pub fn compose(unix_ms: i64, shard: LogicalShard, sequence: u64) -> Option<ShardedId> {
        let since = unix_ms.checked_sub(ID_EPOCH_MS)?;
        if !(0..1i64 << TIME_BITS).contains(&since) {
            return None;
        }
        let seq = (sequence % u64::from(IDS_PER_MILLI)) as i64;
        Some(ShardedId(
            since << (SHARD_BITS + SEQUENCE_BITS) | i64::from(shard.0) << SEQUENCE_BITS | seq,
        ))
    }

    /// Reads an id: any non-negative 64-bit integer is one.
    pub fn from_raw(raw: i64) -> Option<ShardedId> {
        (raw >= 0).then_some(ShardedId(raw))
    }

    /// The integer.
    pub fn raw(self) -> i64 {
        self.0
    }

    /// The logical shard it was made in.
    pub fn shard(self) -> LogicalShard {
        LogicalShard(((self.0 >> SEQUENCE_BITS) & i64::from(LOGICAL_SHARDS - 1)) as u16)
    }

    /// When it was made, in milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        (self.0 >> (SHARD_BITS + SEQUENCE_BITS)) + ID_EPOCH_MS
    }

    /// Its sequence number within its millisecond.
    pub fn sequence(self) -> u16 {
        (self.0 & i64::from(IDS_PER_MILLI - 1)) as u16
    }
}

/// A contiguous range of logical shards held by one replica set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRange {
    /// First logical shard of the range.
    pub first: LogicalShard,
    /// Last logical shard of the range (inclusive).
    pub last: LogicalShard,
    /// The replica set that holds them.
    pub set: String,
}

/// Why a shard map, or a change to one, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// No replica set at all.
    #[error("a shard map needs at least one replica set")]
    NoSets,
    /// A range names a set the map does not list.
    #[error("replica set {0:?} is not in the map")]
    UnknownSet(String),
    /// A set is listed twice.
    #[error("replica set {0:?} is listed twice")]
    DuplicateSet(String),
    /// The ranges do not cover every logical shard exactly once, in order.
    #[error("the ranges must cover logical shards 0 to 8191 once, in order: {0}")]
    Coverage(String),
    /// A range whose first shard is after its last.
    #[error("range {first}..={last} is empty")]
    EmptyRange { first: u16, last: u16 },
}

/// Which replica set holds each logical shard, at an epoch (see the
/// module's documentation). Valid by construction: build it with
/// [`ShardMap::even`], change it with [`ShardMap::moved`], or check a
/// deserialized one with [`ShardMap::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMap {
    /// Raised by every change: a router holding an older map reloads.
    pub epoch: u64,
    /// The replica sets, in the order they joined.
    pub sets: Vec<String>,
    /// Every logical shard once, in order, merged where adjacent ranges
    /// share a set.
    pub ranges: Vec<ShardRange>,
}

impl ShardMap {
    /// Epoch 1: the logical shards split into as many contiguous, equal
    /// (to one shard) ranges as there are `sets`, in order.
    pub fn even(sets: &[&str]) -> Result<ShardMap, ShardMapError> {
        if sets.is_empty() {
            return Err(ShardMapError::NoSets);
        }
        let n = sets.len() as u32;
        let total = u32::from(LOGICAL_SHARDS);
        let ranges = sets
            .iter()
            .enumerate()
            .filter_map(|(i, set)| {
                let (i, next) = (i as u32, i as u32 + 1);
                let (first, end) = (i * total / n, next * total / n);
                (first < end).then(|| ShardRange {
                    first: LogicalShard(first as u16),
                    last: LogicalShard((end - 1) as u16),
                    set: (*set).to_owned(),
                })
            })
            .collect();
        let map = ShardMap {
            epoch: 1,
            sets: sets.iter().map(|s| (*s).to_owned()).collect(),
            ranges,
        };
        map.validate()?;
        Ok(map)
    }

    /// Checks the invariants: at least one set, no set twice, every range's
    /// set listed, and the ranges cover every logical shard once, in order.
    pub fn validate(&self) -> Result<(), ShardMapError> {
        if self.sets.is_empty() {
            return Err(ShardMapError::NoSets);
        }
        let mut seen = std::collections::BTreeSet::new();
        for set in &self.sets {
            if !seen.insert(set.as_str()) {
                return Err(ShardMapError::DuplicateSet(set.clone()));
            }
        }
        let mut next: u32 = 0;
        for r in &self.ranges {
            if r.first > r.last {
                return Err(ShardMapError::EmptyRange {
                    first: r.first.0,
                    last: r.last.0,
                });
            }
            if !seen.contains(r.set.as_str()) {
                return Err(ShardMapError::UnknownSet(r.set.clone()));
            }
            if u32::from(r.first.0) != next {
                return Err(ShardMapError::Coverage(format!(
                    "range {}..={} starts where shard {next} was expected",
                    r.first, r.last
                )));
            }
            next = u32::from(r.last.0) + 1;
        }
        if next != u32::from(LOGICAL_SHARDS) {
            return Err(ShardMapError::Coverage(format!(
                "shards from {next} on are in no range"
            )));
        }
        Ok(())
    }

    /// The replica set holding `shard`.
    pub fn set_of(&self, shard: LogicalShard) -> &str {
        // Ranges are sorted and cover every shard: the last range starting
        // at or before `shard` holds it.
        let i = self.ranges.partition_point(|r| r.first <= shard);
        &self.ranges[i.saturating_sub(1)].set
    }

    /// The replica set holding the data of `id`.
    pub fn set_of_id(&self, id: ShardedId) -> &str {
        self.set_of(id.shard())
    }

    /// Logical shards held per set (every listed set, 0 for an empty one).
    pub fn counts(&self) -> BTreeMap<&str, u32> {
        let mut counts: BTreeMap<&str, u32> = self.sets.iter().map(|s| (s.as_str(), 0)).collect();
        for r in &self.ranges {
            *counts.entry(r.set.as_str()).or_default() += u32::from(r.last.0 - r.first.0) + 1;
        }
        counts
    }

    /// The map at the next epoch with the logical shards `first..=last`
    /// held by `to` (a listed set, or a new one, which joins the list).
    pub fn moved(
        &self,
        first: LogicalShard,
        last: LogicalShard,
        to: &str,
    ) -> Result<ShardMap, ShardMapError> {
        if first > last {
            return Err(ShardMapError::EmptyRange {
                first: first.0,
                last: last.0,
            });
        }
        let mut sets = self.sets.clone();
        if !sets.iter().any(|s| s == to) {
            sets.push(to.to_owned());
        }
        // Shard by shard (8192 of them), then back into ranges.
        let owners: Vec<&str> = (0..LOGICAL_SHARDS)
            .map(|n| {
                let s = LogicalShard(n);
                if (first..=last).contains(&s) {
                    to
                } else {
                    self.set_of(s)
                }
            })
            .collect();
        let mut merged: Vec<ShardRange> = Vec::new();
        for (n, owner) in owners.into_iter().enumerate() {
            let s = LogicalShard(n as u16);
            match merged.last_mut() {
                Some(r) if r.set == owner => r.last = s,
                _ => merged.push(ShardRange {
                    first: s,
                    last: s,
                    set: owner.to_owned(),
                }),
            }
        }
        let map = ShardMap {
            epoch: self.epoch + 1,
            sets,
            ranges: merged,
        };
        map.validate()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(n: u16) -> LogicalShard {
        LogicalShard::new(n).unwrap()
    }

    #[test]
    fn ids_carry_time_shard_and_sequence() {
        let at = ID_EPOCH_MS + 86_400_000 * 400 + 123;
        let id = ShardedId::compose(at, shard(8191), 1023 + 1024).unwrap();
        assert_eq!((id.unix_ms(), id.shard(), id.sequence()), (at, shard(8191), 1023));
        assert!(id.raw() > 0);
        // Time orders ids, whatever their shard.
        let later = ShardedId::compose(at + 1, shard(0), 0).unwrap();
        assert!(later > id);
        // Before the epoch, or past its 34.8 years: no id.
        assert_eq!(ShardedId::compose(ID_EPOCH_MS - 1, shard(0), 0), None);
        assert_eq!(ShardedId::compose(ID_EPOCH_MS + (1 << 40), shard(0), 0), None);
        let last = ShardedId::compose(ID_EPOCH_MS + (1 << 40) - 1, shard(8191), 1023).unwrap();
        assert_eq!(last.raw(), i64::MAX);
        assert_eq!(ShardedId::from_raw(-1), None);
        assert_eq!(ShardedId::from_raw(id.raw()), Some(id));
    }

    #[test]
    fn logical_shards_are_bounded() {
        assert_eq!(LogicalShard::new(8191).map(LogicalShard::get), Some(8191));
        assert_eq!(LogicalShard::new(8192), None);
        assert!(serde_json::from_str::<LogicalShard>("8192").is_err());
        assert_eq!(serde_json::from_str::<LogicalShard>("7").unwrap(), shard(7));
    }

    #[test]
    fn usernames_spread_evenly_over_logical_shards() {
        // 100 000 names over 8192 shards, then over 4 equal ranges.
        let map = ShardMap::even(&["a", "b", "c", "d"]).unwrap();
        let mut per_set: BTreeMap<String, u32> = BTreeMap::new();
        let mut per_shard = vec![0u32; usize::from(LOGICAL_SHARDS)];
        for i in 0..100_000 {
            let s = LogicalShard::for_username(&format!("user{i}"));
            per_shard[usize::from(s.get())] += 1;
            *per_set.entry(map.set_of(s).to_owned()).or_default() += 1;
        }
        for (set, n) in &per_set {
            assert!((23_500..=26_500).contains(n), "{set}: {n} of 100000");
        }
        let max = per_shard.iter().max().unwrap();
        assert!(*max < 40, "a logical shard got {max} of 100000 (12.2 expected)");
        // Stable: the same name, the same shard.
        assert_eq!(
            LogicalShard::for_username("alice"),
            LogicalShard::for_username("alice")
        );
    }

    #[test]
    fn an_even_map_covers_every_shard() {
        let map = ShardMap::even(&["a", "b", "c"]).unwrap();
        assert_eq!(map.epoch, 1);
        assert_eq!(map.counts().values().sum::<u32>(), 8192);
        assert_eq!(map.set_of(shard(0)), "a");
        assert_eq!(map.set_of(shard(2729)), "a");
        assert_eq!(map.set_of(shard(2730)), "b");
        assert_eq!(map.set_of(shard(8191)), "c");
        assert_eq!(ShardMap::even(&[]), Err(ShardMapError::NoSets));
        assert!(matches!(
            ShardMap::even(&["a", "a"]),
            Err(ShardMapError::DuplicateSet(_))
        ));
    }

    #[test]
    fn moving_shards_raises_the_epoch_and_keeps_coverage() {
        let map = ShardMap::even(&["a", "b"]).unwrap();
        // Split a hot range onto a new set, inside a's range.
        let m2 = map.moved(shard(100), shard(199), "c").unwrap();
        assert_eq!(m2.epoch, 2);
        assert_eq!(m2.sets, ["a", "b", "c"]);
        assert_eq!(
            (
                m2.set_of(shard(99)),
                m2.set_of(shard(100)),
                m2.set_of(shard(199)),
                m2.set_of(shard(200))
            ),
            ("a", "c", "c", "a")
        );
        assert_eq!(m2.counts()["c"], 100);
        assert_eq!(m2.counts()["a"], 4096 - 100);
        // Move it back: the ranges merge again.
        let m3 = m2.moved(shard(100), shard(199), "a").unwrap();
        assert_eq!(m3.ranges, map.ranges);
        assert_eq!(m3.epoch, 3);
        assert_eq!(m3.counts()["c"], 0);
        // Across a boundary, to an existing set.
        let m4 = map.moved(shard(4000), shard(5000), "a").unwrap();
        assert_eq!((m4.set_of(shard(5000)), m4.set_of(shard(5001))), ("a", "b"));
        assert_eq!(m4.ranges.len(), 2);
        // The whole space.
        let m5 = map.moved(shard(0), shard(8191), "b").unwrap();
        assert_eq!(m5.ranges.len(), 1);
        assert!(map.moved(shard(5), shard(4), "a").is_err());
    }

    #[test]
    fn a_deserialized_map_is_checked() {
        let map = ShardMap::even(&["a", "b"]).unwrap();
        let json = serde_json::to_string(&map).unwrap();
        let back: ShardMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.validate(), Ok(()));
        let mut gap = map.clone();
        gap.ranges[1].first = shard(4097);
        assert!(matches!(gap.validate(), Err(ShardMapError::Coverage(_))));
        let mut short = map.clone();
        short.ranges.pop();
        assert!(matches!(short.validate(), Err(ShardMapError::Coverage(_))));
        let mut unknown = map.clone();
        unknown.ranges[0].set = "z".into();
        assert_eq!(unknown.validate(), Err(ShardMapError::UnknownSet("z".into())));
    }
}
