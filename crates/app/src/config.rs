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
    /// How long, in seconds, a purge that an edge did not take (down,
    /// timing out, 5xx) is retried before it is given up (counted as
    /// `gave_up`); the pauses double from 100 ms to 2 s. Default 30.
    #[serde(default = "default_cdn_purge_retry_secs")]
    pub cdn_purge_retry_secs: u64,
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
fn default_cdn_purge_retry_secs() -> u64 {
    30
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
            cdn_purge_retry_secs: default_cdn_purge_retry_secs(),
            cache_ttl_secs: default_cache_ttl_secs(),
            list_cache_ttl_secs: default_cache_ttl_secs(),
            argon2_memory_kib: default_argon2_memory_kib(),
        }
    }
}

impl WebSettings {
    /// Checks what a typo would turn into broken pages or silent purges:
    /// `media_base_url` is empty or an absolute `http(s)` URL without query
    /// or fragment (it is written into the page and into API answers), and
    /// every `cdn_purge_urls` entry is an absolute `http(s)` URL.
    pub fn validate(&self) -> Result<(), String> {
        let base = &self.media_base_url;
        if !base.is_empty() {
            let url = http_url(base).map_err(|e| format!("media_base_url {base:?}: {e}"))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!(
                    "media_base_url {base:?}: a prefix of URLs has no query or fragment"
                ));
            }
            // Written into an HTML attribute and a script as is.
            if base.contains(['"', '\'', '<', '>', '\\', '`', '{', '}']) || base.contains(char::is_whitespace)
            {
                return Err(format!("media_base_url {base:?}: characters URLs escape"));
            }
        }
        for edge in &self.cdn_purge_urls {
            http_url(edge).map_err(|e| format!("cdn_purge_urls entry {edge:?}: {e}"))?;
        }
        Ok(())
    }

    /// `media_base_url` without a trailing `/`: the prefix of `/media/…`
    /// and `/static/…` URLs ("" for the page's own origin).
    pub fn media_base(&self) -> &str {
        self.media_base_url.trim_end_matches('/')
    }
}

/// Parses an absolute `http` or `https` URL with a host.
fn http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("not an http:// or https:// URL with a host".into());
    }
    Ok(url)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(base: &str, edges: &[&str]) -> WebSettings {
        WebSettings {
            media_base_url: base.into(),
            cdn_purge_urls: edges.iter().map(|e| e.to_string()).collect(),
            ..WebSettings::default()
        }
    }

    #[test]
    fn cdn_urls_are_checked() {
        for (base, edges) in [
            ("", &[][..]),
            ("http://127.0.0.1:8081", &["http://127.0.0.1:8092"][..]),
            (
                "https://cdn.example.com/app/",
                &["http://[::1]:8092/", "https://edge.example"][..],
            ),
        ] {
            assert_eq!(with(base, edges).validate(), Ok(()), "{base} {edges:?}");
        }
        for (base, edges) in [
            ("127.0.0.1:8081", &[][..]),
            ("/cdn", &[][..]),
            ("ftp://cdn.example", &[][..]),
            ("http://cdn.example/?v=1", &[][..]),
            ("http://cdn.example/#x", &[][..]),
            ("http://cdn.example/a\"b", &[][..]),
            ("http://cdn.example/a b", &[][..]),
            ("", &["127.0.0.1:8092"][..]),
            ("", &["http://127.0.0.1:8092", "file:///etc/passwd"][..]),
            ("", &[""][..]),
        ] {
            let e = with(base, edges).validate().unwrap_err();
            assert!(
                e.contains("media_base_url") || e.contains("cdn_purge_urls"),
                "{e}"
            );
        }
        assert_eq!(
            with("http://cdn.example/", &[]).media_base(),
            "http://cdn.example"
        );
        assert_eq!(with("", &[]).media_base(), "");
    }

    #[test]
    fn the_purge_schedule_defaults_to_thirty_seconds() {
        let s: WebSettings = serde_json::from_str(r#"{"cdn_purge_urls": ["http://127.0.0.1:1"]}"#).unwrap();
        assert_eq!(s.cdn_purge_retry_secs, 30);
        assert_eq!(
            s,
            WebSettings {
                cdn_purge_urls: vec!["http://127.0.0.1:1".into()],
                ..WebSettings::default()
            }
        );
    }
}
