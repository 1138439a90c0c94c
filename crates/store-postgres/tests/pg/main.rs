//! Integration tests of the PostgreSQL adapters against a real, private
//! PostgreSQL (a primary, and a streaming replica where a test needs one)
//! started by `test-support` for each test.

mod helpers;
mod migrate;
mod queue;
mod replication;
mod reshard;
mod router;
mod sessions;
mod shard_map;
mod sharded;
mod store;
mod usernames;
