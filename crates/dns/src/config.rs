//! The configuration of one `scalestack dns` process: its zone, the sites
//! it sends clients to, the map of client networks to regions, the health
//! checks and the response rate limit. Read from TOML (`up` writes one per
//! name server); [`DnsConfig::validate`] checks it once, at the edge.

use crate::geo::Network;
use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// One geoDNS server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP address (default 127.0.0.1:5353).
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` and `/sites` (default 127.0.0.1:8053).
    pub admin_listen: SocketAddr,
    /// The zone it is authoritative for (default `scalestack.test`).
    pub zone: String,
    /// TTL of the geo answers (`www`, `cdn`), in seconds (default 5): how
    /// long a client may keep a site after it went down, beyond the health
    /// checks' own delay.
    pub ttl: u32,
    /// TTL of the static records (SOA, NS, the name servers' addresses) and
    /// of negative answers (the SOA's minimum), in seconds (default 300).
    pub static_ttl: u32,
    /// Threads answering UDP, each with its own `SO_REUSEPORT` socket
    /// (default 1; 0 = one per core).
    pub threads: usize,
    /// The largest UDP answer it sends, whatever the client offers
    /// (default 1232, the DNS flag day 2020 value that avoids fragments).
    pub max_udp_payload: u16,
    /// TCP connections served at once (default 256); more wait.
    pub max_tcp_connections: usize,
    /// The zone's name servers (NS records at the apex, with their
    /// addresses); at least two, so DNS is no single point of failure.
    pub name_servers: Vec<NameServerSpec>,
    /// The sites (data centres) answers point to.
    pub sites: Vec<SiteSpec>,
    /// Client networks per region, and each region's sites by preference.
    pub regions: Vec<RegionSpec>,
    /// The region of a client in none of the regions' networks (default:
    /// the first region).
    pub default_region: Option<String>,
    /// Site health checks.
    pub health: HealthConfig,
    /// Response rate limiting (UDP only).
    pub rrl: RrlConfig,
}

/// A name server of the zone: `name` is a label under the zone (`ns1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameServerSpec {
    pub name: String,
    pub addr: IpAddr,
}

/// A site: where `www` and `cdn` point when clients are sent there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    /// The public addresses of its load balancer (A and AAAA of `www`).
    pub www: Vec<IpAddr>,
    /// The public addresses of its CDN edge (A and AAAA of `cdn`); empty
    /// when the site has none (then `cdn` has no data there).
    #[serde(default)]
    pub cdn: Vec<IpAddr>,
    /// Its load balancer's admin address, probed with `GET /readyz`;
    /// without it the site is always up.
    #[serde(default)]
    pub health: Option<SocketAddr>,
}

/// A region: the client networks it covers and its sites, nearest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    /// Networks like `127.0.1.0/24`; the longest prefix over all regions wins.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Site names, nearest first. Sites not listed are used, in the
    /// configuration's order, only when every listed one is down.
    pub sites: Vec<String>,
}

/// Health checks of the sites' load balancers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Between probes of one site (default 1000 ms).
    pub interval_ms: u64,
    /// A probe with no answer by then failed (default 500 ms).
    pub timeout_ms: u64,
    /// Successes in a row that bring a down site back (default 2).
    pub rise: u32,
    /// Failures in a row that take an up site out (default 2).
    pub fall: u32,
}

/// Response rate limiting, as BIND's `rate-limit`: identical answers to one
/// client network beyond `responses_per_second` are dropped, except every
/// `slip`-th, which goes out truncated (TC=1) so a real client retries over
/// TCP while a spoofed victim gets no amplification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RrlConfig {
    /// Per client network (/24 or /56) and answer; 0 turns it off
    /// (default 100).
    pub responses_per_second: u32,
    /// Every n-th limited answer is sent truncated; 0 drops them all
    /// (default 2).
    pub slip: u32,
    /// Networks never limited (default none).
    pub exempt: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: ([127, 0, 0, 1], 5353).into(),
            admin_listen: ([127, 0, 0, 1], 8053).into(),
            zone: "scalestack.test".into(),
            ttl: 5,
            static_ttl: 300,
            threads: 1,
            max_udp_payload: 1232,
            max_tcp_connections: 256,
            name_servers: vec![
                NameServerSpec {
                    name: "ns1".into(),
                    addr: [127, 0, 0, 1].into(),
                },
                NameServerSpec {
                    name: "ns2".into(),
                    addr: [127, 0, 0, 2].into(),
                },
            ],
            sites: vec![SiteSpec {
                name: "local".into(),
                www: vec![[127, 0, 0, 1].into()],
                cdn: vec![[127, 0, 0, 1].into()],
                health: None,
            }],
            regions: vec![RegionSpec {
                name: "world".into(),
                networks: vec!["0.0.0.0/0".into(), "::/0".into()],
                sites: vec!["local".into()],
            }],
            default_region: None,
            health: HealthConfig::default(),
            rrl: RrlConfig::default(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
        }
    }
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            responses_per_second: 100,
            slip: 2,
            exempt: Vec::new(),
        }
    }
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("zone {0:?} is not a domain name")]
    Zone(String),
    #[error("name server {0:?} is not a single label like ns1")]
    NameServer(String),
    #[error("at least two name servers are needed, so DNS is no single point of failure")]
    TooFewNameServers,
    #[error("{0:?} is defined twice")]
    Duplicate(String),
    #[error("site {0:?} has no www address")]
    NoAddress(String),
    #[error("{0} sites; at most 64")]
    TooManySites(usize),
    #[error("at least one site is needed")]
    NoSites,
    #[error("region {region:?} names site {site:?}, which is not defined")]
    UnknownSite { region: String, site: String },
    #[error("default_region {0:?} is not defined")]
    UnknownRegion(String),
    #[error("at least one region is needed")]
    NoRegions,
    #[error("{0}")]
    Network(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("max_udp_payload {0} must be 512 to 4096")]
    Payload(u16),
}

