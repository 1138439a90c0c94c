//! The job queue port on PostgreSQL: at-least-once delivery with a
//! visibility timeout, exponential back-off between attempts and a
//! dead-letter state once the attempts are spent; store-sqlite's semantics.
//!
//! The attempt counter doubles as a fencing token: `ack` and `nack` only act
//! on the row if it still carries the attempt the caller claimed, so a worker
//! whose visibility timeout ran out cannot undo the work of the next one.

use crate::{backend, now_ms};
use async_trait::async_trait;
use domain::ports::JobQueue;
use domain::*;
use sqlx::PgPool;
use std::time::Duration;

/// Jobs in the `jobs` table.
#[derive(Clone)]
pub struct PgJobQueue {
    pool: PgPool,
    config: QueueConfig,
}

impl PgJobQueue {
    /// Wraps a connected, migrated pool.
    pub fn new(pool: PgPool, config: QueueConfig) -> Self {
        PgJobQueue { pool, config }
    }
}

/// Milliseconds as the BIGINT the time columns hold, saturating rather than
/// wrapping (a `Duration::MAX` visibility means "for ever", not the past).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
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
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn claim(&self, visibility: Duration) -> Result<Option<Job>, BackendError> {
        // The inner SELECT locks the oldest claimable row, skipping rows
        // another consumer has locked; a row claimed and committed by
        // someone else since this statement's snapshot is re-checked
        // against the WHERE clause and passed over. So two consumers never
        // get one job, and neither waits for the other.
        let row: Option<(i64, String, Vec<u8>, i32, i32)> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_until = ",
            now_ms!(),
            " + $1 \
             WHERE id = (SELECT id FROM jobs \
                         WHERE (state = 'queued' AND run_at <= ",
            now_ms!(),
            ") OR (state = 'running' AND locked_until <= ",
            now_ms!(),
            ") ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, payload, attempts, max_attempts"
        ))
        .bind(millis(visibility))
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
        sqlx::query("DELETE FROM jobs WHERE id = $1 AND attempts = $2 AND state = 'running'")
            .bind(job.id)
            .bind(attempt(job.attempt))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn nack(&self, job: &Job, error: &str) -> Result<NackOutcome, BackendError> {
        let retry = self.config.retry_delay(job);
        let (state, delay_ms) = match retry {
            None => ("dead", 0),
            Some(delay_ms) => ("queued", i64::try_from(delay_ms).unwrap_or(i64::MAX / 2)),
        };
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = $1, run_at = ",
            now_ms!(),
            " + $2, locked_until = NULL, last_error = $3 \
             WHERE id = $4 AND attempts = $5 AND state = 'running'"
        ))
        .bind(state)
        .bind(delay_ms)
        .bind(error)
        .bind(job.id)
        .bind(attempt(job.attempt))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(NackOutcome::of_update(done.rows_affected(), retry))
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let (ready, in_flight, dead): (i64, i64, i64) = sqlx::query_as(concat!(
            "SELECT \
               count(*) FILTER (WHERE state = 'queued' OR (state = 'running' AND locked_until <= ",
            now_ms!(),
            ")), count(*) FILTER (WHERE state = 'running' AND locked_until > ",
            now_ms!(),
            "), count(*) FILTER (WHERE state = 'dead') \
             FROM jobs"
        ))
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

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert!(millis(Duration::MAX) > 0);
        assert_eq!(attempt(u32::MAX), i32::MAX);
    }
}
