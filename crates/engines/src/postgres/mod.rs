//! PostgreSQL clusters started from the installed server programs: a
//! primary, streaming replicas (physical replication, one slot per replica,
//! named after it) and failover (promote a replica, point the others at it).
//!
//! Each [`PgNode`] is one cluster in its own data directory. Its layout:
//! initdb's files, `scalestack.conf` (our settings, included from
//! `postgresql.conf` and rewritten at every init), `postgres.log` (the
//! server's stderr), the unix socket, and `scalestack.initialized` once the
//! role and database exist.
//!
//! **Security**: these clusters trust every connection from loopback and from
//! their unix socket, without passwords, replication included (see
//! `pg_hba.conf` in `config.rs`). They listen on 127.0.0.1 only; they suit
//! tests and a one-machine `up`, never a host with untrusted local users.
//!
//! Roles: the bootstrap superuser is `postgres`; the application connects as
//! `scalestack` (LOGIN, REPLICATION, CREATEDB, owner of the `scalestack`
//! database), which replicas also use to stream.

mod binaries;
mod config;

pub use binaries::{PgBinaries, PG_BIN_ENV};

use crate::owner::{self, RunAs};
use crate::process;
use anyhow::{anyhow, bail, Context};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// The role the application connects as, and replicas stream as.
pub const ROLE: &str = "scalestack";
/// The application's database.
pub const DATABASE: &str = "scalestack";
/// The bootstrap superuser, for administration ([`PgNode::psql`]).
pub const SUPERUSER: &str = "postgres";

const LOG_FILE: &str = "postgres.log";
/// Settings written by `ALTER SYSTEM`, and by us for replication.
const AUTO_CONF: &str = "postgresql.auto.conf";
const MARKER_FILE: &str = "scalestack.initialized";
const LOCK_FILE: &str = "postmaster.pid";
/// Longest unix socket directory: `sun_path` holds 108 bytes, and the socket
/// is `<dir>/.s.PGSQL.<port>`.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// Until a started server accepts connections (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Fast shutdown, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Immediate shutdown when a node is dropped, then SIGKILL.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// One `psql` call, connection included.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// One run of initdb, pg_basebackup or single-user mode.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Until a replica pointed at a new primary streams from it.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 30;

/// Server options of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// `synchronous_standby_names`, e.g. `ANY 1 (replica1, replica2)` (the
    /// replicas' names); `None` (the default): asynchronous replication.
    pub synchronous_standbys: Option<String>,
    /// `max_wal_senders`, also used for `max_replication_slots`; default 10.
    pub max_wal_senders: u32,
}

impl PgOptions {
    /// Asynchronous replication to at most 10 replicas, on `port`.
    pub fn new(port: u16) -> Self {
        PgOptions {
            port,
            synchronous_standbys: None,
            max_wal_senders: 10,
        }
    }
}

/// One PostgreSQL cluster: a data directory and, once started, the server
/// process we spawned for it.
///
/// Dropping a node whose server we started shuts it down in immediate mode
/// (no checkpoint: the next start runs crash recovery) and waits up to 5 s
/// for it to go, then kills it.
#[derive(Debug)]
pub struct PgNode {
    name: String,
    data_dir: PathBuf,
    bins: PgBinaries,
    opts: PgOptions,
    /// Who runs the programs (`Some` when we are root).
    owner: Option<RunAs>,
    /// The postmaster we spawned, until it is seen to exit.
    server: Mutex<Option<Child>>,
    /// Set by [`PgNode::kill9`], cleared by [`PgNode::start`]: the lock file
    /// names a shared memory segment nobody will remove.
    crashed: AtomicBool,
}

