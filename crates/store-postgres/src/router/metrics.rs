//! The router's Prometheus metrics, exported into a registry it is handed
//! ([`super::PgRouter::register_metrics`]). Every series carries the
//! `replica_set` label (a constant of the router, so the routers of several
//! sets can share one registry) and, per node, `node` (its URL without the
//! password):
//!
//! - `db_router_node_role{node, role}`: 1 for the node's current role
//!   (`primary`, `replica`, `down`, `fenced`), 0 for the three others;
//! - `db_router_replica_lag_seconds{node}` and
//!   `db_router_replica_lag_bytes{node}`: a replica's lag (absent while it
//!   is unknown, and for a node that is not a replica);
//! - `db_router_reads_total{node}`, `db_router_writes_total{node}`: served;
//! - `db_router_replica_read_retries_total{node}`: reads that failed on
//!   this replica and were retried on the primary;
//! - `db_router_primary_fallbacks_total{reason}`: reads sent to the primary
//!   because no replica was fit: `floor` (none had replayed the read
//!   floor) or `no_replica` (none usable);
//! - `db_router_no_primary_total`: calls refused because no primary was
//!   known; `db_router_probe_rounds_total`: probe rounds completed.
//!
//! The counters are the router's own (what [`super::PgRouter::status`]
//! reports); the gauges are read from the routing state at each scrape.

use super::policy::Fallback;
use super::topology::{NodeRole, NodeState};
use super::Inner;
use domain::consistency::ReplicaSetId;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::Weak;

/// Every metric family of one router.
#[derive(Clone)]
pub(super) struct Metrics {
    role: IntGaugeVec,
    lag_seconds: GaugeVec,
    lag_bytes: IntGaugeVec,
    reads: IntCounterVec,
    writes: IntCounterVec,
    read_retries: IntCounterVec,
    fallbacks: IntCounterVec,
    no_primary: IntCounter,
    probe_rounds: IntCounter,
}

/// One node's counters.
pub(super) struct NodeCounters {
    pub reads: IntCounter,
    pub writes: IntCounter,
    pub read_retries: IntCounter,
}

fn opts(set: &ReplicaSetId, name: &str, help: &str) -> Opts {
    Opts::new(name, help).const_label("replica_set", set.as_str())
}

impl Metrics {
    /// The metrics of the router of `set`, every counter at 0.
    pub fn new(set: &ReplicaSetId) -> Metrics {
        let gauge = |name, help, labels: &[&str]| {
            IntGaugeVec::new(opts(set, name, help), labels).expect("valid metric")
        };
        let counter = |name, help, labels: &[&str]| {
            IntCounterVec::new(opts(set, name, help), labels).expect("valid metric")
        };
        let single = |name, help| IntCounter::with_opts(opts(set, name, help)).expect("valid metric");
        let metrics = Metrics {
            role: gauge(
                "db_router_node_role",
                "1 for the role each database node plays for the router now (primary, replica, down, fenced), 0 for the others",
                &["node", "role"],
            ),
            lag_seconds: GaugeVec::new(
                opts(
                    set,
                    "db_router_replica_lag_seconds",
                    "How long the primary has been past each replica's replay position (0 when caught up)",
                ),
                &["node"],
            )
            .expect("valid metric"),
            lag_bytes: gauge(
                "db_router_replica_lag_bytes",
                "The primary's last WAL position minus each replica's replay position",
                &["node"],
            ),
            reads: counter("db_router_reads_total", "Reads each database node served", &["node"]),
            writes: counter("db_router_writes_total", "Writes each database node took", &["node"]),
            read_retries: counter(
                "db_router_replica_read_retries_total",
                "Reads that failed on each replica and were retried on the primary",
                &["node"],
            ),
            fallbacks: counter(
                "db_router_primary_fallbacks_total",
                "Reads sent to the primary because no replica was fit: none had replayed the read floor (floor) or none was usable (no_replica)",
                &["reason"],
            ),
            no_primary: single(
                "db_router_no_primary_total",
                "Calls refused at once because no primary was known",
            ),
            probe_rounds: single("db_router_probe_rounds_total", "Probe rounds completed"),
        };
        for why in [Fallback::Floor, Fallback::NoReplica] {
            metrics.fallback(why);
        }
        metrics
    }

