//! Polling helpers: replication is asynchronous, so tests wait for a state
//! (with a generous deadline) instead of sleeping.

use engines::postgres::PgNode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `sql` on `node` returns `expected`; panics with the last
/// answer after 30 s.
pub async fn wait_for(node: &PgNode, sql: &str, expected: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = node.psql(sql).await;
        if matches!(&answer, Ok(a) if a == expected) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{}: `{sql}` never returned {expected:?} (last answer: {answer:?}); see {}",
                node.name(),
                node.log_file().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How far `replica` has received WAL, in bytes.
pub async fn received_lsn(replica: &PgNode) -> u64 {
    replica
        .psql("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint")
        .await
        .unwrap()
        .parse()
        .unwrap()
}
