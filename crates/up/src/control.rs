//! The orchestrator's dashboard and control API (default
//! http://127.0.0.1:8090), which `scalestack ctl` talks to:
//!
//! | request | effect |
//! |---|---|
//! | `GET /` | dashboard: the processes, refreshed every second |
//! | `GET /api/ps` | every process: name, role, site, address, state, pid, restarts; `?everywhere=true` adds every site's own (multi-site) |
//! | `POST /api/processes/{name}/kill?signal=KILL` | send a signal (`KILL`, `TERM`, `INT`); a child stays down (Redis too), a PostgreSQL node is restarted (replica) or failed over (primary) by the failover controller |
//! | `POST /api/processes/{name}/start` | start again a process stopped with kill |
//! | `GET /metrics` | `up`'s own metrics (children by state, restarts per child, scale operations, failovers) |
//! | `GET /targets` | Prometheus `file_sd` list of every child's metrics address (also in `<data>/prometheus/targets.json`) |
//! | `POST /api/scale {"role": "web", "count": 5}` | start or drain-and-stop copies |
//! | `GET /api/autoscale` | the autoscaled tiers: bounds, latest decision and its reason, scale events, history |
//! | `GET /api/jobs/dead?limit=50` | dead jobs, newest first (id, kind, payload, attempts, last error) |
//! | `POST /api/jobs/{id}/retry` | a dead job ready again with a fresh attempt count (404: no such dead job) |
//! | `POST /api/sites/{name}/fail` | kill every process of a site (multi-site topologies) and hold them down |
//! | `POST /api/sites/{name}/restore` | start them again; its database nodes rejoin as replicas |
//! | `GET /api/query?query=`, `GET /api/query_range?...` | the topology's Prometheus (`[prometheus]`) answering `/api/v1/query` and `/api/v1/query_range`, for the dashboard; 404 without one |
//! | `GET /api/logs?component=&level=&request_id=&user=&since=&limit=` | the collected log lines that match, oldest first (`[logs]`; 404 without) |
//! | `GET /api/business` | sign-ups, uploads and daily active users of the last 7 days, day-1 and day-7 retention, from the store |
//! | `GET /healthz` | alive |
//!
//! Errors are `{"error": "..."}` with 400 (bad input) or 404 (unknown name).

use crate::supervisor::SupervisorError;
use crate::{Orchestrator, ScaleError};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::TcpListener;

type AppState = Arc<Orchestrator>;

pub(crate) async fn serve(listener: TcpListener, orchestrator: Arc<Orchestrator>) {
    let router = Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/api/ps", get(ps))
        .route("/api/processes/{name}/kill", post(kill))
        .route("/api/processes/{name}/start", post(start))
        .route("/api/scale", post(scale))
        .route("/api/autoscale", get(autoscale))
        .route("/api/jobs/dead", get(dead_jobs))
        .route("/api/shards", get(shards))
        .route("/api/reshard", get(reshard_status).post(reshard))
        .route("/api/reshard/abort", post(reshard_abort))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/sites/{name}/fail", post(fail_site))
        .route("/api/sites/{name}/restore", post(restore_site))
        .route("/api/logs", get(logs))
        .route("/api/business", get(business))
        .route("/api/query", get(prometheus_query))
        .route("/api/query_range", get(prometheus_query))
        .route("/metrics", get(metrics))
        .route("/targets", get(targets))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(orchestrator);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "control API stopped");
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn supervisor_error(e: SupervisorError) -> Response {
    match e {
        SupervisorError::Unknown(_) => error(StatusCode::NOT_FOUND, e),
        SupervisorError::Exists(_) => error(StatusCode::CONFLICT, e),
    }
}

