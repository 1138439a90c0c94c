//! Coarse deadlines for the data path.
//!
//! Every proxied request waits on two reads that usually pend (the client's
//! next request, the backend's answer), and each needs a deadline. A tokio
//! timer per wait (register, then cancel) cost 15 % of the proxy's
//! throughput in the benchmark. Instead, each connection owns one
//! [`Deadline`] slot (a millisecond value and a waker), registered once; a
//! sweeper task advances a shared coarse clock every tick and wakes the
//! tasks whose deadline has passed. Setting a deadline is an atomic store,
//! reading the time an atomic load; precision is one tick (25 ms), ample
//! for timeouts of seconds.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often the sweeper runs (the precision of every deadline).
pub const TICK: Duration = Duration::from_millis(25);

/// The shared coarse clock and the registry of deadlines.
pub struct Clock {
    start: Instant,
    now_ms: AtomicU64,
    slots: Mutex<Vec<Weak<Slot>>>,
}

struct Slot {
    /// Milliseconds on the clock; `u64::MAX`: none.
    at_ms: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// One connection's deadline.
pub struct Deadline(Arc<Slot>);

impl Clock {
    /// A clock at 0; it only advances while [`Clock::run`] is polled.
    pub fn new() -> Arc<Clock> {
        Arc::new(Clock {
            start: Instant::now(),
            now_ms: AtomicU64::new(0),
            slots: Mutex::new(Vec::new()),
        })
    }

    /// Milliseconds since the clock started, as of the last tick.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Relaxed)
    }

    /// A new deadline slot (none set).
    pub fn deadline(&self) -> Deadline {
        let slot = Arc::new(Slot {
            at_ms: AtomicU64::new(u64::MAX),
            waker: Mutex::new(None),
        });
        self.lock().push(Arc::downgrade(&slot));
        Deadline(slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the clock and wakes expired waits, forever (abort to stop).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn sweep(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.now_ms.store(now, Relaxed);
        self.lock().retain(|weak| {
            let Some(slot) = weak.upgrade() else { return false };
            if slot.at_ms.load(Relaxed) <= now {
                if let Some(w) = slot.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    w.wake();
                }
            }
            true
        });
    }
}

impl Deadline {
    /// Sets the deadline `after` from now (on the coarse clock).
    pub fn set_after(&self, clock: &Clock, after: Duration) {
        let at = clock.now_ms().saturating_add(after.as_millis() as u64);
        self.0.at_ms.store(at, Relaxed);
    }

    /// Runs `fut` until it completes (`Some`) or the deadline passes (`None`).
    pub async fn guard<F: Future>(&self, clock: &Clock, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if self.0.at_ms.load(Relaxed) <= clock.now_ms() {
                return Poll::Ready(None);
            }
            let mut waker = self.0.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// The clock and one connection's deadline slot, handed to everything that
/// reads or writes on the connection's behalf (the request reader, the
/// upstream client, the relay).
#[derive(Clone, Copy)]
pub struct Timer<'a> {
    /// The shared coarse clock.
    pub clock: &'a Clock,
    /// The connection's deadline slot.
    pub deadline: &'a Deadline,
}

impl Timer<'_> {
    /// Sets the connection's deadline `after` from now.
    pub fn set(&self, after: Duration) {
        self.deadline.set_after(self.clock, after);
    }

    /// Runs `fut` until it completes (`Some`) or the deadline passes (`None`).
    pub async fn guard<F: Future>(&self, fut: F) -> Option<F::Output> {
        self.deadline.guard(self.clock, fut).await
    }

    /// Writes all of `bytes` within `within`: a peer that stops reading
    /// cannot hold its connection (and a backend's) for ever.
    pub async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        bytes: &[u8],
        within: Duration,
    ) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.set(within);
        match self.guard(io.write_all(bytes)).await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not read in time",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_end_at_their_deadline_and_not_before() {
        let clock = Clock::new();
        let sweeper = tokio::spawn(clock.clone().run());
        let d = clock.deadline();
        d.set_after(&clock, Duration::from_millis(100));
        assert_eq!(d.guard(&clock, async { 7 }).await, Some(7), "a ready future wins");
        assert_eq!(
            d.guard(&clock, std::future::pending::<u8>()).await,
            None,
            "a pending one ends"
        );
        d.set_after(&clock, Duration::from_secs(60));
        let slow = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            1
        };
        assert_eq!(d.guard(&clock, slow).await, Some(1));
        drop(d);
        tokio::time::sleep(TICK * 3).await;
        assert!(clock.lock().is_empty(), "dropped deadlines are forgotten");
        sweeper.abort();
    }
}
