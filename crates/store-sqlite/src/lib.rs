//! Embedded adapters on one SQLite database in WAL mode: the SQL store, the
//! session store and the job queue. Several processes (web servers, workers)
//! share the file; SQLite's locking and a busy timeout serialise writers, and
//! every write is a single statement so no transaction ever has to upgrade a
//! read lock (which SQLite would answer with an immediate `SQLITE_BUSY`).

mod migrate;
mod queue;
mod sessions;
mod store;

pub use domain::QueueConfig;
pub use queue::SqlJobQueue;
pub use sessions::SqlSessionStore;
/// The connection pool every adapter of one database shares.
pub use sqlx::sqlite::SqlitePool;
pub use store::SqliteStore;

use domain::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Opens (creating if missing) the database at `path` and applies pending
/// migrations. `path` may be `:memory:` for unit tests.
pub async fn open(path: &Path) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(unavailable)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(unavailable)?;
    migrate::run(&pool).await?;
    Ok(pool)
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn backend(e: impl std::fmt::Display) -> domain::BackendError {
    domain::BackendError::Unavailable(e.to_string())
}

#[cfg(test)]
pub(crate) async fn test_pool() -> (SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir.path().join("test.db")).await.unwrap();
    (pool, dir)
}
