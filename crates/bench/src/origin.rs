//! The origin of the CDN benchmark (`bench origin`): the one server every
//! cache under test sits in front of. It serves
//!
//! - `/small` and `/large` (2 KiB and 100 KiB by default) and `/zipf/<n>`
//!   (any number `n`, 100 KiB by default), all with
//!   `Cache-Control: public, max-age=3600`: the objects of the hit and
//!   hit-ratio runs;
//! - `/slow/<name>`: the same small body after a delay (200 ms by
//!   default), cacheable too: the key of the stampede;
//! - `/`: a small `no-store` answer (for readiness probes through a cache);
//!   anything else is a `no-store` 404;
//!
//! and counts the requests it receives per path (the query aside), which
//! `GET /__origin/count` reports as a bare number: all of them, those whose
//! path starts with `?prefix=P`, or those of exactly `?path=P`. The count
//! requests themselves are not counted. The counts are how the benchmark
//! tells how many requests each cache let through.

use crate::serve::serve;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Path of the request counts; never counted, never cacheable.
pub const COUNT_PATH: &str = "/__origin/count";

/// What the origin serves and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Body size of `/small` (2048 on the command line).
    pub small_bytes: usize,
    /// Body size of `/large` (102400 on the command line).
    pub large_bytes: usize,
    /// Body size of each `/zipf/<n>` (102400 on the command line).
    pub zipf_bytes: usize,
    /// How long `/slow/<name>` takes (200 ms on the command line).
    pub slow: Duration,
    /// `max-age` of the cacheable answers, seconds (3600 on the command line).
    pub max_age: u64,
}

/// A bound origin, ready to serve.
#[derive(Debug)]
pub struct Origin {
    listener: TcpListener,
    state: Arc<State>,
}

/// What every connection shares.
#[derive(Debug)]
struct State {
    small: Bytes,
    large: Bytes,
    zipf: Bytes,
    slow: Duration,
    cacheable: HeaderValue,
    counts: Mutex<HashMap<String, u64>>,
}

impl Origin {
    /// Binds the listener; call from inside a tokio runtime.
    pub async fn build(config: &OriginConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let cacheable = HeaderValue::from_str(&format!("public, max-age={}", config.max_age))
            .context("a max-age is always a valid header value")?;
        Ok(Self {
            listener,
            state: Arc::new(State {
                small: body_of(config.small_bytes),
                large: body_of(config.large_bytes),
                zipf: body_of(config.zipf_bytes),
                slow: config.slow,
                cacheable,
                counts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open
    /// connections finish their current request (for up to 5 s) and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let state = self.state;
        serve(self.listener, shutdown, move |request| {
            let state = Arc::clone(&state);
            async move { state.answer(&request).await }
        })
        .await
    }
}

impl State {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == COUNT_PATH {
            return self.count_answer(request.uri().query().unwrap_or(""));
        }
        self.count(path);
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        let body = match path {
            "/" => return plain(StatusCode::OK, "bench origin\n"),
            "/small" => &self.small,
            "/large" => &self.large,
            _ => match path.split_once('/').map(|(_, rest)| rest.split_once('/')) {
                Some(Some(("zipf", n))) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    &self.zipf
                }
                Some(Some(("slow", name))) if !name.is_empty() => {
                    tokio::time::sleep(self.slow).await;
                    &self.small
                }
                _ => return plain(StatusCode::NOT_FOUND, "no such object\n"),
            },
        };
        let mut response = Response::new(Full::new(body.clone()));
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, self.cacheable.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        response
    }

    fn count(&self, path: &str) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match counts.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                counts.insert(path.to_owned(), 1);
            }
        }
    }

    /// `GET /__origin/count[?prefix=P|?path=P]`.
    fn count_answer(&self, query: &str) -> Response<Full<Bytes>> {
        let filter = match parse_count_query(query) {
            Ok(filter) => filter,
            Err(message) => return plain(StatusCode::BAD_REQUEST, &format!("{message}\n")),
        };
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: u64 = counts
            .iter()
            .filter(|(path, _)| filter.matches(path))
            .map(|(_, n)| n)
            .sum();
        plain(StatusCode::OK, &format!("{total}\n"))
    }
}

/// Which paths a count covers.
#[derive(Debug, PartialEq, Eq)]
enum CountFilter {
    All,
    Prefix(String),
    Path(String),
}

impl CountFilter {
    fn matches(&self, path: &str) -> bool {
        match self {
            CountFilter::All => true,
            CountFilter::Prefix(prefix) => path.starts_with(prefix.as_str()),
            CountFilter::Path(exact) => path == exact,
        }
    }
}

/// Reads the query of a count request: nothing, `prefix=P` or `path=P`.
fn parse_count_query(query: &str) -> Result<CountFilter, String> {
    if query.is_empty() {
        return Ok(CountFilter::All);
    }
    let (name, value) = query
        .split_once('=')
        .ok_or_else(|| format!("expected prefix=P or path=P, not {query:?}"))?;
    let value = percent_decode(value).ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
    match name {
        "prefix" => Ok(CountFilter::Prefix(value)),
        "path" => Ok(CountFilter::Path(value)),
        _ => Err(format!(
            "unknown parameter {name:?}: expected prefix=P or path=P (one of them)"
        )),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A `no-store` plain-text answer.
fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `n` bytes of a repeated line, so a body is recognisable in a dump.
fn body_of(n: usize) -> Bytes {
    Bytes::from(
        b"scalestack bench origin object\n"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect::<Vec<u8>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_queries_parse_or_are_refused() {
        assert_eq!(parse_count_query(""), Ok(CountFilter::All));
        assert_eq!(
            parse_count_query("prefix=/zipf/"),
            Ok(CountFilter::Prefix("/zipf/".into()))
        );
        assert_eq!(
            parse_count_query("path=%2Fslow%2Fa%20b"),
            Ok(CountFilter::Path("/slow/a b".into()))
        );
        assert!(parse_count_query("prefix").is_err());
        assert!(parse_count_query("glob=/x")
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(parse_count_query("path=%2").is_err());
        assert!(parse_count_query("path=%zz").is_err());
    }

    #[test]
    fn filters_match_prefixes_and_exact_paths() {
        assert!(CountFilter::Prefix("/slow/".into()).matches("/slow/nginx"));
        assert!(!CountFilter::Prefix("/slow/".into()).matches("/small"));
        assert!(CountFilter::Path("/small".into()).matches("/small"));
        assert!(!CountFilter::Path("/small".into()).matches("/small/"));
        assert!(CountFilter::All.matches("/anything"));
    }

    #[test]
    fn bodies_have_the_requested_size() {
        assert_eq!(body_of(0).len(), 0);
        assert_eq!(body_of(2048).len(), 2048);
        assert!(body_of(64).starts_with(b"scalestack bench origin object\nscalestack"));
    }
}
