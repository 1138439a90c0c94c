//! Domain types of the photo service and the ports (traits) through which the
//! application reaches every tier: SQL store, cache, session store, job queue
//! and blob store. Adapters (embedded or distributed) implement the ports; the
//! application only ever sees `Arc<dyn Port>`.

pub mod business;
pub mod consistency;
pub mod error;
pub mod jobs;
pub mod ports;
mod queue_config;
pub mod shard;
pub mod types;

pub use error::{BackendError, StoreError};
pub use queue_config::{QueueConfig, DELIVERIES_SPENT};
pub use types::*;

/// Milliseconds since the Unix epoch, the one time representation stored in
/// every backend (portable between SQLite and PostgreSQL).
pub fn now_millis() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
