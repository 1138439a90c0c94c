//! The job queue port on PostgreSQL: at-least-once delivery with an ack
//! wait (a delivery's lease on its row), exponential back-off between
//! attempts and a dead-letter state once the attempts are spent;
//! store-sqlite's semantics.
//!
//! The attempt counter doubles as a fencing token: a delivery's `ack`,
//! `nack`, `in_progress` and `terminate` only act on the row if it still
//! carries the attempt that delivery handed out, so a worker whose ack wait
//! ran out cannot undo the work of the next one. The counter never goes
//! down: a retry of a dead job records the attempts spent so far in
//! `attempt_base` and deliveries number their attempts from there, so a
//! delivery from before the job died never matches a later one.

use crate::{backend, now_ms, Pools};
use async_trait::async_trait;
use domain::ports::{Delivery, DeliveryHandle, JobQueue};
use domain::*;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Jobs in the `jobs` table.
#[derive(Clone)]
pub struct PgJobQueue {
    pools: Pools,
    config: QueueConfig,
}

impl PgJobQueue {
    /// Wraps a connected, migrated pool.
    pub fn new(pool: PgPool, config: QueueConfig) -> Self {
        PgJobQueue {
            pools: Pools::Fixed(pool),
            config,
        }
    }

    /// A queue on whichever pool `current` names at each statement, the
    /// delivery's settlements included (a delivery handed out before a
    /// failover is settled on the new primary). `current` fails when there
    /// is no pool to use now.
    pub fn on_current(
        current: impl Fn() -> Result<PgPool, BackendError> + Send + Sync + 'static,
        config: QueueConfig,
    ) -> Self {
        PgJobQueue {
            pools: Pools::Current(Arc::new(current)),
            config,
        }
    }

    fn pool(&self) -> Result<PgPool, BackendError> {
        self.pools.get()
    }

    /// Moves the row of the delivery with fencing token `token` from
    /// `running` to `state` (`queued` after `delay_ms`, or `dead`),
    /// recording `error`; `false` if the delivery no longer owns the row.
    async fn settle(
        &self,
        job: &Job,
        token: i32,
        state: &str,
        delay_ms: u64,
        error: &str,
    ) -> Result<bool, BackendError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = $1, run_at = ",
            now_ms!(),
            " + $2, locked_until = NULL, last_error = $3 \
             WHERE id = $4 AND attempts = $5 AND state = 'running'"
        ))
        .bind(state)
        .bind(millis(delay_ms))
        .bind(error)
        .bind(job.id)
        .bind(token)
        .execute(&self.pool()?)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}

impl PgJobQueue {
    /// Dead-letters the jobs whose delivery past the budget ran out of ack
    /// wait unsettled ([`DELIVERIES_SPENT`]), as dead since their lease
    /// ended. Run first by `dead_jobs` and `retry_dead`, the readers of the
    /// `dead` state; `next` passes such rows over and `depth` counts them
    /// as dead already, so the hot path never pays for it.
    async fn bury_spent(&self) -> Result<(), BackendError> {
        sqlx::query(concat!(
            "UPDATE jobs SET state = 'dead', run_at = locked_until, locked_until = NULL, last_error = $1 \
             WHERE state = 'running' AND locked_until <= ",
            now_ms!(),
            " AND attempts - attempt_base > max_attempts"
        ))
        .bind(DELIVERIES_SPENT)
        .execute(&self.pool()?)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// Milliseconds as the BIGINT the time columns hold, saturating rather than
/// wrapping (a `Duration::MAX` delay means "for ever", not the past).
fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 2)
}

