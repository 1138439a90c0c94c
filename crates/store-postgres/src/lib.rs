//! PostgreSQL adapters of the SQL store, the session store and the job queue,
//! with the schema and the behaviour of `store-sqlite`'s embedded adapters:
//! the same tables (times in milliseconds since the Unix epoch), the same
//! error mapping, the same queue semantics. Also the replication probes
//! (`replication.rs`) and the database router built on them (`router.rs`):
//! writes to the primary, reads spread over replicas within a lag ceiling,
//! read-your-writes, failover followed and an old primary fenced.
//!
//! Differences from SQLite, each for a reason:
//! - Every time a decision depends on (session expiry, visibility timeouts,
//!   back-off) is read from the database's clock, not the caller's: web
//!   servers and workers on different hosts then agree on what "now" is,
//!   and clock skew between them cannot redeliver a job early.
//! - A claim locks its row with `FOR UPDATE SKIP LOCKED`, so concurrent
//!   consumers pass each other instead of queueing on one row.
//! - Migrations serialise on a transaction-scoped advisory lock instead of
//!   SQLite's `BEGIN IMMEDIATE`.

mod migrate;
mod queue;
mod replication;
pub mod router;
mod sessions;
mod shard_map;
mod sharded;
mod store;
mod usernames;

pub use domain::QueueConfig;
pub use migrate::migrate;
pub use queue::PgJobQueue;
pub use replication::{current_wal_lsn, format_lsn, is_in_recovery, parse_lsn, replay_lag_ms, replay_lsn};
pub use router::{NodeRole, NodeStatus, PgRouter, RouterConfig, RouterStats};
pub use sessions::PgSessionStore;
pub use shard_map::{next_id, PublishError, ShardMaps};
pub use sharded::{
    Connector, HotUser, MoveError, MoveRequest, MoveStatus, ProcessLoad, SetReport, ShardReport,
    ShardedConfig, ShardedStore,
};
pub use store::PgStore;
pub use usernames::Usernames;

/// Re-exported so callers can name the pool without depending on sqlx.
pub use sqlx::PgPool;

use domain::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// How long [`connect`] (and every later wait for a pooled connection) may
/// take before giving up: 5 s. A refused connection is retried with back-off
/// within that time, so a server that is still starting is waited for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side limit of one statement, unless the URL sets its own
/// (`?options=-c%20statement_timeout%3D...`): 30 s. A stuck query then
/// frees its pooled connection instead of holding it for ever.
pub const STATEMENT_TIMEOUT: &str = "30s";

/// `application_name` of our connections unless the URL sets one, so they
/// can be told apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "scalestack";

/// The current time on the database's clock, in milliseconds since the Unix
/// epoch (the representation of every time column). `now()` is the start of
/// the transaction, so one statement sees one instant.
macro_rules! now_ms {
    () => {
        "floor(extract(epoch FROM now()) * 1000)::bigint"
    };
}
pub(crate) use now_ms;

/// Opens a pool of at most `max_connections` connections to the database at
/// `url` (`postgres://user@host:port/db`). Opens one connection before
/// returning, so a wrong URL or an unreachable server is reported here; a
/// refused connection is retried until [`CONNECT_TIMEOUT`]. Does not migrate:
/// see [`migrate`].
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(connect_options(url)?)
        .await
        .map_err(unavailable)
}

/// The options of a connection to `url`, with our [`STATEMENT_TIMEOUT`] and
/// [`APPLICATION_NAME`] unless the URL sets its own.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let mut options = PgConnectOptions::from_str(url).map_err(unavailable)?;
    if !options
        .get_options()
        .is_some_and(|o| o.contains("statement_timeout"))
    {
        options = options.options([("statement_timeout", STATEMENT_TIMEOUT)]);
    }
    if options.get_application_name().is_none() {
        options = options.application_name(APPLICATION_NAME);
    }
    Ok(options)
}

/// Where each statement runs: one pool, or whichever pool a closure names
/// at that moment (the primary of a replica set, which a failover moves).
#[derive(Clone)]
pub(crate) enum Pools {
    Fixed(PgPool),
    Current(std::sync::Arc<dyn Fn() -> Result<PgPool, domain::BackendError> + Send + Sync>),
}

impl Pools {
    /// The pool to run the next statement on.
    pub(crate) fn get(&self) -> Result<PgPool, domain::BackendError> {
        match self {
            Pools::Fixed(pool) => Ok(pool.clone()),
            Pools::Current(current) => current(),
        }
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn backend(e: impl std::fmt::Display) -> domain::BackendError {
    domain::BackendError::Unavailable(e.to_string())
}

/// A row whose text no longer parses as the domain type it stores.
pub(crate) fn corrupt(e: domain::Invalid) -> StoreError {
    StoreError::Unavailable(format!("corrupt row: {e}"))
}
