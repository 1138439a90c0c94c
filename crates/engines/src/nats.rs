//! NATS servers with JetStream started from the installed `nats-server`, on
//! loopback, their JetStream state in a store directory that survives a
//! restart (and a `kill -9`).
//!
//! Files of a node named `<name>` in its directory: `<name>.conf` (written
//! at every start), `<name>.log` (the server's log) and `<name>-js/` (the
//! JetStream store).
//!
//! Durability: JetStream acknowledges a publish once the message is in the
//! operating system's page cache of its store file, and flushes to disk on
//! its own schedule. Later servers take a `sync_interval` (`always` syncs
//! before every acknowledgement); the installed nats-server 2.9.10 refuses
//! that field, so no sync option is offered here: what survives a crash of
//! the server alone (the kernel keeps the page cache) may not survive a
//! crash of the machine.

use crate::process;
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Environment variable naming the `nats-server` program to run.
pub const NATS_SERVER_ENV: &str = "SCALESTACK_NATS_SERVER";
const DEFAULT_SERVER: &str = "/usr/sbin/nats-server";

/// Until a started server greets with JetStream enabled (recovering a large
/// store takes a while).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 20;

/// Finds `nats-server`: `SCALESTACK_NATS_SERVER` if set, else
/// `/usr/sbin/nats-server`, else the first on `PATH`.
pub fn locate_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{NATS_SERVER_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let default = Path::new(DEFAULT_SERVER);
    if default.is_file() {
        return Ok(default.to_owned());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|p| p.is_file())
        })
        .context("no nats-server found (looked in SCALESTACK_NATS_SERVER, /usr/sbin and PATH); install it with scripts/setup.sh")
}

/// One NATS server with JetStream that we started.
///
/// Dropping the node kills the server (SIGKILL; its store stays on disk).
/// The server also receives SIGTERM if the thread that started it exits.
#[derive(Debug)]
pub struct NatsNode {
    name: String,
    dir: PathBuf,
    port: u16,
    server_bin: PathBuf,
    server: Mutex<Option<Child>>,
}

impl NatsNode {
    /// Writes `<dir>/<name>.conf` (listen on 127.0.0.1:`port`, JetStream
    /// with its store in `<dir>/<name>-js`, log in `<dir>/<name>.log`),
    /// starts `nats-server` with it and waits, up to 30 s, until it greets a
    /// client with JetStream enabled. `dir` is created if needed; a store
    /// already there is recovered.
    pub async fn start(name: &str, dir: &Path, port: u16) -> anyhow::Result<NatsNode> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("invalid nats node name {name:?}: use letters, digits, '_' or '-'");
        }
        if port == 0 {
            bail!("nats node {name}: port 0 is not a port to connect to; pick a free one");
        }
        let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let node = NatsNode {
            name: name.to_owned(),
            dir,
            port,
            server_bin: locate_server()?,
            server: Mutex::new(None),
        };
        std::fs::write(
            node.conf_path(),
            server_conf(name, port, &node.store_dir(), &node.log_file()),
        )
        .with_context(|| format!("writing {}", node.conf_path().display()))?;
        node.spawn_and_wait().await?;
        Ok(node)
    }

    async fn spawn_and_wait(&self) -> anyhow::Result<()> {
        let log = process::open_log(&self.log_file())?;
        let mut cmd = Command::new(&self.server_bin);
        cmd.arg("-c")
            .arg(self.conf_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        process::tie_to_owner(&mut cmd, Signal::SIGTERM);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.server_bin.display()))?;
        tracing::info!(node = %self.name, pid = ?child.id(), port = self.port, "nats started");
        *self.lock_server() = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.lock_server().as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "nats {} exited while starting ({status}); {}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            match greeting(self.port).await {
                Ok(info) if info.contains("\"jetstream\":true") => return Ok(()),
                last if Instant::now() >= deadline => bail!(
                    "nats {} does not greet with JetStream on port {} after {START_TIMEOUT:?} (last: {last:?}); {}",
                    self.name,
                    self.port,
                    self.log_tail()
                ),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

    /// The JetStream store directory, `<dir>/<name>-js`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join(format!("{}-js", self.name))
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join(format!("{}.conf", self.name))
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut server = self.lock_server();
        let child = server.as_mut()?;
        if process::has_exited(child) {
            *server = None;
            return None;
        }
        child.id()
    }

    /// Kills the server with SIGKILL (a real crash) and reaps it: its port
    /// refuses connections when this returns. The store stays.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let Some(mut child) = self.lock_server().take() else {
            bail!("nats {} is not running", self.name);
        };
        if let Some(pid) = child.id() {
            process::signal(pid, Signal::SIGKILL)?;
        }
        process::reap_blocking(&mut child, Duration::from_secs(5));
        tracing::info!(node = %self.name, "nats killed");
        Ok(())
    }

    /// SIGTERM (nats-server shuts down cleanly), and waits up to 10 s before
    /// a SIGKILL. Does nothing if the server is not running.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let Some(mut child) = self.lock_server().take() else {
            return Ok(());
        };
        let Some(pid) = child.id() else {
            return Ok(()); // already reaped
        };
        process::signal(pid, Signal::SIGTERM)?;
        if !process::wait_exit(&mut child, STOP_TIMEOUT).await {
            process::signal(pid, Signal::SIGKILL)?;
            let _ = child.wait().await;
            bail!(
                "nats {} ignored SIGTERM for {STOP_TIMEOUT:?} and was killed",
                self.name
            );
        }
        tracing::info!(node = %self.name, "nats stopped");
        Ok(())
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// with the same store (JetStream recovers its streams from it).
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    fn lock_server(&self) -> MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_file(), LOG_TAIL_LINES)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(pid) = child.id() {
                let _ = process::signal(pid, Signal::SIGKILL);
            }
            process::reap_blocking(&mut child, Duration::from_secs(2));
        }
    }
}