    /// The counters of the node at `url` (redacted), created at 0.
    pub fn node(&self, url: &str) -> NodeCounters {
        NodeCounters {
            reads: self.reads.with_label_values(&[url]),
            writes: self.writes.with_label_values(&[url]),
            read_retries: self.read_retries.with_label_values(&[url]),
        }
    }

    /// The reads sent to the primary for `why`.
    pub fn fallback(&self, why: Fallback) -> IntCounter {
        self.fallbacks.with_label_values(&[match why {
            Fallback::Floor => "floor",
            Fallback::NoReplica => "no_replica",
        }])
    }

    /// Calls refused because no primary was known.
    pub fn no_primary(&self) -> &IntCounter {
        &self.no_primary
    }

    /// Probe rounds completed.
    pub fn probe_rounds(&self) -> &IntCounter {
        &self.probe_rounds
    }

    /// Sets the gauges of the node at `url` from its routing state.
    fn observe(&self, url: &str, st: &NodeState) {
        for role in NodeRole::ALL {
            self.role
                .with_label_values(&[url, role.as_str()])
                .set(i64::from(st.role == role));
        }
        let replica = st.role == NodeRole::Replica;
        match st.lag_ms.filter(|_| replica) {
            Some(ms) => self.lag_seconds.with_label_values(&[url]).set(ms as f64 / 1000.0),
            None => {
                let _ = self.lag_seconds.remove_label_values(&[url]);
            }
        }
        match st.lag_bytes.filter(|_| replica) {
            Some(b) => self
                .lag_bytes
                .with_label_values(&[url])
                .set(i64::try_from(b).unwrap_or(i64::MAX)),
            None => {
                let _ = self.lag_bytes.remove_label_values(&[url]);
            }
        }
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.role,
            &self.lag_seconds,
            &self.lag_bytes,
            &self.reads,
            &self.writes,
            &self.read_retries,
            &self.fallbacks,
            &self.no_primary,
            &self.probe_rounds,
        ]
    }
}

/// What a registry holds of a router: its metrics, and the routing state
/// the gauges are read from at each scrape. It does not keep the router
/// alive: once the router is gone, it exports nothing.
pub(super) struct Exporter {
    metrics: Metrics,
    inner: Weak<Inner>,
}

