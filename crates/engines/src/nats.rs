//! NATS servers with JetStream started from the installed `nats-server`, on
//! loopback, their JetStream state in a store directory that survives a
//! restart (and a `kill -9`); alone or as one node of a cluster.
//!
//! Files of a node named `<name>` in its directory: `<name>.conf` (written
//! at every start), `<name>.log` (the server's log) and `<name>-js/` (the
//! JetStream store).
//!
//! Durability ([`SyncPolicy`]): by default JetStream acknowledges a publish
//! once the message is written to its store file (the operating system's
//! page cache) and asks the kernel to flush it every two minutes: a crash of
//! the server alone loses nothing acknowledged (the kernel keeps the page
//! cache), a crash of the machine can lose up to two minutes of
//! acknowledged messages (what Jepsen's 2025 analysis of NATS found).
//! `SyncPolicy::Always` (`sync_interval: always`, nats-server 2.10 and
//! later) fsyncs before every acknowledgement. Debian's nats-server 2.9.10
//! refuses that field, so [`locate_server`] prefers the upstream release
//! the setup script installs under `/usr/local/lib/scalestack`.

use crate::process;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Environment variable naming the `nats-server` program to run.
pub const NATS_SERVER_ENV: &str = "SCALESTACK_NATS_SERVER";
/// Where `scripts/setup.sh` installs upstream releases
/// (`nats-server-<version>/nats-server`).
const UPSTREAM_DIR: &str = "/usr/local/lib/scalestack";
const DEFAULT_SERVER: &str = "/usr/sbin/nats-server";

/// Until a started server greets with JetStream enabled (recovering a large
/// store takes a while).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 20;

/// Finds `nats-server`: `SCALESTACK_NATS_SERVER` if set, else the newest
/// upstream release under `/usr/local/lib/scalestack`, else
/// `/usr/sbin/nats-server` (Debian's), else the first on `PATH`.
pub fn locate_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{NATS_SERVER_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    if let Some(upstream) = newest_upstream(Path::new(UPSTREAM_DIR)) {
        return Ok(upstream);
    }
    let default = Path::new(DEFAULT_SERVER);
    if default.is_file() {
        return Ok(default.to_owned());
    }
    crate::on_path("nats-server").context("no nats-server found (looked in SCALESTACK_NATS_SERVER, /usr/local/lib/scalestack, /usr/sbin and PATH); install it with scripts/setup.sh")
}

/// `<dir>/nats-server-<version>/nats-server` with the highest version.
fn newest_upstream(dir: &Path) -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.strip_prefix("nats-server-")?
            .split('.')
            .map(|part| part.parse().ok())
            .collect()
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let v = version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("nats-server");
            bin.is_file().then_some((v, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// When JetStream flushes its store files to disk. Default: the server's.
/// Spelt `default` or `always` in topology files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// The server's own schedule (every two minutes): acknowledged once
    /// written to the page cache.
    #[default]
    Default,
    /// `sync_interval: always`: fsynced before each acknowledgement
    /// (nats-server 2.10 and later).
    Always,
}

impl SyncPolicy {
    /// `default` or `always`, as topology files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Default => "default",
            SyncPolicy::Always => "always",
        }
    }
}

/// The routes of a node that is one of a cluster: its own cluster port on
/// 127.0.0.1 and every member's (its own included, which the server skips).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConf {
    /// The cluster's name (every member's the same).
    pub name: String,
    /// This node's route port.
    pub port: u16,
    /// Every member's route port.
    pub routes: Vec<u16>,
}

/// Everything a node's configuration file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConf {
    /// `server_name`, unique in a cluster.
    pub name: String,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// The JetStream store directory.
    pub store_dir: PathBuf,
    /// The server's log file.
    pub log_file: PathBuf,
    /// When JetStream syncs its files.
    pub sync: SyncPolicy,
    /// Clustering, when the node is one of several.
    pub cluster: Option<ClusterConf>,
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
    conf: String,
    server_bin: PathBuf,
    server: process::ServerProcess,
}

impl NatsNode {
    /// Writes `<dir>/<name>.conf` (listen on 127.0.0.1:`port`, JetStream
    /// with its store in `<dir>/<name>-js`, log in `<dir>/<name>.log`),
    /// starts `nats-server` with it and waits, up to 30 s, until it greets a
    /// client with JetStream enabled. `dir` is created if needed; a store
    /// already there is recovered.
    pub async fn start(name: &str, dir: &Path, port: u16) -> anyhow::Result<NatsNode> {
        Self::start_with(name, dir, port, SyncPolicy::Default, None).await
    }

