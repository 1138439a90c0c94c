//! The ports of DESIGN.md: one trait per tier. Every method is async so a
//! networked adapter (PostgreSQL, Redis, NATS, S3) fits behind the same trait
//! as the embedded one.

use crate::error::{BackendError, StoreError};
use crate::types::*;
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// The SQL store: users, photos, follows.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a user; a taken username is [`StoreError::Conflict`].
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError>;
    /// Looks a user up by name.
    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Follower and following counts of a user.
    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError>;

    /// Inserts a photo in `processing` state.
    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError>;
    /// Removes a photo and every row that references it, in one step
    /// (today nothing else references a photo: feeds are queries over
    /// photos and follows), and returns what was removed, or `None` if
    /// there was no such photo (deleting twice is not an error). What lives
    /// outside the store (blobs, jobs, cache entries) is the caller's to
    /// remove, with what the answer names.
    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError>;
    /// Records `job` (an id from [`JobQueue::enqueue`]) as the photo's job,
    /// so that deleting the photo can cancel it
    /// ([`DeletedPhoto::jobs`]). [`StoreError::NotFound`] if the photo is
    /// gone (deleted meanwhile).
    async fn record_photo_job(&self, id: PhotoId, job: i64) -> Result<(), StoreError>;
    /// Photos still `processing` without a recorded job, created before
    /// `before_ms`, oldest first, at most `limit`: uploads whose process
    /// died between the photo's row and its job (no 202 was sent), or whose
    /// job id could not be recorded. The worker's reconciler finishes them.
    async fn stalled_uploads(&self, before_ms: i64, limit: usize) -> Result<Vec<Photo>, StoreError>;
    /// Looks a photo up.
    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError>;
    /// Moves a photo to a new status. A `ready` photo never becomes
    /// `failed`: a late failure of one delivery of its job cannot undo the
    /// success of another (the call then succeeds and changes nothing).
    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError>;
    /// Ids of a user's photos, newest first.
    async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError>;

    /// Makes `follower` follow `followee`; following twice is not an error.
    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError>;
    /// Undoes a follow; unfollowing someone not followed is not an error.
    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError>;
    /// Whether `follower` follows `followee`.
    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError>;
    /// Ids of the ready photos of users that `user` follows, newest first
    /// (a photo enters its owner's followers' feeds once processed).
    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError>;

    /// Cheap round trip proving the store can serve.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The business's figures over the `days` UTC days ending `today` (a
    /// day number), from the application's rows (see
    /// [`crate::business`]). Default: unavailable (a store that cannot
    /// say, such as the sharded one today).
    async fn business(&self, today: i64, days: i64) -> Result<crate::business::BusinessFigures, StoreError> {
        let _ = (today, days);
        Err(StoreError::Unavailable(
            "this store does not compute business figures".into(),
        ))
    }
}

/// A byte cache with a TTL per entry. Errors are for the caller to count and
/// then treat as a miss: a cache is never a single point of failure.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError>;
    /// Stores a value for `ttl`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), BackendError>;
    /// Removes a value (invalidation on write).
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Claims, for at most `ttl`, the right to load the missing `key` from
    /// the store, among every process that shares this cache: `true` means
    /// load it now (then [`Cache::release_load`]); `false` means another
    /// process is loading it and will fill the cache. A cache that cannot
    /// coordinate (one process's memory, or a shared cache that is down)
    /// answers `true`: the default.
    async fn claim_load(&self, _key: &str, _ttl: Duration) -> bool {
        true
    }
    /// Gives a claim back, once the value is stored or the load failed.
    async fn release_load(&self, _key: &str) {}
}

/// Server-side sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session with a fresh random token.
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError>;
    /// The live session of a token; expired or deleted tokens give `None`.
    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError>;
    /// Deletes a session so its token stops working.
    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError>;
}

