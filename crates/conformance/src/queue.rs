//! The battery of the job queue port ([`JobQueue`] and its [`Delivery`]):
//! FIFO delivery of byte payloads, settling by ack, nack (with the queue's
//! back-off or a delay of the caller's), in-progress and terminate, the ack
//! wait that redelivers the job of a consumer that died (and counts that
//! delivery as an attempt), the fencing of a delivery that outlived its ack
//! wait, consumers that never share a job, the depth counts, and the
//! dead-letter set: listed with each job's last error, retried with a fresh
//! attempt count under the same id.
//!
//! The cases wait on the queue's state (poll until a condition holds, with
//! a generous bound) and never assert that something happened quickly; the
//! only durations they check are lower bounds (a job is not delivered
//! before its back-off), which a slow machine cannot break.
//!
//! How exactly an adapter splits its depth between ready and in flight
//! differs legitimately, so it is a parameter ([`DepthCounts`], declared by
//! the adapter), never a skipped check: a SQL row knows its state, a
//! JetStream consumer does not tell a delivery backing off from one in
//! flight.

use crate::support::{eventually, PATIENCE};
use async_trait::async_trait;
use domain::ports::{Delivery, JobQueue};
use domain::{NackOutcome, QueueConfig, QueueDepth, DELIVERIES_SPENT};
use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The queue adapter under test. (Not `Send`: the battery awaits it in
/// place, and an adapter's set-up, such as sqlx's migrations, need not be.)
#[async_trait(?Send)]
pub trait QueueAdapter {
    /// A fresh, empty queue with the retry policy `config`.
    async fn fresh(&self, config: QueueConfig) -> Subject;

    /// How exact the adapter's [`QueueDepth`] is. Default
    /// [`DepthCounts::ByState`].
    fn depth_counts(&self) -> DepthCounts {
        DepthCounts::ByState
    }
}

/// What an adapter's depth counts promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthCounts {
    /// `ready`, `in_flight` and `dead` are each exact (the SQL adapters: a
    /// row's columns say its state).
    ByState,
    /// `ready + in_flight` (every job not yet acked, dead or cancelled) and
    /// `dead` are exact, not the split: JetStream keeps a delivery that
    /// backs off after a nack, or whose ack wait ran out, pending on its
    /// consumer until it is delivered again, so it may count as in flight
    /// rather than ready. (What waits plus what is in flight is what an
    /// autoscaler reads.)
    Total,
}

/// Asserts `q`'s depth is `want`, as exactly as the adapter promises.
async fn check_depth(adapter: &dyn QueueAdapter, q: &dyn JobQueue, want: QueueDepth, what: &str) {
    let got = q.depth().await.unwrap();
    match adapter.depth_counts() {
        DepthCounts::ByState => assert_eq!(got, want, "{what}"),
        DepthCounts::Total => assert_eq!(
            (got.ready + got.in_flight, got.dead),
            (want.ready + want.in_flight, want.dead),
            "{what} (ready + in flight, dead): {got:?}, wanted {want:?}"
        ),
    }
}

/// A queue made by [`QueueAdapter::fresh`].
pub struct Subject {
    /// The queue under test.
    pub queue: Arc<dyn JobQueue>,
    /// Another handle on the same queue with the same configuration, as
    /// another process would open it (its own connections).
    pub other: Arc<dyn JobQueue>,
    /// Whatever must live as long as the queue (a temporary directory, an
    /// engine); dropped with the subject.
    pub guard: Box<dyn Any + Send + Sync>,
}

/// Lower bounds on delays are checked with this much slack, for the
/// millisecond rounding of the time columns.
const SLACK: Duration = Duration::from_millis(20);

/// Few attempts, short back-off, and an ack wait no case outlasts.
fn policy() -> QueueConfig {
    QueueConfig {
        max_attempts: 3,
        backoff_ms: 20,
        max_backoff_ms: 1000,
        ack_wait_ms: 120_000,
    }
}

/// [`policy`] with an ack wait short enough to wait out.
fn expiring(ack_wait_ms: u64) -> QueueConfig {
    QueueConfig {
        ack_wait_ms,
        ..policy()
    }
}

