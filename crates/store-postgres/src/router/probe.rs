//! Probing: what the router asks every node, over a connection of its own
//! kept open between probes, and the task that probes every node each
//! interval and applies the [`Topology`] update to the shared routing
//! state.

use super::election::Observation;
use super::topology::{NodeRole, Topology};
use super::{Inner, NO_PRIMARY};
use crate::parse_lsn;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Longest one probe of one node may take, connecting included: 1 s. A node
/// that does not answer within it counts as down until its next answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the prober asks every node, in one round trip. The timeline of a
/// primary is read from the name of its current WAL segment, which changes
/// at once on promotion, whereas `pg_control_checkpoint()` only reports the
/// new timeline after the next checkpoint; the larger of the two is used.
pub(super) const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
    pg_last_wal_replay_lsn()::text, \
    pg_last_wal_receive_lsn()::text";

/// The prober's own connection to one node, apart from the node's pool so
/// that a busy pool cannot make a healthy node look dead.
pub(super) struct Probe {
    url: String,
    options: PgConnectOptions,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
}

impl Probe {
    /// A probe of the node at `options` (`url`: redacted, for the log);
    /// connects at its first use.
    pub fn new(url: String, options: PgConnectOptions) -> Probe {
        Probe {
            url,
            options,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Asks the node [`PROBE_SQL`] within [`PROBE_TIMEOUT`]; `None` if it
    /// does not answer. The connection is kept between probes and dropped
    /// after any failure.
    pub async fn ask(&self) -> Option<Observation> {
        let mut conn = self.conn.lock().await;
        let answer = tokio::time::timeout(PROBE_TIMEOUT, probe_on(&mut conn, &self.options)).await;
        match answer {
            Ok(Ok(o)) => Some(o),
            Ok(Err(error)) => {
                tracing::debug!(node = %self.url, %error, "probe failed");
                *conn = None;
                None
            }
            Err(_) => {
                tracing::debug!(node = %self.url, "probe timed out");
                *conn = None;
                None
            }
        }
    }
}

async fn probe_on(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<Observation, String> {
    if conn.is_none() {
        *conn = Some(
            PgConnection::connect_with(options)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let row = sqlx::query(PROBE_SQL)
        .fetch_one(&mut *c)
        .await
        .map_err(|e| e.to_string())?;
    let get_lsn = |i: usize| -> Result<Option<u64>, String> {
        let text: Option<String> = row.try_get(i).map_err(|e| e.to_string())?;
        text.map(|t| parse_lsn(&t).ok_or_else(|| format!("unexpected lsn {t:?}")))
            .transpose()
    };
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let checkpoint_timeline: Option<i32> = row.try_get(1).map_err(|e| e.to_string())?;
    let walfile: Option<String> = row.try_get(3).map_err(|e| e.to_string())?;
    let timeline = checkpoint_timeline
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(0)
        .max(walfile.as_deref().and_then(walfile_timeline).unwrap_or(0));
    Ok(Observation {
        in_recovery,
        timeline,
        wal_lsn: get_lsn(2)?,
        replay_lsn: get_lsn(4)?,
        receive_lsn: get_lsn(5)?,
    })
}

/// The timeline of a WAL segment file name (`000000020000000000000003`: the
/// first 8 hex digits).
fn walfile_timeline(name: &str) -> Option<u32> {
    let hex = name.get(..8)?;
    hex.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The prober task: a round every `every` until the router is dropped.
pub(super) async fn run_prober(inner: Weak<Inner>, every: Duration) {
    let mut topology = Topology::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.probe_round(&mut topology).await;
    }
}

impl Inner {
    /// Probes every node at once, then applies the topology update to every
    /// node's state and to the primary.
    async fn probe_round(&self, topology: &mut Topology) {
        let started = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let node = Arc::clone(node);
            probes.spawn(async move { (i, node.probe.ask().await) });
        }
        let mut seen = vec![None; self.nodes.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, answer)) = done {
                seen[i] = answer;
            }
        }
        let round = topology.round(seen, started, Instant::now());
        if let Some((i, timeline)) = round.newly_elected() {
            tracing::info!(node = %self.nodes[i].url, timeline, "primary elected");
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let mut st = node.lock_state();
            let before = st.role;
            round.apply(i, &mut st, &self.policy);
            if st.role != before {
                match st.role {
                    NodeRole::Primary | NodeRole::Replica => {
                        tracing::info!(node = %node.url, role = %st.role, was = %before, "database node role")
                    }
                    NodeRole::Down | NodeRole::Fenced => {
                        tracing::warn!(node = %node.url, role = %st.role, was = %before, "database node role")
                    }
                }
            }
        }
        let was = self
            .primary
            .swap(round.primary().unwrap_or(NO_PRIMARY), Ordering::AcqRel);
        if round.primary().is_none() && was != NO_PRIMARY {
            tracing::warn!(node = %self.nodes[was].url, "no primary: writes are refused until one is found");
        }
        self.metrics.probe_rounds().inc();
        self.rounds.send_modify(|r| *r += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_come_from_wal_file_names() {
        assert_eq!(walfile_timeline("000000020000000000000003"), Some(2));
        assert_eq!(walfile_timeline("0000000A0000000100000003"), Some(10));
        assert_eq!(walfile_timeline("0000"), None);
        assert_eq!(walfile_timeline("zzzzzzzz0000000000000003"), None);
    }

    #[tokio::test]
    async fn a_node_that_refuses_connections_gives_no_answer() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        }; // closed again: connections are refused
        let url = format!("postgres://u@127.0.0.1:{port}/db");
        let probe = Probe::new(url.clone(), crate::connect_options(&url).unwrap());
        assert_eq!(probe.ask().await, None);
        assert!(probe.conn.lock().await.is_none(), "no connection kept");
    }
}
