//! A fresh migrated database per test.

use std::time::Duration;
use store_postgres::PgPool;
use test_support::TestPg;

/// A private PostgreSQL and a migrated pool on its primary. The engine
/// processes stop when this is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub pg: TestPg,
}

impl TestDb {
    /// Another pool on the same database, as a second process would have.
    pub async fn second_pool(&self) -> PgPool {
        store_postgres::connect(&self.url, 4).await.unwrap()
    }
}

/// Starts a PostgreSQL with `replicas` streaming replicas and migrates it.
pub async fn spawn_db_with_replicas(replicas: usize) -> TestDb {
    let pg = TestPg::start(replicas).await;
    let url = pg.primary.url();
    let pool = store_postgres::connect(&url, 8).await.unwrap();
    store_postgres::migrate(&pool).await.unwrap();
    TestDb { pool, url, pg }
}

/// Starts a lone PostgreSQL primary and migrates it.
pub async fn spawn_db() -> TestDb {
    spawn_db_with_replicas(0).await
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
