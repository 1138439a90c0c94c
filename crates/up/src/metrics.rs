//! `up`'s own metrics (`/metrics` on the control address, prefix
//! `scalestack_up_`) and the Prometheus `file_sd` target list naming every
//! child's metrics address (`/targets`, and `<data>/prometheus/targets.json`
//! rewritten atomically whenever the set of children changes).

use crate::component::Component;
use crate::supervisor::{ChildStatus, SupervisorMetrics};
use crate::Role;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every state a child can be in, so that `children` shows zeros too.
const STATES: [&str; 9] = [
    "starting",
    "running",
    "restarting",
    "down",
    "stopped",
    "exited",
    "primary",
    "replica",
    "fenced",
];

/// The registry of `up` and the handles of its series.
#[derive(Clone)]
pub struct UpMetrics {
    registry: Registry,
    /// Children by state, set from `ps` at each scrape.
    children: IntGaugeVec,
    /// `ctl scale` operations by role and result (`ok`, `refused`, `failed`).
    pub scale_operations: IntCounterVec,
    /// PostgreSQL failovers completed.
    pub failovers: IntCounter,
    /// Handed to the supervisor: restarts per child.
    pub supervisor: SupervisorMetrics,
    /// The autoscaler's figures.
    pub autoscale: AutoscaleMetrics,
}

/// `scalestack_up_autoscale_*`: per autoscaled role, the replicas desired
/// and running, the deciding signal and its target (per replica), and the
/// scale operations the autoscaler started by direction.
#[derive(Clone)]
pub struct AutoscaleMetrics {
    desired: IntGaugeVec,
    actual: IntGaugeVec,
    signal: prometheus::GaugeVec,
    target: prometheus::GaugeVec,
    decisions: IntCounterVec,
}

impl AutoscaleMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let desired = IntGaugeVec::new(
            Opts::new("autoscale_desired_replicas", "Replicas the autoscaler wants"),
            &["role"],
        )?;
        let actual = IntGaugeVec::new(
            Opts::new("autoscale_actual_replicas", "Replicas running when last observed"),
            &["role"],
        )?;
        let signal = prometheus::GaugeVec::new(
            Opts::new("autoscale_signal", "The deciding signal per replica (queue depth per worker, in-flight or requests per second per server, p99 ms)"),
            &["role", "metric"],
        )?;
        let target = prometheus::GaugeVec::new(
            Opts::new("autoscale_target", "The signal's target per replica"),
            &["role", "metric"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "autoscale_scale_events_total",
                "Scale operations the autoscaler started, by direction",
            ),
            &["role", "direction"],
        )?;
        registry.register(Box::new(desired.clone()))?;
        registry.register(Box::new(actual.clone()))?;
        registry.register(Box::new(signal.clone()))?;
        registry.register(Box::new(target.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        Ok(AutoscaleMetrics {
            desired,
            actual,
            signal,
            target,
            decisions,
        })
    }

    /// Records a decision's figures.
    pub fn observe(&self, role: Role, d: &crate::autoscale::Decision) {
        let r = role.as_str();
        self.desired.with_label_values(&[r]).set(d.desired as i64);
        self.actual.with_label_values(&[r]).set(d.current as i64);
        self.signal.with_label_values(&[r, d.metric]).set(d.signal);
        self.target.with_label_values(&[r, d.metric]).set(d.target);
    }

    /// Counts a scale operation started.
    pub fn scaled(&self, role: Role, up: bool) {
        self.decisions
            .with_label_values(&[role.as_str(), if up { "up" } else { "down" }])
            .inc();
    }
}

