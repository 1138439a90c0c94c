//! A private `redis-server` per test: a free port on 127.0.0.1, no
//! persistence, a temporary directory, killed when dropped. (To be replaced
//! by the shared `test-support` harness once it lands.)

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};
use store_redis::RedisConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Deadline of every wait in the tests; generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Deadline of every Redis call made by the adapters under test.
pub const TIMEOUT_MS: u64 = 200;

pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

pub fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

impl RedisServer {
    /// Starts a server on a free port (retrying if another process takes the
    /// port between our probe and Redis binding it).
    pub async fn start() -> Self {
        init_log();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.path()).await {
                return RedisServer { child, port, dir };
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Starts a killed server again on the same port and directory.
    pub async fn restart(&mut self) {
        self.child = spawn(self.port, self.dir.path())
            .await
            .expect("redis-server restarts on its port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Sends a signal (SIGSTOP freezes the server: connections are accepted
    /// by the kernel but nothing answers).
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("redis-server is running");
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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Spawns redis-server on `port` and waits until it answers PING; `None`
/// if it exits first (port taken).
async fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
    let log = if std::env::var_os("TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut child = Command::new(REDIS_SERVER)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(log)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed at /usr/bin/redis-server");
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if ping(port).await {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("redis-server on port {port} did not answer PING");
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
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
