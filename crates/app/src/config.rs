//! Configuration of one web server, as `up` writes it for each child or as
//! `scalestack web` builds it from its flags.

use backends::BackendsConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Everything a web server needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address to listen on; port 0 picks a free one. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    #[serde(default)]
    pub settings: WebSettings,
    #[serde(default)]
    pub backends: BackendsConfig,
}

/// Limits and behaviour of the web tier, shared by every copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Largest upload body in bytes. Default 20 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest JSON request body in bytes. Default 64 KiB.
    #[serde(default = "default_max_json_bytes")]
    pub max_json_bytes: usize,
    /// Largest image in pixels, read from the header. Default 40 megapixels.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Server-side session lifetime in seconds. Default 14 days.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Add `Secure` to the session cookie (set it behind HTTPS). Default false.
    #[serde(default)]
    pub cookie_secure: bool,
    /// Prefix of media URLs in API answers and of the page's script and
    /// style: the CDN edge's public URL once there is one (`up` sets it to
    /// the first edge of the site); empty means relative URLs served by the
    /// web tier. Default "".
    #[serde(default)]
    pub media_base_url: String,
    /// Admin base URLs of every CDN edge (`http://127.0.0.1:8092`); a
    /// deleted photo is purged by its tag on each (`POST /purge?tag=…`).
    /// Default none.
    #[serde(default)]
    pub cdn_purge_urls: Vec<String>,
    /// Lifetime of cached photo metadata and lists in seconds. Default 60.
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Lifetime of cached photo lists in seconds; 0 turns list caching off.
    /// Turn it off when several web servers share an embedded (per-process)
    /// cache: a list cached by one would not see an upload made through
    /// another until it expires. Default 60.
    #[serde(default = "default_cache_ttl_secs")]
    pub list_cache_ttl_secs: u64,
    /// Argon2 memory cost in KiB. Default 19456 (OWASP's minimum for argon2id).
    #[serde(default = "default_argon2_memory_kib")]
    pub argon2_memory_kib: u32,
}

fn default_max_body_bytes() -> usize {
    20 << 20
}
fn default_max_json_bytes() -> usize {
    64 << 10
}
fn default_max_pixels() -> u64 {
    40_000_000
}
fn default_session_ttl_secs() -> u64 {
    14 * 24 * 3600
}
fn default_cache_ttl_secs() -> u64 {
    60
}
fn default_argon2_memory_kib() -> u32 {
    19 * 1024
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            max_body_bytes: default_max_body_bytes(),
            max_json_bytes: default_max_json_bytes(),
            max_pixels: default_max_pixels(),
            session_ttl_secs: default_session_ttl_secs(),
            cookie_secure: false,
            media_base_url: String::new(),
            cdn_purge_urls: Vec::new(),
            cache_ttl_secs: default_cache_ttl_secs(),
            list_cache_ttl_secs: default_cache_ttl_secs(),
            argon2_memory_kib: default_argon2_memory_kib(),
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            settings: WebSettings::default(),
            backends: BackendsConfig::default(),
        }
    }
}