/// A durable job queue with at-least-once delivery, shaped like a broker's
/// consumer (NATS JetStream's, for one): [`JobQueue::next`] hands out a
/// [`Delivery`], which its consumer settles exactly once: acked, nacked
/// (with a delay or the queue's back-off), or terminated; and marks in
/// progress while it works on it for long.
///
/// The queue owns the retry policy, not the consumer: how long a delivery
/// stays owned before the job is delivered again (the ack wait), how many
/// deliveries a job gets, and the back-off between them
/// ([`QueueConfig`](crate::QueueConfig); JetStream's consumer holds it as
/// its ack wait, max deliveries and back-off). A delivery whose consumer
/// dies (never settles) counts as an attempt: once its ack wait runs out,
/// the job is delivered again with the next attempt number. When its last
/// attempt dies too, the job is delivered once more with an attempt past
/// `max_attempts`, so that a consumer sees the budget spent and
/// dead-letters it with its own handling (`terminate`, without running
/// it); and if that delivery dies as well, the queue dead-letters the job
/// itself with the error [`DELIVERIES_SPENT`](crate::DELIVERIES_SPENT) and
/// never delivers it again.
///
/// A delivery owns its job until it is settled or the job is delivered
/// again; after that its settlements change nothing (a late `ack` is
/// ignored, a late `nack` or `terminate` answers [`NackOutcome::Stale`]), so
/// a consumer that outlived its ack wait cannot undo the next one's work.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Adds a job; returns its id. Jobs are delivered in the order they
    /// were enqueued (FIFO) unless a back-off delays one.
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError>;
    /// The next ready job, if any (it does not wait for one), owned by the
    /// caller for the queue's ack wait; no other consumer gets it meanwhile.
    async fn next(&self) -> Result<Option<Delivery>, BackendError>;
    /// Counts of jobs by state.
    async fn depth(&self) -> Result<QueueDepth, BackendError>;
    /// Removes a job, whatever its state (waiting, delivered, dead), so it
    /// is never delivered again: `true` if there was one, `false` for an
    /// unknown id or a job already acked or cancelled. A delivery of it in
    /// hand can settle it no more: its `ack` and `in_progress` change
    /// nothing, its `nack` and `terminate` answer [`NackOutcome::Stale`]
    /// (so the consumer still running it must check, before it writes for
    /// good, that its work is still wanted: see the worker). A broker
    /// deletes the message (JetStream: by stream sequence).
    async fn cancel(&self, job: i64) -> Result<bool, BackendError>;
    /// The dead-letter set: at most `limit` dead jobs, the most recently
    /// dead first (ties: the highest id first), each with its last error.
    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, BackendError>;
    /// Brings the dead job `id` back: it is ready again now, with the same
    /// id, kind and payload (so a photo's recorded job stays its job, and
    /// [`JobQueue::cancel`] still finds it) and a fresh attempt count (its
    /// next delivery is attempt 1, with the queue's whole budget). `false`
    /// if there is no dead job `id` (unknown, waiting, delivered, acked or
    /// cancelled). Deliveries from before it died stay stale: they can
    /// settle the retried job no more than any overtaken delivery. A crash
    /// midway may leave the job both dead and ready (delivered at least
    /// once, as always), never neither.
    async fn retry_dead(&self, id: i64) -> Result<bool, BackendError>;
}

/// One delivery of a job, handed out by [`JobQueue::next`]: the job, and the
/// means to settle it with the queue that delivered it.
pub struct Delivery {
    job: Job,
    ack_wait: Duration,
    handle: Box<dyn DeliveryHandle>,
}

impl Delivery {
    /// A delivery of `job`, owned for `ack_wait` unless extended, settled
    /// through `handle` (the adapter's side).
    pub fn new(job: Job, ack_wait: Duration, handle: impl DeliveryHandle) -> Self {
        Delivery {
            job,
            ack_wait,
            handle: Box::new(handle),
        }
    }

    /// The job delivered: id, kind, payload, this delivery's attempt number
    /// (1 on the first) and the queue's number of attempts.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// How long this delivery stays owned without news from its consumer
    /// (the queue's ack wait); [`Delivery::in_progress`] restarts it. A
    /// consumer that works for longer calls `in_progress` more often than
    /// this.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// The job is done: the queue forgets it. A late ack (the job was
    /// delivered again meanwhile, or already settled) changes nothing.
    pub async fn ack(&self) -> Result<(), BackendError> {
        self.handle.ack(&self.job).await
    }

    /// The job failed with `error`: it is delivered again after `delay`
    /// (`None`: the queue's back-off for this attempt), or dead-lettered if
    /// this was its last attempt. [`NackOutcome::Stale`] if this delivery
    /// no longer owns the job: the caller must not act on the failure.
    pub async fn nack(&self, error: &str, delay: Option<Duration>) -> Result<NackOutcome, BackendError> {
        self.handle.nack(&self.job, error, delay).await
    }

    /// The consumer is still working on the job: the ack wait starts again
    /// from now, so the job is not delivered to another consumer meanwhile.
    /// Changes nothing if this delivery no longer owns the job.
    pub async fn in_progress(&self) -> Result<(), BackendError> {
        self.handle.in_progress(&self.job).await
    }

    /// The job failed for good with `error` (retrying cannot help): it is
    /// dead-lettered now, whatever attempts it had left.
    /// [`NackOutcome::DeadLettered`], or [`NackOutcome::Stale`] if this
    /// delivery no longer owns the job.
    pub async fn terminate(&self, error: &str) -> Result<NackOutcome, BackendError> {
        self.handle.terminate(&self.job, error).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job", &self.job)
            .field("ack_wait", &self.ack_wait)
            .finish_non_exhaustive()
    }
}

/// The adapter's side of a [`Delivery`]: settles the delivery of `job`
/// with the queue (a row guarded by its attempt number in SQL, a message's
/// reply subject in a broker). Consumers call [`Delivery`]'s methods, which
/// document the contract; only adapters implement this.
#[async_trait]
pub trait DeliveryHandle: Send + Sync + 'static {
    /// See [`Delivery::ack`].
    async fn ack(&self, job: &Job) -> Result<(), BackendError>;
    /// See [`Delivery::nack`].
    async fn nack(
        &self,
        job: &Job,
        error: &str,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, BackendError>;
    /// See [`Delivery::in_progress`].
    async fn in_progress(&self, job: &Job) -> Result<(), BackendError>;
    /// See [`Delivery::terminate`].
    async fn terminate(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError>;
}

/// Object storage for originals and variants.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes (or overwrites) an object atomically.
    async fn put(&self, key: &BlobKey, bytes: Bytes) -> Result<(), BackendError>;
    /// Reads an object.
    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BackendError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError>;
}
