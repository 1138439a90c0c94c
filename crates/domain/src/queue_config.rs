//! The retry policy of a job queue, shared by every queue adapter.

use crate::Job;
use serde::{Deserialize, Serialize};

/// Retry policy of the queue.
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

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: default_max_attempts(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
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
    /// milliseconds, or `None`, dead-lettered (its attempts are spent).
    pub fn retry_delay(&self, job: &Job) -> Option<u64> {
        (job.attempt < job.max_attempts).then(|| self.backoff(job.attempt))
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
                max_backoff_ms: 60_000
            }
        );
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
    }
}
