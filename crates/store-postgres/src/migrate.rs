//! A minimal migrator: numbered SQL files embedded in the binary, applied in
//! order, each in its own transaction, recorded in `_migrations`. The same
//! scheme as store-sqlite's, with PostgreSQL's locking.

use crate::{now_ms, unavailable};
use domain::StoreError;
use sqlx::{Executor, PgPool};

/// Every migration, in order. Never edit one that has shipped; add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "photo_job", include_str!("../migrations/0002_photo_job.sql")),
    (3, "job_retry", include_str!("../migrations/0003_job_retry.sql")),
    (
        4,
        "stalled_uploads",
        include_str!("../migrations/0004_stalled_uploads.sql"),
    ),
    (5, "shard_maps", include_str!("../migrations/0005_shard_maps.sql")),
    (
        6,
        "sharded_ids",
        include_str!("../migrations/0006_sharded_ids.sql"),
    ),
    (7, "usernames", include_str!("../migrations/0007_usernames.sql")),
    (
        8,
        "sharded_social",
        include_str!("../migrations/0008_sharded_social.sql"),
    ),
    (9, "reshard", include_str!("../migrations/0009_reshard.sql")),
    (
        10,
        "shard_load",
        include_str!("../migrations/0010_shard_load.sql"),
    ),
];

/// Key of the transaction-scoped advisory lock every migrating process takes
/// first (an arbitrary constant: ASCII "sclstkmg"). It serialises concurrent
/// starters, so each migration is applied exactly once and no one sees a
/// half-created `_migrations` table (a bare `CREATE TABLE IF NOT EXISTS` run
/// by two sessions at once can fail on the catalog's unique index).
const LOCK_KEY: i64 = 0x7363_6c73_746b_6d67;

/// Applies the pending migrations to the database behind `pool`. Safe to
/// call from several processes at once: they take turns, and each migration
/// is applied once. A migration that fails is rolled back whole (PostgreSQL
/// DDL is transactional) and the error names it.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    for &(version, name, sql) in MIGRATIONS {
        apply(pool, version, name, sql)
            .await
            .map_err(|e| unavailable(format!("migration {version} ({name}): {e}")))?;
    }
    Ok(())
}

async fn apply(pool: &PgPool, version: i64, name: &str, sql: &str) -> Result<(), sqlx::Error> {
    // Dropping the transaction on an early return rolls it back, which also
    // releases the advisory lock.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    // Checked rather than `CREATE TABLE IF NOT EXISTS`, whose notice would
    // be logged at every start.
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_migrations')::text")
        .fetch_one(&mut *tx)
        .await?;
    if table.is_none() {
        sqlx::query(
            "CREATE TABLE _migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
    }
    let done: Option<i64> = sqlx::query_scalar("SELECT version FROM _migrations WHERE version = $1")
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
    if done.is_none() {
        // The simple query protocol runs the file's several statements
        // inside the open transaction.
        // (Through `Executor` rather than `sqlx::raw_sql`, whose future is
        // not `Send` for every lifetime, so `migrate` could not run in a
        // spawned task.)
        (&mut *tx).execute(sql).await?;
        sqlx::query(concat!(
            "INSERT INTO _migrations (version, name, applied_at) VALUES ($1, $2, ",
            now_ms!(),
            ")"
        ))
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tracing::info!(version, name, "applied migration");
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    /// `migrate` can run in a spawned task (a compile-time check).
    #[allow(dead_code)]
    fn migrate_is_send(pool: sqlx::PgPool) {
        fn send<T: Send>(_: T) {}
        send(async move { super::migrate(&pool).await });
    }

    /// Every file of `migrations/` is in the list, under its own number and
    /// name (a file added but not listed would never be applied).
    #[test]
    fn every_migration_file_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = super::MIGRATIONS
            .iter()
            .map(|&(version, name, _)| format!("{version:04}_{name}.sql"))
            .collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, &(version, name, sql)) in super::MIGRATIONS.iter().enumerate() {
            assert_eq!(version, i as i64 + 1, "{name}");
            assert!(!sql.trim().is_empty(), "{name}");
        }
    }
}