impl DnsConfig {
    /// Checks everything a server needs before it binds a port.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.zone_name()?;
        if self.name_servers.len() < 2 {
            return Err(ConfigError::TooFewNameServers);
        }
        let mut seen = HashSet::new();
        for ns in &self.name_servers {
            if !is_label(&ns.name) || ["www", "cdn"].contains(&ns.name.to_ascii_lowercase().as_str()) {
                return Err(ConfigError::NameServer(ns.name.clone()));
            }
            if !seen.insert(ns.name.to_ascii_lowercase()) {
                return Err(ConfigError::Duplicate(ns.name.clone()));
            }
        }
        if self.sites.is_empty() {
            return Err(ConfigError::NoSites);
        }
        if self.sites.len() > 64 {
            return Err(ConfigError::TooManySites(self.sites.len()));
        }
        let mut sites = HashSet::new();
        for s in &self.sites {
            if !sites.insert(s.name.as_str()) {
                return Err(ConfigError::Duplicate(s.name.clone()));
            }
            if s.www.is_empty() {
                return Err(ConfigError::NoAddress(s.name.clone()));
            }
        }
        if self.regions.is_empty() {
            return Err(ConfigError::NoRegions);
        }
        let mut regions = HashSet::new();
        for r in &self.regions {
            if !regions.insert(r.name.as_str()) {
                return Err(ConfigError::Duplicate(r.name.clone()));
            }
            for site in &r.sites {
                if !sites.contains(site.as_str()) {
                    return Err(ConfigError::UnknownSite {
                        region: r.name.clone(),
                        site: site.clone(),
                    });
                }
            }
            for n in &r.networks {
                n.parse::<Network>().map_err(ConfigError::Network)?;
            }
        }
        if let Some(d) = &self.default_region {
            if !regions.contains(d.as_str()) {
                return Err(ConfigError::UnknownRegion(d.clone()));
            }
        }
        for n in &self.rrl.exempt {
            n.parse::<Network>().map_err(ConfigError::Network)?;
        }
        if self.health.rise == 0 {
            return Err(ConfigError::Zero("health.rise"));
        }
        if self.health.fall == 0 {
            return Err(ConfigError::Zero("health.fall"));
        }
        if self.health.interval_ms == 0 {
            return Err(ConfigError::Zero("health.interval_ms"));
        }
        if self.max_tcp_connections == 0 {
            return Err(ConfigError::Zero("max_tcp_connections"));
        }
        if !(512..=4096).contains(&self.max_udp_payload) {
            return Err(ConfigError::Payload(self.max_udp_payload));
        }
        Ok(())
    }

    /// The zone as a fully qualified, lower-case name.
    pub fn zone_name(&self) -> Result<Name, ConfigError> {
        let bad = || ConfigError::Zone(self.zone.clone());
        let text = self.zone.trim_end_matches('.');
        if text.is_empty() || !text.split('.').all(is_label) {
            return Err(bad());
        }
        let mut name = Name::from_ascii(text).map_err(|_| bad())?.to_lowercase();
        name.set_fqdn(true);
        Ok(name)
    }
}

/// A host name label: letters, digits and inner hyphens, 1 to 63 bytes.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid() {
        DnsConfig::default().validate().unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let mut c = DnsConfig::default();
        c.name_servers.pop();
        assert!(matches!(c.validate(), Err(ConfigError::TooFewNameServers)));
        let mut c = DnsConfig::default();
        c.regions[0].sites.push("mars".into());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "region \"world\" names site \"mars\", which is not defined"
        );
        let mut c = DnsConfig::default();
        c.regions[0].networks.push("10.0.0.0/33".into());
        assert!(matches!(c.validate(), Err(ConfigError::Network(_))));
        let c = DnsConfig {
            zone: "bad zone".into(),
            ..DnsConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Zone(_))));
        let mut c = DnsConfig::default();
        c.health.fall = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Zero("health.fall"))));
    }

    #[test]
    fn the_zone_is_lower_case_and_fully_qualified() {
        let c = DnsConfig {
            zone: "Photos.TEST.".into(),
            ..DnsConfig::default()
        };
        assert_eq!(c.zone_name().unwrap().to_string(), "photos.test.");
    }
}
