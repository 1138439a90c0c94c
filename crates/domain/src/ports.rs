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
    /// Removes a photo row (used to undo a failed upload).
    async fn delete_photo(&self, id: PhotoId) -> Result<(), StoreError>;
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
    /// Ids of photos by users that `user` follows, newest first.
    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError>;

    /// Cheap round trip proving the store can serve.
    async fn ping(&self) -> Result<(), StoreError>;
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

/// A durable job queue with at-least-once delivery.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Adds a job; returns its id.
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError>;
    /// Claims the next ready job, hiding it from other consumers for
    /// `visibility`; a job whose consumer dies reappears after that.
    async fn claim(&self, visibility: Duration) -> Result<Option<Job>, BackendError>;
    /// Marks a claimed job done.
    async fn ack(&self, job: &Job) -> Result<(), BackendError>;
    /// Gives a claimed job back after a failure: retried with back-off, or
    /// dead-lettered once its attempts are spent.
    async fn nack(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError>;
    /// Counts of jobs by state.
    async fn depth(&self) -> Result<QueueDepth, BackendError>;
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
