//! How a handle takes messages from the shared consumer: pull requests on
//! two long-lived inbox subscriptions (slots) of its own.
//!
//! A pull asks for as many messages as the handle's callers of `next` were
//! seen waiting at once since the previous pull, 1 to 64. While jobs are
//! short (their deliveries are settled within [`SHORT_JOB`] on average) it
//! also counts the callers with a delivery in hand (they are back soon) and
//! asks for [`SHORT_JOBS_PER_CALLER`] messages per caller, and once half of
//! a pull is taken the next is sent on the other slot, so callers coming
//! back from their acks find messages on their way instead of waiting for
//! a round trip; a short job waits in the handle at most a few short jobs'
//! time. While jobs are long (a photo takes seconds) a pull asks only for
//! the callers that wait, and none is sent ahead: the round trip is nothing
//! next to the job, and a process hoards no job another process could
//! start (a message pulled ahead would also wait in a worker that may be
//! stopping). So concurrent callers (a worker's tasks, a benchmark's
//! consumers) share one round trip instead of one each. The server expires
//! each pull after 50 ms.
//!
//! Each slot holds at most one pull at a time, so every message and status
//! a slot's subscription receives belongs to that slot's pull: a pull ends
//! exactly when it got all it asked for or when its status arrives (408 on
//! expiry, 409 when the server ends it early). The subscriptions live as
//! long as the handle: a pull costs one publish, not a subscription, a
//! request and an unsubscription (async-nats's `fetch`/`batch`), which on a
//! cluster also saves spreading each new subscription's interest over the
//! routes before the consumer's leader can answer it.

use crate::{backend, NatsJobQueue};
use async_nats::jetstream;
use async_nats::{Client, StatusCode, Subscriber};
use domain::BackendError;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long the server keeps a pull waiting for messages. A pull that the
/// server expires itself (it answers 408, and never delivers after that)
/// cannot lose a message; one the client gives up on (a `no_wait` fetch
/// answered "no messages" while a message raced to it) can: that job would
/// wait out a whole ack wait, as an extra attempt.
const PULL_EXPIRES: Duration = Duration::from_millis(50);
/// Most messages one pull asks for.
const MAX_PULL_BATCH: usize = 64;
/// Jobs settled within this on average are short: pulls then count the
/// callers with a delivery in hand too, and ask for
/// [`SHORT_JOBS_PER_CALLER`] messages each.
const SHORT_JOB: Duration = Duration::from_millis(20);
/// Messages a pull asks for per caller while jobs are short: fewer, larger
/// pulls cost the server less per job, and a job waits in the handle at
/// most about this many short jobs' time.
const SHORT_JOBS_PER_CALLER: usize = 4;
/// How long past its expiry a pull may stay silent before it counts as
/// lost (sent while the connection was down): its slot then subscribes
/// anew, so a late answer to it cannot be taken for the next pull's.
const LOST_AFTER: Duration = Duration::from_secs(1);

/// The handle's deliveries in hand (handed out, not yet dropped) and the
/// moving average of how long they are held.
pub(crate) struct Hand {
    count: AtomicUsize,
    mean_us: AtomicU64,
}

impl Hand {
    /// Nothing in hand; jobs count as long until seen otherwise.
    pub(crate) fn new() -> Hand {
        Hand {
            count: AtomicUsize::new(0),
            mean_us: AtomicU64::new(1_000_000),
        }
    }

    /// Whether jobs are short: held under [`SHORT_JOB`] on average.
    fn short_jobs(&self) -> bool {
        self.mean_us.load(Ordering::Relaxed) < SHORT_JOB.as_micros() as u64
    }

    /// Deliveries in hand whose callers will soon ask again: all of them
    /// while jobs are short, none otherwise.
    fn soon_back(&self) -> usize {
        if self.short_jobs() {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

/// One delivery in hand, from `next` until it is dropped.
pub(crate) struct InHand {
    queue: Weak<crate::Inner>,
    since: Instant,
}

impl InHand {
    pub(crate) fn new(queue: &Arc<crate::Inner>) -> InHand {
        queue.hand.count.fetch_add(1, Ordering::Relaxed);
        InHand {
            queue: Arc::downgrade(queue),
            since: Instant::now(),
        }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let Some(queue) = self.queue.upgrade() else { return };
        let hand = &queue.hand;
        hand.count.fetch_sub(1, Ordering::Relaxed);
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        // An average over about the last eight deliveries.
        let _ = hand
            .mean_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(mean - mean / 8 + held / 8)
            });
    }
}

/// One pull in progress.
struct Request {
    /// Just before it was sent: the start of its messages' ack wait on our
    /// clock, never later than the server's.
    asked: Instant,
    /// Messages asked for, and received so far.
    want: usize,
    received: usize,
}

/// An inbox subscription and the pull it serves, if any.
struct Slot {
    inbox: String,
    subscriber: Subscriber,
    request: Option<Request>,
}

impl Slot {
    async fn open(client: &Client) -> Result<Slot, BackendError> {
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| backend("subscribing to an inbox", e))?;
        Ok(Slot {
            inbox,
            subscriber,
            request: None,
        })
    }

    fn half_taken(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.received * 2 >= r.want)
    }
}

/// The handle's two slots, shared by its callers of `next` (one at a time).
pub(crate) struct Pulls {
    slots: [Slot; 2],
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    subject: String,
}