/// The next delivery, once there is one (after an ack wait or a back-off).
async fn next_eventually(q: &dyn JobQueue, what: &str) -> Delivery {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(d) = q.next().await.unwrap() {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn depth(ready: i64, in_flight: i64, dead: i64) -> QueueDepth {
    QueueDepth {
        ready,
        in_flight,
        dead,
    }
}

/// Jobs come out in the order they went in, with their kind and their
/// payload byte for byte (NUL, quotes, backslashes, nothing at all).
pub async fn fifo_and_byte_payloads(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    let binary = [0u8, 0xff, 0x80, b'\\', b'\'', 0];
    let a = q.enqueue("photo", &binary).await.unwrap();
    let b = q.enqueue("other", b"").await.unwrap();
    let c = q.enqueue("photo", b"third").await.unwrap();
    assert!(a < b && b < c, "ids grow: {a} {b} {c}");
    let da = q.next().await.unwrap().unwrap();
    let j = da.job();
    assert_eq!(
        (j.id, j.kind.as_str(), j.payload.as_slice()),
        (a, "photo", &binary[..])
    );
    assert_eq!((j.attempt, j.max_attempts), (1, 3));
    assert_eq!(da.ack_wait(), Duration::from_secs(120));
    let db = q.next().await.unwrap().unwrap();
    assert_eq!(
        (db.job().id, db.job().kind.as_str(), db.job().payload.len()),
        (b, "other", 0)
    );
    let dc = s.other.next().await.unwrap().unwrap();
    assert_eq!((dc.job().id, dc.job().payload.as_slice()), (c, &b"third"[..]));
}

/// An ack removes the job; the delivery hides it from every consumer until
/// then; a second ack is harmless.
pub async fn ack_removes(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    let id = q.enqueue("photo", b"1").await.unwrap();
    check_depth(adapter, q, depth(1, 0, 0), "").await;
    let d = q.next().await.unwrap().unwrap();
    assert_eq!((d.job().id, d.job().attempt), (id, 1));
    assert!(q.next().await.unwrap().is_none(), "a delivered job is invisible");
    assert!(s.other.next().await.unwrap().is_none(), "to every consumer");
    check_depth(adapter, q, depth(0, 1, 0), "").await;
    d.ack().await.unwrap();
    check_depth(adapter, q, QueueDepth::default(), "").await;
    d.ack().await.unwrap(); // twice is harmless
    assert!(q.next().await.unwrap().is_none());
}

/// A delivery left unsettled past the ack wait makes the job ready again;
/// the next delivery has the next attempt number, and the first one's late
/// ack does not remove the job from under it.
pub async fn ack_wait_expiry_redelivers_and_fences_the_late_ack(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(expiring(200)).await;
    let q = &*s.queue;
    q.enqueue("photo", b"1").await.unwrap();
    let first = q.next().await.unwrap().unwrap();
    assert_eq!(first.ack_wait(), Duration::from_millis(200));
    let second = match adapter.depth_counts() {
        DepthCounts::ByState => {
            eventually("the expired delivery's job to be ready again", || async {
                q.depth().await.unwrap().ready == 1
            })
            .await;
            q.next().await.unwrap().expect("a ready job is delivered")
        }
        // The depth cannot show it ready: wait for its redelivery.
        DepthCounts::Total => next_eventually(q, "the expired delivery's job").await,
    };
    assert_eq!((second.job().id, second.job().attempt), (first.job().id, 2));
    first.ack().await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!(d.ready + d.in_flight, 1, "the late ack removed the job: {d:?}");
    second.ack().await.unwrap();
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// A delivery that outlived its ack wait and the redelivery it caused can
/// neither nack nor terminate the job (`Stale`), nor keep it with
/// `in_progress`: the job stays the new delivery's.
pub async fn late_nack_and_terminate_are_fenced(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(expiring(200)).await;
    let q = &*s.queue;
    q.enqueue("photo", b"1").await.unwrap();
    let first = q.next().await.unwrap().unwrap();
    let second = next_eventually(q, "the redelivery").await;
    assert_eq!(second.job().attempt, 2);
    assert_eq!(first.nack("late", None).await.unwrap(), NackOutcome::Stale);
    assert_eq!(
        first.nack("late", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Stale
    );
    assert_eq!(first.terminate("late").await.unwrap(), NackOutcome::Stale);
    first.in_progress().await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!(
        (d.ready + d.in_flight, d.dead),
        (1, 0),
        "a late settlement acted: {d:?}"
    );
    // The second delivery still owns the job: its ack removes it.
    second.ack().await.unwrap();
    check_depth(adapter, q, QueueDepth::default(), "").await;
    // And a delivery already settled is as stale as one that was overtaken.
    q.enqueue("photo", b"2").await.unwrap();
    let third = q.next().await.unwrap().unwrap();
    third.ack().await.unwrap();
    assert_eq!(
        third.nack("after the ack", None).await.unwrap(),
        NackOutcome::Stale
    );
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// A nack without a delay retries after the queue's back-off (doubled each
/// attempt, capped), which counts as ready; the last attempt's nack
/// dead-letters the job, which is never delivered again.
pub async fn nack_backs_off_then_dead_letters(adapter: &dyn QueueAdapter) {
    let s = adapter
        .fresh(QueueConfig {
            max_attempts: 3,
            backoff_ms: 200,
            max_backoff_ms: 300,
            ..policy()
        })
        .await;
    let q = &*s.queue;
    q.enqueue("photo", b"1").await.unwrap();
    let d1 = q.next().await.unwrap().unwrap();
    let nacked = Instant::now();
    assert_eq!(
        d1.nack("boom 1", None).await.unwrap(),
        NackOutcome::Retry { delay_ms: 200 }
    );
    check_depth(adapter, q, depth(1, 0, 0), "backing off counts as ready").await;
    let d2 = next_eventually(q, "the retry after the back-off").await;
    assert!(
        nacked.elapsed() + SLACK >= Duration::from_millis(200),
        "delivered before its back-off"
    );
    assert_eq!((d2.job().id, d2.job().attempt), (d1.job().id, 2));
    let nacked = Instant::now();
    assert_eq!(
        d2.nack("boom 2", None).await.unwrap(),
        NackOutcome::Retry { delay_ms: 300 },
        "400 ms, capped at 300"
    );
    let d3 = next_eventually(q, "the second retry").await;
    assert!(
        nacked.elapsed() + SLACK >= Duration::from_millis(300),
        "delivered before its back-off"
    );
    assert_eq!((d3.job().attempt, d3.job().max_attempts), (3, 3));
    assert_eq!(d3.nack("boom 3", None).await.unwrap(), NackOutcome::DeadLettered);
    assert!(q.next().await.unwrap().is_none(), "a dead job is not delivered");
    check_depth(adapter, q, depth(0, 0, 1), "").await;
    assert_eq!(d3.nack("again", None).await.unwrap(), NackOutcome::Stale);
}

/// A nack's own delay replaces the queue's back-off (shorter or longer),
/// and the last attempt dead-letters whatever delay it asks for.
pub async fn nack_with_an_explicit_delay(adapter: &dyn QueueAdapter) {
    // The queue's back-off is a minute, longer than any wait below: a job
    // that comes back sooner came back after the delay its nack asked for.
    let s = adapter
        .fresh(QueueConfig {
            backoff_ms: 60_000,
            max_backoff_ms: 60_000,
            ..policy()
        })
        .await;
    let q = &*s.queue;
    q.enqueue("photo", b"1").await.unwrap();
    let d1 = q.next().await.unwrap().unwrap();
    let nacked = Instant::now();
    let delay = Duration::from_millis(150);
    assert_eq!(
        d1.nack("boom 1", Some(delay)).await.unwrap(),
        NackOutcome::Retry { delay_ms: 150 }
    );
    let d2 = next_eventually(q, "the retry after the nack's delay").await;
    assert!(
        nacked.elapsed() + SLACK >= delay,
        "delivered before the nack's delay"
    );
    assert_eq!(d2.job().attempt, 2);
    assert_eq!(
        d2.nack("boom 2", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Retry { delay_ms: 0 }
    );
    let d3 = next_eventually(q, "the retry without delay").await;
    assert_eq!(d3.job().attempt, 3);
    assert_eq!(
        d3.nack("boom 3", Some(Duration::from_millis(1))).await.unwrap(),
        NackOutcome::DeadLettered
    );
    check_depth(adapter, q, depth(0, 0, 1), "").await;

    // A delay too long to represent means "not before the end of time",
    // never a wrap into the past.
    q.enqueue("photo", b"2").await.unwrap();
    let d = q.next().await.unwrap().unwrap();
    assert_eq!(
        d.nack("later", Some(Duration::MAX)).await.unwrap(),
        NackOutcome::Retry { delay_ms: u64::MAX }
    );
    assert!(q.next().await.unwrap().is_none(), "delivered before its delay");
    check_depth(adapter, q, depth(1, 0, 1), "").await;
}

/// A consumer that keeps calling `in_progress` keeps its job past the ack
/// wait: no other consumer gets it, and its ack still removes it.
pub async fn in_progress_prevents_redelivery(adapter: &dyn QueueAdapter) {
    let ack_wait = Duration::from_secs(1);
    let s = adapter.fresh(expiring(ack_wait.as_millis() as u64)).await;
    let q = &*s.queue;
    q.enqueue("render", b"long").await.unwrap();
    let d = q.next().await.unwrap().unwrap();
    // Work for three ack waits, reporting progress ten times per ack wait,
    // while another consumer asks for work all along.
    let working = Instant::now();
    while working.elapsed() < ack_wait * 3 {
        d.in_progress().await.unwrap();
        if let Some(stolen) = s.other.next().await.unwrap() {
            panic!(
                "job redelivered after {:?} in progress: {:?}",
                working.elapsed(),
                stolen.job()
            );
        }
        tokio::time::sleep(ack_wait / 10).await;
    }
    check_depth(adapter, q, depth(0, 1, 0), "").await;
    d.ack().await.unwrap();
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// `terminate` dead-letters a job at once, attempts left or not; it is not
/// delivered again and the delivery can settle it no further.
pub async fn terminate_dead_letters_at_once(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    q.enqueue("photo", b"poison").await.unwrap();
    q.enqueue("photo", b"fine").await.unwrap();
    let d = q.next().await.unwrap().unwrap();
    assert_eq!((d.job().attempt, d.job().payload.as_slice()), (1, &b"poison"[..]));
    assert_eq!(
        d.terminate("cannot decode").await.unwrap(),
        NackOutcome::DeadLettered
    );
    check_depth(adapter, q, depth(1, 0, 1), "").await;
    assert_eq!(d.terminate("twice").await.unwrap(), NackOutcome::Stale);
    assert_eq!(
        d.nack("after", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Stale
    );
    d.ack().await.unwrap();
    check_depth(adapter, q, depth(1, 0, 1), "an ack revived or removed a dead job").await;
    let next = q.next().await.unwrap().unwrap();
    assert_eq!(next.job().payload, b"fine", "the dead job is not delivered");
    next.ack().await.unwrap();
    assert!(q.next().await.unwrap().is_none());
    check_depth(adapter, q, depth(0, 0, 1), "").await;
}

/// A delivery whose consumer dies (never settles it) counts as an attempt:
/// a poison job that kills every consumer still reaches its last attempt,
/// whose nack dead-letters it. When the last delivery dies too, the job is
/// delivered once more with an attempt past `max_attempts`, so that a
/// consumer can see the budget spent and dead-letter it. And when even that
/// one dies, the queue dead-letters the job itself ([`DELIVERIES_SPENT`])
/// and never delivers it again.
pub async fn a_dead_worker_counts_as_an_attempt(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(expiring(200)).await;
    let q = &*s.queue;
    let poison = q.enqueue("photo", b"poison").await.unwrap();
    for attempt in 1..=2 {
        let d = next_eventually(q, "the delivery after a dead one").await;
        assert_eq!((d.job().id, d.job().attempt), (poison, attempt));
        drop(d); // the consumer dies
    }
    let last = next_eventually(q, "the last delivery").await;
    assert_eq!((last.job().attempt, last.job().max_attempts), (3, 3));
    assert_eq!(last.nack("boom", None).await.unwrap(), NackOutcome::DeadLettered);
    check_depth(adapter, q, depth(0, 0, 1), "").await;

    let killer = q.enqueue("photo", b"kills every consumer").await.unwrap();
    for attempt in 1..=3 {
        let d = next_eventually(q, "the delivery after a dead one").await;
        assert_eq!((d.job().id, d.job().attempt), (killer, attempt));
    }
    let past = next_eventually(q, "the delivery past the budget").await;
    assert_eq!(
        (past.job().id, past.job().attempt, past.job().max_attempts),
        (killer, 4, 3)
    );
    assert_eq!(
        past.terminate("attempts exhausted").await.unwrap(),
        NackOutcome::DeadLettered
    );
    check_depth(adapter, q, depth(0, 0, 2), "").await;

    let undying = q.enqueue("photo", b"kills even the last consumer").await.unwrap();
    for attempt in 1..=4 {
        let d = next_eventually(q, "the delivery after a dead one").await;
        assert_eq!((d.job().id, d.job().attempt), (undying, attempt));
    }
    // The delivery past the budget dies too. Consumers keep asking (a
    // broker may notice the spent budget only then), and get nothing.
    let deadline = Instant::now() + PATIENCE;
    while !dead_ids(q, 10).await.contains(&undying) {
        if let Some(d) = q.next().await.unwrap() {
            panic!("delivered twice past its budget: {:?}", d.job());
        }
        assert!(Instant::now() < deadline, "the spent job was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = q.dead_jobs(10).await.unwrap();
    let spent = dead.iter().find(|j| j.id == undying).unwrap();
    assert_eq!(
        (
            spent.attempts,
            spent.last_error.as_str(),
            spent.payload.as_slice()
        ),
        (4, DELIVERIES_SPENT, &b"kills even the last consumer"[..])
    );
    check_depth(adapter, q, depth(0, 0, 3), "").await;
    assert!(q.next().await.unwrap().is_none());
}

/// Consumers racing on two handles (as two processes) never get the same
/// job, and together get every job once.
pub async fn concurrent_consumers_never_share_a_job(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    const JOBS: u32 = 200;
    for i in 0..JOBS {
        s.queue.enqueue("photo", &i.to_be_bytes()).await.unwrap();
    }
    let mut tasks = vec![];
    for c in 0..6 {
        let q = if c % 2 == 0 {
            s.queue.clone()
        } else {
            s.other.clone()
        };
        tasks.push(tokio::spawn(async move {
            // Deliveries are held (not acked) until every consumer is done,
            // so a job handed out twice cannot hide behind an early ack.
            let mut got = vec![];
            while let Some(d) = q.next().await.unwrap() {
                assert_eq!(d.job().attempt, 1, "job {} delivered again", d.job().id);
                got.push(d);
            }
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let ids: HashSet<i64> = all.iter().map(|d| d.job().id).collect();
    assert_eq!(ids.len(), all.len(), "a job was delivered twice");
    let mut payloads: Vec<u32> = all
        .iter()
        .map(|d| u32::from_be_bytes(d.job().payload.as_slice().try_into().unwrap()))
        .collect();
    payloads.sort();
    assert_eq!(payloads, (0..JOBS).collect::<Vec<_>>());
    check_depth(adapter, &*s.queue, depth(0, i64::from(JOBS), 0), "").await;
    for d in &all {
        d.ack().await.unwrap();
    }
    check_depth(adapter, &*s.other, QueueDepth::default(), "").await;
}

/// The depth counts ready jobs (backing off included), jobs in flight and
/// dead jobs, the same from every handle.
pub async fn depth_counts(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    check_depth(adapter, q, QueueDepth::default(), "").await;
    for i in 0..4u8 {
        q.enqueue("photo", &[i]).await.unwrap();
    }
    check_depth(adapter, q, depth(4, 0, 0), "").await;
    let a = q.next().await.unwrap().unwrap();
    let b = q.next().await.unwrap().unwrap();
    check_depth(adapter, q, depth(2, 2, 0), "").await;
    assert_eq!(a.terminate("dead").await.unwrap(), NackOutcome::DeadLettered);
    assert_eq!(
        b.nack("later", Some(Duration::from_secs(3600))).await.unwrap(),
        NackOutcome::Retry { delay_ms: 3_600_000 }
    );
    check_depth(adapter, q, depth(3, 0, 1), "").await;
    check_depth(adapter, &*s.other, depth(3, 0, 1), "").await;
    let c = q.next().await.unwrap().unwrap();
    c.ack().await.unwrap();
    check_depth(adapter, q, depth(2, 0, 1), "").await;
}

/// `cancel` removes a job whatever its state, from every handle: a waiting
/// job is never delivered, a delivered one can be settled no more (its ack
/// and in-progress change nothing, its nack and terminate are `Stale`) and
/// is not delivered again once its ack wait runs out, a dead one leaves the
/// dead count. Cancelling twice, an acked job or an unknown id is `false`.
pub async fn cancel_removes_a_job_whatever_its_state(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(expiring(200)).await;
    let q = &*s.queue;
    let a = q.enqueue("photo", b"a").await.unwrap();
    let b = q.enqueue("photo", b"b").await.unwrap();
    let c = q.enqueue("photo", b"c").await.unwrap();
    let d = q.enqueue("photo", b"d").await.unwrap();

    // Waiting: never delivered.
    assert!(s.other.cancel(b).await.unwrap(), "a waiting job");
    assert!(!q.cancel(b).await.unwrap(), "twice");
    check_depth(adapter, q, depth(3, 0, 0), "").await;

    // Delivered: its delivery can settle it no more.
    let da = q.next().await.unwrap().unwrap();
    assert_eq!(da.job().id, a);
    assert!(q.cancel(a).await.unwrap(), "a delivered job");
    check_depth(adapter, q, depth(2, 0, 0), "").await;
    da.in_progress().await.unwrap();
    assert_eq!(
        da.nack("late", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Stale
    );
    assert_eq!(da.terminate("late").await.unwrap(), NackOutcome::Stale);
    da.ack().await.unwrap();

    // Dead: leaves the dead count.
    let dc = q.next().await.unwrap().unwrap();
    assert_eq!(dc.job().id, c, "the cancelled job was skipped");
    assert_eq!(dc.terminate("poison").await.unwrap(), NackOutcome::DeadLettered);
    check_depth(adapter, q, depth(1, 0, 1), "").await;
    assert!(q.cancel(c).await.unwrap(), "a dead job");
    check_depth(adapter, q, depth(1, 0, 0), "").await;

    // Acked: nothing left to cancel.
    let dd = q.next().await.unwrap().unwrap();
    assert_eq!(dd.job().id, d);
    dd.ack().await.unwrap();
    assert!(!q.cancel(d).await.unwrap(), "an acked job");
    assert!(!q.cancel(i64::MAX).await.unwrap(), "an unknown id");
    check_depth(adapter, q, QueueDepth::default(), "").await;

    // A delivered job cancelled is not delivered again after its ack wait
    // (200 ms): a job enqueued after it, with a back-off longer than that,
    // is the only one that ever comes.
    let e = q.enqueue("photo", b"e").await.unwrap();
    let de = q.next().await.unwrap().unwrap();
    assert!(q.cancel(e).await.unwrap());
    drop(de); // its consumer dies
    let f = q.enqueue("photo", b"f").await.unwrap();
    let df = q.next().await.unwrap().unwrap();
    assert_eq!(df.job().id, f);
    assert_eq!(
        df.nack("later", Some(Duration::from_millis(400))).await.unwrap(),
        NackOutcome::Retry { delay_ms: 400 }
    );
    let again = next_eventually(q, "the job backing off").await;
    assert_eq!(again.job().id, f, "the cancelled job was delivered again");
    again.ack().await.unwrap();
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// Ids of the dead jobs, as `dead_jobs(limit)` lists them.
async fn dead_ids(q: &dyn JobQueue, limit: usize) -> Vec<i64> {
    q.dead_jobs(limit).await.unwrap().iter().map(|j| j.id).collect()
}

/// The dead-letter set lists a terminated job and a job nacked past its
/// attempts, each with its kind, payload, attempts and last error, the most
/// recently dead first, at most `limit`; waiting, delivered and acked jobs
/// are not in it.
pub async fn dead_jobs_are_listed_newest_first(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    assert!(q.dead_jobs(10).await.unwrap().is_empty(), "a fresh queue");
    let binary = [0u8, 0xff, b'\n', b'\''];
    let poison = q.enqueue("render", &binary).await.unwrap();
    let flaky = q.enqueue("photo", b"flaky").await.unwrap();

    let d = q.next().await.unwrap().unwrap();
    assert_eq!(d.job().id, poison);
    assert_eq!(
        d.terminate("cannot decode").await.unwrap(),
        NackOutcome::DeadLettered
    );
    for attempt in 1..=3 {
        let d = next_eventually(q, "the flaky job").await;
        assert_eq!((d.job().id, d.job().attempt), (flaky, attempt));
        d.nack(&format!("boom {attempt}"), Some(Duration::ZERO))
            .await
            .unwrap();
    }
    let delivered = q.enqueue("photo", b"delivered").await.unwrap();
    let held = next_eventually(q, "a job to hold").await;
    assert_eq!(held.job().id, delivered);
    q.enqueue("photo", b"waiting").await.unwrap();

    let dead = s.other.dead_jobs(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![flaky, poison],
        "the dead jobs, newest first"
    );
    let (f, p) = (&dead[0], &dead[1]);
    assert_eq!(
        (
            f.kind.as_str(),
            f.payload.as_slice(),
            f.attempts,
            f.last_error.as_str()
        ),
        ("photo", &b"flaky"[..], 3, "boom 3")
    );
    assert_eq!(
        (
            p.kind.as_str(),
            p.payload.as_slice(),
            p.attempts,
            p.last_error.as_str()
        ),
        ("render", &binary[..], 1, "cannot decode")
    );
    let (fd, pd) = (f.died_at_ms.unwrap(), p.died_at_ms.unwrap());
    assert!(fd >= pd && pd > 0, "died at {fd} then {pd}");
    assert_eq!(dead_ids(q, 1).await, vec![flaky], "at most `limit`");
    assert!(q.dead_jobs(0).await.unwrap().is_empty());
    held.ack().await.unwrap();
    assert_eq!(dead_ids(q, 10).await, vec![flaky, poison]);
    check_depth(adapter, q, depth(1, 0, 2), "").await;

    // Gaps left by cancelled dead jobs, the newest among them, are skipped.
    let _waiting = q.next().await.unwrap().unwrap();
    let mut more = vec![];
    for i in 0..3u8 {
        let id = q.enqueue("photo", &[i]).await.unwrap();
        let d = q.next().await.unwrap().unwrap();
        assert_eq!(d.job().id, id);
        d.terminate("dead").await.unwrap();
        more.push(id);
    }
    assert!(q.cancel(more[2]).await.unwrap());
    assert!(q.cancel(more[0]).await.unwrap());
    assert_eq!(dead_ids(q, 2).await, vec![more[1], flaky]);
    assert_eq!(dead_ids(q, 10).await, vec![more[1], flaky, poison]);
}

/// `retry_dead` makes a dead job ready again, same id, kind and payload,
/// with a fresh attempt count and the whole budget; it leaves the
/// dead-letter set, and can die (and be listed, and be retried) again. It
/// is `false` for an unknown id and for a job that is not dead; a retried
/// job can still be cancelled.
pub async fn retry_dead_brings_a_job_back(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(policy()).await;
    let q = &*s.queue;
    let binary = [7u8, 0, 0xfe];
    let id = q.enqueue("photo", &binary).await.unwrap();
    assert!(!q.retry_dead(id).await.unwrap(), "a waiting job is not dead");
    assert!(!q.retry_dead(i64::MAX).await.unwrap(), "an unknown id");
    for attempt in 1..=3 {
        let d = next_eventually(q, "the failing job").await;
        assert_eq!(d.job().attempt, attempt);
        d.nack("boom", Some(Duration::ZERO)).await.unwrap();
    }
    assert_eq!(dead_ids(q, 10).await, vec![id]);

    assert!(s.other.retry_dead(id).await.unwrap(), "from any handle");
    assert!(!q.retry_dead(id).await.unwrap(), "twice");
    assert!(q.dead_jobs(10).await.unwrap().is_empty(), "still listed");
    check_depth(adapter, q, depth(1, 0, 0), "").await;
    let d = next_eventually(q, "the retried job").await;
    let j = d.job();
    assert_eq!(
        (
            j.id,
            j.kind.as_str(),
            j.payload.as_slice(),
            j.attempt,
            j.max_attempts
        ),
        (id, "photo", &binary[..], 1, 3),
        "the same job, attempt 1"
    );
    assert!(!q.retry_dead(id).await.unwrap(), "a delivered job is not dead");
    assert_eq!(
        d.nack("again", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Retry { delay_ms: 0 },
        "the whole budget again"
    );
    let d = next_eventually(q, "the retried job's retry").await;
    assert_eq!((d.job().id, d.job().attempt), (id, 2));
    assert_eq!(
        d.terminate("second death").await.unwrap(),
        NackOutcome::DeadLettered
    );
    let dead = q.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].id, dead[0].attempts, dead[0].last_error.as_str()),
        (id, 2, "second death"),
        "dead again, with its new error"
    );
    check_depth(adapter, q, depth(0, 0, 1), "").await;

    // Retried again, then cancelled (as deleting its photo does).
    assert!(q.retry_dead(id).await.unwrap());
    assert!(s.other.cancel(id).await.unwrap(), "a retried job is cancelled");
    assert!(q.next().await.unwrap().is_none(), "a cancelled job is delivered");
    assert!(!q.retry_dead(id).await.unwrap(), "a cancelled job");
    assert!(q.dead_jobs(10).await.unwrap().is_empty());
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// A delivery from before a job died stays stale once the job is retried:
/// its ack does not remove the retried job, its nack and terminate answer
/// `Stale`, though the retried job's deliveries count from 1 again.
pub async fn a_retry_fences_deliveries_from_before_the_death(adapter: &dyn QueueAdapter) {
    let s = adapter.fresh(expiring(200)).await;
    let q = &*s.queue;
    let id = q.enqueue("photo", b"1").await.unwrap();
    let first = q.next().await.unwrap().unwrap();
    let second = next_eventually(q, "the redelivery").await;
    assert_eq!((second.job().id, second.job().attempt), (id, 2));
    assert_eq!(second.terminate("dead").await.unwrap(), NackOutcome::DeadLettered);
    assert!(q.retry_dead(id).await.unwrap());
    let third = next_eventually(q, "the retried job").await;
    assert_eq!((third.job().id, third.job().attempt), (id, 1));
    first.ack().await.unwrap();
    first.in_progress().await.unwrap();
    assert_eq!(first.nack("late", None).await.unwrap(), NackOutcome::Stale);
    assert_eq!(first.terminate("late").await.unwrap(), NackOutcome::Stale);
    assert_eq!(
        second.nack("late", Some(Duration::ZERO)).await.unwrap(),
        NackOutcome::Stale
    );
    let d = q.depth().await.unwrap();
    assert_eq!(
        (d.ready + d.in_flight, d.dead),
        (1, 0),
        "a settlement from before the retry acted: {d:?}"
    );
    // Whether or not `third`'s short ack wait has run out, the job is there.
    assert!(q.cancel(id).await.unwrap());
    drop(third);
    check_depth(adapter, q, QueueDepth::default(), "").await;
}

/// Runs every case, each on a fresh queue.
pub async fn run_all(adapter: &dyn QueueAdapter) {
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("queue conformance: {}", stringify!($case));
            $case(adapter).await;
        )*};
    }
    cases!(
        fifo_and_byte_payloads,
        ack_removes,
        ack_wait_expiry_redelivers_and_fences_the_late_ack,
        late_nack_and_terminate_are_fenced,
        nack_backs_off_then_dead_letters,
        nack_with_an_explicit_delay,
        in_progress_prevents_redelivery,
        terminate_dead_letters_at_once,
        a_dead_worker_counts_as_an_attempt,
        concurrent_consumers_never_share_a_job,
        depth_counts,
        cancel_removes_a_job_whatever_its_state,
        dead_jobs_are_listed_newest_first,
        retry_dead_brings_a_job_back,
        a_retry_fences_deliveries_from_before_the_death,
    );
}
