//! A minimal migrator: numbered SQL files embedded in the binary, applied in
//! order, each in its own transaction, recorded in `_migrations`.

use crate::unavailable;
use domain::StoreError;
use sqlx::SqlitePool;

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
];

pub(crate) async fn run(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS _migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(unavailable)?;
    for &(version, name, sql) in MIGRATIONS {
        // BEGIN IMMEDIATE takes the write lock up front, so two processes
        // starting at once apply each migration exactly once.
        let mut conn = pool.acquire().await.map_err(unavailable)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM _migrations WHERE version = ?")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        let result = async {
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *conn).await?;
                sqlx::query("INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)")
                    .bind(version)
                    .bind(name)
                    .bind(domain::now_millis())
                    .execute(&mut *conn)
                    .await?;
                tracing::info!(version, name, "applied migration");
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await.map_err(unavailable)?;
        result.map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn migrations_are_idempotent() {
        let (pool, _dir) = crate::test_pool().await;
        super::run(&pool).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, super::MIGRATIONS.len() as i64);
    }
}
