//! The job queue port: the conformance battery on PostgreSQL (the other
//! handle on its own pool, as separate worker processes have), plus what
//! only this adapter has: a claim passing a locked row instead of waiting,
//! and the last error kept on the row.

use crate::helpers::{spawn_db, TestDb};
use async_trait::async_trait;
use conformance::queue::{QueueAdapter, Subject};
use domain::ports::JobQueue;
use domain::*;
use std::sync::Arc;
use std::time::Duration;
use store_postgres::{PgJobQueue, QueueConfig};

/// One private PostgreSQL for the whole battery; each case starts from an
/// empty `jobs` table (the cases run one after another).
struct Postgres(TestDb);

#[async_trait(?Send)]
impl QueueAdapter for Postgres {
    async fn fresh(&self, config: QueueConfig) -> Subject {
        let db = &self.0;
        sqlx::query("TRUNCATE jobs").execute(&db.pool).await.unwrap();
        Subject {
            queue: Arc::new(PgJobQueue::new(db.pool.clone(), config)),
            other: Arc::new(PgJobQueue::new(db.second_pool().await, config)),
            guard: Box::new(()),
        }
    }
}

#[tokio::test]
async fn conformance() {
    conformance::queue::run_all(&Postgres(spawn_db().await)).await;
}

fn fast() -> QueueConfig {
    QueueConfig {
        max_attempts: 3,
        backoff_ms: 20,
        max_backoff_ms: 1000,
        ..QueueConfig::default()
    }
}

async fn last_error(db: &TestDb) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, last_error FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failure_is_recorded_and_a_fenced_one_is_not() {
    let db = spawn_db().await;
    // An ack wait of 0: every delivery is overtaken by the next one.
    let q = PgJobQueue::new(
        db.pool.clone(),
        QueueConfig {
            ack_wait_ms: 0,
            ..fast()
        },
    );
    q.enqueue("photo", b"1").await.unwrap();
    let first = q.next().await.unwrap().unwrap();
    let second = q.next().await.unwrap().unwrap();
    assert_eq!(second.job().attempt, 2);
    // The row is not touched by the late nack.
    assert_eq!(first.nack("late", None).await.unwrap(), NackOutcome::Stale);
    assert_eq!(last_error(&db).await, ("running".into(), None));
    let third = q.next().await.unwrap().unwrap();
    assert_eq!(
        third.nack("boom 3", None).await.unwrap(),
        NackOutcome::DeadLettered
    );
    assert_eq!(last_error(&db).await, ("dead".into(), Some("boom 3".into())));
}

#[tokio::test]
async fn a_claim_skips_a_locked_row_instead_of_waiting() {
    let db = spawn_db().await;
    let q = PgJobQueue::new(db.pool.clone(), fast());
    let first = q.enqueue("photo", b"1").await.unwrap();
    let second = q.enqueue("photo", b"2").await.unwrap();
    // Another session holds the oldest job's row lock (as a claim in
    // progress would).
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(first)
        .execute(&mut *tx)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), q.next())
        .await
        .expect("a claim waited for a locked row")
        .unwrap()
        .unwrap();
    assert_eq!(got.job().id, second);
    tx.rollback().await.unwrap();
    assert_eq!(q.next().await.unwrap().unwrap().job().id, first);
}
