//! `[prometheus]`: the time-series database `up` runs (Debian's
//! `prometheus`), scraping every process through the `file_sd` target list
//! `up` keeps current (`<data>/prometheus/targets.json`), with the
//! recording and alert rules of [`RULES`]; and the node exporter
//! (`prometheus-node-exporter`) for the machine's CPU, memory, disks and
//! network. Both are children of the supervisor like Redis; their data
//! stays under `<data>/prometheus/`, bounded by `retention` and
//! `retention_mb`.

use crate::component::{Bind, Component, Readiness, RestartPolicy};
use crate::role::Role;
use crate::supervisor::Launch;
use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The recording and alert rules, one group per tier (see the file).
pub const RULES: &str = include_str!("prometheus/rules.yml");

/// `[prometheus]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedPrometheus {
    /// Its HTTP API and UI. Default 127.0.0.1:9090.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The node exporter's address. Default 127.0.0.1:9100.
    #[serde(default = "default_node_exporter")]
    pub node_exporter: SocketAddr,
    /// Scrape and rule evaluation interval, ms. Default 5000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long samples are kept (Prometheus duration). Default `7d`.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// The most disk the samples take, MiB. Default 1024.
    #[serde(default = "default_retention_mb")]
    pub retention_mb: u64,
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 9090).into()
}
fn default_node_exporter() -> SocketAddr {
    ([127, 0, 0, 1], 9100).into()
}
fn default_interval_ms() -> u64 {
    5000
}
fn default_retention() -> String {
    "7d".into()
}
fn default_retention_mb() -> u64 {
    1024
}

impl ManagedPrometheus {
    /// Refuses what Prometheus would refuse later, at load.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1000..=600_000).contains(&self.interval_ms),
            "prometheus.interval_ms must be 1000 to 600000"
        );
        let unit_ok = self
            .retention
            .strip_suffix(['s', 'm', 'h', 'd', 'w', 'y'])
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        anyhow::ensure!(
            unit_ok,
            "prometheus.retention {:?} is not a duration like 7d or 12h",
            self.retention
        );
        anyhow::ensure!(
            self.retention_mb >= 64,
            "prometheus.retention_mb must be at least 64"
        );
        Ok(())
    }

    /// Its two processes: `prometheus` (ready at `/-/ready`) and
    /// `node-exporter`, both scraped like every other process.
    pub fn components(&self, site: &str) -> Vec<Component> {
        let component = |name: &str, role, addr: SocketAddr, path| Component {
            name: name.into(),
            role,
            site: site.into(),
            binds: vec![Bind::tcp(addr, "listen")],
            addr: Some(addr),
            metrics: Some(addr),
            ready: Readiness::Http { addr, path },
            depends_on: Vec::new(),
            restart: RestartPolicy::Always,
        };
        vec![
            component("prometheus", Role::Prometheus, self.listen, "/-/ready"),
            component(
                "node-exporter",
                Role::NodeExporter,
                self.node_exporter,
                "/metrics",
            ),
        ]
    }

    /// `prometheus.yml`: every target of the `file_sd` list `up` keeps,
    /// the rules file beside it.
    pub fn config(&self, dir: &Path) -> String {
        let every = format!("{}s", self.interval_ms.div_ceil(1000));
        format!(
            "# Written by scalestack up at every start: edits are lost.\n\
             global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: scalestack\n    file_sd_configs:\n      - files:\n          - {targets}\n        refresh_interval: {every}\n",
            rules = dir.join("rules.yml").display(),
            targets = crate::metrics::targets_path(dir.parent().unwrap_or(dir)).display(),
        )
    }

    /// How Prometheus is started: its configuration and rules written under
    /// `<data>/prometheus/`, its samples in `<data>/prometheus/tsdb`.
    pub fn launch(&self, data_dir: &Path) -> anyhow::Result<Launch> {
        let dir = data_dir.join("prometheus");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("prometheus.yml"), self.config(&dir))?;
        std::fs::write(dir.join("rules.yml"), RULES)?;
        Ok(Launch::Program {
            program: locate("prometheus")?,
            args: vec![
                format!("--config.file={}", dir.join("prometheus.yml").display()).into(),
                format!("--storage.tsdb.path={}", dir.join("tsdb").display()).into(),
                format!("--storage.tsdb.retention.time={}", self.retention).into(),
                format!("--storage.tsdb.retention.size={}MB", self.retention_mb).into(),
                format!("--web.listen-address={}", self.listen).into(),
                "--log.level=warn".into(),
            ],
        })
    }

    /// How the node exporter is started: the host's CPU, memory, load,
    /// file systems, disks and network, nothing else.
    pub fn node_exporter_launch(&self) -> anyhow::Result<Launch> {
        let mut args: Vec<std::ffi::OsString> = vec![
            format!("--web.listen-address={}", self.node_exporter).into(),
            "--collector.disable-defaults".into(),
            "--log.level=warn".into(),
        ];
        for c in ["cpu", "meminfo", "loadavg", "filesystem", "diskstats", "netdev"] {
            args.push(format!("--collector.{c}").into());
        }
        Ok(Launch::Program {
            program: locate("prometheus-node-exporter")?,
            args,
        })
    }
}

