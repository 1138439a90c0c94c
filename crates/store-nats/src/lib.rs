//! The NATS JetStream adapter of the job queue port ([`JobQueue`]).
//!
//! Layout, for a queue named `<name>` (letters, digits, `_`, `-`):
//! - the work stream `<name>` (work-queue retention, file storage, subjects
//!   `<name>.job.*`): one message per job on `<name>.job.<id>`, published
//!   with `Nats-Msg-Id` = the job's id, so a publish retried inside the
//!   stream's dedup window (2 minutes) is stored once; the job's kind in the
//!   `Scalestack-Kind` header, its payload as the message's body;
//! - the dead-letter stream `<name>_DEAD` (limits retention, file storage,
//!   subjects `<name>.dead.*`): a copy of each dead job on
//!   `<name>.dead.<id>`, with its last error in `Scalestack-Error` and its
//!   attempt number in `Scalestack-Attempts`, published with `Nats-Msg-Id`
//!   = `dead-<id>-<work stream sequence>` (one per life of the job, so a
//!   retried job that dies again is not taken for a duplicate);
//! - the durable pull consumer `<name>_workers` on the work stream, shared
//!   by every handle (every process), which owns the [`QueueConfig`]'s
//!   retry policy: explicit acks, `max_deliver` = its attempts + 1 (see
//!   below), and a `backoff` list (see `redelivery_schedule`) that JetStream applies to
//!   every delivery left unsettled, each entry the ack wait plus the
//!   back-off of that attempt;
//! - the stream `<name>_SPENT` (work-queue retention) keeping JetStream's
//!   max-deliveries advisories of that consumer, and its durable consumer
//!   `<name>_buriers`, from which every handle's burier dead-letters the
//!   jobs whose deliveries ran out unsettled (see `dead`).
//!
//! Settling: `ack` is an acknowledgement the server confirms (the work
//! stream then drops the message); `nack` is a JetStream `-NAK` with the
//! delay [`QueueConfig::retry_delay`] decides (the caller's, else the
//! back-off of the attempt: the consumer's schedule less the ack wait);
//! `in_progress` is `+WPI`;
//! `terminate`, and a `nack` of the last attempt, copy the job to the
//! dead-letter stream, delete it from the work stream and `+TERM` the
//! delivery. `cancel` deletes the job's messages (found by their subject)
//! from both streams.
//!
//! Dead jobs: `dead_jobs` reads the dead-letter stream by sequence (one
//! direct message get each), from the newest `limit` plus the stream's
//! deleted count (the window that surely holds the newest `limit`).
//! `retry_dead` publishes the job again on the work stream, on
//! `<name>.job.<id>` with `Nats-Msg-Id` = `<id>-r<dead sequence>` (not the
//! id: the dedup window would drop it; the dead copy's sequence makes a
//! repeated retry of one dead copy a duplicate), then deletes the dead
//! copy. A crash between the two leaves the job both ready and dead
//! (delivered at least once, as always; `cancel` removes both), never
//! neither. JetStream counts a new message's deliveries from 1: the
//! retried job starts a fresh attempt count, and a delivery from before it
//! died is fenced off because its message is gone.
//!
//! Deliberate choices, and what JetStream cannot tell:
//! - `next` takes a message of the handle's pulls in progress, or sends one
//!   (see `pull`): sized by the handle's callers, 1 to 64 messages, more
//!   (and one pull ahead) only while jobs are short, expired by the server
//!   after 50 ms. Messages pulled but not yet handed out when a process
//!   stops wait out their ack wait before another process gets them. When
//!   no job is ready `next` answers `None` after those 50 ms, not at once (a
//!   `no_wait` fetch answers at once but, under concurrent consumers,
//!   nats-server 2.9 could deliver a message to a fetch already answered
//!   "no messages", and the job then waited a whole ack wait).
//! - The attempt number is JetStream's delivery count. A failed last
//!   attempt is dead-lettered by its consumer (copied, then `+TERM`ed).
//!   When the last attempt's consumer dies instead, the consumer's
//!   `max_deliver` allows one delivery more, with an attempt past
//!   `max_attempts`: its consumer sees the budget spent and terminates it
//!   with its own handling (the worker marks the photo failed without
//!   rendering it). If that one dies as well, JetStream gives up and a
//!   burier dead-letters the job. JetStream notices that (and publishes the
//!   advisory) when it next looks for a message to deliver, so until some
//!   consumer pulls, the spent job still counts in the work stream (as
//!   waiting).
//! - Fencing: JetStream accepts a settlement from any delivery of a
//!   message, even one overtaken by a redelivery. So a delivery fences
//!   itself: it counts as stale once settled, once its message is gone
//!   (acked elsewhere or cancelled: checked before a nack or a terminate),
//!   and once its ack wait has run out, measured from just before the fetch
//!   that brought it (or the last `in_progress`), which is never later than
//!   the server's own clock for it. A delivery past its ack wait that the
//!   server has not redelivered yet is therefore already stale: its ack is
//!   dropped (the job runs again: at least once) and its nack answers
//!   `Stale` (the redelivery is already due).
//! - Depth: the work stream's message count is what waits plus what is in
//!   flight, exactly. The split between the two is JetStream's ack-pending
//!   count, which also holds deliveries that are backing off after a nack or
//!   whose ack wait ran out until they are delivered again: `in_flight` may
//!   count those, `ready` does not (their sum is exact). `dead` is the
//!   dead-letter stream's message count.
//! - Job ids are made by the publisher: microseconds since the epoch times
//!   1024 plus 10 random bits, and above the handle's previous one, so they
//!   grow within a handle and collide across processes with negligible
//!   odds; a collision shows as a duplicate on the first publish and is
//!   retried with a new id.
//!
//! Streams and consumer are created on connect if missing; an existing
//! consumer is updated to the configuration's ack wait. On connect, the
//! work stream's messages at or below the consumer's ack floor (all acked)
//! are purged: after a `kill -9`, nats-server 2.9.10 can restore such
//! messages while its consumer remembers them acked, and never deliver
//! them.

