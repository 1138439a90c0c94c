//! The one connection both adapters share: a self-reconnecting
//! `ConnectionManager`, a deadline on every call and the circuit breaker.

use crate::breaker::{Breaker, RedisStats};
use domain::BackendError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError};
use std::time::{Duration, Instant};

/// First back-off of the circuit breaker after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The back-off doubles up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Client {
    conn: ConnectionManager,
    breaker: Breaker,
    timeout: Duration,
}

impl Client {
    /// A client of `url`; no I/O happens until the first call.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client =
            redis::Client::open(url).map_err(|e| BackendError::Invalid(format!("redis url: {e}")))?;
        // The manager's own reconnect retries are turned off: the breaker
        // paces the attempts, and a retry loop inside the manager would
        // keep a restarted Redis unused until its next sleep ends.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BackendError::Invalid(format!("redis: {e}")))?;
        Ok(Client {
            conn,
            breaker: Breaker::new(BACKOFF_MIN, BACKOFF_MAX),
            timeout,
        })
    }

    pub(crate) fn stats(&self) -> RedisStats {
        self.breaker.stats()
    }

    /// Runs one command within the deadline, unless the breaker is open.
    pub(crate) async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        let Some(permit) = self.breaker.admit(Instant::now()) else {
            return Err(BackendError::Unavailable(
                "redis skipped: circuit breaker open".into(),
            ));
        };
        let mut conn = self.conn.clone();
        let outcome = tokio::time::timeout(self.timeout, async {
            match cmd.query_async::<T>(&mut conn).await {
                // After a failed reconnect the manager hands out that stale
                // refusal once and starts a new attempt; the command was
                // never sent, so trying again (on the new attempt) is safe
                // and lets a restarted Redis serve this very call.
                Err(e) if e.is_connection_refusal() => cmd.query_async::<T>(&mut conn).await,
                other => other,
            }
        })
        .await;
        match outcome {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                if is_transport_error(&e) {
                    permit.failure(Instant::now());
                } else {
                    // Redis answered, with an error: it is up.
                    permit.success();
                    self.breaker.count_failure();
                }
                Err(BackendError::Unavailable(format!("redis: {e}")))
            }
            Err(_elapsed) => {
                permit.failure(Instant::now());
                Err(BackendError::Unavailable(format!(
                    "redis: no answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }
}

/// Whether an error says Redis cannot be reached, rather than Redis refusing
/// one command.
fn is_transport_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}
