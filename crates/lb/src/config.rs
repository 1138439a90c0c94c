//! Configuration of the load balancer, as the `[lb]` section of a topology
//! or the file `scalestack lb --config` reads.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Everything the load balancer needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbConfig {
    /// Public address. Default 127.0.0.1:8080.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin API and `/metrics`; keep it on loopback. Default 127.0.0.1:8091.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Backends at start; more can be added through the admin API.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// Selection algorithm. Default round robin.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Key of `consistent_hash`: `client_ip`, `cookie:NAME` or `header:NAME`.
    /// Default `client_ip`.
    #[serde(default)]
    pub hash_key: HashKey,
    /// Further backends a failed request may be retried on. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Worker threads; 0 means one per core. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Log one line per request. Default true.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Peers whose `X-Forwarded-*` headers are kept (and appended to);
    /// from anyone else those headers are replaced. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub outlier: OutlierConfig,
    #[serde(default)]
    pub limits: Limits,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8091))
}
fn default_retries() -> u32 {
    2
}
fn yes() -> bool {
    true
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            backends: Vec::new(),
            algorithm: Algorithm::default(),
            hash_key: HashKey::default(),
            retries: default_retries(),
            threads: 0,
            access_log: true,
            trusted_proxies: Vec::new(),
            health: HealthConfig::default(),
            outlier: OutlierConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// A backend and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// Relative share for weighted algorithms, 1..=1000. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How a backend is chosen for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashKey {
    #[default]
    ClientIp,
    Cookie(String),
    Header(http::HeaderName),
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashKey::ClientIp => s.serialize_str("client_ip"),
            HashKey::Cookie(n) => s.serialize_str(&format!("cookie:{n}")),
            HashKey::Header(n) => s.serialize_str(&format!("header:{n}")),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HashKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl HashKey {
    /// Parses `client_ip`, `cookie:NAME` or `header:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_owned())),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            _ => Err(format!(
                "hash_key must be client_ip, cookie:NAME or header:NAME, not {s:?}"
            )),
        }
    }
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed with GET. Default `/readyz`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Default 1000 ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Default 500 ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive passes to become healthy. Default 1.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures to become unhealthy. Default 2.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_health_path() -> String {
    "/readyz".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_rise() -> u32 {
    1
}
fn default_fall() -> u32 {
    2
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: default_health_path(),
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

/// Passive outlier ejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive connect failures or 5xx answers that eject. Default 3.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// First ejection; each next one doubles. Default 1000 ms.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// Longest ejection. Default 30000 ms.
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
}

fn default_consecutive() -> u32 {
    3
}
fn default_base_ejection_ms() -> u64 {
    1000
}
fn default_max_ejection_ms() -> u64 {
    30_000
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive(),
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
        }
    }
}

/// Limits on what clients may send, and timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Request line plus headers, bytes; above it 431. Default 16384.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Header count; above it 431. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request body bytes; above it 413. Default 25 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Time to receive a whole request head once it started; then 408.
    /// Default 10000 ms.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time to receive a whole body; then 408. Default 30000 ms.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Idle keep-alive connection lifetime. Default 60000 ms.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time for a backend to answer; then 504. Default 60000 ms.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// Open client connections; above it new ones get 503. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request body bytes held in memory at once, all connections together
    /// (bodies are read whole before forwarding, so that a failed attempt
    /// can be retried); a body that would pass it gets 503 and may be sent
    /// again later. Default 256 MiB.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// Idle keep-alive connections kept per backend and worker thread (as
    /// nginx's upstream `keepalive`); 0 opens a connection per request.
    /// Default 1024.
    #[serde(default = "default_upstream_idle_per_backend")]
    pub upstream_idle_per_backend: usize,
    /// How long an idle upstream connection is kept (as nginx's
    /// `keepalive_timeout` upstream). Default 30000 ms.
    #[serde(default = "default_upstream_idle_timeout_ms")]
    pub upstream_idle_timeout_ms: u64,
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_body_bytes() -> u64 {
    25 << 20
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_upstream_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_buffered_bytes() -> u64 {
    256 << 20
}
fn default_upstream_idle_per_backend() -> usize {
    1024
}
fn default_upstream_idle_timeout_ms() -> u64 {
    30_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            max_connections: default_max_connections(),
            max_buffered_bytes: default_max_buffered_bytes(),
            upstream_idle_per_backend: default_upstream_idle_per_backend(),
            upstream_idle_timeout_ms: default_upstream_idle_timeout_ms(),
        }
    }
}

impl LbConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        for b in &self.backends {
            if !(1..=1000).contains(&b.weight) {
                return Err(format!("backend {}: weight must be 1 to 1000", b.addr));
            }
        }
        if self.health.rise == 0 || self.health.fall == 0 {
            return Err("health.rise and health.fall must be at least 1".into());
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            return Err("health.interval_ms and health.timeout_ms must be positive".into());
        }
        if !self.health.path.starts_with('/') {
            return Err("health.path must start with /".into());
        }
        if self.limits.max_headers == 0 || self.limits.max_header_bytes < 256 {
            return Err("limits.max_headers must be positive and max_header_bytes at least 256".into());
        }
        if self.outlier.consecutive_failures == 0 {
            return Err("outlier.consecutive_failures must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys() {
        assert_eq!(HashKey::parse("client_ip").unwrap(), HashKey::ClientIp);
        assert_eq!(
            HashKey::parse("cookie:sid").unwrap(),
            HashKey::Cookie("sid".into())
        );
        assert!(matches!(
            HashKey::parse("header:x-user").unwrap(),
            HashKey::Header(_)
        ));
        assert!(HashKey::parse("cookie:").is_err());
        assert!(HashKey::parse("header:bad header").is_err());
        assert!(HashKey::parse("ip").is_err());
    }

    #[test]
    fn validation() {
        let mut c = LbConfig::default();
        assert!(c.validate().is_ok());
        c.backends.push(BackendSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 0,
        });
        assert!(c.validate().unwrap_err().contains("weight"));
    }
}