impl Pulls {
    pub(crate) async fn open(client: &Client, stream: &str, consumer: &str) -> Result<Pulls, BackendError> {
        Ok(Pulls {
            slots: [Slot::open(client).await?, Slot::open(client).await?],
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        })
    }

    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.request.is_some()).count()
    }
}

/// What one wait on the slots brought.
enum Received {
    /// A message of slot `.0`'s pull.
    Message(usize, async_nats::Message),
    /// No message nor status within [`LOST_AFTER`] past an expiry.
    Silence,
    /// A subscription ended (the client is closed).
    Closed,
}

impl NatsJobQueue {
    /// Sends a pull on the free slot `slot`, for as many messages as callers
    /// of `next` were seen waiting at once since the previous one, plus the
    /// deliveries in hand while jobs are short.
    async fn send_pull(&self, pulls: &mut Pulls, slot: usize) -> Result<(), BackendError> {
        let inner = &self.inner;
        let waiting = inner.waiting.load(Ordering::Relaxed);
        let callers = inner.peak.swap(waiting, Ordering::Relaxed).max(waiting) + inner.hand.soon_back();
        let want = if inner.hand.short_jobs() {
            callers * SHORT_JOBS_PER_CALLER
        } else {
            callers
        };
        let want = want.clamp(1, MAX_PULL_BATCH);
        let body = format!(r#"{{"batch":{want},"expires":{}}}"#, PULL_EXPIRES.as_nanos());
        let asked = Instant::now();
        let s = &mut pulls.slots[slot];
        inner
            .client
            .publish_with_reply(pulls.subject.clone(), s.inbox.clone(), body.into())
            .await
            .map_err(|e| backend("fetching a job", e))?;
        s.request = Some(Request {
            asked,
            want,
            received: 0,
        });
        Ok(())
    }

    /// The next message for this handle, with the start of its ack wait on
    /// our clock; `None` when a pull this call sent ended without one for
    /// it (no job is ready).
    pub(crate) async fn take(&self) -> Result<Option<(Instant, jetstream::Message)>, BackendError> {
        let ack_wait = self.inner.config.ack_wait();
        let mut pulls = self.inner.pulls.lock().await;
        let mut own = false;
        loop {
            match pulls.live() {
                0 => {
                    self.send_pull(&mut pulls, 0).await?;
                    own = true;
                }
                1 => {
                    let (busy, free) = if pulls.slots[0].request.is_some() {
                        (0, 1)
                    } else {
                        (1, 0)
                    };
                    if pulls.slots[busy].half_taken() && self.inner.hand.short_jobs() {
                        self.send_pull(&mut pulls, free).await?;
                    }
                }
                _ => {}
            }
            match receive(&mut pulls).await {
                Received::Message(i, message) => {
                    let slot = &mut pulls.slots[i];
                    let Some(request) = slot.request.as_mut() else {
                        continue; // cannot happen: a slot only hears its pull
                    };
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            request.received += 1;
                            let asked = request.asked;
                            if request.received >= request.want {
                                slot.request = None;
                            }
                            // Delivered to a caller that gave up, and its ack
                            // wait ran out meanwhile: the server delivers it
                            // again.
                            if asked + ack_wait <= Instant::now() {
                                continue;
                            }
                            let message = jetstream::Message {
                                message,
                                context: self.inner.context.clone(),
                            };
                            return Ok(Some((asked, message)));
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        Some(StatusCode::NO_RESPONDERS) => {
                            slot.request = None;
                            return Err(backend("fetching a job", "JetStream is not answering"));
                        }
                        // 408 expired, 409 ended by the server (a leader
                        // change, the consumer deleted), or another status:
                        // the pull is over.
                        Some(status) => {
                            if status != StatusCode::TIMEOUT {
                                tracing::debug!(%status, description = ?message.description, "pull ended");
                            }
                            slot.request = None;
                            if own && pulls.live() == 0 {
                                return Ok(None);
                            }
                        }
                    }
                }
                Received::Silence => {
                    // Pulls lost with a connection: new inboxes, so that a
                    // late answer to them is not taken for a new pull's.
                    for slot in pulls.slots.iter_mut().filter(|s| s.request.is_some()) {
                        *slot = Slot::open(&self.inner.client).await?;
                    }
                    if own {
                        return Ok(None);
                    }
                }
                Received::Closed => return Err(backend("fetching a job", "the connection is closed")),
            }
        }
    }
}

/// Waits for the next message or status on a slot with a pull, the older
/// pull's first.
async fn receive(pulls: &mut Pulls) -> Received {
    let [a, b] = &mut pulls.slots;
    // The older pull first: its messages are the oldest asked for.
    let a_first = match (&a.request, &b.request) {
        (Some(x), Some(y)) => x.asked <= y.asked,
        (Some(_), None) => true,
        _ => false,
    };
    let (first, second, first_index) = if a_first { (a, b, 0) } else { (b, a, 1) };
    let wait = async {
        match (first.request.is_some(), second.request.is_some()) {
            (true, true) => tokio::select! {
                biased;
                m = first.subscriber.next() => (first_index, m),
                m = second.subscriber.next() => (1 - first_index, m),
            },
            _ => (first_index, first.subscriber.next().await),
        }
    };
    match tokio::time::timeout(PULL_EXPIRES + LOST_AFTER, wait).await {
        Ok((i, Some(message))) => Received::Message(i, message),
        Ok((_, None)) => Received::Closed,
        Err(_) => Received::Silence,
    }
}
