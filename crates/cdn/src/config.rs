//! Configuration of one edge, as `up` writes it for each `cdn-N` child or
//! as `scalestack cdn --config` reads it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything an edge needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnConfig {
    /// Public address. Default 127.0.0.1:8081.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin API (purge, stats) and `/metrics`; keep it on loopback.
    /// Default 127.0.0.1:8092.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// The origin: the load balancer, or the web server in the
    /// single-server stage. Default 127.0.0.1:8080.
    #[serde(default = "default_origin")]
    pub origin: SocketAddr,
    /// The cache's name in `Cache-Status` (RFC 9211) and in logs.
    /// Default `scalestack-cdn`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Worker threads; 0 means one per core. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Log one line per request (with its `Cache-Status`). Default true.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Bytes of the memory tier (objects, heads, keys and a fixed
    /// per-object overhead all count). Default 256 MiB.
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    /// The largest object kept in memory; larger answers go to the disk
    /// tier if there is one, else stream through uncached. Default 16 MiB.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// The disk tier; none by default.
    #[serde(default)]
    pub disk: Option<DiskSection>,
    /// Seconds past freshness a stored answer may still be served when the
    /// origin fails (refused, timed out, 5xx), beyond `stale-if-error`.
    /// Default 10 (Varnish's `default_grace`).
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// How long an uncacheable answer is remembered, so later misses of
    /// its key go to the origin at once instead of waiting on one another
    /// (Varnish's hit-for-miss). Default 120 s.
    #[serde(default = "default_hit_for_miss_secs")]
    pub hit_for_miss_secs: u64,
    /// How long a request waits for another's fetch of the same key before
    /// it goes to the origin itself. Default 5000 ms.
    #[serde(default = "default_coalesce_wait_ms")]
    pub coalesce_wait_ms: u64,
    /// Query parameters that key an object: all (default), only these, or
    /// all but these (a name or a `prefix*`).
    #[serde(default)]
    pub query: QuerySection,
    /// Store answers carrying `Set-Cookie` (with the field removed)
    /// instead of passing them. Default false (as Varnish and nginx).
    #[serde(default)]
    pub store_set_cookie: bool,
    #[serde(default)]
    pub limits: CdnLimits,
}

/// The disk tier of an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// Its directory (created if missing; its index is rebuilt from the
    /// files at start).
    pub dir: PathBuf,
    /// Bytes of files it may hold. Default 1 GiB.
    #[serde(default = "default_disk_bytes")]
    pub capacity_bytes: u64,
    /// The largest object it keeps. Default 256 MiB.
    #[serde(default = "default_disk_max_object_bytes")]
    pub max_object_bytes: u64,
}

/// Which query parameters key an object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySection {
    /// Only these parameters key an object (the others are dropped before
    /// the request reaches the origin, so they cannot change what is
    /// stored). Exclusive with `ignore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
    /// These parameters never key an object (`utm_*`, `fbclid`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

/// Limits of the edge's client side and of its origin requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnLimits {
    /// Request line plus headers, bytes; above it 431. Default 16384.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Header count; above it 431. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request body bytes (requests with bodies are passed to the origin);
    /// above it 413. Default 25 MiB.
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
    /// Time to connect to the origin; then it counts as failed (stale
    /// content may answer). Default 2000 ms.
    #[serde(default = "default_origin_connect_timeout_ms")]
    pub origin_connect_timeout_ms: u64,
    /// Time for the origin to answer; then 504 (or stale content).
    /// Default 30000 ms.
    #[serde(default = "default_origin_timeout_ms")]
    pub origin_timeout_ms: u64,
    /// Open client connections; above it new ones get 503. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Idle keep-alive connections to the origin per worker thread.
    /// Default 1024.
    #[serde(default = "default_origin_idle")]
    pub origin_idle: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8092))
}
fn default_origin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_name() -> String {
    "scalestack-cdn".into()
}
fn yes() -> bool {
    true
}
fn default_memory_bytes() -> u64 {
    256 << 20
}
fn default_max_object_bytes() -> u64 {
    16 << 20
}
fn default_disk_bytes() -> u64 {
    1 << 30
}
fn default_disk_max_object_bytes() -> u64 {
    256 << 20
}
fn default_grace_secs() -> u64 {
    10
}
fn default_hit_for_miss_secs() -> u64 {
    120
}
fn default_coalesce_wait_ms() -> u64 {
    5_000
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
fn default_origin_connect_timeout_ms() -> u64 {
    2_000
}
fn default_origin_timeout_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_origin_idle() -> usize {
    1024
}

impl Default for CdnLimits {
    fn default() -> Self {
        CdnLimits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            origin_connect_timeout_ms: default_origin_connect_timeout_ms(),
            origin_timeout_ms: default_origin_timeout_ms(),
            max_connections: default_max_connections(),
            origin_idle: default_origin_idle(),
        }
    }
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            origin: default_origin(),
            name: default_name(),
            threads: 0,
            access_log: true,
            memory_bytes: default_memory_bytes(),
            max_object_bytes: default_max_object_bytes(),
            disk: None,
            grace_secs: default_grace_secs(),
            hit_for_miss_secs: default_hit_for_miss_secs(),
            coalesce_wait_ms: default_coalesce_wait_ms(),
            query: QuerySection::default(),
            store_set_cookie: false,
            limits: CdnLimits::default(),
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("[cdn] query: `keep` and `ignore` exclude each other")]
    QueryKeepAndIgnore,
    #[error("[cdn] memory_bytes must be at least 1 MiB (got {0})")]
    MemoryTooSmall(u64),
    #[error("[cdn] max_object_bytes ({0}) must be positive and at most memory_bytes")]
    MaxObject(u64),
    #[error("[cdn] name must be a token (letters, digits, `-`, `_`, `.`), got {0:?}")]
    Name(String),
    #[error("[cdn] listen and admin_listen are the same address {0}")]
    SameAddress(SocketAddr),
}

impl CdnConfig {
    /// Checks what serde cannot: nothing starts on a configuration that
    /// fails here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.query.keep.is_some() && !self.query.ignore.is_empty() {
            return Err(ConfigError::QueryKeepAndIgnore);
        }
        if self.memory_bytes < 1 << 20 {
            return Err(ConfigError::MemoryTooSmall(self.memory_bytes));
        }
        if self.max_object_bytes == 0 || self.max_object_bytes > self.memory_bytes {
            return Err(ConfigError::MaxObject(self.max_object_bytes));
        }
        let token = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if self.name.is_empty() || !self.name.chars().all(token) {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError::SameAddress(self.listen));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c: CdnConfig = toml::from_str("").unwrap();
        assert_eq!(c, CdnConfig::default());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.listen.port(), 8081);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<CdnConfig>("memory = 5").is_err());
        let c: CdnConfig = toml::from_str("query = { keep = [\"v\"], ignore = [\"utm_*\"] }").unwrap();
        assert_eq!(c.validate(), Err(ConfigError::QueryKeepAndIgnore));
        let c: CdnConfig = toml::from_str("memory_bytes = 1000").unwrap();
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(1000)));
        let c: CdnConfig = toml::from_str("name = \"a b\"").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Name(_))));
    }

    #[test]
    fn a_round_trip_keeps_everything() {
        let mut c = CdnConfig {
            disk: Some(DiskSection {
                dir: "/tmp/x".into(),
                capacity_bytes: 5 << 20,
                max_object_bytes: 1 << 20,
            }),
            ..CdnConfig::default()
        };
        c.query.ignore = vec!["utm_*".into()];
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<CdnConfig>(&text).unwrap(), c);
    }
}
