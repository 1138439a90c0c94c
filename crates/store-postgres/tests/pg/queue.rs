//! The job queue port: store-sqlite's tests, on PostgreSQL, plus consumers
//! in separate pools (as separate worker processes are) and a claim racing
//! a locked row.

use crate::helpers::{spawn_db, TestDb};
use domain::ports::JobQueue;
use domain::*;
use std::collections::HashSet;
use std::time::Duration;
use store_postgres::{PgJobQueue, QueueConfig};

const VIS: Duration = Duration::from_secs(30);

fn fast() -> QueueConfig {
    QueueConfig {
        max_attempts: 3,
        backoff_ms: 20,
        max_backoff_ms: 1000,
    }
}

async fn queue() -> (PgJobQueue, TestDb) {
    let db = spawn_db().await;
    (PgJobQueue::new(db.pool.clone(), fast()), db)
}

#[tokio::test]
async fn claim_ack_removes_job() {
    let (q, _db) = queue().await;
    let id = q.enqueue("photo", b"1").await.unwrap();
    assert_eq!(q.depth().await.unwrap().ready, 1);
    let job = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!((job.id, job.attempt, job.payload.as_slice()), (id, 1, &b"1"[..]));
    assert_eq!((job.kind.as_str(), job.max_attempts), ("photo", 3));
    assert!(q.claim(VIS).await.unwrap().is_none(), "claimed job is invisible");
    assert_eq!(q.depth().await.unwrap().in_flight, 1);
    q.ack(&job).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    q.ack(&job).await.unwrap(); // twice is harmless
}

#[tokio::test]
async fn payloads_are_bytes_and_order_is_fifo() {
    let (q, _db) = queue().await;
    let binary = [0u8, 0xff, 0x80, b'\\', b'\'', 0];
    let a = q.enqueue("photo", &binary).await.unwrap();
    let b = q.enqueue("other", b"").await.unwrap();
    assert!(b > a);
    let ja = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!((ja.id, ja.payload.as_slice()), (a, &binary[..]));
    let jb = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!((jb.id, jb.kind.as_str(), jb.payload.len()), (b, "other", 0));
}

#[tokio::test]
async fn visibility_timeout_redelivers_and_fences_the_late_ack() {
    let (q, _db) = queue().await;
    q.enqueue("photo", b"1").await.unwrap();
    let first = q.claim(Duration::from_millis(10)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        q.depth().await.unwrap().ready,
        1,
        "an expired claim is ready again"
    );
    let second = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!((second.id, second.attempt), (first.id, 2));
    // The first consumer's late ack is fenced off.
    q.ack(&first).await.unwrap();
    assert_eq!(q.depth().await.unwrap().in_flight, 1);
    q.ack(&second).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
}

#[tokio::test]
async fn late_nack_is_fenced() {
    let (q, db) = queue().await;
    q.enqueue("photo", b"1").await.unwrap();
    let first = q.claim(Duration::from_millis(10)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = q.claim(VIS).await.unwrap().unwrap();
    // The row is not touched (the second delivery stays in flight with its
    // lock) and the caller learns that its failure is not to be acted on.
    assert_eq!(q.nack(&first, "late").await.unwrap(), NackOutcome::Stale);
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            ready: 0,
            in_flight: 1,
            dead: 0
        }
    );
    let last_error: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(last_error, None);
    q.ack(&second).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
}

#[tokio::test]
async fn nack_backs_off_then_dead_letters() {
    // Back-offs long enough that a loaded machine's round trips cannot
    // outlast them between a nack and the next claim.
    let db = spawn_db().await;
    let q = PgJobQueue::new(
        db.pool.clone(),
        QueueConfig {
            max_attempts: 3,
            backoff_ms: 300,
            max_backoff_ms: 400,
        },
    );
    q.enqueue("photo", b"1").await.unwrap();
    let j1 = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!(
        q.nack(&j1, "boom").await.unwrap(),
        NackOutcome::Retry { delay_ms: 300 }
    );
    assert!(q.claim(VIS).await.unwrap().is_none(), "backing off");
    assert_eq!(q.depth().await.unwrap().ready, 1, "backing off counts as ready");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let j2 = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!(j2.attempt, 2);
    assert_eq!(
        q.nack(&j2, "boom").await.unwrap(),
        NackOutcome::Retry { delay_ms: 400 }
    );
    assert!(
        q.claim(VIS).await.unwrap().is_none(),
        "backing off, capped at 400 ms"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let j3 = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!(j3.attempt, 3);
    assert_eq!(q.nack(&j3, "boom 3").await.unwrap(), NackOutcome::DeadLettered);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(q.claim(VIS).await.unwrap().is_none());
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            ready: 0,
            in_flight: 0,
            dead: 1
        }
    );
    let (state, last_error): (String, String) = sqlx::query_as("SELECT state, last_error FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), last_error.as_str()), ("dead", "boom 3"));
}

#[tokio::test]
async fn a_dead_worker_counts_as_an_attempt() {
    // A poison job whose consumer dies every time (never acks nor nacks)
    // still reaches max_attempts, and the last consumer dead-letters it.
    let (q, _db) = queue().await;
    q.enqueue("photo", b"poison").await.unwrap();
    for attempt in 1..=2 {
        let j = q.claim(Duration::from_millis(10)).await.unwrap().unwrap();
        assert_eq!(j.attempt, attempt);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let j = q.claim(VIS).await.unwrap().unwrap();
    assert_eq!((j.attempt, j.max_attempts), (3, 3));
    assert_eq!(q.nack(&j, "boom").await.unwrap(), NackOutcome::DeadLettered);
    assert_eq!(q.depth().await.unwrap().dead, 1);
}

#[tokio::test]
async fn concurrent_consumers_never_share_a_job() {
    let (q, db) = queue().await;
    // Two pools, as two worker processes would have.
    let other = PgJobQueue::new(db.second_pool().await, fast());
    const JOBS: u32 = 200;
    for i in 0..JOBS {
        q.enqueue("photo", &i.to_be_bytes()).await.unwrap();
    }
    let mut tasks = vec![];
    for c in 0..6 {
        let q = if c % 2 == 0 { q.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            // Claims are held (not acked) until every consumer is done, so
            // a job handed out twice cannot hide behind an early ack.
            let mut got = vec![];
            while let Some(j) = q.claim(VIS).await.unwrap() {
                assert_eq!(j.attempt, 1, "job {} delivered again", j.id);
                got.push(j);
            }
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let ids: HashSet<i64> = all.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), all.len(), "a job was claimed twice");
    let mut payloads: Vec<u32> = all
        .iter()
        .map(|j| u32::from_be_bytes(j.payload.as_slice().try_into().unwrap()))
        .collect();
    payloads.sort();
    assert_eq!(payloads, (0..JOBS).collect::<Vec<_>>());
    assert_eq!(q.depth().await.unwrap().in_flight, i64::from(JOBS));
    for j in &all {
        q.ack(j).await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
}

#[tokio::test]
async fn a_claim_skips_a_locked_row_instead_of_waiting() {
    let (q, db) = queue().await;
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
    let got = tokio::time::timeout(Duration::from_secs(5), q.claim(VIS))
        .await
        .expect("claim waited for a locked row")
        .unwrap()
        .unwrap();
    assert_eq!(got.id, second);
    tx.rollback().await.unwrap();
    assert_eq!(q.claim(VIS).await.unwrap().unwrap().id, first);
}