async fn business(State(o): State<AppState>) -> Response {
    match o.business(7).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn logs(
    State(o): State<AppState>,
    q: Result<Query<crate::logs::LogFilter>, QueryRejection>,
) -> Response {
    let Query(filter) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match o.logs(&filter) {
        Ok(lines) => Json(lines).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// Forwards a query to the topology's Prometheus, as it answers it.
async fn prometheus_query(State(o): State<AppState>, uri: axum::http::Uri) -> Response {
    let Some(p) = &o.topology.prometheus else {
        return error(
            StatusCode::NOT_FOUND,
            "this topology runs no Prometheus ([prometheus])",
        );
    };
    let api = if uri.path().ends_with("_range") {
        "query_range"
    } else {
        "query"
    };
    let url = format!("http://{}/api/v1/{api}?{}", p.listen, uri.query().unwrap_or(""));
    match o.http.get(&url).send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.bytes().await {
                Ok(body) => (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
                Err(e) => error(StatusCode::BAD_GATEWAY, format!("prometheus: {e}")),
            }
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("prometheus is not answering: {e}"),
        ),
    }
}

#[derive(Deserialize)]
struct PsQuery {
    /// With several sites: every site's processes too, as its `up` lists them.
    #[serde(default)]
    everywhere: bool,
}

async fn ps(State(o): State<AppState>, q: Query<PsQuery>) -> Response {
    if q.everywhere {
        return Json(o.ps_everywhere().await).into_response();
    }
    Json(o.ps()).into_response()
}

async fn metrics(State(o): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        o.render_metrics(),
    )
        .into_response()
}

async fn targets(State(o): State<AppState>) -> Response {
    Json(o.targets()).into_response()
}

#[derive(Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

/// Parses `KILL`, `SIGKILL`, `9` and the like; only signals that stop a process.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim().to_ascii_uppercase();
    match s.strip_prefix("SIG").unwrap_or(&s) {
        "KILL" | "9" => Some(Signal::SIGKILL),
        "TERM" | "15" => Some(Signal::SIGTERM),
        "INT" | "2" => Some(Signal::SIGINT),
        _ => None,
    }
}

async fn kill(State(o): State<AppState>, Path(name): Path<String>, Query(q): Query<KillQuery>) -> Response {
    let signal = match q.signal.as_deref().map(parse_signal) {
        None => Signal::SIGKILL,
        Some(Some(s)) => s,
        Some(None) => return error(StatusCode::BAD_REQUEST, "signal must be KILL, TERM or INT"),
    };
    match o.kill(&name, signal) {
        Ok(status) => Json(status).into_response(),
        Err(e) => supervisor_error(e),
    }
}

fn site_error(e: crate::site_failure::SiteError) -> Response {
    match e {
        crate::site_failure::SiteError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        crate::site_failure::SiteError::Supervisor(e) => supervisor_error(e),
    }
}

async fn fail_site(State(o): State<AppState>, Path(name): Path<String>) -> Response {
    match o.fail_site(&name).await {
        Ok(change) => Json(change).into_response(),
        Err(e) => site_error(e),
    }
}

async fn restore_site(State(o): State<AppState>, Path(name): Path<String>) -> Response {
    match o.restore_site(&name) {
        Ok(change) => Json(change).into_response(),
        Err(e) => site_error(e),
    }
}

async fn start(State(o): State<AppState>, Path(name): Path<String>) -> Response {
    match o.start(&name) {
        Ok(status) => Json(status).into_response(),
        Err(e) => supervisor_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    role: String,
    count: usize,
}

async fn scale(State(o): State<AppState>, body: Result<Json<ScaleRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match o.scale(&req.role, req.count).await {
        Ok(ps) => Json(ps).into_response(),
        Err(e @ ScaleError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ ScaleError::Failed(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn autoscale(State(o): State<AppState>) -> Response {
    Json(o.autoscale_state()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    /// At most this many, newest first. Default 50.
    limit: Option<usize>,
}

async fn dead_jobs(State(o): State<AppState>, query: Result<Query<DeadQuery>, QueryRejection>) -> Response {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(50).min(10_000),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let queue = match o.queue() {
        Ok(q) => q,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match queue.dead_jobs(limit).await {
        Ok(jobs) => Json(jobs).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn shards(State(o): State<AppState>) -> Response {
    match o.shard_report().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn reshard(
    State(o): State<AppState>,
    body: Result<Json<crate::reshard::ReshardRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match o.reshard(req).await {
        Ok(started) => (StatusCode::ACCEPTED, Json(started)).into_response(),
        Err(e) => reshard_error(e),
    }
}

async fn reshard_status(State(o): State<AppState>) -> Response {
    match o.reshard_status().await {
        Ok(latest) => Json(latest).into_response(),
        Err(e) => reshard_error(e),
    }
}

async fn reshard_abort(State(o): State<AppState>) -> Response {
    match o.reshard_abort().await {
        Ok(m) => (StatusCode::ACCEPTED, Json(m)).into_response(),
        Err(e) => reshard_error(e),
    }
}

fn reshard_error(e: crate::reshard::ReshardError) -> Response {
    match e {
        e @ crate::reshard::ReshardError::Invalid(_) => error(StatusCode::BAD_REQUEST, e),
        e @ crate::reshard::ReshardError::Failed(_) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn retry_job(State(o): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a job id"));
    };
    let queue = match o.queue() {
        Ok(q) => q,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match queue.retry_dead(id).await {
        Ok(true) => {
            tracing::info!(job_id = id, "dead job retried");
            Json(serde_json::json!({ "retried": id })).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no dead job {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The dashboard: one page, no build step (see `dashboard.html`).
const DASHBOARD: &str = include_str!("dashboard.html");
