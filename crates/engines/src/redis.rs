//! Redis servers started from the installed `redis-server`, configured as a
//! cache: no persistence (a restart starts empty), loopback only.
//!
//! Files of a node named `<name>` in its directory: `<name>.conf` (written
//! at every start) and `<name>.log` (the server's log).

use crate::process;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Environment variable naming the `redis-server` program to run.
pub const REDIS_SERVER_ENV: &str = "SCALESTACK_REDIS_SERVER";
const DEFAULT_SERVER: &str = "/usr/bin/redis-server";

/// Until a started server answers PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 20;

/// Finds `redis-server`: `SCALESTACK_REDIS_SERVER` if set, else
/// `/usr/bin/redis-server`, else the first on `PATH`.
pub fn locate_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{REDIS_SERVER_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let default = Path::new(DEFAULT_SERVER);
    if default.is_file() {
        return Ok(default.to_owned());
    }
    crate::on_path("redis-server").context("no redis-server found (looked in SCALESTACK_REDIS_SERVER, /usr/bin and PATH); install it with scripts/setup.sh")
}

/// One Redis server we started.
///
/// Dropping the node kills the server (SIGKILL: nothing is persisted
/// anyway). The server also receives SIGTERM if the thread that started it
/// exits.
#[derive(Debug)]
pub struct RedisNode {
    name: String,
    dir: PathBuf,
    port: u16,
    server_bin: PathBuf,
    server: process::ServerProcess,
}

impl RedisNode {
    /// Writes `<dir>/<name>.conf` (bind 127.0.0.1, `port`, no protected
    /// mode, no RDB snapshots nor AOF, not daemonized, log in
    /// `<dir>/<name>.log`), starts `redis-server` with it and waits, up to
    /// 20 s, until it answers PING. `dir` is created if needed.
    pub async fn start(name: &str, dir: &Path, port: u16) -> anyhow::Result<RedisNode> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("invalid redis node name {name:?}: use letters, digits, '_' or '-'");
        }
        let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let node = RedisNode {
            name: name.to_owned(),
            dir,
            port,
            server_bin: locate_server()?,
            server: process::ServerProcess::new("redis", name),
        };
        std::fs::write(node.conf_path(), server_conf(port, &node.dir, &node.log_file()))
            .with_context(|| format!("writing {}", node.conf_path().display()))?;
        node.spawn_and_wait().await?;
        Ok(node)
    }

    async fn spawn_and_wait(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.server_bin);
        cmd.arg(self.conf_path()).current_dir(&self.dir);
        self.server.spawn(cmd, &self.log_file(), self.port)?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.server.exit_status() {
                bail!(
                    "redis {} exited while starting ({status}); {}",
                    self.name,
                    self.log_tail()
                );
            }
            match ping(self.port).await {
                Ok(reply) if reply == "+PONG" => return Ok(()),
                last if Instant::now() >= deadline => bail!(
                    "redis {} does not answer PING on port {} after {START_TIMEOUT:?} (last: {last:?}); {}",
                    self.name,
                    self.port,
                    self.log_tail()
                ),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join(format!("{}.conf", self.name))
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills the server with SIGKILL (a real crash) and reaps it: its port
    /// refuses connections when this returns.
    pub fn kill9(&self) -> anyhow::Result<()> {
        self.server.kill9()
    }

    /// SIGTERM, and waits up to 10 s before a SIGKILL. Does nothing if the
    /// server is not running.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.server.stop(STOP_TIMEOUT).await
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// (empty: nothing is persisted).
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_file(), LOG_TAIL_LINES)
    }
}

/// Sends an inline `PING` and returns the first reply line (`+PONG` when
/// ready, `-LOADING ...` while loading).
async fn ping(port: u16) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        while !reply.ends_with(b"\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("PING timed out")?
}

/// The configuration of a cache server on 127.0.0.1:`port` (also what `up`
/// writes for the Redis it supervises).
pub fn server_conf(port: u16, dir: &Path, log_file: &Path) -> String {
    format!(
        "\
# Written by scalestack at every start: edits are lost.
# A private cache on loopback: no password, no persistence.
bind 127.0.0.1
port {port}
protected-mode no
daemonize no
supervised no
dir {dir}
logfile {log}
loglevel notice
save \"\"
appendonly no
",
        dir = quote(&dir.to_string_lossy()),
        log = quote(&log_file.to_string_lossy()),
    )
}

/// A double-quoted redis.conf string.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_is_a_loopback_cache() {
        let conf = server_conf(16379, Path::new("/tmp/a \"b\""), Path::new("/tmp/r.log"));
        assert!(conf.contains("bind 127.0.0.1\nport 16379\n"));
        assert!(conf.contains("dir \"/tmp/a \\\"b\\\"\"\n"));
        assert!(conf.contains("logfile \"/tmp/r.log\"\n"));
        assert!(conf.contains("save \"\"\nappendonly no\n"));
    }
}