impl Exporter {
    pub fn new(metrics: Metrics, inner: Weak<Inner>) -> Exporter {
        Exporter { metrics, inner }
    }
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.metrics
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(inner) = self.inner.upgrade() else {
            return Vec::new();
        };
        for node in &inner.nodes {
            let st = node.lock_state().clone();
            self.metrics.observe(&node.url, &st);
        }
        self.metrics
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// The value of the series of `name` whose labels include `labels` in
/// `registry`, if there is one: for the tests.
#[cfg(test)]
pub(super) fn value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus::proto::MetricType;
    let family = registry.gather().into_iter().find(|f| f.get_name() == name)?;
    let metric = family.get_metric().iter().find(|m| {
        labels.iter().all(|&(k, v)| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == k && l.get_value() == v)
        })
    })?;
    Some(match family.get_field_type() {
        MetricType::COUNTER => metric.get_counter().get_value(),
        _ => metric.get_gauge().get_value(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{router_of, router_over};
    use super::super::PgRouter;
    use super::*;
    use domain::ports::Store;
    use domain::UserId;
    use prometheus::Registry;

    fn state(role: NodeRole, usable: bool, lag_ms: Option<u64>) -> NodeState {
        NodeState {
            role,
            usable,
            lag_ms,
            lag_bytes: lag_ms.map(|ms| ms * 10),
            ..NodeState::default()
        }
    }

    fn url(router: &PgRouter, i: usize) -> String {
        router.status()[i].url.clone()
    }

    fn role_of(registry: &Registry, node: &str) -> Vec<(&'static str, f64)> {
        NodeRole::ALL
            .iter()
            .map(|r| {
                let labels = [("node", node), ("role", r.as_str()), ("replica_set", "default")];
                (
                    r.as_str(),
                    value(registry, "db_router_node_role", &labels).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn roles_and_lag_are_read_from_the_routing_state_at_each_scrape() {
        let router = router_over(
            vec![
                state(NodeRole::Down, false, Some(7)), // a replica last seen 7 ms behind
                state(NodeRole::Replica, true, Some(1500)),
                state(NodeRole::Fenced, false, None),
            ],
            None,
        );
        let registry = Registry::new();
        router.register_metrics(&registry).unwrap();
        let (n0, n1, n2) = (url(&router, 0), url(&router, 1), url(&router, 2));
        let one_of = |role| {
            NodeRole::ALL
                .iter()
                .map(|r| (r.as_str(), if *r == role { 1.0 } else { 0.0 }))
                .collect::<Vec<_>>()
        };
        assert_eq!(role_of(&registry, &n0), one_of(NodeRole::Down));
        assert_eq!(role_of(&registry, &n1), one_of(NodeRole::Replica));
        assert_eq!(role_of(&registry, &n2), one_of(NodeRole::Fenced));
        let lag = |node: &str| value(&registry, "db_router_replica_lag_seconds", &[("node", node)]);
        let lag_bytes = |node: &str| value(&registry, "db_router_replica_lag_bytes", &[("node", node)]);
        assert_eq!((lag(&n1), lag_bytes(&n1)), (Some(1.5), Some(15000.0)));
        assert_eq!((lag(&n0), lag(&n2)), (None, None), "only replicas have a lag");

        // The next scrape sees the state as it is then.
        router.inner.nodes[1].mark_down();
        assert_eq!(role_of(&registry, &n1), one_of(NodeRole::Down));
        assert_eq!((lag(&n1), lag_bytes(&n1)), (None, None));
    }

    #[tokio::test]
    async fn counters_count_what_the_router_did() {
        // Node 1 is taken for a replica but refuses connections; no primary.
        let router = router_over(
            vec![
                state(NodeRole::Down, false, None),
                state(NodeRole::Replica, true, Some(0)),
            ],
            None,
        );
        let registry = Registry::new();
        router.register_metrics(&registry).unwrap();
        let n1 = url(&router, 1);
        let counter = |name: &str, labels: &[(&str, &str)]| value(&registry, name, labels).unwrap();
        assert_eq!(
            counter("db_router_reads_total", &[("node", &n1)]),
            0.0,
            "there from the start"
        );
        assert_eq!(
            counter("db_router_primary_fallbacks_total", &[("reason", "floor")]),
            0.0
        );

        // Fails on the replica, retried on the (missing) primary...
        let _ = router.user_by_id(UserId(1)).await;
        // ...which is now out of the rotation: straight to the primary.
        let _ = router.user_by_id(UserId(1)).await;
        let _ = router
            .create_user(&domain::Username::parse("ann").unwrap(), "h")
            .await;
        let retries = ("db_router_replica_read_retries_total", [("node", n1.as_str())]);
        assert_eq!(counter(retries.0, &retries.1), 1.0);
        let fallbacks = [("reason", "no_replica"), ("replica_set", "default")];
        assert_eq!(counter("db_router_primary_fallbacks_total", &fallbacks), 1.0);
        assert_eq!(counter("db_router_no_primary_total", &[]), 3.0);
        assert_eq!(counter("db_router_reads_total", &[("node", &n1)]), 0.0);
        assert_eq!(counter("db_router_writes_total", &[("node", &n1)]), 0.0);
        let stats = router.stats();
        assert_eq!(
            (
                stats.replica_read_retries,
                stats.reads_fallback_no_replica,
                stats.no_primary
            ),
            (1, 1, 3),
            "the same counts"
        );
    }

    #[tokio::test]
    async fn routers_of_several_sets_share_a_registry_and_leave_it_when_dropped() {
        let registry = Registry::new();
        let router = router_over(vec![NodeState::default()], None);
        router.register_metrics(&registry).unwrap();
        assert!(router.register_metrics(&registry).is_err(), "once per registry");

        // Another set's router: the same families, told apart by the label.
        let eu = ReplicaSetId::parse("eu").unwrap();
        let other = router_of(eu, vec![NodeState::default()], None);
        other.register_metrics(&registry).unwrap();
        let rounds = |set| value(&registry, "db_router_probe_rounds_total", &[("replica_set", set)]);
        assert_eq!((rounds("default"), rounds("eu")), (Some(0.0), Some(0.0)));

        drop(router);
        assert_eq!(
            (rounds("default"), rounds("eu")),
            (None, Some(0.0)),
            "a dropped router exports nothing"
        );
    }
}