mod dead;
mod pull;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use async_trait::async_trait;
use domain::ports::{Delivery, DeliveryHandle, JobQueue};
pub use domain::DeadJob;
use domain::{BackendError, Job, NackOutcome, QueueConfig, QueueDepth};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Header carrying the job's kind.
const KIND_HEADER: &str = "Scalestack-Kind";
/// Header carrying a dead job's last error.
const ERROR_HEADER: &str = "Scalestack-Error";
/// Header carrying a dead job's attempt number when it died.
const ATTEMPTS_HEADER: &str = "Scalestack-Attempts";
/// Longest nak delay sent (JetStream's delays are nanoseconds in an i64):
/// 100 years, "not before the end of time" for a job queue.
const MAX_NAK_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Publish attempts of one enqueue (same message id) on transport errors.
const PUBLISH_ATTEMPTS: u32 = 3;

/// The job queue on a JetStream server (see the module's documentation for
/// the layout). Cloning shares the connection.
#[derive(Clone)]
pub struct NatsJobQueue {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    client: async_nats::Client,
    context: jetstream::Context,
    work: stream::Stream,
    dead: stream::Stream,
    consumer: consumer::PullConsumer,
    config: QueueConfig,
    last_id: AtomicI64,
    /// Callers of `next` waiting now.
    waiting: AtomicUsize,
    /// The most callers of `next` seen waiting at once since the last pull
    /// was sent: the size of the next one.
    peak: AtomicUsize,
    /// The handle's pulls (see `pull`), shared by its callers of `next`.
    pulls: tokio::sync::Mutex<pull::Pulls>,
    /// Its deliveries in hand, which size the pulls.
    hand: pull::Hand,
    /// The handle's burier (see `dead`), stopped with the handle.
    burier: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(burier) = self.burier.get() {
            burier.abort();
        }
    }
}

/// The name of the queue `name`'s durable consumer.
fn workers_name(name: &str) -> String {
    format!("{name}_workers")
}

