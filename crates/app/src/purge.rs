//! Purging a deleted photo from every CDN edge. Every `/media/…` answer
//! carries its photo's tag ([`photo_tag`]: `photo-<id>`) in
//! `Surrogate-Key` and `Cache-Tag`, so an edge files each original and
//! variant under it; a delete then asks every edge in
//! `WebSettings::cdn_purge_urls` to drop them all at once:
//! `POST {edge}/purge?tag=photo-<id>`.
//!
//! Purges run in the background: an edge that is down must not make a
//! delete fail or hang. Each edge is retried on its own [`RetrySchedule`]
//! (a doubling pause, given up after `cdn_purge_retry_secs`, 30 s by
//! default); every attempt's outcome is counted in
//! `scalestack_cdn_purges_total{outcome}` (`ok`, `retry`, `gave_up`,
//! `rejected`) and logged. The delete handler waits for the confirmations
//! only up to a short bound.

use crate::metrics::Metrics;
use domain::PhotoId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The purge tag of a photo: every `/media/` answer of its original and
/// variants carries it (`Surrogate-Key`, `Cache-Tag`); purging it on an
/// edge drops them all.
pub fn photo_tag(id: PhotoId) -> String {
    format!("photo-{}", id.0)
}

/// Longest wait for one purge request's answer (connect included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// When a purge that failed is tried again: after [`RetrySchedule::first`],
/// doubling up to [`RetrySchedule::max`], until [`RetrySchedule::give_up`]
/// has passed since the first attempt (one last attempt is made at that
/// point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Pause after the first failure. Default 100 ms.
    pub first: Duration,
    /// Longest pause. Default 2 s.
    pub max: Duration,
    /// How long after the first attempt the purge is given up. Default 30 s.
    pub give_up: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
            give_up: Duration::from_secs(30),
        }
    }
}

impl RetrySchedule {
    /// [`RetrySchedule::default`] giving up after `secs` seconds.
    pub fn giving_up_after(secs: u64) -> Self {
        RetrySchedule {
            give_up: Duration::from_secs(secs),
            ..RetrySchedule::default()
        }
    }

    /// The pause before the next attempt, after `failed` failed attempts
    /// (1 or more), the first made `elapsed` ago; `None`: give up. The
    /// last pause is cut short so the last attempt falls at
    /// [`RetrySchedule::give_up`].
    pub fn next_pause(&self, failed: u32, elapsed: Duration) -> Option<Duration> {
        if elapsed >= self.give_up {
            return None;
        }
        let doubled = self
            .first
            .checked_mul(1u32.checked_shl(failed.saturating_sub(1)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        Some(doubled.min(self.max).min(self.give_up - elapsed))
    }
}

/// What one purge request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The edge took it (2xx).
    Ok,
    /// The edge refused it for good (a 4xx other than 408 and 429: a wrong
    /// URL or a tag it does not accept); retrying cannot help.
    Rejected,
    /// The edge could not be reached, timed out, or answered 5xx, 408 or
    /// 429: try again.
    Failed,
}

impl Attempt {
    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Attempt::Ok,
            408 | 429 | 500..=599 => Attempt::Failed,
            _ => Attempt::Rejected,
        }
    }
}

/// Sends purges to the edges. Cheap to clone.
#[derive(Clone)]
pub struct Purger {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// Admin base URLs, without a trailing `/`.
    edges: Vec<String>,
    schedule: RetrySchedule,
    metrics: Arc<Metrics>,
}

impl Purger {
    /// A purger for the edges whose admin base URLs are `edges` (none: it
    /// does nothing), retrying on `schedule`, counting in `metrics`.
    pub fn new(edges: &[String], schedule: RetrySchedule, metrics: Arc<Metrics>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // The edges' admin ports are on the local network: never
            // through a proxy from the environment.
            .no_proxy()
            .build()
            .expect("a client without TLS or proxy always builds");
        Purger {
            inner: Arc::new(Inner {
                client,
                edges: edges.iter().map(|e| e.trim_end_matches('/').to_owned()).collect(),
                schedule,
                metrics,
            }),
        }
    }

