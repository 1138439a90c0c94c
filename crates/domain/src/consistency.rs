//! Request-scoped read consistency ("read your writes"): the web tier runs
//! each request inside a [`scope`] carrying the user's read floor, the
//! lowest position in the primary's write-ahead log (an LSN, as `u64`) its
//! reads must see; the SQL store's router sends a read only to a replica
//! that has replayed past the floor, else to the primary. Every write the
//! router performs inside the scope raises the floor for the rest of the
//! scope and is reported back, for the web tier to hand to the client (in
//! its session) so that the next request starts from it.
//!
//! The scope is a tokio task-local: it covers the future given to [`scope`]
//! and what that future awaits, but not tasks it spawns (`tokio::spawn`
//! starts outside any scope; wrap their futures in a `scope` of their own).
//!
//! LSN 0 (`InvalidXLogRecPtr` in PostgreSQL) is never a real position, so it
//! stands for "no floor" inside.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

tokio::task_local! {
    static SCOPE: Arc<ScopeState>;
}

/// What one scope has seen. Atomics rather than a lock, so the state is
/// `Sync` and a scope's future stays `Send`.
#[derive(Debug, Default)]
struct ScopeState {
    /// The read floor, 0 for none.
    floor: AtomicU64,
    /// The highest write LSN noted, 0 for none.
    written: AtomicU64,
}

/// A floor no replica can reach: reads in a scope with it go to the
/// primary (for work that must see a write made elsewhere just before, such
/// as a job enqueued by a web server).
pub const PRIMARY_ONLY: u64 = u64::MAX;

/// Runs `f` with a read floor: the reads `f` makes (through a consistency-
/// aware store) see at least `floor`, an LSN as `u64`; `None` means no
/// constraint until `f` writes. Returns `f`'s output and the highest write
/// LSN noted during `f` (`None` if `f` wrote nothing), for the web tier to
/// hand back to the client. Scopes nest: an inner scope starts from its own
/// `floor`, and its writes do not raise the outer one.
pub async fn scope<F: Future>(floor: Option<u64>, f: F) -> (F::Output, Option<u64>) {
    let state = Arc::new(ScopeState {
        floor: AtomicU64::new(floor.unwrap_or(0)),
        written: AtomicU64::new(0),
    });
    let output = SCOPE.scope(Arc::clone(&state), f).await;
    let written = state.written.load(Ordering::Acquire);
    (output, (written != 0).then_some(written))
}

/// The read floor of the current scope: the position a read must see.
/// `None` outside a scope, and inside one that has no floor yet.
pub fn read_floor() -> Option<u64> {
    SCOPE
        .try_with(|s| s.floor.load(Ordering::Acquire))
        .ok()
        .filter(|&lsn| lsn != 0)
}

/// Whether the caller runs inside a [`scope`]: a store can skip measuring
/// the LSN of a write when nobody would note it.
pub fn in_scope() -> bool {
    SCOPE.try_with(|_| ()).is_ok()
}

/// Notes that a write reached `lsn`: the floor of the rest of the scope is
/// raised to it (it never goes down), and [`scope`] reports the highest one.
/// Does nothing outside a scope.
pub fn note_write(lsn: u64) {
    let _ = SCOPE.try_with(|s| {
        s.floor.fetch_max(lsn, Ordering::AcqRel);
        s.written.fetch_max(lsn, Ordering::AcqRel);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_scope_there_is_no_floor_and_notes_are_ignored() {
        assert_eq!(read_floor(), None);
        assert!(!in_scope());
        note_write(42);
        assert_eq!(read_floor(), None);
    }

    #[tokio::test]
    async fn a_scope_carries_its_floor() {
        let (floor, written) = scope(Some(7), async { (read_floor(), in_scope()) }).await;
        assert_eq!(floor, (Some(7), true));
        assert_eq!(written, None, "no write, nothing to hand back");
        let ((floor, inside), _) = scope(None, async { (read_floor(), in_scope()) }).await;
        assert_eq!((floor, inside), (None, true));
        assert_eq!(read_floor(), None, "the scope ended");
    }

    #[tokio::test]
    async fn writes_raise_the_floor_and_are_reported() {
        let (seen, written) = scope(Some(100), async {
            let mut seen = vec![read_floor()];
            note_write(50); // below the floor: the floor stays
            seen.push(read_floor());
            note_write(300);
            seen.push(read_floor());
            tokio::task::yield_now().await;
            note_write(200); // an older write does not lower it
            seen.push(read_floor());
            seen
        })
        .await;
        assert_eq!(seen, vec![Some(100), Some(100), Some(300), Some(300)]);
        assert_eq!(written, Some(300), "the highest write");

        let (_, written) = scope(Some(100), async { note_write(50) }).await;
        assert_eq!(written, Some(50), "writes are reported even below the floor");
    }

    #[tokio::test]
    async fn scopes_nest_and_tasks_are_isolated() {
        let (inner, outer_written) = scope(Some(10), async {
            let (floor, inner_written) = scope(Some(20), async {
                note_write(30);
                read_floor()
            })
            .await;
            assert_eq!((floor, inner_written), (Some(30), Some(30)));
            // The inner write did not touch the outer scope.
            let outer_floor = read_floor();
            // A spawned task runs outside any scope.
            let spawned = tokio::spawn(async { (read_floor(), in_scope()) }).await.unwrap();
            (outer_floor, spawned)
        })
        .await;
        assert_eq!(inner, (Some(10), (None, false)));
        assert_eq!(outer_written, None);
    }

    #[tokio::test]
    async fn concurrent_scopes_do_not_mix() {
        let tasks: Vec<_> = (1..=8u64)
            .map(|i| {
                tokio::spawn(scope(Some(i), async move {
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                        assert_eq!(read_floor(), Some(i));
                    }
                    note_write(i * 1000);
                    tokio::task::yield_now().await;
                    read_floor()
                }))
            })
            .collect();
        for (i, t) in (1..=8u64).zip(tasks) {
            let (floor, written) = t.await.unwrap();
            assert_eq!((floor, written), (Some(i * 1000), Some(i * 1000)));
        }
    }

    #[test]
    fn a_scope_is_send() {
        fn send<T: Send>(_: T) {}
        send(scope(None, async { note_write(1) }));
    }
}
