//! The job queue port on the SQL database: at-least-once delivery with an
//! ack wait (a delivery's lease on its row), exponential back-off between
//! attempts and a dead-letter state once the attempts are spent (by a
//! failed last attempt, by a consumer given the delivery past the budget,
//! or, when that one too runs out of ack wait unsettled, by the queue
//! itself).
//!
//! The attempt counter doubles as a fencing token: a delivery's `ack`,
//! `nack`, `in_progress` and `terminate` only act on the row if it still
//! carries the attempt that delivery handed out, so a worker whose ack wait
//! ran out cannot undo the work of the next one. The counter never goes
//! down: a retry of a dead job records the attempts spent so far in
//! `attempt_base` and deliveries number their attempts from there, so a
//! delivery from before the job died never matches a later one.

use crate::backend;
use async_trait::async_trait;
use domain::ports::{Delivery, DeliveryHandle, JobQueue};
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

    /// Moves the row of the delivery with fencing token `token` from
    /// `running` to `state` (`queued` after `delay_ms`, or `dead`),
    /// recording `error`; `false` if the delivery no longer owns the row.
    async fn settle(
        &self,
        job: &Job,
        token: i64,
        state: &str,
        delay_ms: u64,
        error: &str,
    ) -> Result<bool, BackendError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = ?, run_at = ?, locked_until = NULL, last_error = ? \
             WHERE id = ? AND attempts = ? AND state = 'running'",
        )
        .bind(state)
        .bind(now_millis().saturating_add(millis(delay_ms)))
        .bind(error)
        .bind(job.id)
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    /// Dead-letters the jobs whose delivery past the budget ran out of ack
    /// wait unsettled ([`DELIVERIES_SPENT`]), as dead since their lease
    /// ended. Run first by `dead_jobs` and `retry_dead`, the readers of the
    /// `dead` state; `next` passes such rows over and `depth` counts them
    /// as dead already, so the hot path never pays for it.
    async fn bury_spent(&self, now: i64) -> Result<(), BackendError> {
        sqlx::query(
            "UPDATE jobs SET state = 'dead', run_at = locked_until, locked_until = NULL, last_error = ? \
             WHERE state = 'running' AND locked_until <= ? AND attempts - attempt_base > max_attempts",
        )
        .bind(DELIVERIES_SPENT)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// Milliseconds as the INTEGER the time columns hold, saturating rather
/// than wrapping (a `Duration::MAX` delay means "for ever", not the past).
fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 2)
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

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        let now = now_millis();
        // One statement: SQLite runs it under the write lock, so two
        // consumers can never claim the same row. A job whose delivery past
        // the budget ran out unsettled is passed over (`bury_spent` files
        // it as dead when the dead are read).
        let row: Option<(i64, String, Vec<u8>, i64, i64, i64)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_until = ?1 \
             WHERE id = (SELECT id FROM jobs \
                         WHERE (state = 'queued' AND run_at <= ?2) \
                            OR (state = 'running' AND locked_until <= ?2 \
                                AND attempts - attempt_base <= max_attempts) \
                         ORDER BY run_at, id LIMIT 1) \
             RETURNING id, kind, payload, attempts, attempts - attempt_base, max_attempts",
        )
        .bind(now.saturating_add(millis(self.config.ack_wait_ms)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(id, kind, payload, token, attempt, max_attempts)| {
            let job = Job {
                id,
                kind,
                payload,
                attempt: attempt as u32,
                max_attempts: max_attempts as u32,
            };
            let handle = SqlDelivery {
                queue: self.clone(),
                token,
            };
            Delivery::new(job, self.config.ack_wait(), handle)
        }))
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let now = now_millis();
        let (ready, in_flight, dead): (i64, i64, i64) = sqlx::query_as(
            // A job whose delivery past the budget ran out unsettled is dead
            // already (`bury_spent` files it when the dead are read).
            "SELECT \
               coalesce(sum(state = 'queued' OR (state = 'running' AND locked_until <= ?1 \
                                                 AND attempts - attempt_base <= max_attempts)), 0), \
               coalesce(sum(state = 'running' AND locked_until > ?1), 0), \
               coalesce(sum(state = 'dead' OR (state = 'running' AND locked_until <= ?1 \
                                               AND attempts - attempt_base > max_attempts)), 0) \
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

    async fn cancel(&self, job: i64) -> Result<bool, BackendError> {
        // Whatever its state: a delivery in hand is fenced off because its
        // guarded settlements find no row.
        let done = sqlx::query("DELETE FROM jobs WHERE id = ?")
            .bind(job)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, BackendError> {
        self.bury_spent(now_millis()).await?;
        // A dead row's run_at is when it died (settle's delay is 0).
        let rows: Vec<(i64, String, Vec<u8>, i64, String, i64)> = sqlx::query_as(
            "SELECT id, kind, payload, attempts - attempt_base, coalesce(last_error, ''), run_at \
             FROM jobs WHERE state = 'dead' ORDER BY run_at DESC, id DESC LIMIT ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(id, kind, payload, attempts, last_error, died_at)| DeadJob {
                id,
                kind,
                payload,
                attempts: u32::try_from(attempts).unwrap_or(0),
                last_error,
                died_at_ms: Some(died_at),
            })
            .collect())
    }

    async fn retry_dead(&self, id: i64) -> Result<bool, BackendError> {
        self.bury_spent(now_millis()).await?;
        // attempts keeps growing (the fencing token); the next delivery's
        // attempt number starts again from 1 above the base.
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempt_base = attempts, run_at = ?, locked_until = NULL \
             WHERE id = ? AND state = 'dead'",
        )
        .bind(now_millis())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}