impl PgNode {
    /// Prepares a primary named `name` in `data_dir` (created if needed;
    /// relative paths are made absolute): `initdb` (UTF8, C locale, trust
    /// authentication for the unix socket and 127.0.0.1, replication
    /// included), our settings (see `scalestack.conf`), then the role and
    /// database `scalestack`. A directory that already holds a cluster is
    /// reused, its settings rewritten from `opts`. Does not start it.
    pub async fn init_primary(name: &str, data_dir: &Path, opts: &PgOptions) -> anyhow::Result<PgNode> {
        check_name(name)?;
        let node = PgNode::new(
            name,
            data_dir,
            opts.clone(),
            PgBinaries::locate()?,
            RunAs::for_postgres()?,
        )?;
        owner::prepare_private_dir(&node.data_dir, node.owner)?;
        if node.has_cluster() {
            node.check_version()?;
        } else {
            node.initdb().await?;
        }
        node.write_config()?;
        if !node.data_dir.join(MARKER_FILE).exists() {
            node.create_role_and_database().await?;
            node.write_file(MARKER_FILE, "role and database created\n")?;
        }
        Ok(node)
    }

    /// Prepares a streaming replica of `primary` (which must be running)
    /// named `name`, in `data_dir`, to serve on `port`: `pg_basebackup`
    /// with a new replication slot named `name` (a stale inactive one is
    /// dropped first), then `primary_conninfo` with `application_name` =
    /// `name`. A directory that already holds a cluster is reused as it is
    /// (only its port and settings are rewritten): call [`PgNode::follow`] to
    /// point it elsewhere. Does not start it.
    pub async fn init_replica(
        name: &str,
        data_dir: &Path,
        port: u16,
        primary: &PgNode,
    ) -> anyhow::Result<PgNode> {
        check_name(name)?;
        let opts = PgOptions {
            port,
            // Ignored while it replicates; after a promotion, a quorum of
            // standbys that may not exist would block every commit.
            synchronous_standbys: None,
            // A hot standby needs at least the primary's value.
            max_wal_senders: primary.opts.max_wal_senders,
        };
        let node = PgNode::new(name, data_dir, opts, primary.bins.clone(), primary.owner)?;
        owner::prepare_private_dir(&node.data_dir, node.owner)?;
        if node.has_cluster() {
            node.check_version()?;
        } else {
            node.copy_from(primary).await?;
        }
        node.write_config()?;
        Ok(node)
    }