/// The durable consumer `<name>_workers` that every handle of the queue
/// `name` shares, holding `config`'s retry policy (see the module's
/// documentation); public so that a benchmark's raw client uses exactly it.
pub fn workers_config(name: &str, config: &QueueConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(workers_name(name)),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait(),
        // One delivery past the budget: its consumer sees the attempts spent
        // and dead-letters the job with its own handling.
        max_deliver: i64::from(config.max_attempts) + 1,
        backoff: redelivery_schedule(config),
        filter_subject: format!("{name}.job.*"),
        ..Default::default()
    }
}

/// The consumer's back-off: JetStream delivers a job again
/// `schedule[k - 1]` after the last sign of life (the delivery, or its last
/// `+WPI`) of its unsettled delivery `k`, and repeats the last entry. Each
/// entry is the queue's ack wait plus the back-off after attempt `k`, so a
/// worker that died or hung is retried on the same schedule as one that
/// failed and said so (a nack), and no delivery's ack wait is shorter than
/// the queue's. Empty (the plain ack wait) for a single attempt; it stops
/// where the back-off reaches its ceiling.
fn redelivery_schedule(config: &QueueConfig) -> Vec<Duration> {
    let mut schedule: Vec<Duration> = Vec::new();
    for attempt in 1..config.max_attempts {
        let wait = config.ack_wait() + Duration::from_millis(config.backoff(attempt));
        if schedule.last() == Some(&wait) {
            break;
        }
        schedule.push(wait);
    }
    schedule
}

fn backend(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("nats: {what}: {e}"))
}

impl NatsJobQueue {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) and opens the queue
    /// `name` with the retry policy `config`, creating its streams and its
    /// consumer if they are missing. An invalid name is
    /// [`BackendError::Invalid`], before any connection.
    pub async fn connect(url: &str, name: &str, config: QueueConfig) -> Result<Self, BackendError> {
        Self::connect_with(url, name, config, 1).await
    }

    /// As [`NatsJobQueue::connect`], to a cluster: `url` is one URL or
    /// several separated by commas (the client fails over between them),
    /// and streams created here keep `replicas` copies (1 to 5; an existing
    /// stream keeps its own).
    pub async fn connect_with(
        url: &str,
        name: &str,
        config: QueueConfig,
        replicas: usize,
    ) -> Result<Self, BackendError> {
        if !(1..=5).contains(&replicas) {
            return Err(BackendError::Invalid(format!(
                "replicas {replicas}: JetStream keeps 1 to 5 copies"
            )));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(BackendError::Invalid(format!(
                "queue name {name:?}: use letters, digits, '_' or '-'"
            )));
        }
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackendError::Invalid(format!("nats url {url:?}: {e}")))?;
        let client = async_nats::connect(servers)
            .await
            .map_err(|e| backend(&format!("connecting to {url}"), e))?;
        let context = jetstream::new(client.clone());
        let work = context
            .get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{name}.job.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| backend("creating the work stream", e))?;
        let dead = context
            .get_or_create_stream(stream::Config {
                name: format!("{name}_DEAD"),
                subjects: vec![format!("{name}.dead.*")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| backend("creating the dead-letter stream", e))?;
        let consumer = work
            .create_consumer(workers_config(name, &config))
            .await
            .map_err(|e| backend("creating the consumer", e))?;
        let advisories = dead::spent_advisories(&context, name, &workers_name(name), replicas).await?;
        // Every message up to the consumer's ack floor was acked. After a
        // crash (kill -9) of nats-server 2.9 the work stream can hold such
        // messages again while the consumer remembers them acked and never
        // delivers them: they would count as waiting forever. Drop them.
        let floor = consumer
            .get_info()
            .await
            .map_err(|e| backend("reading the consumer", e))?
            .ack_floor
            .stream_sequence;
        if floor > 0 {
            let purged = work
                .purge()
                .sequence(floor + 1)
                .await
                .map_err(|e| backend("dropping acked jobs", e))?;
            if purged.purged > 0 {
                tracing::warn!(
                    queue = name,
                    jobs = purged.purged,
                    "dropped jobs acked before a crash"
                );
            }
        }
        let pulls = pull::Pulls::open(&client, name, &workers_name(name)).await?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            client,
            context,
            work,
            dead,
            consumer,
            config,
            last_id: AtomicI64::new(0),
            waiting: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            pulls: tokio::sync::Mutex::new(pulls),
            hand: pull::Hand::new(),
            burier: OnceLock::new(),
        });
        let burier = tokio::spawn(dead::burier(Arc::downgrade(&inner), advisories));
        let _ = inner.burier.set(burier.abort_handle());
        Ok(NatsJobQueue { inner })
    }

    /// A fresh job id, above this handle's previous one.
    fn new_id(&self) -> i64 {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let candidate = (micros << 10) | rand::random::<u16>() as i64 & 0x3ff;
        let mut last = self.inner.last_id.load(Ordering::Relaxed);
        loop {
            let id = candidate.max(last + 1);
            match self
                .inner
                .last_id
                .compare_exchange(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(now) => last = now,
            }
        }
    }
}