/// Connects and returns the server's first line (`INFO {...}`), which says
/// whether JetStream is enabled.
async fn greeting(port: u16) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
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
        .context("no greeting within 2 s")?
}

/// The configuration of a single JetStream server on 127.0.0.1:`port`
/// (file storage in `store_dir`, no monitoring port, no clustering).
pub fn server_conf(name: &str, port: u16, store_dir: &Path, log_file: &Path) -> String {
    format!(
        "\
# Written by scalestack at every start: edits are lost.
server_name: {name}
listen: \"127.0.0.1:{port}\"
log_file: {log}
jetstream {{
  store_dir: {store}
}}
",
        store = quote(&store_dir.to_string_lossy()),
        log = quote(&log_file.to_string_lossy()),
    )
}

/// A double-quoted NATS configuration string.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_is_a_loopback_jetstream_server() {
        let conf = server_conf(
            "n1",
            14222,
            Path::new("/tmp/a \"b\"/n1-js"),
            Path::new("/tmp/n.log"),
        );
        assert!(conf.contains("server_name: n1\nlisten: \"127.0.0.1:14222\"\n"));
        assert!(conf.contains("store_dir: \"/tmp/a \\\"b\\\"/n1-js\"\n"));
        assert!(conf.contains("log_file: \"/tmp/n.log\"\n"));
    }

    #[tokio::test]
    async fn starts_kills_and_restarts_on_the_same_port() {
        if locate_server().is_err() {
            panic!("nats-server is needed for this test (run scripts/setup.sh)");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let node = NatsNode::start("n", dir.path(), port).await.unwrap();
        assert!(greeting(port).await.unwrap().contains("\"jetstream\":true"));
        assert!(node.store_dir().is_dir());
        node.kill9().unwrap();
        assert!(node.pid().is_none());
        assert!(greeting(port).await.is_err(), "killed, yet greeting");
        node.restart().await.unwrap();
        assert!(node.pid().is_some());
        node.stop().await.unwrap();
        assert!(NatsNode::start("bad name", dir.path(), port).await.is_err());
    }
}