    /// Fills this node's empty data directory with a copy of `primary`
    /// (`pg_basebackup` with a new slot named after this node; a stale
    /// inactive one is dropped first) and points it at `primary`.
    async fn copy_from(&self, primary: &PgNode) -> anyhow::Result<()> {
        primary
            .psql(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = {} AND NOT active",
                config::sql_literal(&self.slot())
            ))
            .await
            .with_context(|| format!("dropping a stale slot {} on {}", self.name, primary.name))?;
        self.base_backup(primary).await?;
        // The primary's log came with the copy.
        let _ = std::fs::remove_file(self.data_dir.join(LOG_FILE));
        self.point_at(primary)
    }

    fn new(
        name: &str,
        data_dir: &Path,
        opts: PgOptions,
        bins: PgBinaries,
        owner: Option<RunAs>,
    ) -> anyhow::Result<Self> {
        let data_dir =
            std::path::absolute(data_dir).with_context(|| format!("resolving {}", data_dir.display()))?;
        Ok(PgNode {
            name: name.to_owned(),
            data_dir,
            bins,
            opts,
            owner,
            server: Mutex::new(None),
            crashed: AtomicBool::new(false),
        })
    }

    /// Starts the server (`postgres -D <data_dir>`, its output appended to
    /// `postgres.log`) and waits, up to 60 s, until it accepts connections
    /// (a replica: read-only ones). Does nothing if the server we started
    /// still runs. The server receives SIGINT (fast shutdown) if the thread
    /// that called this exits.
    pub async fn start(&self) -> anyhow::Result<()> {
        if self
            .lock_server()
            .as_mut()
            .is_some_and(|c| !process::has_exited(c))
        {
            return Ok(());
        }
        let mut cmd = self.postgres_command()?;
        process::tie_to_owner(&mut cmd, Signal::SIGINT);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning postgres for {}", self.name))?;
        tracing::info!(node = %self.name, pid = ?child.id(), port = self.opts.port, "postgres started");
        *self.lock_server() = Some(child);
        self.crashed.store(false, Ordering::Relaxed);
        self.wait_ready().await
    }

    /// The command that runs this node's server (`postgres -D <data_dir>`,
    /// its output appended to `postgres.log`, as the cluster's owner), for a
    /// supervisor that spawns and watches the process itself instead of
    /// [`PgNode::start`]. The caller ties the process to its own lifetime.
    pub fn server_command(&self) -> anyhow::Result<Command> {
        let cmd = self.postgres_command()?;
        self.crashed.store(false, Ordering::Relaxed);
        Ok(cmd)
    }

    /// `postgres -D <data_dir>` as the cluster's owner, its output appended
    /// to `postgres.log`: what both [`PgNode::start`] and
    /// [`PgNode::server_command`] run.
    fn postgres_command(&self) -> anyhow::Result<Command> {
        let log_path = self.data_dir.join(LOG_FILE);
        let log = process::open_log(&log_path)?;
        if let Some(owner) = self.owner {
            owner.give(&log_path)?;
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        Ok(cmd)
    }

    /// Checks that the server answering on this node's port runs from this
    /// node's data directory (not another cluster that holds the port).
    pub async fn verify_serving(&self) -> anyhow::Result<()> {
        let dir = self.psql("SHOW data_directory").await?;
        if Path::new(&dir) != self.data_dir {
            bail!(
                "port {} is served by another cluster ({dir}), not {}",
                self.opts.port,
                self.data_dir.display()
            );
        }
        Ok(())
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_excerpt(&self) -> String {
        self.log_tail()
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.reap_server() {
                bail!(
                    "postgres {} exited while starting ({status}); {}",
                    self.name,
                    self.log_tail()
                );
            }
            if process::accepts_tcp(self.opts.port).await && self.pg_isready().await {
                // Make sure the server answering is ours, not another one that
                // holds the port (ours would then exit at once, but the check
                // above could have raced it).
                return self.verify_serving().await;
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres {} does not accept connections on port {} after {:?}; {}",
                    self.name,
                    self.opts.port,
                    START_TIMEOUT,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn pg_isready(&self) -> bool {
        let mut cmd = self.command("pg_isready");
        cmd.args([
            "-q",
            "-t",
            "2",
            "-h",
            "127.0.0.1",
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-p",
        ])
        .arg(self.opts.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        matches!(cmd.status().await, Ok(s) if s.success())
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`, if that
    /// process exists (whoever started it).
    pub fn pid(&self) -> Option<u32> {
        self.reap_server();
        let text = std::fs::read_to_string(self.data_dir.join(LOCK_FILE)).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        process::alive(pid).then_some(pid)
    }

    /// Fast shutdown (SIGINT: active transactions are rolled back, then a
    /// checkpoint) and waits for it, up to 60 s, before a SIGKILL. Does
    /// nothing if the server is not running.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let mut child = self.lock_server().take();
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        process::signal(pid, Signal::SIGINT)?;
        let stopped = match child.as_mut() {
            Some(c) if c.id() == Some(pid) => process::wait_exit(c, STOP_TIMEOUT).await,
            _ => process::wait_gone(pid, STOP_TIMEOUT).await,
        };
        if !stopped {
            process::signal(pid, Signal::SIGKILL)?;
            self.crashed.store(true, Ordering::Relaxed);
            bail!(
                "postgres {} ignored a fast shutdown for {STOP_TIMEOUT:?} and was killed; {}",
                self.name,
                self.log_tail()
            );
        }
        tracing::info!(node = %self.name, "postgres stopped");
        Ok(())
    }

    /// Kills the postmaster with SIGKILL: a real crash. Its backends notice
    /// and exit on their own; the next start runs crash recovery.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("postgres {} is not running", self.name))?;
        process::signal(pid, Signal::SIGKILL)?;
        self.crashed.store(true, Ordering::Relaxed);
        let child = self.lock_server().take();
        if let Some(mut child) = child {
            // SIGKILL ends it at once; reap it so that pid() forgets it.
            process::reap_blocking(&mut child, Duration::from_secs(5));
        }
        tracing::info!(node = %self.name, pid, "postgres killed");
        Ok(())
    }

    /// Promotes this replica to a primary (`pg_promote`, waiting up to 60 s
    /// for the promotion to complete).
    pub async fn promote(&self) -> anyhow::Result<()> {
        let done = self.psql("SELECT pg_promote(true, 60)").await?;
        if done != "t" {
            bail!("{} was not promoted within 60 s; {}", self.name, self.log_tail());
        }
        tracing::info!(node = %self.name, "promoted");
        Ok(())
    }

    /// Points this replica at `new_primary`: ensures a slot named after this
    /// node exists there, rewrites `primary_conninfo` and `primary_slot_name`
    /// in `postgresql.auto.conf`, then, if the server runs, reloads it (a
    /// restart before PostgreSQL 13) and waits, up to 30 s, until
    /// `new_primary` lists it as streaming. The replica must not be ahead of
    /// `new_primary`'s timeline fork (promote the most advanced replica).
    pub async fn follow(&self, new_primary: &PgNode) -> anyhow::Result<()> {
        if !self.data_dir.join("standby.signal").exists() {
            bail!(
                "{} is not a standby: an old primary must be rebuilt to follow",
                self.name
            );
        }
        let slot = config::sql_literal(&self.slot());
        new_primary
            .psql(&format!(
                "SELECT pg_create_physical_replication_slot({slot}, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
            ))
            .await
            .with_context(|| format!("creating slot {} on {}", self.name, new_primary.name))?;
        self.point_at(new_primary)?;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        if self.bins.major >= 13 {
            process::signal(pid, Signal::SIGHUP)?;
        } else {
            self.stop().await?;
            self.start().await?;
        }
        let filter = format!("application_name = {}", config::sql_literal(&self.name));
        new_primary
            .wait_streaming(&filter, 1, FOLLOW_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "{} following {}; {}",
                    self.name,
                    new_primary.name,
                    self.log_tail()
                )
            })?;
        tracing::info!(node = %self.name, primary = %new_primary.name, "following");
        Ok(())
    }

    /// Sets `synchronous_standby_names` (in `postgresql.auto.conf`, which
    /// wins over our settings file) and, if the server runs, reloads it. A
    /// standby ignores the value until it is promoted: setting it before
    /// [`PgNode::promote`] leaves no moment in which the new primary
    /// acknowledges commits no standby has.
    pub async fn set_synchronous_standbys(&self, value: &str) -> anyhow::Result<()> {
        self.edit_auto_conf(|old| config::with_settings(old, &[("synchronous_standby_names", value)]))?;
        if let Some(pid) = self.pid() {
            process::signal(pid, Signal::SIGHUP)?;
        }
        Ok(())
    }

    /// Rebuilds this stopped node as a streaming replica of `primary`: its
    /// data directory is emptied and copied anew (`pg_basebackup`, with a
    /// slot named after this node), then pointed at `primary`. This is how
    /// an old primary rejoins after a failover: its own history may hold
    /// writes past the fork that nobody acknowledged, and it must never
    /// serve them. Does not start it.
    pub async fn rebuild_from(&self, primary: &PgNode) -> anyhow::Result<()> {
        if self.pid().is_some() {
            bail!("{} runs: stop it before rebuilding it", self.name);
        }
        // Whoever killed it (we, or a supervisor that spawned it), a
        // SIGKILLed postmaster leaves its segment behind; this only acts
        // when the lock file's postmaster is gone.
        self.release_crashed_segment();
        std::fs::remove_dir_all(&self.data_dir)
            .with_context(|| format!("emptying {}", self.data_dir.display()))?;
        owner::prepare_private_dir(&self.data_dir, self.owner)?;
        self.copy_from(primary).await?;
        self.write_config()?;
        self.crashed.store(false, Ordering::Relaxed);
        tracing::info!(node = %self.name, primary = %primary.name, "rebuilt as a replica");
        Ok(())
    }

    /// Waits, up to `timeout`, until at least `count` replicas stream from
    /// this primary (`pg_stat_replication.state = 'streaming'`).
    pub async fn wait_for_standbys(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_streaming("true", count, timeout).await
    }

    async fn wait_streaming(&self, filter: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let sql = format!("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND {filter}");
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.psql(&sql).await;
            if let Ok(n) = seen.as_deref().map(str::parse::<usize>) {
                if n.is_ok_and(|n| n >= count) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: fewer than {count} streaming replicas ({filter}) after {timeout:?} (last answer: {seen:?})",
                    self.name
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The application's connection URL:
    /// `postgres://scalestack@127.0.0.1:<port>/scalestack`.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.opts.port)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.opts.port
    }

    /// The node's name: its `application_name` when a replica (quote it
    /// in `synchronous_standby_names` when it holds a `-`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its replication slot on the primary: the name with `-` as `_`
    /// (slot names allow no `-`).
    fn slot(&self) -> String {
        self.name.replace('-', "_")
    }

    /// Absolute path of the data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server programs this node runs.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// Path of the server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Runs `sql` (one or more statements) with `psql -At` as the superuser
    /// on the `scalestack` database, stopping at the first error, and
    /// returns its output without the trailing newline: one line per row,
    /// columns separated by `|`. For tests and administration.
    pub async fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bins.tool("psql"));
        clean_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-U", SUPERUSER, "-d", DATABASE, "-f", "-", "-p"])
            .arg(self.opts.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning psql")?;
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        stdin.write_all(sql.as_bytes()).await.context("writing to psql")?;
        drop(stdin);
        let out = tokio::time::timeout(PSQL_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("psql on {} took over {PSQL_TIMEOUT:?}", self.name))?
            .context("waiting for psql")?;
        if !out.status.success() {
            bail!(
                "psql on {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned())
    }

    fn has_cluster(&self) -> bool {
        self.data_dir.join("PG_VERSION").exists()
    }

    fn check_version(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.data_dir.join("PG_VERSION"))?;
        if text.trim() != self.bins.major.to_string() {
            bail!(
                "{} holds a PostgreSQL {} cluster but the server found is {} ({})",
                self.data_dir.display(),
                text.trim(),
                self.bins.major,
                self.bins.bin_dir.display()
            );
        }
        Ok(())
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]);
        run(cmd, "initdb").await?;
        Ok(())
    }

    async fn base_backup(&self, primary: &PgNode) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                ROLE,
                "-w",
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                &self.slot(),
            ])
            .args(["--checkpoint=fast", "-p"])
            .arg(primary.opts.port.to_string());
        run(cmd, "pg_basebackup").await?;
        Ok(())
    }

    /// Creates the role and database in single-user mode, so that no server
    /// has to run; "already exists" is fine (a previous attempt died).
    async fn create_role_and_database(&self) -> anyhow::Result<()> {
        let sql = format!(
            "CREATE ROLE {ROLE} LOGIN REPLICATION CREATEDB\n\
             CREATE DATABASE {DATABASE} OWNER {ROLE}\n"
        );
        let mut cmd = self.command("postgres");
        // No standby exists yet: a synchronous quorum would make every
        // commit wait forever.
        cmd.args(["--single", "-c", "synchronous_standby_names=", "-D"])
            .arg(&self.data_dir)
            .arg("postgres");
        let out = run_with_input(cmd, "postgres --single", &sql).await?;
        let failures: Vec<&str> = out
            .lines()
            .filter(|l| (l.contains("ERROR:") || l.contains("FATAL:")) && !l.contains("already exists"))
            .collect();
        if !failures.is_empty() {
            bail!("creating the role and database: {}", failures.join("; "));
        }
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        self.write_file("pg_hba.conf", config::HBA)?;
        let socket_dir =
            (self.data_dir.as_os_str().len() <= MAX_SOCKET_DIR_LEN).then_some(self.data_dir.as_path());
        if socket_dir.is_none() {
            tracing::warn!(dir = %self.data_dir.display(), "data directory path too long for a unix socket: TCP only");
        }
        self.write_file(config::INCLUDE_FILE, &config::server_conf(&self.opts, socket_dir))?;
        let main = std::fs::read_to_string(self.data_dir.join("postgresql.conf"))
            .context("reading postgresql.conf")?;
        if let Some(main) = config::with_include(&main) {
            self.write_file("postgresql.conf", &main)?;
        }
        Ok(())
    }

    /// Makes `primary` this node's replication source (read at next start or
    /// reload).
    fn point_at(&self, primary: &PgNode) -> anyhow::Result<()> {
        let conninfo = config::primary_conninfo(primary.opts.port, ROLE, &self.name);
        self.edit_auto_conf(|old| config::with_primary(old, &conninfo, &self.slot()))
    }

    /// Rewrites `postgresql.auto.conf` (read after our settings file, so
    /// what it sets wins) with `edit`.
    fn edit_auto_conf(&self, edit: impl FnOnce(&str) -> String) -> anyhow::Result<()> {
        let old = std::fs::read_to_string(self.data_dir.join(AUTO_CONF)).unwrap_or_default();
        self.write_file(AUTO_CONF, &edit(&old))
    }

    /// Replaces `name` in the data directory atomically, owned by the
    /// cluster's owner.
    fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<()> {
        let path = self.data_dir.join(name);
        let tmp = self.data_dir.join(format!("{name}.scalestack-tmp"));
        std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
        if let Some(owner) = self.owner {
            owner.give(&tmp)?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// A command running the server program `tool` as the cluster's owner,
    /// from `/` (our working directory may be closed to that user), with no
    /// `PG*` variable of ours leaking in.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bins.tool(tool));
        clean_env(&mut cmd);
        cmd.current_dir("/").kill_on_drop(true);
        if let Some(owner) = self.owner {
            owner.apply(&mut cmd);
        }
        cmd
    }

    fn lock_server(&self) -> MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// If the server we spawned has exited, reaps and forgets it and returns
    /// how it ended.
    fn reap_server(&self) -> Option<ExitStatus> {
        let mut server = self.lock_server();
        match server.as_mut()?.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                *server = None;
                Some(status)
            }
            Err(e) => {
                tracing::warn!(node = %self.name, "postgres process lost: {e}");
                *server = None;
                None
            }
        }
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.data_dir.join(LOG_FILE), LOG_TAIL_LINES)
    }

    /// After a SIGKILL nothing removes the postmaster's small System V
    /// shared memory segment (a restart would): remove the one its lock file
    /// names, once the postmaster is gone.
    fn release_crashed_segment(&self) {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join(LOCK_FILE)) else {
            return;
        };
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
        if pid.is_none_or(process::alive) {
            return;
        }
        // Line 7: "<key> <shmid>".
        let Some(shmid) = lines
            .nth(5)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|id| id.parse::<u32>().ok())
        else {
            return;
        };
        let _ = std::process::Command::new("ipcrm")
            .args(["-m", &shmid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        let server = self.server.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = server {
            if !process::has_exited(&mut child) {
                if let Some(pid) = child.id() {
                    // Immediate shutdown: the postmaster stops its children
                    // and exits without a checkpoint.
                    let _ = process::signal(pid, Signal::SIGQUIT);
                }
                process::reap_blocking(&mut child, DROP_TIMEOUT);
            }
            // Dropping the handle SIGKILLs a server still running.
        }
        if *self.crashed.get_mut() {
            self.release_crashed_segment();
        }
    }
}