impl NatsJobQueue {
    /// The dead job `id`, if the dead-letter stream holds it (its error's
    /// control characters as spaces).
    pub async fn dead_job(&self, id: i64) -> Result<Option<DeadJob>, BackendError> {
        let subject = format!("{}.dead.{id}", self.inner.name);
        Ok(self.dead_message(&subject).await?.map(|m| dead_job_of(&m)))
    }

    /// The dead-letter stream's message on `subject`, if any.
    async fn dead_message(
        &self,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, BackendError> {
        match self.inner.dead.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend("reading a dead job", e)),
        }
    }
}

/// The dead job a dead-letter message holds (attempts 0 for a message
/// written before the attempts header was).
fn dead_job_of(m: &jetstream::message::StreamMessage) -> DeadJob {
    let header = |name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    DeadJob {
        id: job_id(m.subject.as_str()).unwrap_or(0),
        kind: header(KIND_HEADER),
        payload: m.payload.to_vec(),
        attempts: header(ATTEMPTS_HEADER).parse().unwrap_or(0),
        last_error: header(ERROR_HEADER),
        died_at_ms: i64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok(),
    }
}

/// The job id that ends a subject (`<name>.job.<id>`, `<name>.dead.<id>`).
fn job_id(subject: &str) -> Option<i64> {
    subject.rsplit('.').next()?.parse().ok()
}

/// The first sequence of the dead-letter stream that can hold one of its
/// newest `limit` messages: every message below `last + 1 - (limit +
/// deleted)` has at least `limit` live messages above it, since at most
/// `deleted` of the sequences in between are gone.
fn window_start(first: u64, last: u64, deleted: u64, limit: usize) -> u64 {
    let span = (limit as u64).saturating_add(deleted);
    first.max(last.saturating_add(1).saturating_sub(span))
}

/// How a publish ended.
enum Published {
    /// Stored (or found stored by a retry of the same publish).
    Stored,
    /// The first attempt found the id taken.
    DuplicateAtOnce,
}

