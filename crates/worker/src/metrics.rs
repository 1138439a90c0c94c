//! The worker's Prometheus metrics and its small HTTP endpoint.

use crate::Outcome;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use backends::Backends;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::sync::Arc;

/// Jobs by outcome and the queue depth (component `scalestack` of the
/// process's registry, which also holds what the adapters count).
pub struct WorkerMetrics {
    registry: telemetry::Registry,
    jobs: IntCounterVec,
    queue_depth: IntGaugeVec,
    stalled: IntCounterVec,
}

impl WorkerMetrics {
    /// Registers every metric in a registry of its own.
    pub fn new() -> Self {
        Self::in_registry(&telemetry::Registry::new())
    }

    /// Registers every metric as the `scalestack` component of `process`;
    /// `/metrics` renders all of `process`.
    pub fn in_registry(process: &telemetry::Registry) -> Self {
        let registry = process.component("scalestack");
        let jobs = IntCounterVec::new(
            Opts::new(
                "jobs_total",
                "Jobs handled by outcome (done, skipped, retrying, failed, stale)",
            ),
            &["outcome"],
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
        let stalled = IntCounterVec::new(
            Opts::new(
                "stalled_uploads_total",
                "Stalled uploads (processing, no job) the reconciler finished, by action (requeued, removed)",
            ),
            &["action"],
        )
        .expect("valid metric");
        registry.register(Box::new(jobs.clone())).expect("unique");
        registry.register(Box::new(queue_depth.clone())).expect("unique");
        registry.register(Box::new(stalled.clone())).expect("unique");
        WorkerMetrics {
            registry: process.clone(),
            jobs,
            queue_depth,
            stalled,
        }
    }

    /// Counts a handled job.
    pub fn job(&self, outcome: Outcome) {
        let label = match outcome {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Retrying => "retrying",
            Outcome::DeadLettered => "failed",
            Outcome::Stale => "stale",
        };
        self.jobs.with_label_values(&[label]).inc();
    }

    /// Counts what a round of the reconciler did.
    pub fn reconciled(&self, done: crate::Reconciled) {
        self.stalled
            .with_label_values(&["requeued"])
            .inc_by(done.requeued as u64);
        self.stalled
            .with_label_values(&["removed"])
            .inc_by(done.removed as u64);
    }

    /// Jobs counted under `outcome` so far.
    pub fn jobs(&self, label: &str) -> u64 {
        self.jobs.with_label_values(&[label]).get()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

async fn render(State((m, b)): State<(Arc<WorkerMetrics>, Backends)>) -> Response {
    if let Ok(d) = b.queue.depth().await {
        m.queue_depth.with_label_values(&["ready"]).set(d.ready);
        m.queue_depth.with_label_values(&["in_flight"]).set(d.in_flight);
        m.queue_depth.with_label_values(&["dead"]).set(d.dead);
    }
    let text = m.registry.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn readyz(State((_, b)): State<(Arc<WorkerMetrics>, Backends)>) -> Response {
    match b.queue.depth().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable").into_response(),
    }
}

pub(crate) fn router(metrics: Arc<WorkerMetrics>, backends: Backends) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state((metrics, backends))
}