/// A node's name is its `application_name` and, with `-` as `_`, its
/// replication slot's, which allows lower-case letters, digits and
/// underscores.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("invalid node name {name:?}: use 1 to 63 lower-case letters, digits, `_` or `-`, starting with a letter or `_`");
    }
    Ok(())
}

/// Removes our `PG*` variables (`PGHOST`, `PGPORT`, `PGDATA`, ...): they
/// would redirect the programs elsewhere.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_MESSAGES", "C");
}

/// Runs `cmd` to completion, up to 5 minutes; its output (stdout then
/// stderr) on success, an error quoting it otherwise.
async fn run(cmd: Command, what: &str) -> anyhow::Result<String> {
    run_with_input(cmd, what, "").await
}

async fn run_with_input(mut cmd: Command, what: &str, input: &str) -> anyhow::Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::tie_to_owner(&mut cmd, Signal::SIGTERM);
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin
        .write_all(input.as_bytes())
        .await
        .with_context(|| format!("writing to {what}"))?;
    drop(stdin);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} took over {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_slot_names() {
        for ok in ["primary", "replica1", "r_2", "s1-pg2"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "Replica", "-replica", "1replica", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_default_to_asynchronous_replication() {
        let o = PgOptions::new(5999);
        assert_eq!(
            (o.port, o.synchronous_standbys, o.max_wal_senders),
            (5999, None, 10)
        );
    }
}