impl NatsJobQueue {
    /// Publishes job `id`, retrying transport errors with the same message
    /// id (so a retry of a publish that was stored is stored once).
    async fn publish(&self, id: i64, kind: &str, payload: &[u8]) -> Result<Published, BackendError> {
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, kind);
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        let subject = format!("{}.job.{id}", self.inner.name);
        let mut last_error = None;
        for attempt in 1..=PUBLISH_ATTEMPTS {
            // Not sent while the client is disconnected: the client would
            // keep the message and send it at the reconnect, after this
            // call reported a failure (a job its caller believes lost, or a
            // relay believes unpublished when a cancel tells it to give up,
            // appearing later).
            if self.inner.client.connection_state() != async_nats::connection::State::Connected {
                last_error = Some("not connected to NATS".to_owned());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let sent = async {
                self.inner
                    .context
                    .publish_with_headers(
                        subject.clone(),
                        headers.clone(),
                        bytes::Bytes::copy_from_slice(payload),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match sent {
                Ok(ack) if ack.duplicate && attempt == 1 => return Ok(Published::DuplicateAtOnce),
                Ok(_) => return Ok(Published::Stored),
                Err(e) => last_error = Some(e),
            }
        }
        Err(backend("publishing a job", last_error.unwrap_or_default()))
    }

    /// Publishes a job whose id was made elsewhere (a transactional
    /// outbox's row): a publish of the same id inside the dedup window (2
    /// minutes), by anyone, is stored once, so a relay that publishes again
    /// after a crash does not run the job twice.
    pub async fn publish_job(&self, id: i64, kind: &str, payload: &[u8]) -> Result<(), BackendError> {
        self.publish(id, kind, payload).await.map(drop)
    }
}

/// The stream message with `subject`, if any.
async fn message_on(s: &stream::Stream, subject: &str) -> Result<Option<u64>, BackendError> {
    match s.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(backend("looking a job up", e)),
    }
}

#[async_trait]
impl JobQueue for NatsJobQueue {
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError> {
        loop {
            let id = self.new_id();
            match self.publish(id, kind, payload).await? {
                // A duplicate on the first publish is another job's id.
                Published::DuplicateAtOnce => continue,
                Published::Stored => return Ok(id),
            }
        }
    }

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let now = self.inner.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.peak.fetch_max(now, Ordering::Relaxed);
        let _waiting = Waiting(&self.inner.waiting);
        let Some((asked, message)) = self.take().await? else {
            return Ok(None);
        };
        let ack_wait = self.inner.config.ack_wait();
        let (attempt, sequence) = {
            let info = message.info().map_err(|e| backend("reading a delivery", e))?;
            (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
            )
        };
        let id = job_id(message.subject.as_str())
            .ok_or_else(|| backend("reading a delivery", format!("no job id in {}", message.subject)))?;
        let kind = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KIND_HEADER))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let job = Job {
            id,
            kind,
            payload: message.payload.to_vec(),
            attempt,
            max_attempts: self.inner.config.max_attempts,
        };
        let handle = NatsDelivery {
            queue: self.clone(),
            _in_hand: pull::InHand::new(&self.inner),
            message,
            sequence,
            state: Mutex::new(State {
                settled: false,
                owned_until: asked + ack_wait,
            }),
        };
        Ok(Some(Delivery::new(job, ack_wait, handle)))
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let work = self
            .inner
            .work
            .get_info()
            .await
            .map_err(|e| backend("reading the work stream", e))?;
        let consumer = self
            .inner
            .consumer
            .get_info()
            .await
            .map_err(|e| backend("reading the consumer", e))?;
        let dead = self
            .inner
            .dead
            .get_info()
            .await
            .map_err(|e| backend("reading the dead-letter stream", e))?;
        let total = i64::try_from(work.state.messages).unwrap_or(i64::MAX);
        let in_flight = i64::try_from(consumer.num_ack_pending)
            .unwrap_or(i64::MAX)
            .min(total);
        Ok(QueueDepth {
            ready: total - in_flight,
            in_flight,
            dead: i64::try_from(dead.state.messages).unwrap_or(i64::MAX),
        })
    }

    async fn cancel(&self, job: i64) -> Result<bool, BackendError> {
        // Both streams: a retry that crashed midway leaves a job in both.
        let name = &self.inner.name;
        let mut found = false;
        for (s, subject) in [
            (&self.inner.work, format!("{name}.job.{job}")),
            (&self.inner.dead, format!("{name}.dead.{job}")),
        ] {
            if let Some(sequence) = message_on(s, &subject).await? {
                found |= delete(s, sequence).await?;
            }
        }
        Ok(found)
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, BackendError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let state = self
            .inner
            .dead
            .get_info()
            .await
            .map_err(|e| backend("reading the dead-letter stream", e))?
            .state;
        if state.messages == 0 {
            return Ok(vec![]);
        }
        // The stream's order is the order of death: walk the window that
        // holds the newest `limit` forwards, keep the last `limit`.
        let subjects = format!("{}.dead.*", self.inner.name);
        let mut sequence = window_start(
            state.first_sequence,
            state.last_sequence,
            state.deleted_count.unwrap_or(u64::MAX),
            limit,
        );
        let mut newest = std::collections::VecDeque::with_capacity(limit.min(1024));
        loop {
            let message = match self
                .inner
                .dead
                .get_first_raw_message_by_subject(&subjects, sequence)
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(backend("reading the dead-letter stream", e)),
            };
            if newest.len() == limit {
                newest.pop_front();
            }
            newest.push_back(dead_job_of(&message));
            sequence = message.sequence + 1;
        }
        Ok(newest.into_iter().rev().collect())
    }

    async fn retry_dead(&self, id: i64) -> Result<bool, BackendError> {
        let inner = &self.inner;
        let Some(dead) = self.dead_message(&format!("{}.dead.{id}", inner.name)).await? else {
            return Ok(false);
        };
        // Publish first, delete second: a crash in between leaves the job
        // in both streams (at least once), never in neither.
        let mut headers = HeaderMap::new();
        if let Some(kind) = dead.headers.get(KIND_HEADER) {
            headers.insert(KIND_HEADER, kind.as_str());
        }
        headers.insert("Nats-Msg-Id", format!("{id}-r{}", dead.sequence).as_str());
        inner
            .context
            .publish_with_headers(format!("{}.job.{id}", inner.name), headers, dead.payload.clone())
            .await
            .map_err(|e| backend("retrying a dead job", e))?
            .await
            .map_err(|e| backend("retrying a dead job", e))?;
        // Gone already: a concurrent retry of it deleted it (and published
        // the same message id, stored once), or a concurrent cancel did
        // (the job runs once more: at least once).
        delete(&inner.dead, dead.sequence).await?;
        tracing::info!(queue = inner.name, job = id, "dead job retried");
        Ok(true)
    }
}