/// One delivery: its queue and its fencing token (the row's `attempts` as
/// the delivery set it).
struct SqlDelivery {
    queue: SqlJobQueue,
    token: i64,
}

/// A delivery's settlements: statements guarded by its fencing token.
#[async_trait]
impl DeliveryHandle for SqlDelivery {
    async fn ack(&self, job: &Job) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM jobs WHERE id = ? AND attempts = ? AND state = 'running'")
            .bind(job.id)
            .bind(self.token)
            .execute(&self.queue.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn nack(
        &self,
        job: &Job,
        error: &str,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, BackendError> {
        let retry = self.queue.config.retry_delay(job, delay);
        let owned = match retry {
            None => self.queue.settle(job, self.token, "dead", 0, error).await?,
            Some(delay_ms) => {
                self.queue
                    .settle(job, self.token, "queued", delay_ms, error)
                    .await?
            }
        };
        Ok(NackOutcome::of_update(owned.into(), retry))
    }

    async fn in_progress(&self, job: &Job) -> Result<(), BackendError> {
        sqlx::query("UPDATE jobs SET locked_until = ? WHERE id = ? AND attempts = ? AND state = 'running'")
            .bind(now_millis().saturating_add(millis(self.queue.config.ack_wait_ms)))
            .bind(job.id)
            .bind(self.token)
            .execute(&self.queue.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn terminate(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError> {
        let owned = self.queue.settle(job, self.token, "dead", 0, error).await?;
        Ok(NackOutcome::of_update(owned.into(), None))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use conformance::queue::{QueueAdapter, Subject};
    use std::sync::Arc;

    /// Each queue in its own database file; the other handle is a second
    /// pool on that file, as a second process would open.
    struct Sqlite;

    #[async_trait(?Send)]
    impl QueueAdapter for Sqlite {
        async fn fresh(&self, config: QueueConfig) -> Subject {
            let (pool, dir) = crate::test_pool().await;
            let other = crate::open(&dir.path().join("test.db")).await.unwrap();
            Subject {
                queue: Arc::new(SqlJobQueue::new(pool, config)),
                other: Arc::new(SqlJobQueue::new(other, config)),
                guard: Box::new(dir),
            }
        }
    }

    #[tokio::test]
    async fn conformance() {
        conformance::queue::run_all(&Sqlite).await;
    }

    async fn last_error(pool: &SqlitePool) -> Option<String> {
        sqlx::query_scalar("SELECT last_error FROM jobs")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failure_is_recorded_and_a_fenced_one_is_not() {
        let (pool, _dir) = crate::test_pool().await;
        let q = SqlJobQueue::new(
            pool.clone(),
            QueueConfig {
                max_attempts: 2,
                ack_wait_ms: 0,
                ..QueueConfig::default()
            },
        );
        q.enqueue("photo", b"1").await.unwrap();
        // An ack wait of 0: every delivery is overtaken by the next one.
        let first = q.next().await.unwrap().unwrap();
        let second = q.next().await.unwrap().unwrap();
        assert_eq!(second.job().attempt, 2);
        assert_eq!(first.nack("late", None).await.unwrap(), NackOutcome::Stale);
        assert_eq!(last_error(&pool).await, None);
        assert_eq!(
            second.terminate("boom 2").await.unwrap(),
            NackOutcome::DeadLettered
        );
        assert_eq!(last_error(&pool).await.as_deref(), Some("boom 2"));
    }
}