/// The attempt counter as its INTEGER column holds it.
fn attempt(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait]
impl JobQueue for PgJobQueue {
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError> {
        sqlx::query_scalar(concat!(
            "INSERT INTO jobs (kind, payload, state, max_attempts, run_at, created_at) \
             VALUES ($1, $2, 'queued', $3, ",
            now_ms!(),
            ", ",
            now_ms!(),
            ") RETURNING id"
        ))
        .bind(kind)
        .bind(payload)
        .bind(attempt(self.config.max_attempts))
        .fetch_one(&self.pool()?)
        .await
        .map_err(backend)
    }

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        // The inner SELECT locks the oldest claimable row, skipping rows
        // another consumer has locked; a row claimed and committed by
        // someone else since this statement's snapshot is re-checked
        // against the WHERE clause and passed over. So two consumers never
        // get one job, and neither waits for the other.
        // A job whose delivery past the budget ran out unsettled is passed
        // over (`bury_spent` files it as dead when the dead are read).
        let row: Option<(i64, String, Vec<u8>, i32, i32, i32)> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_until = ",
            now_ms!(),
            " + $1 \
             WHERE id = (SELECT id FROM jobs \
                         WHERE (state = 'queued' AND run_at <= ",
            now_ms!(),
            ") OR (state = 'running' AND locked_until <= ",
            now_ms!(),
            " AND attempts - attempt_base <= max_attempts) \
             ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, payload, attempts, attempts - attempt_base, max_attempts"
        ))
        .bind(millis(self.config.ack_wait_ms))
        .fetch_optional(&self.pool()?)
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
            let handle = PgDelivery {
                queue: self.clone(),
                token,
            };
            Delivery::new(job, self.config.ack_wait(), handle)
        }))
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let (ready, in_flight, dead): (i64, i64, i64) = sqlx::query_as(concat!(
            // A job whose delivery past the budget ran out unsettled is dead
            // already (`bury_spent` files it when the dead are read).
            "SELECT \
               count(*) FILTER (WHERE state = 'queued' OR (state = 'running' AND locked_until <= ",
            now_ms!(),
            " AND attempts - attempt_base <= max_attempts)), \
               count(*) FILTER (WHERE state = 'running' AND locked_until > ",
            now_ms!(),
            "), count(*) FILTER (WHERE state = 'dead' OR (state = 'running' AND locked_until <= ",
            now_ms!(),
            " AND attempts - attempt_base > max_attempts)) \
             FROM jobs"
        ))
        .fetch_one(&self.pool()?)
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
        let done = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(job)
            .execute(&self.pool()?)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, BackendError> {
        self.bury_spent().await?;
        // A dead row's run_at is when it died (settle's delay is 0).
        let rows: Vec<(i64, String, Vec<u8>, i32, String, i64)> = sqlx::query_as(
            "SELECT id, kind, payload, attempts - attempt_base, coalesce(last_error, ''), run_at \
             FROM jobs WHERE state = 'dead' ORDER BY run_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool()?)
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
        self.bury_spent().await?;
        // attempts keeps growing (the fencing token); the next delivery's
        // attempt number starts again from 1 above the base.
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = 'queued', attempt_base = attempts, run_at = ",
            now_ms!(),
            ", locked_until = NULL WHERE id = $1 AND state = 'dead'"
        ))
        .bind(id)
        .execute(&self.pool()?)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}

/// One delivery: its queue and its fencing token (the row's `attempts` as
/// the delivery set it).
struct PgDelivery {
    queue: PgJobQueue,
    token: i32,
}

/// A delivery's settlements: statements guarded by its fencing token.
#[async_trait]
impl DeliveryHandle for PgDelivery {
    async fn ack(&self, job: &Job) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM jobs WHERE id = $1 AND attempts = $2 AND state = 'running'")
            .bind(job.id)
            .bind(self.token)
            .execute(&self.queue.pool()?)
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
        sqlx::query(concat!(
            "UPDATE jobs SET locked_until = ",
            now_ms!(),
            " + $1 WHERE id = $2 AND attempts = $3 AND state = 'running'"
        ))
        .bind(millis(self.queue.config.ack_wait_ms))
        .bind(job.id)
        .bind(self.token)
        .execute(&self.queue.pool()?)
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

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(millis(1500), 1500);
        assert!(millis(u64::MAX) > 0);
        assert_eq!(attempt(u32::MAX), i32::MAX);
    }
}
