//! The URL under load: where to connect and the request bytes to send.

use bytes::Bytes;
use std::net::{SocketAddr, ToSocketAddrs};

/// Why a `--url` was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The text is not a URL.
    #[error("invalid url {url:?}: {source}")]
    Invalid {
        /// The rejected URL.
        url: String,
        /// What the URL parser said.
        source: http::uri::InvalidUri,
    },
    /// The scheme is missing or not `http` (TLS is not supported).
    #[error("unsupported url {0:?}: it must start with http:// (https is not supported)")]
    Scheme(String),
    /// The URL has no host.
    #[error("url {0:?} has no host")]
    NoHost(String),
    /// The host did not resolve to any address.
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        /// The `host:port` looked up.
        authority: String,
        /// What the resolver said.
        source: std::io::Error,
    },
}

/// A parsed `http://` URL, resolved once before the run.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address every connection dials (the first one the host resolves to).
    pub addr: SocketAddr,
    /// The URL as given, for reports.
    pub url: String,
    /// The complete `GET` request sent on every exchange (to the URL as
    /// given; see [`Target::keyed_request`] for `--keys`).
    pub request: Bytes,
    /// The path and query, `/` when the URL has none.
    path_and_query: String,
    /// The `Host` field's value.
    host_header: String,
}

impl Target {
    /// Parses and resolves `url`; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        // Checked on the text first so that `host:port/path` gets this message too.
        if !url
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
        {
            return Err(TargetError::Scheme(url.to_owned()));
        }
        let uri: http::Uri = url.parse().map_err(|source| TargetError::Invalid {
            url: url.to_owned(),
            source,
        })?;
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::NoHost(url.to_owned()))?;
        if authority.host().is_empty() {
            return Err(TargetError::NoHost(url.to_owned()));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address found"))
            })
            .map_err(|source| TargetError::Resolve {
                authority: authority.to_string(),
                source,
            })?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        // The Host header carries the authority as written, minus any userinfo.
        let host_header = authority
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or(authority.as_str());
        Ok(Self {
            addr,
            url: url.to_owned(),
            request: get_request(path, host_header),
            path_and_query: path.to_owned(),
            host_header: host_header.to_owned(),
        })
    }

    /// The request for key `key` of a `--keys` run: the key's number
    /// appended to the path, before any query (`/zipf/?v=1` and key 17 give
    /// `/zipf/17?v=1`).
    pub fn keyed_request(&self, key: usize) -> Bytes {
        let (path, query) = match self.path_and_query.split_once('?') {
            Some((path, query)) => (path, format!("?{query}")),
            None => (self.path_and_query.as_str(), String::new()),
        };
        get_request(&format!("{path}{key}{query}"), &self.host_header)
    }
}

/// The bytes of `GET path` to `host`.
fn get_request(path: &str, host: &str) -> Bytes {
    Bytes::from(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scalestack-bench\r\nAccept: */*\r\n\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?c=d").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            t.request,
            "GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: scalestack-bench\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn keyed_requests_append_the_key_to_the_path() {
        let t = Target::parse("http://127.0.0.1:8080/zipf/").expect("valid");
        assert!(t
            .keyed_request(17)
            .starts_with(b"GET /zipf/17 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        let t = Target::parse("http://127.0.0.1:8080/o-?v=1").expect("valid");
        assert!(t.keyed_request(0).starts_with(b"GET /o-0?v=1 HTTP/1.1\r\n"));
        let t = Target::parse("http://127.0.0.1:8080").expect("valid");
        assert!(t.keyed_request(5).starts_with(b"GET /5 HTTP/1.1\r\n"));
    }

    #[test]
    fn defaults_port_80_and_root_path() {
        let t = Target::parse("http://[::1]").expect("valid");
        assert_eq!(t.addr, "[::1]:80".parse().expect("addr"));
        assert!(t.request.starts_with(b"GET / HTTP/1.1\r\nHost: [::1]\r\n"));
    }

    #[test]
    fn rejects_other_schemes_and_garbage() {
        assert!(matches!(
            Target::parse("https://127.0.0.1/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("127.0.0.1:8080/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("/just/a/path"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("http://exa mple/"),
            Err(TargetError::Invalid { .. })
        ));
    }
}
