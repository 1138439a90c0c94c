//! The edge's metrics (`scalestack_cdn_*` on the admin port's `/metrics`):
//! requests by cache outcome, the hit ratio, bytes to clients and from the
//! origin, origin requests by kind, coalesced waits, stale answers by
//! reason, purges, and the store's objects, bytes and evictions per tier
//! (read from the store at scrape time). Handles are resolved once, so the
//! data path never looks a label up.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::store::Store;

/// How a request was answered, for `requests_total{outcome}` and the hit
/// ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh from storage.
    Hit,
    /// Stale from storage (while revalidating, accepted by the client, or
    /// because the origin failed).
    Stale,
    /// Answered from another request's fetch (coalesced).
    Collapsed,
    /// Fetched from the origin (stored or not).
    Miss,
    /// Validated with the origin (`304`), then answered from storage.
    Revalidated,
    /// Forwarded without looking up (unsafe method, hit-for-miss, a request
    /// that bypasses storage).
    Pass,
    /// Answered by the edge itself with an error (origin down, bad request).
    Error,
}

const OUTCOMES: [(Outcome, &str); 7] = [
    (Outcome::Hit, "hit"),
    (Outcome::Stale, "stale"),
    (Outcome::Collapsed, "collapsed"),
    (Outcome::Miss, "miss"),
    (Outcome::Revalidated, "revalidated"),
    (Outcome::Pass, "pass"),
    (Outcome::Error, "error"),
];

/// Why stale content was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// `stale-while-revalidate` (a refresh runs in the background).
    WhileRevalidate,
    /// The origin failed (`stale-if-error` or grace).
    Error,
    /// The client's `max-stale`.
    Accepted,
}

/// Why the edge asked the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginKind {
    /// A miss.
    Fetch,
    /// A conditional request for a stored response.
    Revalidate,
    /// A background refresh (`stale-while-revalidate`).
    Refresh,
    /// A request forwarded as is.
    Pass,
}

/// Every metric of one edge.
pub struct Metrics {
    requests: [IntCounter; 7],
    stale: [IntCounter; 3],
    origin: [IntCounter; 4],
    /// Body bytes sent to clients.
    pub client_bytes: IntCounter,
    /// Body bytes received from the origin.
    pub origin_bytes: IntCounter,
    /// Requests that waited for another's fetch.
    pub coalesced_waits: IntCounter,
    /// Waits that ran out of patience (the waiter fetched itself).
    pub coalesce_timeouts: IntCounter,
    /// Origin answers that could not be used (malformed, cut short).
    pub origin_errors: IntCounter,
    purges: IntCounterVec,
    /// Objects purged (hard or soft), all tiers.
    pub purged_objects: IntCounter,
    /// Objects dropped because an unsafe request changed their URL.
    pub invalidations: IntCounter,
    /// Open client connections.
    pub connections: IntGauge,
}

