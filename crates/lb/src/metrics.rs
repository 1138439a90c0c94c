//! Prometheus metrics of the load balancer: per backend requests, errors by
//! kind, latency, health, in-flight, ejections; totals by status; retries
//! and refused requests.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::net::SocketAddr;

/// Handles of one backend's series, so the hot path does no label lookup.
#[derive(Clone)]
pub struct BackendMetrics {
    pub requests: IntCounter,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    pub status_5xx: IntCounter,
    pub other_errors: IntCounter,
    pub latency: Histogram,
    pub healthy: IntGauge,
    pub ejections: IntCounter,
}

impl BackendMetrics {
    /// Every failure counted against this backend.
    pub fn errors_total(&self) -> u64 {
        self.connect_errors.get() + self.timeouts.get() + self.status_5xx.get() + self.other_errors.get()
    }
}

/// The load balancer's registry.
pub struct Metrics {
    registry: Registry,
    backend_requests: IntCounterVec,
    backend_errors: IntCounterVec,
    backend_latency: HistogramVec,
    backend_healthy: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_ejections: IntCounterVec,
    /// Responses to clients by status.
    responses: IntCounterVec,
    /// Resolved handles of `responses`, by status code (no label lookup on
    /// the hot path).
    by_status: Vec<std::sync::OnceLock<IntCounter>>,
    /// Requests retried on another backend.
    pub retries: IntCounter,
    /// Open client connections.
    pub connections: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("scalestack_lb".into()), None).expect("valid prefix");
        let by_backend = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["backend"]).expect("valid metric")
        };
        let backend_requests = by_backend("backend_requests_total", "Requests sent to each backend");
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "backend_errors_total",
                "Backend failures by kind (connect, timeout, 5xx, other)",
            ),
            &["backend", "kind"],
        )
        .expect("valid metric");
        let backend_latency = HistogramVec::new(
            HistogramOpts::new("backend_latency_seconds", "Time to a backend's response head").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["backend"],
        )
        .expect("valid metric");
        let backend_healthy = IntGaugeVec::new(
            Opts::new("backend_healthy", "1 when the active health check passes"),
            &["backend"],
        )
        .expect("valid metric");
        let backend_in_flight = IntGaugeVec::new(
            Opts::new("backend_in_flight", "Requests in flight to each backend"),
            &["backend"],
        )
        .expect("valid metric");
        let backend_ejections = by_backend("backend_ejections_total", "Passive outlier ejections");
        let responses = IntCounterVec::new(
            Opts::new("responses_total", "Responses sent to clients by status"),
            &["status"],
        )
        .expect("valid metric");
        let retries =
            IntCounter::new("retries_total", "Requests retried on another backend").expect("valid metric");
        let connections = IntGauge::new("connections", "Open client connections").expect("valid metric");
        for c in [
            Box::new(backend_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(backend_errors.clone()),
            Box::new(backend_latency.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(backend_in_flight.clone()),
            Box::new(backend_ejections.clone()),
            Box::new(responses.clone()),
            Box::new(retries.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            backend_requests,
            backend_errors,
            backend_latency,
            backend_healthy,
            backend_in_flight,
            backend_ejections,
            responses,
            by_status: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
            retries,
            connections,
        }
    }

    /// Counts a response sent to a client.
    pub fn count_response(&self, status: u16) {
        let label = |s: u16| s.to_string();
        match self.by_status.get(status as usize) {
            Some(slot) => slot
                .get_or_init(|| self.responses.with_label_values(&[&label(status)]))
                .inc(),
            None => self.responses.with_label_values(&["other"]).inc(),
        }
    }

    /// The series of one backend.
    pub fn backend(&self, addr: SocketAddr) -> BackendMetrics {
        let a = addr.to_string();
        let err = |kind: &str| self.backend_errors.with_label_values(&[&a, kind]);
        BackendMetrics {
            requests: self.backend_requests.with_label_values(&[&a]),
            connect_errors: err("connect"),
            timeouts: err("timeout"),
            status_5xx: err("5xx"),
            other_errors: err("other"),
            latency: self.backend_latency.with_label_values(&[&a]),
            healthy: self.backend_healthy.with_label_values(&[&a]),
            ejections: self.backend_ejections.with_label_values(&[&a]),
        }
    }

    /// Drops the series of a removed backend.
    pub fn forget(&self, addr: SocketAddr) {
        let a = addr.to_string();
        let _ = self.backend_requests.remove_label_values(&[&a]);
        for kind in ["connect", "timeout", "5xx", "other"] {
            let _ = self.backend_errors.remove_label_values(&[&a, kind]);
        }
        let _ = self.backend_latency.remove_label_values(&[&a]);
        let _ = self.backend_healthy.remove_label_values(&[&a]);
        let _ = self.backend_in_flight.remove_label_values(&[&a]);
        let _ = self.backend_ejections.remove_label_values(&[&a]);
    }

    /// Text exposition, with the in-flight gauges set from `in_flight`
    /// (each backend's requests in flight as of now).
    pub fn render(&self, in_flight: impl IntoIterator<Item = (SocketAddr, u64)>) -> String {
        for (addr, n) in in_flight {
            self.backend_in_flight
                .with_label_values(&[&addr.to_string()])
                .set(n as i64);
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