/// Deletes message `sequence`: `false` if it was gone already.
async fn delete(s: &stream::Stream, sequence: u64) -> Result<bool, BackendError> {
    match s.delete_message(sequence).await {
        Ok(deleted) => Ok(deleted),
        Err(e) => match e.kind() {
            // JetStream's answer for a message already gone.
            stream::DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(false)
            }
            _ => Err(backend("deleting a job", e)),
        },
    }
}

struct State {
    /// Settled by this delivery (acked, nacked, terminated).
    settled: bool,
    /// Until when this delivery surely owns its message (see the module's
    /// fencing notes).
    owned_until: Instant,
}

/// One delivery: the JetStream message (its reply subject settles it).
struct NatsDelivery {
    queue: NatsJobQueue,
    message: jetstream::Message,
    sequence: u64,
    state: Mutex<State>,
    _in_hand: pull::InHand,
}

impl NatsDelivery {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this delivery still owns its job, by its own clock; if so,
    /// marks it settled when `settle`.
    fn claim(&self, settle: bool) -> bool {
        let mut s = self.lock();
        if s.settled || Instant::now() >= s.owned_until {
            return false;
        }
        s.settled |= settle;
        true
    }

    /// Undoes a settling [`NatsDelivery::claim`] whose settlement failed
    /// (the caller may retry it), and passes the result on.
    fn unless_failed<T>(&self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        if result.is_err() {
            self.lock().settled = false;
        }
        result
    }

    /// Whether the job's message is still in the work stream.
    async fn still_queued(&self) -> Result<bool, BackendError> {
        match self.queue.inner.work.get_raw_message(self.sequence).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(backend("looking a job up", e)),
        }
    }

    async fn dead_letter(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError> {
        let attempts = u64::from(job.attempt);
        self.queue
            .bury(job.id, &job.kind, &job.payload, attempts, error, self.sequence)
            .await?;
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| backend("terminating a delivery", e))?;
        Ok(NackOutcome::DeadLettered)
    }
}

