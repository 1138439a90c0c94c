//! The configuration files the engines crate writes into a cluster's data
//! directory: `pg_hba.conf`, `scalestack.conf` (included from
//! `postgresql.conf`) and the replication settings of
//! `postgresql.auto.conf`.

use super::PgOptions;
use std::path::Path;

/// Our settings, included at the end of initdb's `postgresql.conf` so they
/// win over it (and `postgresql.auto.conf`, read last, wins over both).
pub(crate) const INCLUDE_FILE: &str = "scalestack.conf";
const INCLUDE_LINE: &str = "include 'scalestack.conf'";

/// Client authentication: trust everything from the unix socket (inside the
/// 0700 data directory) and from 127.0.0.1, replication included. Sound only
/// for a private cluster on a machine whose local users are trusted: any
/// local user can connect as any role without a password.
pub(crate) const HBA: &str = "\
# Written by scalestack for a private loopback cluster: every connection
# from the unix socket or from 127.0.0.1 is trusted, without a password.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
";

/// `scalestack.conf` for a server with `opts`, its unix socket in
/// `socket_dir` (`None`: no unix socket).
pub(crate) fn server_conf(opts: &PgOptions, socket_dir: Option<&Path>) -> String {
    let socket_dir = socket_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sync = opts.synchronous_standbys.as_deref().unwrap_or("");
    format!(
        "\
# Written by scalestack at every start of its engines: edits are lost.
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = {socket_dir}
unix_socket_permissions = 0700

# Replication: physical streaming, one slot per replica.
wal_level = replica
max_wal_senders = {senders}
max_replication_slots = {senders}
wal_keep_size = '64MB'
synchronous_standby_names = {sync}
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = '1s'
wal_retrieve_retry_interval = '1s'

# Durability stays on, even for tests.
fsync = on
synchronous_commit = on
full_page_writes = on

# The server's stderr goes to postgres.log in the data directory.
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%a '
",
        port = opts.port,
        socket_dir = quote(&socket_dir),
        senders = opts.max_wal_senders,
        sync = quote(sync),
    )
}

/// `postgresql.conf` with the include of [`INCLUDE_FILE`] appended, or
/// `None` if it is already there.
pub(crate) fn with_include(main_conf: &str) -> Option<String> {
    if main_conf.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut out = main_conf.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# scalestack's settings (engines crate)\n");
    out.push_str(INCLUDE_LINE);
    out.push('\n');
    Some(out)
}

/// The connection string a replica named `name` uses to stream from the
/// server on 127.0.0.1:`port`; `application_name` is its name, so that
/// `synchronous_standby_names` and `pg_stat_replication` can refer to it.
pub(crate) fn primary_conninfo(port: u16, user: &str, name: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} application_name={name}")
}

/// `postgresql.auto.conf` with its `primary_conninfo` and
/// `primary_slot_name` replaced (every other line kept).
pub(crate) fn with_primary(auto_conf: &str, conninfo: &str, slot: &str) -> String {
    with_settings(
        auto_conf,
        &[("primary_conninfo", conninfo), ("primary_slot_name", slot)],
    )
}

/// `postgresql.auto.conf` with `settings` replaced (every other line kept).
/// The file is read after `postgresql.conf` and what it includes, so these
/// values win.
pub(crate) fn with_settings(auto_conf: &str, settings: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for line in auto_conf.lines() {
        let key = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if !settings.iter().any(|(k, _)| *k == key) {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (key, value) in settings {
        out.push_str(&format!("{key} = {}\n", quote(value)));
    }
    out
}

/// A configuration-file string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A SQL string literal.
pub(crate) fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_conf_sets_the_port_socket_and_quorum() {
        let opts = PgOptions {
            port: 15432,
            synchronous_standbys: Some("ANY 1 (replica1, replica2)".into()),
            max_wal_senders: 7,
        };
        let conf = server_conf(&opts, Some(Path::new("/tmp/x/it's")));
        assert!(conf.contains("port = 15432\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/x/it''s'\n"));
        assert!(conf.contains("synchronous_standby_names = 'ANY 1 (replica1, replica2)'\n"));
        assert!(conf.contains("max_replication_slots = 7\n"));
        let conf = server_conf(&PgOptions::new(1), None);
        assert!(conf.contains("unix_socket_directories = ''\n"));
        assert!(conf.contains("synchronous_standby_names = ''\n"));
    }

    #[test]
    fn the_include_is_added_once() {
        let once = with_include("max_connections = 100").unwrap();
        assert!(once.starts_with("max_connections = 100\n"));
        assert!(once.ends_with("include 'scalestack.conf'\n"));
        assert_eq!(with_include(&once), None);
    }

    #[test]
    fn with_primary_replaces_only_the_replication_source() {
        let auto = "# Do not edit this file manually!\n\
                    work_mem = '8MB'\n\
                    primary_conninfo = 'user=scalestack host=127.0.0.1 port=1'\n\
                    primary_slot_name = 'old'\n";
        let new = with_primary(auto, &primary_conninfo(2, "scalestack", "replica2"), "replica2");
        assert_eq!(
            new,
            "# Do not edit this file manually!\n\
             work_mem = '8MB'\n\
             primary_conninfo = 'host=127.0.0.1 port=2 user=scalestack application_name=replica2'\n\
             primary_slot_name = 'replica2'\n"
        );
        assert_eq!(
            with_primary(&new, "x", "y").matches("primary_conninfo").count(),
            1
        );
    }

    #[test]
    fn sql_literals_double_quotes() {
        assert_eq!(sql_literal("o'k"), "'o''k'");
    }
}
