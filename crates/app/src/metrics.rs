//! Prometheus metrics of a web server: requests by route and status with a
//! latency histogram, cache hits and misses, queue depth, CDN purges.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use domain::QueueDepth;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use std::sync::Arc;
use std::time::Instant;

/// The web tier's metrics (component `scalestack` of the process's
/// registry, which also holds what the adapters count).
pub struct Metrics {
    registry: telemetry::Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    cache: IntCounterVec,
    queue_depth: IntGaugeVec,
    cdn_purges: IntCounterVec,
}

/// The outcomes of `cdn_purges_total`, all exported from the start.
const PURGE_OUTCOMES: [&str; 4] = ["ok", "retry", "gave_up", "rejected"];

impl Metrics {
    /// Registers every metric in a registry of its own.
    pub fn new() -> Self {
        Self::in_registry(&telemetry::Registry::new())
    }

    /// Registers every metric as the `scalestack` component of `process`;
    /// [`Metrics::render`] renders all of `process`.
    pub fn in_registry(process: &telemetry::Registry) -> Self {
        let registry = process.component("scalestack");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["route", "method"],
        )
        .expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new(
                "cache_requests_total",
                "Cache lookups by cache and result (hit, miss, error)",
            ),
            &["cache", "result"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "queue_depth",
                "Jobs in the queue by state (ready, in_flight, dead)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let cdn_purges = IntCounterVec::new(
            Opts::new(
                "cdn_purges_total",
                "Purge requests to CDN edges by outcome (ok; retry: failed, tried again; \
                 gave_up: failed for the whole retry schedule; rejected: refused by the edge)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in PURGE_OUTCOMES {
            cdn_purges.with_label_values(&[outcome]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(cache.clone()),
            Box::new(queue_depth.clone()),
            Box::new(cdn_purges.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry: process.clone(),
            requests,
            latency,
            cache,
            queue_depth,
            cdn_purges,
        }
    }

    /// Counts one purge request to a CDN edge by its outcome (`ok`,
    /// `retry`, `gave_up`, `rejected`).
    pub fn cdn_purge(&self, outcome: &str) {
        self.cdn_purges.with_label_values(&[outcome]).inc();
    }

    /// Purge requests counted with `outcome` so far.
    pub fn cdn_purges(&self, outcome: &str) -> u64 {
        self.cdn_purges.with_label_values(&[outcome]).get()
    }

    /// Counts one cache lookup.
    pub fn cache_lookup(&self, cache: &str, result: &str) {
        self.cache.with_label_values(&[cache, result]).inc();
    }

    /// Renders the text exposition, with the queue depth as of now.
    pub fn render(&self, depth: Option<QueueDepth>) -> String {
        if let Some(d) = depth {
            self.queue_depth.with_label_values(&["ready"]).set(d.ready);
            self.queue_depth
                .with_label_values(&["in_flight"])
                .set(d.in_flight);
            self.queue_depth.with_label_values(&["dead"]).set(d.dead);
        }
        // With what the adapters count (the DB router, the Redis breaker,
        // session reads that fell back from Redis to SQL).
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware recording every request under its route template (never the
/// raw path, which would make one series per photo).
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    metrics
        .latency
        .with_label_values(&[&route, &method])
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&route, &method, res.status().as_str()])
        .inc();
    res
}