#[async_trait]
impl DeliveryHandle for NatsDelivery {
    async fn ack(&self, _job: &Job) -> Result<(), BackendError> {
        if !self.claim(true) {
            return Ok(());
        }
        let acked = self
            .message
            .double_ack()
            .await
            .map_err(|e| backend("acking a delivery", e));
        self.unless_failed(acked)
    }

    async fn nack(
        &self,
        job: &Job,
        error: &str,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, BackendError> {
        if !self.claim(true) {
            return Ok(NackOutcome::Stale);
        }
        let outcome = async {
            if !self.still_queued().await? {
                return Ok(NackOutcome::Stale);
            }
            match self.queue.inner.config.retry_delay(job, delay) {
                None => self.dead_letter(job, error).await,
                Some(delay_ms) => {
                    let wait = Duration::from_millis(delay_ms).min(MAX_NAK_DELAY);
                    self.message
                        .ack_with(AckKind::Nak(Some(wait)))
                        .await
                        .map_err(|e| backend("nacking a delivery", e))?;
                    tracing::debug!(job = job.id, attempt = job.attempt, delay_ms, error, "job nacked");
                    Ok(NackOutcome::Retry { delay_ms })
                }
            }
        }
        .await;
        self.unless_failed(outcome)
    }

    async fn in_progress(&self, _job: &Job) -> Result<(), BackendError> {
        let sent = Instant::now();
        if !self.claim(false) {
            return Ok(());
        }
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| backend("marking a delivery in progress", e))?;
        let mut s = self.lock();
        s.owned_until = s.owned_until.max(sent + self.queue.inner.config.ack_wait());
        Ok(())
    }

    async fn terminate(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError> {
        if !self.claim(true) {
            return Ok(NackOutcome::Stale);
        }
        let outcome = async {
            if !self.still_queued().await? {
                return Ok(NackOutcome::Stale);
            }
            self.dead_letter(job, error).await
        }
        .await;
        self.unless_failed(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_backs_off_past_the_ack_wait() {
        let secs = |v: Vec<Duration>| v.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>();
        // The default policy: 5 deliveries, 1 s doubling, a 2 minute ack wait.
        let default = QueueConfig::default();
        assert_eq!(
            secs(redelivery_schedule(&default)),
            [121_000, 122_000, 124_000, 128_000]
        );
        // JetStream wants fewer entries than deliveries; one delivery has none.
        let once = QueueConfig {
            max_attempts: 1,
            ..default
        };
        assert!(redelivery_schedule(&once).is_empty());
        // The list stops at the ceiling: JetStream repeats its last entry.
        let capped = QueueConfig {
            max_attempts: 1000,
            backoff_ms: 100,
            max_backoff_ms: 300,
            ack_wait_ms: 1000,
        };
        assert_eq!(secs(redelivery_schedule(&capped)), [1100, 1200, 1300]);
        let config = workers_config("jobs", &default);
        assert_eq!(
            (
                config.durable_name.as_deref(),
                config.max_deliver,
                config.backoff.len()
            ),
            (Some("jobs_workers"), 6, 4)
        );
    }

    #[test]
    fn job_ids_end_subjects() {
        assert_eq!(job_id("jobs.job.42"), Some(42));
        assert_eq!(job_id("jobs.dead.-7"), Some(-7));
        assert_eq!(job_id("jobs.job.x"), None);
    }

    #[test]
    fn the_window_holds_the_newest_messages() {
        // No deletions: exactly the last `limit` sequences.
        assert_eq!(window_start(1, 10, 0, 3), 8);
        // Every deletion may sit in the tail: widen by their count.
        assert_eq!(window_start(1, 10, 2, 3), 6);
        // Never below the first sequence, whatever the limit.
        assert_eq!(window_start(5, 10, 0, 100), 5);
        assert_eq!(window_start(5, 10, u64::MAX, usize::MAX), 5);
    }
}
