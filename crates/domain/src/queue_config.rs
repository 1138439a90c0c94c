//! The retry policy of a job queue, shared by every queue adapter: the
//! queue owns it (as a broker's consumer owns its ack wait, max deliveries
//! and back-off), not each consumer's call.

use crate::Job;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The last error of a job its queue dead-lettered itself: even its
/// delivery past the budget (the one that lets a consumer dead-letter it
/// with its own handling) ran out of ack wait unsettled, every consumer of
/// it having died or hung.
pub const DELIVERIES_SPENT: &str =
    "deliveries spent: the last one was never settled (its consumer died or hung)";

/// Retry policy of the queue (`[queue]` in a topology file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Deliveries before a job is dead-lettered. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Back-off after the first failure, doubled after each next one. Default 1000 ms.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Ceiling of the back-off. Default 60000 ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long a delivery stays owned by its consumer without news (an
    /// ack, a nack, an "in progress"); then the job is delivered again, and
    /// the lost delivery counts as an attempt. Default 120000 ms (the
    /// worker's former `visibility_secs = 120`).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_ack_wait_ms() -> u64 {
    120_000
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: default_max_attempts(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            ack_wait_ms: default_ack_wait_ms(),
        }
    }
}

impl QueueConfig {
    /// Back-off after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1).min(32);
        self.backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms)
    }

    /// What a failed delivery of `job` becomes: retried after this many
    /// milliseconds (`requested`, else the back-off of its attempt), or
    /// `None`, dead-lettered (its attempts are spent, whatever the delay
    /// asked for).
    pub fn retry_delay(&self, job: &Job, requested: Option<Duration>) -> Option<u64> {
        (job.attempt < job.max_attempts).then(|| match requested {
            Some(delay) => u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            None => self.backoff(job.attempt),
        })
    }

    /// [`QueueConfig::ack_wait_ms`] as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let c = QueueConfig {
            max_attempts: 3,
            backoff_ms: 20,
            max_backoff_ms: 1000,
            ..QueueConfig::default()
        };
        assert_eq!(c.backoff(1), 20);
        assert_eq!(c.backoff(2), 40);
        assert_eq!(c.backoff(4), 160);
        assert_eq!(c.backoff(40), 1000);
    }

    #[test]
    fn defaults() {
        assert_eq!(
            QueueConfig::default(),
            QueueConfig {
                max_attempts: 5,
                backoff_ms: 1000,
                max_backoff_ms: 60_000,
                ack_wait_ms: 120_000,
            }
        );
        assert_eq!(QueueConfig::default().ack_wait(), Duration::from_secs(120));
    }

    fn job(attempt: u32) -> Job {
        Job {
            id: 1,
            kind: "k".into(),
            payload: vec![],
            attempt,
            max_attempts: 3,
        }
    }

    #[test]
    fn retry_or_dead_letter() {
        let c = QueueConfig {
            max_attempts: 3,
            backoff_ms: 20,
            max_backoff_ms: 1000,
            ..QueueConfig::default()
        };
        assert_eq!(c.retry_delay(&job(1), None), Some(20));
        assert_eq!(c.retry_delay(&job(2), None), Some(40));
        assert_eq!(c.retry_delay(&job(1), Some(Duration::from_secs(5))), Some(5000));
        assert_eq!(c.retry_delay(&job(1), Some(Duration::ZERO)), Some(0));
        assert_eq!(c.retry_delay(&job(1), Some(Duration::MAX)), Some(u64::MAX));
        // The last attempt, or a delivery past it, dead-letters whatever
        // the delay asked for.
        assert_eq!(c.retry_delay(&job(3), None), None);
        assert_eq!(c.retry_delay(&job(3), Some(Duration::from_secs(1))), None);
        assert_eq!(c.retry_delay(&job(4), None), None);
    }

    #[test]
    fn serde_form() {
        let c: QueueConfig = serde_json::from_str(r#"{"max_attempts": 2}"#).unwrap();
        assert_eq!(
            c,
            QueueConfig {
                max_attempts: 2,
                ..QueueConfig::default()
            }
        );
        assert!(serde_json::from_str::<QueueConfig>(r#"{"max_attempt": 2}"#).is_err());
        let c: QueueConfig = serde_json::from_str(r#"{"ack_wait_ms": 500}"#).unwrap();
        assert_eq!(c.ack_wait(), Duration::from_millis(500));
    }
}
