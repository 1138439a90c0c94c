//! Real engines started by the harness: PostgreSQL replication and failover,
//! Redis crash and restart.

mod helpers;
mod postgres;
mod redis;
