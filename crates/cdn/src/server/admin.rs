//! The admin API, on its own port (loopback by default):
//!
//! | request | effect |
//! |---|---|
//! | `POST /purge?url=http://host/path` | every variant stored for that URL |
//! | `POST /purge?tag=photo-42` | every object the origin tagged so (`Surrogate-Key`, `Cache-Tag`) |
//! | `POST /purge?prefix=http://host/media/` | every object whose URL starts so |
//! | `…&mode=soft` | stale instead of gone: revalidated before reuse, still served when the origin fails |
//! | `GET /stats` | the store's tiers and the request counters, JSON |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz`, `GET /readyz` | alive |
//!
//! A purge answers `{"purged": N}` (objects matched in every tier); bad
//! input is a 400 `{"error": …}` and purges nothing.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use tokio::net::TcpListener;

use super::metrics::Outcome;
use super::origin::object_url;
use super::Shared;
use crate::policy::primary_key;
use crate::store::{CacheKey, Purge, PurgeMode};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = Router::new()
        .route("/purge", post(purge))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

fn error(message: impl std::fmt::Display) -> Response {
    let body = Json(serde_json::json!({ "error": message.to_string() }));
    (StatusCode::BAD_REQUEST, body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    url: Option<String>,
    tag: Option<String>,
    prefix: Option<String>,
    mode: Option<String>,
}

/// `http://host/path?q` (or `https://`) split into host and origin-form
/// target; `None` for anything else.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    let valid_target = target.bytes().all(|b| b.is_ascii_graphic());
    (valid_host && valid_target).then_some((host, target))
}

async fn purge(
    State(sh): State<Arc<Shared>>,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error("purge takes exactly one of url, tag or prefix, and mode=hard|soft");
    };
    let mode = match q.mode.as_deref() {
        None | Some("hard") => PurgeMode::Hard,
        Some("soft") => PurgeMode::Soft,
        Some(other) => return error(format!("mode must be hard or soft, not {other:?}")),
    };
    let (kind, target) = match (q.url, q.tag, q.prefix) {
        (Some(url), None, None) => {
            let Some((host, target)) = split_url(&url) else {
                return error(format!("{url:?} is not an absolute http URL"));
            };
            let Some(key) = primary_key(&sh.policy, b"GET", host.as_bytes(), target.as_bytes()) else {
                return error(format!("{url:?} is not an absolute http URL"));
            };
            ("url", Purge::Key(CacheKey::from(key)))
        }
        (None, Some(tag), None) => {
            let tag = tag.trim();
            if tag.is_empty() || tag.len() > 1024 || tag.bytes().any(|b| b.is_ascii_whitespace() || b == b',')
            {
                return error("a tag is one non-empty token without spaces or commas");
            }
            ("tag", Purge::Tag(Bytes::copy_from_slice(tag.as_bytes())))
        }
        (None, None, Some(prefix)) => {
            let Some((host, target)) = split_url(&prefix) else {
                return error(format!("{prefix:?} is not an absolute http URL prefix"));
            };
            // The prefix is matched against stored URLs as they are keyed;
            // a query in a prefix is normalised like one in a URL.
            let url = if target.contains('?') {
                object_url(&sh.policy, host.as_bytes(), target.as_bytes())
            } else {
                let mut u = crate::policy::normalise_host(host.as_bytes());
                u.extend_from_slice(target.as_bytes());
                u
            };
            ("prefix", Purge::Prefix(Bytes::from(url)))
        }
        _ => return error("purge takes exactly one of url, tag or prefix"),
    };
    let mode_label = match mode {
        PurgeMode::Hard => "hard",
        PurgeMode::Soft => "soft",
    };
    let purged = sh.purge(target, mode).await;
    sh.metrics.purge(kind, mode_label, purged as u64);
    tracing::info!(kind, mode = mode_label, purged, "purge");
    Json(serde_json::json!({ "purged": purged })).into_response()
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    let s = sh.store.stats();
    let tier = |t: crate::store::TierStats| {
        serde_json::json!({
            "objects": t.objects, "bytes": t.bytes, "capacity_bytes": t.capacity_bytes,
            "inserts": t.inserts, "evictions": t.evictions, "hits": t.hits, "misses": t.misses,
            "refused": t.refused, "purged_hard": t.purged_hard, "purged_soft": t.purged_soft,
            "corrupt": t.corrupt, "write_errors": t.write_errors,
        })
    };
    let m = &sh.metrics;
    Json(serde_json::json!({
        "name": sh.config.name,
        "memory": tier(s.memory),
        "disk": s.disk.map(tier),
        "requests": {
            "hit": m.requests(Outcome::Hit),
            "stale": m.requests(Outcome::Stale),
            "collapsed": m.requests(Outcome::Collapsed),
            "miss": m.requests(Outcome::Miss),
            "revalidated": m.requests(Outcome::Revalidated),
            "pass": m.requests(Outcome::Pass),
            "error": m.requests(Outcome::Error),
        },
        "flights": sh.flights.held(),
    }))
    .into_response()
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        sh.registry.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_host_and_target() {
        assert_eq!(split_url("http://a.test/x?y=1"), Some(("a.test", "/x?y=1")));
        assert_eq!(split_url("https://127.0.0.1:8081"), Some(("127.0.0.1:8081", "/")));
        assert_eq!(split_url("ftp://a/x"), None);
        assert_eq!(split_url("http:///x"), None);
        assert_eq!(split_url("http://a b/x"), None);
        assert_eq!(split_url("http://a/x y"), None);
    }
}