impl UpMetrics {
    /// A fresh registry; every series is named `scalestack_up_*`.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("scalestack_up".into()), None).expect("valid prefix");
        let children = IntGaugeVec::new(Opts::new("children", "Child processes by state"), &["state"])
            .expect("valid metric");
        let scale_operations = IntCounterVec::new(
            Opts::new("scale_operations_total", "Scale operations by role and result"),
            &["role", "result"],
        )
        .expect("valid metric");
        let failovers =
            IntCounter::new("failovers_total", "PostgreSQL failovers completed").expect("valid metric");
        registry
            .register(Box::new(children.clone()))
            .expect("registered once");
        registry
            .register(Box::new(scale_operations.clone()))
            .expect("registered once");
        registry
            .register(Box::new(failovers.clone()))
            .expect("registered once");
        let supervisor = SupervisorMetrics::register(&registry).expect("registered once");
        let autoscale = AutoscaleMetrics::register(&registry).expect("registered once");
        UpMetrics {
            registry,
            children,
            scale_operations,
            failovers,
            supervisor,
            autoscale,
        }
    }

    /// The text exposition, with `children` counted from `ps`.
    pub fn render(&self, ps: &[ChildStatus]) -> String {
        for state in STATES {
            let n = ps.iter().filter(|c| c.state == state).count();
            self.children.with_label_values(&[state]).set(n as i64);
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for UpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One entry of a Prometheus `file_sd` list: addresses and their labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

fn group(addr: SocketAddr, role: &str, name: &str, site: &str) -> TargetGroup {
    TargetGroup {
        targets: vec![addr.to_string()],
        labels: BTreeMap::from([
            ("role".to_owned(), role.to_owned()),
            ("name".to_owned(), name.to_owned()),
            ("site".to_owned(), site.to_owned()),
        ]),
    }
}

/// The target list: `up` itself at `control`, then every component that
/// serves metrics (labels `role`, `name`, `site`), by name.
pub fn targets(control: SocketAddr, site: &str, components: &[Component]) -> Vec<TargetGroup> {
    let mut list = vec![group(control, "up", "up", site)];
    let mut with_metrics: Vec<&Component> = components.iter().filter(|c| c.metrics.is_some()).collect();
    with_metrics.sort_by(|a, b| a.name.cmp(&b.name));
    list.extend(
        with_metrics
            .into_iter()
            .filter_map(|c| Some(group(c.metrics?, c.role.as_str(), &c.name, &c.site))),
    );
    list
}

/// Where the target list is written under the data directory.
pub fn targets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("prometheus").join("targets.json")
}

/// Writes `list` to `path` aside, then renames it over the old one:
/// Prometheus never reads half a file.
pub fn write_targets(path: &Path, list: &[TargetGroup]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".targets.json.tmp");
    let text = serde_json::to_vec_pretty(list).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[test]
    fn the_target_list_names_every_child_with_metrics() {
        let t = Topology::parse(include_str!("../../../topologies/replicated.toml")).unwrap();
        let list = targets(t.control.listen, &t.site.name, &t.components());
        let names: Vec<(&str, &str, &str)> = list
            .iter()
            .map(|g| {
                (
                    g.labels["name"].as_str(),
                    g.labels["role"].as_str(),
                    g.targets[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("up", "up", "127.0.0.1:8090"),
                ("lb", "lb", "127.0.0.1:8091"),
                ("node-exporter", "node-exporter", "127.0.0.1:9100"),
                ("prometheus", "prometheus", "127.0.0.1:9090"),
                ("web-1", "web", "127.0.0.1:9101"),
                ("web-2", "web", "127.0.0.1:9102"),
                ("web-3", "web", "127.0.0.1:9103"),
                ("worker-1", "worker", "127.0.0.1:9201"),
            ],
            "the engines have no metrics endpoint of their own (Prometheus and its node exporter do)"
        );
        assert!(list.iter().all(|g| g.labels["site"] == "local"));
    }

    #[test]
    fn edges_are_scraped_on_their_admin_port() {
        let t = Topology::parse(include_str!("../../../topologies/cdn.toml")).unwrap();
        let list = targets(t.control.listen, &t.site.name, &t.components());
        let edges: Vec<(&str, &str)> = list
            .iter()
            .filter(|g| g.labels["role"] == "cdn")
            .map(|g| (g.labels["name"].as_str(), g.targets[0].as_str()))
            .collect();
        assert_eq!(edges, [("cdn-1", "127.0.0.1:8092"), ("cdn-2", "127.0.0.1:8093")]);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = targets_path(dir.path());
        let list = vec![group("127.0.0.1:1".parse().unwrap(), "web", "web-1", "local")];
        write_targets(&path, &list).unwrap();
        write_targets(&path, &list[..0]).unwrap();
        let back: Vec<TargetGroup> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(back.is_empty());
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file left");
    }

    #[test]
    fn children_are_counted_by_state() {
        let m = UpMetrics::new();
        let child = |state: &str| ChildStatus {
            name: "x".into(),
            role: crate::role::Role::Web,
            site: "local".into(),
            addr: None,
            state: state.into(),
            pid: None,
            restarts: 0,
            since: None,
            via: None,
        };
        let text = m.render(&[child("running"), child("running"), child("stopped")]);
        assert!(
            text.contains("scalestack_up_children{state=\"running\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("scalestack_up_children{state=\"stopped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scalestack_up_children{state=\"down\"} 0"),
            "{text}"
        );
    }
}
