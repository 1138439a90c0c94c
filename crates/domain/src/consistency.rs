//! Request-scoped read consistency ("read your writes"): the web tier runs
//! each request inside a [`scope`] carrying the user's read [`Floor`]: per
//! replica set, the lowest position in that set primary's write-ahead log
//! (an LSN, as `u64`) its reads must see. A SQL store's router sends a read
//! only to a replica of its set that has replayed past the set's floor,
//! else to the set's primary. Every write a router performs inside the
//! scope raises its set's floor for the rest of the scope and is reported
//! back ([`Positions`]), for the web tier to hand to the client so that the
//! next request starts from it. LSNs of different replica sets are not
//! comparable: each set has its own WAL, so each keeps its own position.
//!
//! One replica set ([`ReplicaSetId::DEFAULT`]) is all there is until the
//! data is sharded; `Some(lsn)` converts into a floor on that set.
//!
//! The scope is a tokio task-local: it covers the future given to [`scope`]
//! and what that future awaits, but not tasks it spawns (`tokio::spawn`
//! starts outside any scope; wrap their futures in a `scope` of their own,
//! from [`current_floor`], and hand back what they wrote with
//! [`note_writes`]).
//!
//! LSN 0 (`InvalidXLogRecPtr` in PostgreSQL) is never a real position, so it
//! stands for "no floor": positions at 0 are not kept.

use crate::Invalid;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

tokio::task_local! {
    static SCOPE: Arc<ScopeState>;
}

/// The name of a replica set (a primary and its replicas, holding one
/// shard): 1 to 32 characters of `a-z`, `0-9`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplicaSetId(Cow<'static, str>);

impl ReplicaSetId {
    /// The replica set of an unsharded tier, and of every position read
    /// from a cookie of the one-set format: `default`.
    pub const DEFAULT: ReplicaSetId = ReplicaSetId(Cow::Borrowed("default"));

    /// Checks the length and alphabet.
    pub fn parse(s: &str) -> Result<ReplicaSetId, Invalid> {
        let ok_len = (1..=32).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(ReplicaSetId(Cow::Owned(s.to_owned())))
        } else {
            Err(Invalid(
                "a replica set name must be 1 to 32 characters of a-z, 0-9, _ and -".into(),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ReplicaSetId {
    /// [`ReplicaSetId::DEFAULT`].
    fn default() -> Self {
        ReplicaSetId::DEFAULT
    }
}

impl fmt::Display for ReplicaSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ReplicaSetId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        ReplicaSetId::parse(&s)
    }
}

impl From<ReplicaSetId> for String {
    fn from(id: ReplicaSetId) -> String {
        id.0.into_owned()
    }
}

/// One WAL position per replica set: what a scope wrote, or the floor it
/// reads above. Empty by default; a set at 0 is never kept.
///
/// Its text form (the `ryw` cookie's value) is versioned: a bare decimal LSN
/// is the default set's position (the format of one set, which is also
/// what is written when the default set is the only one, so a server of
/// the one-set era reads it during a rolling upgrade); otherwise `v2.`
/// followed by `set:lsn` pairs separated by `.` (`v2.default:1234.eu-1:99`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<ReplicaSetId, u64>);

/// Most sets one text form may name: a forged cookie cannot make a request
/// parse more.
const MAX_SETS: usize = 64;

impl Positions {
    /// Nothing written, no floor.
    pub fn new() -> Positions {
        Positions::default()
    }

    /// `lsn` on `set` alone.
    pub fn at(set: ReplicaSetId, lsn: u64) -> Positions {
        let mut p = Positions::new();
        p.raise(&set, lsn);
        p
    }

    /// The position on `set`, if any.
    pub fn get(&self, set: &ReplicaSetId) -> Option<u64> {
        self.0.get(set).copied()
    }

    /// Raises `set`'s position to `lsn` (it never goes down; 0 is ignored).
    pub fn raise(&mut self, set: &ReplicaSetId, lsn: u64) {
        if lsn == 0 {
            return;
        }
        let at = self.0.entry(set.clone()).or_insert(0);
        *at = (*at).max(lsn);
    }

    /// Raises every set's position to `other`'s where it is further.
    pub fn merge(&mut self, other: &Positions) {
        for (set, lsn) in other.iter() {
            self.raise(set, lsn);
        }
    }

    /// Whether some set of `self` is further than in `other` (or absent
    /// from it): whether `other` misses something `self` knows.
    pub fn is_ahead_of(&self, other: &Positions) -> bool {
        self.iter()
            .any(|(set, lsn)| other.get(set).is_none_or(|o| lsn > o))
    }

    /// Whether no set has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every set and its position, in the order of the sets' names.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaSetId, u64)> {
        self.0.iter().map(|(set, &lsn)| (set, lsn))
    }
}

impl fmt::Display for Positions {
    /// The text form (see [`Positions`]); empty when there is no position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(set, lsn)] = self.iter().collect::<Vec<_>>()[..] {
            if *set == ReplicaSetId::DEFAULT {
                return write!(f, "{lsn}");
            }
        }
        if self.is_empty() {
            return Ok(());
        }
        f.write_str("v2")?;
        for (set, lsn) in self.iter() {
            write!(f, ".{set}:{lsn}")?;
        }
        Ok(())
    }
}

