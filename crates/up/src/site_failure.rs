//! Losing a whole site on purpose, and getting it back: what
//! `ctl site fail NAME` and `ctl site restore NAME` do in a multi-site
//! topology (see [`crate::sites`]).
//!
//! Failing a site SIGKILLs every process in it at once: its `up` and every
//! child that `up` runs (load balancer, edges, web servers, workers,
//! Redis, by the pids its control API lists), and the shared processes
//! placed in it (its name server, its database nodes). They are held down
//! until the site is restored: the supervisor does not restart them, and
//! the failover controller neither restarts nor promotes a held database
//! node, so a primary in the lost site is replaced by a node of another.
//! Restoring releases them: the site's `up` starts its children afresh, and
//! its database nodes come back as replicas (an old primary is rebuilt).

use crate::role::Role;
use crate::supervisor::{ChildStatus, SupervisorError};
use crate::Orchestrator;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Serialize;
use std::time::Duration;

/// What failing or restoring a site did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SiteChange {
    pub site: String,
    /// The shared `up`'s children in the site (`site-dc1`, `ns1`, `pg1`).
    pub components: Vec<String>,
    /// Processes of the site's own `up` killed by pid (0 on restore).
    pub site_processes: usize,
}

/// Why a site could not be failed or restored.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

impl Orchestrator {
    fn site_components(&self, site: &str) -> Result<Vec<crate::component::Component>, SiteError> {
        if !self.topology.is_multi_site() {
            return Err(SiteError::Invalid(
                "this topology has one site ([[sites]] is empty)".into(),
            ));
        }
        if !self.topology.sites.iter().any(|s| s.name == site) {
            let names: Vec<&str> = self.topology.sites.iter().map(|s| s.name.as_str()).collect();
            return Err(SiteError::Invalid(format!(
                "no site {site:?} (sites: {})",
                names.join(", ")
            )));
        }
        let mut list: Vec<_> = self
            .supervisor
            .components()
            .into_iter()
            .filter(|c| c.site == site)
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Kills every process of `site` at once and holds them down.
    pub async fn fail_site(&self, site: &str) -> Result<SiteChange, SiteError> {
        let components = self.site_components(site)?;
        // The site's own children, read before its `up` goes.
        let mut pids = Vec::new();
        if let Some(up) = components.iter().find(|c| c.role == Role::Site) {
            let control = up.metrics.expect("a site's up has a control address");
            let answer = self
                .http
                .get(format!("http://{control}/api/ps"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(r) = answer {
                if let Ok(ps) = r.json::<Vec<ChildStatus>>().await {
                    pids.extend(ps.iter().filter_map(|c| c.pid));
                }
            }
        }
        for c in &components {
            if c.role == Role::Postgres {
                for cluster in self.clusters() {
                    cluster.hold(&c.name, true);
                }
                self.supervisor.signal(&c.name, Signal::SIGKILL)?;
            } else {
                self.supervisor.kill(&c.name, Signal::SIGKILL)?;
            }
        }
        for &pid in &pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        tracing::warn!(
            site,
            processes = pids.len() + components.len(),
            "site failed: every process killed"
        );
        Ok(SiteChange {
            site: site.to_owned(),
            components: components.into_iter().map(|c| c.name).collect(),
            site_processes: pids.len(),
        })
    }

    /// Starts again what [`Orchestrator::fail_site`] held down.
    pub fn restore_site(&self, site: &str) -> Result<SiteChange, SiteError> {
        let components = self.site_components(site)?;
        for c in &components {
            if c.role == Role::Postgres {
                // The controller restarts it, or rebuilds it as a replica.
                for cluster in self.clusters() {
                    cluster.hold(&c.name, false);
                }
            } else {
                self.supervisor.resume(&c.name)?;
            }
        }
        tracing::info!(site, "site restored");
        Ok(SiteChange {
            site: site.to_owned(),
            components: components.into_iter().map(|c| c.name).collect(),
            site_processes: 0,
        })
    }
}