/// A Debian package's program on the PATH.
fn locate(program: &str) -> anyhow::Result<PathBuf> {
    engines::on_path(program)
        .with_context(|| format!("{program} is not installed (scripts/setup.sh installs it)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> ManagedPrometheus {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_config_scrapes_the_target_list_up_keeps() {
        let p = section("");
        p.validate().unwrap();
        let config = p.config(Path::new("/d/prometheus"));
        assert!(config.contains("- /d/prometheus/targets.json"), "{config}");
        assert!(config.contains("- /d/prometheus/rules.yml"), "{config}");
        assert!(config.contains("scrape_interval: 5s"));
        let names: Vec<_> = p.components("local").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["prometheus", "node-exporter"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(section("retention = \"a week\"").validate().is_err());
        assert!(section("interval_ms = 10").validate().is_err());
        assert!(toml::from_str::<ManagedPrometheus>("retentoin = \"7d\"").is_err());
    }

    /// The Grafana dashboard shipped in `docs/grafana/scalestack.json`
    /// queries only the recording rules above and series the rules name
    /// (which the `[prometheus]` e2e test finds in a live scrape), so it
    /// cannot drift from the metrics that exist.
    #[test]
    fn the_grafana_dashboard_queries_only_what_the_rules_define() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana/scalestack.json")).unwrap();
        let words = |text: &str| -> Vec<String> {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("scalestack") || w.starts_with("node_"))
                .map(str::to_owned)
                .collect()
        };
        let defined: std::collections::BTreeSet<String> = words(RULES).into_iter().collect();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 10);
        for panel in panels {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for w in words(expr) {
                    assert!(
                        defined.contains(&w),
                        "panel {:?} queries {w}, which the rules do not define",
                        panel["title"]
                    );
                }
            }
        }
    }

    /// The rules and the configuration as Prometheus itself reads them
    /// (`promtool`, installed with Debian's prometheus package).
    #[test]
    fn promtool_accepts_the_rules_and_the_config() {
        let Ok(promtool) = locate("promtool") else {
            panic!("promtool is needed for this test (scripts/setup.sh installs prometheus)");
        };
        let dir = tempfile::tempdir().unwrap();
        let prom = dir.path().join("prometheus");
        std::fs::create_dir_all(&prom).unwrap();
        std::fs::write(prom.join("rules.yml"), RULES).unwrap();
        std::fs::write(prom.join("targets.json"), "[]").unwrap();
        std::fs::write(prom.join("prometheus.yml"), section("").config(&prom)).unwrap();
        for args in [
            vec!["check", "rules", prom.join("rules.yml").to_str().unwrap()],
            vec!["check", "config", prom.join("prometheus.yml").to_str().unwrap()],
        ] {
            let out = std::process::Command::new(&promtool)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