impl FromStr for Positions {
    type Err = Invalid;

    /// Reads the text form (see [`Positions`]); anything else is refused
    /// whole, never half read.
    fn from_str(s: &str) -> Result<Positions, Invalid> {
        let garbage = || Invalid("not a read-your-writes position".into());
        let lsn = |t: &str| -> Result<u64, Invalid> {
            // Digits only: `u64::from_str` also takes a leading `+`.
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(garbage());
            }
            t.parse().map_err(|_| garbage())
        };
        let Some(pairs) = s.strip_prefix("v2.") else {
            return Ok(Positions::at(ReplicaSetId::DEFAULT, lsn(s)?));
        };
        let mut positions = Positions::new();
        for (n, pair) in pairs.split('.').enumerate() {
            let (set, at) = pair.split_once(':').ok_or_else(garbage)?;
            if n >= MAX_SETS {
                return Err(garbage());
            }
            positions.raise(&ReplicaSetId::parse(set)?, lsn(at)?);
        }
        Ok(positions)
    }
}

/// A read floor: the positions a scope's reads must see, or a floor no
/// replica can reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    positions: Positions,
    primary_only: bool,
}

/// A floor no replica can reach in the one-set shorthand: `Some(PRIMARY_ONLY)`
/// converts into [`Floor::primary_only`].
pub const PRIMARY_ONLY: u64 = u64::MAX;

impl Floor {
    /// No constraint until the scope writes.
    pub fn none() -> Floor {
        Floor::default()
    }

    /// Reads go to every set's primary (for work that must see a write made
    /// elsewhere just before, such as a job enqueued by a web server).
    pub fn primary_only() -> Floor {
        Floor {
            positions: Positions::new(),
            primary_only: true,
        }
    }

    /// The floor on `set`: [`PRIMARY_ONLY`] for a primary-only floor.
    pub fn get(&self, set: &ReplicaSetId) -> Option<u64> {
        if self.primary_only {
            return Some(PRIMARY_ONLY);
        }
        self.positions.get(set)
    }

    /// Whether any set has a floor.
    pub fn is_set(&self) -> bool {
        self.primary_only || !self.positions.is_empty()
    }

    /// The positions of the floor (none for a primary-only one).
    pub fn positions(&self) -> &Positions {
        &self.positions
    }
}

impl From<Positions> for Floor {
    fn from(positions: Positions) -> Floor {
        Floor {
            positions,
            primary_only: false,
        }
    }
}

/// The one-set shorthand: `Some(lsn)` is a floor at `lsn` on the default
/// set ([`PRIMARY_ONLY`]: on every set's primary), `None` no floor.
impl From<Option<u64>> for Floor {
    fn from(lsn: Option<u64>) -> Floor {
        match lsn {
            Some(PRIMARY_ONLY) => Floor::primary_only(),
            Some(lsn) => Positions::at(ReplicaSetId::DEFAULT, lsn).into(),
            None => Floor::none(),
        }
    }
}

