//! A private `redis-server` per test (test-support's `TestRedis`: a free
//! port on 127.0.0.1, no persistence, a temporary directory, stopped when
//! dropped) and the waits the tests share.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::time::{Duration, Instant};
use store_redis::RedisConfig;

/// Deadline of every wait in the tests; generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Deadline of every Redis call made by the adapters under test.
pub const TIMEOUT_MS: u64 = 200;

pub fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

/// A private Redis (the shared harness's) with the handles these tests need.
pub struct RedisServer {
    redis: test_support::TestRedis,
}

impl RedisServer {
    pub async fn start() -> Self {
        init_log();
        RedisServer {
            redis: test_support::TestRedis::start().await,
        }
    }

    /// Starts a killed server again on the same port and directory.
    pub async fn restart(&mut self) {
        self.redis
            .node
            .restart()
            .await
            .expect("redis-server restarts on its port");
    }

    pub fn url(&self) -> String {
        self.redis.node.url()
    }

    /// Adapter settings pointing at this server, with a short deadline.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            url: self.url(),
            prefix: prefix.into(),
            timeout_ms: TIMEOUT_MS,
            ..RedisConfig::default()
        }
    }

    /// SIGKILL; the port refuses connections when this returns.
    pub async fn kill(&mut self) {
        self.redis.node.kill9().unwrap();
    }

    /// Sends a signal (SIGSTOP freezes the server: connections are accepted
    /// by the kernel but nothing answers).
    pub fn signal(&self, signal: Signal) {
        let pid = self.redis.node.pid().expect("redis-server is running");
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// A plain connection for looking at what the adapters stored.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// Polls `check` until it returns `Some`, failing the test after
/// [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