    /// Purges `tag` from every edge, each retried on the schedule; resolves
    /// once every edge has taken it, refused it or been given up. Run it in
    /// a task of its own: it may take the whole schedule.
    pub async fn purge(&self, tag: &str) {
        let mut edges = JoinSet::new();
        for edge in &self.inner.edges {
            let (inner, edge, tag) = (self.inner.clone(), edge.clone(), tag.to_owned());
            edges.spawn(async move { inner.purge_edge(&edge, &tag).await });
        }
        while edges.join_next().await.is_some() {}
    }
}

impl Inner {
    async fn purge_edge(&self, edge: &str, tag: &str) {
        let url = format!("{edge}/purge");
        let started = Instant::now();
        let mut failed = 0u32;
        loop {
            let (attempt, detail) = match self.client.post(&url).query(&[("tag", tag)]).send().await {
                Ok(res) => (
                    Attempt::of_status(res.status().as_u16()),
                    format!("HTTP {}", res.status().as_u16()),
                ),
                Err(e) => (Attempt::Failed, e.to_string()),
            };
            match attempt {
                Attempt::Ok => {
                    self.metrics.cdn_purge("ok");
                    if failed > 0 {
                        tracing::info!(edge, tag, failed, "CDN purge taken after retries");
                    } else {
                        tracing::debug!(edge, tag, "CDN purge taken");
                    }
                    return;
                }
                Attempt::Rejected => {
                    self.metrics.cdn_purge("rejected");
                    tracing::error!(edge, tag, answer = %detail, "CDN edge refused the purge; not retried");
                    return;
                }
                Attempt::Failed => {
                    failed += 1;
                    match self.schedule.next_pause(failed, started.elapsed()) {
                        Some(pause) => {
                            self.metrics.cdn_purge("retry");
                            if failed == 1 {
                                tracing::warn!(edge, tag, error = %detail, "CDN purge failed; retrying");
                            }
                            tokio::time::sleep(pause).await;
                        }
                        None => {
                            self.metrics.cdn_purge("gave_up");
                            tracing::error!(
                                edge,
                                tag,
                                attempts = failed,
                                error = %detail,
                                "CDN purge given up: the edge may serve the deleted photo until it expires"
                            );
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_the_photo() {
        assert_eq!(photo_tag(PhotoId(42)), "photo-42");
    }

    #[test]
    fn retries_double_up_to_the_ceiling_then_give_up() {
        let s = RetrySchedule::default();
        let ms = Duration::from_millis;
        let at = |failed, elapsed_ms| s.next_pause(failed, ms(elapsed_ms));
        assert_eq!(at(1, 0), Some(ms(100)));
        assert_eq!(at(2, 100), Some(ms(200)));
        assert_eq!(at(3, 300), Some(ms(400)));
        assert_eq!(at(5, 1500), Some(ms(1600)));
        assert_eq!(at(6, 3100), Some(ms(2000)), "capped");
        assert_eq!(at(40, 20_000), Some(ms(2000)), "no overflow");
        assert_eq!(at(u32::MAX, 20_000), Some(ms(2000)));
        assert_eq!(at(20, 29_500), Some(ms(500)), "the last attempt at 30 s");
        assert_eq!(at(21, 30_000), None);
        assert_eq!(at(1, 31_000), None);
        // Every pause is positive until it gives up: no busy loop.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while let Some(p) = s.next_pause(attempts, elapsed) {
            assert!(p > Duration::ZERO);
            elapsed += p;
            attempts += 1;
        }
        assert_eq!(elapsed, s.give_up);
        assert!((15..=25).contains(&attempts), "{attempts} attempts in 30 s");
        assert_eq!(
            RetrySchedule::giving_up_after(0).next_pause(1, Duration::ZERO),
            None
        );
    }

    #[test]
    fn statuses_decide_whether_to_retry() {
        for s in [200, 202, 204] {
            assert_eq!(Attempt::of_status(s), Attempt::Ok, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(Attempt::of_status(s), Attempt::Failed, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 405] {
            assert_eq!(Attempt::of_status(s), Attempt::Rejected, "{s}");
        }
    }
}