fn counter(registry: &prometheus::Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Metrics {
    /// Registers every metric in `registry` (named `scalestack_cdn_*` when
    /// the registry is the `scalestack_cdn` component's), with the store's
    /// gauges read from `store` at each scrape.
    pub fn new(registry: &prometheus::Registry, store: Arc<Store>) -> Self {
        let vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(v.clone())).expect("registered once");
            v
        };
        let requests = vec("requests_total", "Client requests by cache outcome.", "outcome");
        let stale = vec("stale_served_total", "Stale answers by reason.", "reason");
        let origin = vec("origin_requests_total", "Requests to the origin by kind.", "kind");
        let purges = IntCounterVec::new(
            Opts::new("purges_total", "Purge requests by kind and mode."),
            &["kind", "mode"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(purges.clone()))
            .expect("registered once");
        let metrics = Metrics {
            requests: OUTCOMES.map(|(_, l)| requests.with_label_values(&[l])),
            stale: ["while_revalidate", "error", "accepted"].map(|l| stale.with_label_values(&[l])),
            origin: ["fetch", "revalidate", "refresh", "pass"].map(|l| origin.with_label_values(&[l])),
            client_bytes: counter(registry, "client_bytes_total", "Body bytes sent to clients."),
            origin_bytes: counter(
                registry,
                "origin_bytes_total",
                "Body bytes received from the origin.",
            ),
            coalesced_waits: counter(
                registry,
                "coalesced_waits_total",
                "Requests that waited for another request's origin fetch of the same key.",
            ),
            coalesce_timeouts: counter(
                registry,
                "coalesce_timeouts_total",
                "Coalesced waits that ran out of patience and fetched themselves.",
            ),
            origin_errors: counter(
                registry,
                "origin_errors_total",
                "Origin answers that failed (refused, timed out, malformed, cut short).",
            ),
            purges,
            purged_objects: counter(
                registry,
                "purged_objects_total",
                "Objects removed or staled by purges.",
            ),
            invalidations: counter(
                registry,
                "invalidations_total",
                "Primary keys invalidated by successful unsafe requests.",
            ),
            connections: {
                let g = IntGauge::new("connections", "Open client connections.").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
        };
        registry
            .register(Box::new(StoreGauges::new(store, metrics.requests.clone())))
            .expect("registered once");
        metrics
    }

    /// Counts one answered request.
    pub fn answered(&self, outcome: Outcome, body_bytes: u64) {
        self.requests[outcome as usize].inc();
        self.client_bytes.inc_by(body_bytes);
    }

    /// Counts a stale answer.
    pub fn stale(&self, reason: StaleReason) {
        self.stale[reason as usize].inc();
    }

    /// Counts a request to the origin.
    pub fn origin(&self, kind: OriginKind) {
        self.origin[kind as usize].inc();
    }

    /// Counts a purge request.
    pub fn purge(&self, kind: &str, mode: &str, objects: u64) {
        self.purges.with_label_values(&[kind, mode]).inc();
        self.purged_objects.inc_by(objects);
    }

    /// Requests answered so far with `outcome`.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].get()
    }
}

/// The store's gauges and the hit ratio, computed at scrape time.
struct StoreGauges {
    store: Arc<Store>,
    requests: [IntCounter; 7],
    objects: IntGaugeVec,
    bytes: IntGaugeVec,
    capacity: IntGaugeVec,
    evictions: IntCounterVec,
    hit_ratio: prometheus::Gauge,
}

impl StoreGauges {
    fn new(store: Arc<Store>, requests: [IntCounter; 7]) -> Self {
        let g = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["tier"]).expect("valid");
        StoreGauges {
            store,
            requests,
            objects: g("stored_objects", "Objects stored, by tier."),
            bytes: g("stored_bytes", "Bytes charged to stored objects, by tier."),
            capacity: g("capacity_bytes", "The byte bound of each tier."),
            evictions: IntCounterVec::new(
                Opts::new("evictions_total", "Objects evicted for room, by tier."),
                &["tier"],
            )
            .expect("valid"),
            hit_ratio: prometheus::Gauge::new(
                "hit_ratio",
                "Requests answered from storage (hit, stale, collapsed) over all requests but errors, since start.",
            )
            .expect("valid"),
        }
    }
}

impl Collector for StoreGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [
            self.objects.desc(),
            self.bytes.desc(),
            self.capacity.desc(),
            self.evictions.desc(),
            self.hit_ratio.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let stats = self.store.stats();
        let tiers = std::iter::once(("memory", stats.memory)).chain(stats.disk.map(|d| ("disk", d)));
        for (tier, t) in tiers {
            self.objects.with_label_values(&[tier]).set(t.objects as i64);
            self.bytes.with_label_values(&[tier]).set(t.bytes as i64);
            self.capacity
                .with_label_values(&[tier])
                .set(t.capacity_bytes as i64);
            telemetry::raise_to(&self.evictions.with_label_values(&[tier]), t.evictions);
        }
        let n = |o: Outcome| self.requests[o as usize].get() as f64;
        let hits = n(Outcome::Hit) + n(Outcome::Stale) + n(Outcome::Collapsed);
        let all = hits + n(Outcome::Miss) + n(Outcome::Revalidated) + n(Outcome::Pass);
        self.hit_ratio.set(if all > 0.0 { hits / all } else { 0.0 });
        [
            self.objects.collect(),
            self.bytes.collect(),
            self.capacity.collect(),
            self.evictions.collect(),
            self.hit_ratio.collect(),
        ]
        .concat()
    }
}
