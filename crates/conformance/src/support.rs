//! What the batteries share: fresh names, waits on state, and a line per
//! case so a failure names the case it happened in.

use domain::Username;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deadline of every wait in the batteries; generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Prints the case about to run (shown with a failing test's output).
pub fn announce(port: &str, case: &str) {
    eprintln!("conformance: {port}::{case}");
}

/// A username no other call in any process has made: `tag`, an underscore,
/// a per-process nonce and a counter (so batteries share one store and may
/// run twice against it). `tag` is at most 12 of `[a-z0-9_]`.
pub fn unique_name(tag: &str) -> Username {
    Username::parse(&unique(tag)).expect("a valid tag")
}

/// `tag` made unique as in [`unique_name`], for cache keys and blob keys.
pub fn unique(tag: &str) -> String {
    static NONCE: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos ^ std::process::id().rotate_left(16)
    });
    assert!(tag.len() <= 12, "tag {tag:?} is too long");
    format!("{tag}_{nonce:08x}{:x}", COUNTER.fetch_add(1, Relaxed))
}

/// Polls `check` every 10 ms until it holds, failing after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the wall clock (`domain::now_millis`, the clock sessions and
/// rows are stamped with) is past `at_ms`.
pub async fn wait_past(at_ms: i64) {
    while domain::now_millis() <= at_ms {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