/// What one scope has seen. Locks rather than a `RefCell`, so the state is
/// `Sync` and a scope's future stays `Send`; no lock is held across an
/// await.
#[derive(Debug, Default)]
struct ScopeState {
    floor: Mutex<Floor>,
    written: Mutex<Positions>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with a read floor: the reads `f` makes (through a consistency-
/// aware store) see at least `floor` (a [`Floor`], [`Positions`], or the
/// one-set shorthand `Option<u64>`). Returns `f`'s output and the highest
/// write position noted during `f` on each replica set (empty if `f` wrote
/// nothing), for the web tier to hand back to the client. Scopes nest: an
/// inner scope starts from its own `floor`, and its writes do not raise the
/// outer one.
pub async fn scope<F: Future>(floor: impl Into<Floor>, f: F) -> (F::Output, Positions) {
    let state = Arc::new(ScopeState {
        floor: Mutex::new(floor.into()),
        written: Mutex::default(),
    });
    let output = SCOPE.scope(Arc::clone(&state), f).await;
    let written = std::mem::take(&mut *lock(&state.written));
    (output, written)
}

/// The read floor of the current scope on `set`: the position a read on
/// that set must see. `None` outside a scope, and inside one that has no
/// floor on `set` yet.
pub fn read_floor(set: &ReplicaSetId) -> Option<u64> {
    SCOPE.try_with(|s| lock(&s.floor).get(set)).ok().flatten()
}

/// The current scope's whole floor ([`Floor::none`] outside a scope): to
/// carry into a task of its own.
pub fn current_floor() -> Floor {
    SCOPE.try_with(|s| lock(&s.floor).clone()).unwrap_or_default()
}

/// Whether the current scope has a floor on any set.
pub fn has_floor() -> bool {
    SCOPE.try_with(|s| lock(&s.floor).is_set()).unwrap_or(false)
}

/// Whether the caller runs inside a [`scope`]: a store can skip measuring
/// the LSN of a write when nobody would note it.
pub fn in_scope() -> bool {
    SCOPE.try_with(|_| ()).is_ok()
}

/// Notes that a write on `set` reached `lsn`: the floor of the rest of the
/// scope on `set` is raised to it (it never goes down), and [`scope`]
/// reports the highest one per set. Does nothing outside a scope.
pub fn note_write(set: &ReplicaSetId, lsn: u64) {
    note_writes(&Positions::at(set.clone(), lsn));
}

/// [`note_write`] for each of `written`'s positions (what a task of its own
/// wrote, say).
pub fn note_writes(written: &Positions) {
    let _ = SCOPE.try_with(|s| {
        lock(&s.floor).positions.merge(written);
        lock(&s.written).merge(written);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> ReplicaSetId {
        ReplicaSetId::parse(name).unwrap()
    }

    fn default_floor() -> Option<u64> {
        read_floor(&ReplicaSetId::DEFAULT)
    }

    /// The default set's position of what a scope wrote.
    fn at_default(p: &Positions) -> Option<u64> {
        p.get(&ReplicaSetId::DEFAULT)
    }

    fn note(lsn: u64) {
        note_write(&ReplicaSetId::DEFAULT, lsn)
    }

    #[test]
    fn outside_a_scope_there_is_no_floor_and_notes_are_ignored() {
        assert_eq!(default_floor(), None);
        assert!(!in_scope());
        assert!(!has_floor());
        note(42);
        assert_eq!(default_floor(), None);
        assert_eq!(current_floor(), Floor::none());
    }

    #[tokio::test]
    async fn a_scope_carries_its_floor() {
        let (floor, written) = scope(Some(7), async { (default_floor(), in_scope()) }).await;
        assert_eq!(floor, (Some(7), true));
        assert!(written.is_empty(), "no write, nothing to hand back");
        let ((floor, inside), _) = scope(None, async { (default_floor(), in_scope()) }).await;
        assert_eq!((floor, inside), (None, true));
        assert_eq!(default_floor(), None, "the scope ended");
    }

    #[tokio::test]
    async fn writes_raise_the_floor_and_are_reported() {
        let (seen, written) = scope(Some(100), async {
            let mut seen = vec![default_floor()];
            note(50); // below the floor: the floor stays
            seen.push(default_floor());
            note(300);
            seen.push(default_floor());
            tokio::task::yield_now().await;
            note(200); // an older write does not lower it
            seen.push(default_floor());
            seen
        })
        .await;
        assert_eq!(seen, vec![Some(100), Some(100), Some(300), Some(300)]);
        assert_eq!(at_default(&written), Some(300), "the highest write");

        let (_, written) = scope(Some(100), async { note(50) }).await;
        assert_eq!(
            at_default(&written),
            Some(50),
            "writes are reported even below the floor"
        );
    }

    #[tokio::test]
    async fn each_replica_set_has_its_own_floor() {
        let (eu, us) = (set("eu"), set("us"));
        let floor = Positions::at(eu.clone(), 100);
        let (seen, written) = scope(floor, async {
            let before = (read_floor(&eu), read_floor(&us));
            note_write(&us, 40); // the sets' LSNs do not compare
            note_write(&eu, 90);
            (before, (read_floor(&eu), read_floor(&us)), has_floor())
        })
        .await;
        assert_eq!(seen, ((Some(100), None), (Some(100), Some(40)), true));
        assert_eq!((written.get(&eu), written.get(&us)), (Some(90), Some(40)));
        assert_eq!(written.get(&ReplicaSetId::DEFAULT), None);
    }

    #[tokio::test]
    async fn a_primary_only_floor_holds_on_every_set() {
        for floor in [Floor::primary_only(), Some(PRIMARY_ONLY).into()] {
            let (seen, _) = scope(floor, async {
                note(5);
                (default_floor(), read_floor(&set("eu")), has_floor())
            })
            .await;
            assert_eq!(seen, (Some(PRIMARY_ONLY), Some(PRIMARY_ONLY), true));
        }
    }

    #[tokio::test]
    async fn scopes_nest_and_tasks_are_isolated() {
        let (inner, outer_written) = scope(Some(10), async {
            let (floor, inner_written) = scope(Some(20), async {
                note(30);
                default_floor()
            })
            .await;
            assert_eq!((floor, at_default(&inner_written)), (Some(30), Some(30)));
            // The inner write did not touch the outer scope.
            let outer_floor = default_floor();
            // A spawned task runs outside any scope.
            let spawned = tokio::spawn(async { (default_floor(), in_scope()) })
                .await
                .unwrap();
            (outer_floor, spawned)
        })
        .await;
        assert_eq!(inner, (Some(10), (None, false)));
        assert!(outer_written.is_empty());
    }

    #[tokio::test]
    async fn a_task_of_its_own_carries_the_floor_and_hands_back_its_writes() {
        let eu = set("eu");
        let (floor, written) = scope(Some(10), async {
            let task = scope(current_floor(), async {
                note_write(&set("eu"), 70);
                default_floor()
            });
            let (floor, written) = tokio::spawn(task).await.unwrap();
            note_writes(&written);
            (floor, read_floor(&eu))
        })
        .await;
        assert_eq!(floor, (Some(10), Some(70)));
        assert_eq!(written, Positions::at(eu, 70));
    }

    #[tokio::test]
    async fn concurrent_scopes_do_not_mix() {
        let tasks: Vec<_> = (1..=8u64)
            .map(|i| {
                tokio::spawn(scope(Some(i), async move {
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                        assert_eq!(default_floor(), Some(i));
                    }
                    note(i * 1000);
                    tokio::task::yield_now().await;
                    default_floor()
                }))
            })
            .collect();
        for (i, t) in (1..=8u64).zip(tasks) {
            let (floor, written) = t.await.unwrap();
            assert_eq!((floor, at_default(&written)), (Some(i * 1000), Some(i * 1000)));
        }
    }

    #[test]
    fn a_scope_is_send() {
        fn send<T: Send>(_: T) {}
        send(scope(None, async { note(1) }));
    }

    #[test]
    fn replica_set_names_are_checked() {
        assert_eq!(ReplicaSetId::DEFAULT.as_str(), "default");
        assert_eq!(ReplicaSetId::default(), ReplicaSetId::DEFAULT);
        assert_eq!(set("eu-west_2").to_string(), "eu-west_2");
        for bad in ["", "EU", "eu.1", "a:b", "é", &"x".repeat(33)] {
            assert!(ReplicaSetId::parse(bad).is_err(), "{bad:?}");
        }
        let id: ReplicaSetId = serde_json::from_str(r#""us""#).unwrap();
        assert_eq!(id, set("us"));
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""us""#);
        assert!(serde_json::from_str::<ReplicaSetId>(r#""U S""#).is_err());
    }

    #[test]
    fn positions_keep_the_highest_per_set() {
        let (a, b) = (set("a"), set("b"));
        let mut p = Positions::at(a.clone(), 10);
        p.raise(&a, 5);
        p.raise(&b, 0);
        assert_eq!(p, Positions::at(a.clone(), 10), "never down, 0 never kept");
        let mut q = Positions::at(b.clone(), 7);
        q.raise(&a, 9);
        assert!(q.is_ahead_of(&p), "b is new");
        assert!(!Positions::at(a.clone(), 10).is_ahead_of(&p));
        assert!(Positions::at(a.clone(), 11).is_ahead_of(&p));
        assert!(!Positions::new().is_ahead_of(&p));
        p.merge(&q);
        assert_eq!(p.iter().collect::<Vec<_>>(), [(&a, 10), (&b, 7)]);
    }

    #[test]
    fn the_text_form_of_one_set_is_the_bare_lsn_of_old() {
        let p = Positions::at(ReplicaSetId::DEFAULT, 123_456);
        assert_eq!(p.to_string(), "123456");
        assert_eq!("123456".parse::<Positions>(), Ok(p));
        assert_eq!(
            "v2.default:123456".parse::<Positions>().unwrap().to_string(),
            "123456"
        );
        assert_eq!(Positions::new().to_string(), "");
        assert_eq!("0".parse::<Positions>(), Ok(Positions::new()), "0: no floor");
        assert_eq!(
            u64::MAX.to_string().parse::<Positions>(),
            Ok(Positions::at(ReplicaSetId::DEFAULT, u64::MAX))
        );
    }

    #[test]
    fn the_text_form_of_several_sets_is_versioned_and_reads_back() {
        let mut p = Positions::at(ReplicaSetId::DEFAULT, 5);
        p.raise(&set("eu-1"), 99);
        let text = p.to_string();
        assert_eq!(text, "v2.default:5.eu-1:99");
        assert_eq!(text.parse::<Positions>(), Ok(p));
        let only_eu = Positions::at(set("eu"), 7);
        assert_eq!(only_eu.to_string(), "v2.eu:7");
        assert_eq!("v2.eu:7".parse::<Positions>(), Ok(only_eu));
        assert_eq!(
            "v2.eu:7.eu:9".parse::<Positions>(),
            Ok(Positions::at(set("eu"), 9)),
            "a set named twice keeps its highest"
        );
        // Every byte of the form is a valid cookie octet.
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b",;\"\\".contains(&b)));
    }

    #[test]
    fn garbage_is_refused_whole() {
        let many = format!("v2{}", (0..65).map(|i| format!(".s{i}:1")).collect::<String>());
        let under = format!("v2{}", (0..64).map(|i| format!(".s{i}:1")).collect::<String>());
        assert_eq!(under.parse::<Positions>().map(|p| p.iter().count()), Ok(64));
        for bad in [
            "",
            " 5",
            "5 ",
            "+5",
            "-5",
            "0x10",
            "1e3",
            "18446744073709551616",
            "12a",
            "v2",
            "v2.",
            "v2:5",
            "v2.default",
            "v2.default:",
            "v2.:5",
            "v2.default:5.",
            "v2.default:x",
            "v2.Default:5",
            "v2.default:5.eu:+1",
            "v3.default:5",
            "v2.default:5;x",
            &many,
        ] {
            assert!(bad.parse::<Positions>().is_err(), "{bad:?}");
        }
    }
}