    /// As [`NatsNode::start`], with a sync policy and, for a member of a
    /// cluster, its routes. A cluster's first member is ready once it
    /// greets; JetStream there needs a quorum of members before it serves
    /// streams.
    pub async fn start_with(
        name: &str,
        dir: &Path,
        port: u16,
        sync: SyncPolicy,
        cluster: Option<ClusterConf>,
    ) -> anyhow::Result<NatsNode> {
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
        let conf = server_conf(&NatsConf {
            name: name.to_owned(),
            port,
            store_dir: dir.join(format!("{name}-js")),
            log_file: dir.join(format!("{name}.log")),
            sync,
            cluster,
        });
        let node = NatsNode {
            name: name.to_owned(),
            dir,
            port,
            conf,
            server_bin: locate_server()?,
            server: process::ServerProcess::new("nats", name),
        };
        node.spawn_and_wait().await?;
        Ok(node)
    }

    async fn spawn_and_wait(&self) -> anyhow::Result<()> {
        std::fs::write(self.conf_path(), &self.conf)
            .with_context(|| format!("writing {}", self.conf_path().display()))?;
        let mut cmd = Command::new(&self.server_bin);
        cmd.arg("-c").arg(self.conf_path()).current_dir(&self.dir);
        self.server.spawn(cmd, &self.log_file(), self.port)?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.server.exit_status() {
                bail!(
                    "nats {} exited while starting ({status}); {}",
                    self.name,
                    self.log_tail()
                );
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
        self.server.pid()
    }

    /// Kills the server with SIGKILL (a real crash) and reaps it: its port
    /// refuses connections when this returns. The store stays.
    pub fn kill9(&self) -> anyhow::Result<()> {
        self.server.kill9()
    }

    /// SIGTERM (nats-server shuts down cleanly), and waits up to 10 s before
    /// a SIGKILL. Does nothing if the server is not running.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.server.stop(STOP_TIMEOUT).await
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// with the same store (JetStream recovers its streams from it).
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_file(), LOG_TAIL_LINES)
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

/// The configuration file of a JetStream server on 127.0.0.1 (file storage,
/// no monitoring port), a cluster member when `conf.cluster` says so.
pub fn server_conf(conf: &NatsConf) -> String {
    let sync = match conf.sync {
        SyncPolicy::Default => String::new(),
        SyncPolicy::Always => "  sync_interval: always\n".to_owned(),
    };
    let cluster = conf.cluster.as_ref().map_or_else(String::new, |c| {
        let routes: Vec<String> = c
            .routes
            .iter()
            .map(|p| format!("    \"nats-route://127.0.0.1:{p}\""))
            .collect();
        format!(
            "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{}\n  ]\n}}\n",
            quote(&c.name),
            c.port,
            routes.join("\n")
        )
    });
    format!(
        "\
# Written by scalestack at every start: edits are lost.
server_name: {name}
listen: \"127.0.0.1:{port}\"
log_file: {log}
jetstream {{
  store_dir: {store}
{sync}}}
{cluster}",
        name = conf.name,
        port = conf.port,
        store = quote(&conf.store_dir.to_string_lossy()),
        log = quote(&conf.log_file.to_string_lossy()),
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
        let mut c = NatsConf {
            name: "n1".into(),
            port: 14222,
            store_dir: "/tmp/a \"b\"/n1-js".into(),
            log_file: "/tmp/n.log".into(),
            sync: SyncPolicy::Default,
            cluster: None,
        };
        let conf = server_conf(&c);
        assert!(conf.contains("server_name: n1\nlisten: \"127.0.0.1:14222\"\n"));
        assert!(conf.contains("store_dir: \"/tmp/a \\\"b\\\"/n1-js\"\n"));
        assert!(conf.contains("log_file: \"/tmp/n.log\"\n"));
        assert!(!conf.contains("sync_interval") && !conf.contains("cluster"));
        c.sync = SyncPolicy::Always;
        c.cluster = Some(ClusterConf {
            name: "q".into(),
            port: 16222,
            routes: vec![16222, 16223],
        });
        let conf = server_conf(&c);
        assert!(conf.contains("  sync_interval: always\n}"));
        assert!(conf.contains("cluster {\n  name: \"q\"\n  listen: \"127.0.0.1:16222\""));
        assert!(conf.contains("\"nats-route://127.0.0.1:16223\""));
    }

    #[test]
    fn the_newest_upstream_release_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["2.9.10", "2.15.1", "2.10.3", "junk"] {
            let d = dir.path().join(format!("nats-server-{v}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nats-server"), "").unwrap();
        }
        assert_eq!(
            newest_upstream(dir.path()).unwrap(),
            dir.path().join("nats-server-2.15.1/nats-server")
        );
        assert_eq!(newest_upstream(&dir.path().join("none")), None);
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
