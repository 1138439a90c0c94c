//! The job queue port on the SQL database: at-least-once delivery with a
//! visibility timeout, exponential back-off between attempts and a dead-letter
//! state once the attempts are spent.
//!
//! The attempt counter doubles as a fencing token: `ack` and `nack` only act
//! on the row if it still carries the attempt the caller claimed, so a worker
//! whose visibility timeout ran out cannot undo the work of the next one.

use crate::backend;
use async_trait::async_trait;
use domain::ports::JobQueue;
use domain::*;
use sqlx::SqlitePool;
use std::time::Duration;

/// Jobs in the `jobs` table.
#[derive(Clone)]
pub struct SqlJobQueue {
    pool: SqlitePool,
    config: QueueConfig,
}

impl SqlJobQueue {
    /// Wraps an opened, migrated pool.
    pub fn new(pool: SqlitePool, config: QueueConfig) -> Self {
        SqlJobQueue { pool, config }
    }
}

#[async_trait]
impl JobQueue for SqlJobQueue {
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError> {
        let now = now_millis();
        sqlx::query_scalar(
            "INSERT INTO jobs (kind, payload, state, max_attempts, run_at, created_at) \
             VALUES (?, ?, 'queued', ?, ?, ?) RETURNING id",
        )
        .bind(kind)
        .bind(payload)
        .bind(self.config.max_attempts as i64)
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn claim(&self, visibility: Duration) -> Result<Option<Job>, BackendError> {
        let now = now_millis();
        // One statement: SQLite runs it under the write lock, so two
        // consumers can never claim the same row.
        let row: Option<(i64, String, Vec<u8>, i64, i64)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_until = ?1 \
             WHERE id = (SELECT id FROM jobs \
                         WHERE (state = 'queued' AND run_at <= ?2) \
                            OR (state = 'running' AND locked_until <= ?2) \
                         ORDER BY run_at, id LIMIT 1) \
             RETURNING id, kind, payload, attempts, max_attempts",
        )
        .bind(now + visibility.as_millis() as i64)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(id, kind, payload, attempt, max_attempts)| Job {
            id,
            kind,
            payload,
            attempt: attempt as u32,
            max_attempts: max_attempts as u32,
        }))
    }

    async fn ack(&self, job: &Job) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM jobs WHERE id = ? AND attempts = ? AND state = 'running'")
            .bind(job.id)
            .bind(job.attempt as i64)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn nack(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError> {
        let retry = self.config.retry_delay(job);
        let (state, run_at) = match retry {
            None => ("dead", now_millis()),
            Some(delay_ms) => ("queued", now_millis() + delay_ms as i64),
        };
        let done = sqlx::query(
            "UPDATE jobs SET state = ?, run_at = ?, locked_until = NULL, last_error = ? \
             WHERE id = ? AND attempts = ? AND state = 'running'",
        )
        .bind(state)
        .bind(run_at)
        .bind(error)
        .bind(job.id)
        .bind(job.attempt as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(NackOutcome::of_update(done.rows_affected(), retry))
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let now = now_millis();
        let (ready, in_flight, dead): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               coalesce(sum(state = 'queued' OR (state = 'running' AND locked_until <= ?1)), 0), \
               coalesce(sum(state = 'running' AND locked_until > ?1), 0), \
               coalesce(sum(state = 'dead'), 0) \
             FROM jobs",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(QueueDepth {
            ready,
            in_flight,
            dead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: Duration = Duration::from_secs(30);

    async fn queue(config: QueueConfig) -> (SqlJobQueue, tempfile::TempDir) {
        let (pool, dir) = crate::test_pool().await;
        (SqlJobQueue::new(pool, config), dir)
    }

    fn fast() -> QueueConfig {
        QueueConfig {
            max_attempts: 3,
            backoff_ms: 20,
            max_backoff_ms: 1000,
        }
    }

    #[tokio::test]
    async fn claim_ack_removes_job() {
        let (q, _d) = queue(fast()).await;
        let id = q.enqueue("photo", b"1").await.unwrap();
        assert_eq!(q.depth().await.unwrap().ready, 1);
        let job = q.claim(VIS).await.unwrap().unwrap();
        assert_eq!((job.id, job.attempt, job.payload.as_slice()), (id, 1, &b"1"[..]));
        assert!(q.claim(VIS).await.unwrap().is_none(), "claimed job is invisible");
        assert_eq!(q.depth().await.unwrap().in_flight, 1);
        q.ack(&job).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    #[tokio::test]
    async fn visibility_timeout_redelivers() {
        let (q, _d) = queue(fast()).await;
        q.enqueue("photo", b"1").await.unwrap();
        let first = q.claim(Duration::from_millis(10)).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = q.claim(VIS).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempt), (first.id, 2));
        // The first consumer's late ack and nack are fenced off.
        q.ack(&first).await.unwrap();
        assert_eq!(q.nack(&first, "late").await.unwrap(), NackOutcome::Stale);
        assert_eq!(q.depth().await.unwrap().in_flight, 1);
        q.ack(&second).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    #[tokio::test]
    async fn nack_backs_off_then_dead_letters() {
        let (q, _d) = queue(fast()).await;
        q.enqueue("photo", b"1").await.unwrap();
        let j1 = q.claim(VIS).await.unwrap().unwrap();
        assert_eq!(
            q.nack(&j1, "boom").await.unwrap(),
            NackOutcome::Retry { delay_ms: 20 }
        );
        assert!(q.claim(VIS).await.unwrap().is_none(), "backing off");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let j2 = q.claim(VIS).await.unwrap().unwrap();
        assert_eq!(
            q.nack(&j2, "boom").await.unwrap(),
            NackOutcome::Retry { delay_ms: 40 }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let j3 = q.claim(VIS).await.unwrap().unwrap();
        assert_eq!(j3.attempt, 3);
        assert_eq!(q.nack(&j3, "boom").await.unwrap(), NackOutcome::DeadLettered);
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
    }

    #[tokio::test]
    async fn concurrent_consumers_never_share_a_job() {
        let (q, _d) = queue(fast()).await;
        for i in 0..40 {
            q.enqueue("photo", &[i]).await.unwrap();
        }
        let mut tasks = vec![];
        for _ in 0..4 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = vec![];
                while let Some(j) = q.claim(VIS).await.unwrap() {
                    got.push(j.payload[0]);
                    q.ack(&j).await.unwrap();
                }
                got
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<u8>>());
    }
}
