//! The admin API, on its own port (loopback by default):
//!
//! | request | effect |
//! |---|---|
//! | `GET /backends` | every backend with health, drain, ejection and counters |
//! | `POST /backends {"addr": "127.0.0.1:9104", "weight": 1}` | add; probed at once; 201 |
//! | `POST /backends/{addr}/drain` | no new requests; in-flight ones finish |
//! | `DELETE /backends/{addr}` | remove (requests in flight still finish) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz`, `GET /readyz` | alive; at least one backend available |
//!
//! Errors are `{"error": "..."}`: 400 bad input, 404 unknown backend,
//! 409 backend already present.

use crate::backend::{BackendStatus, SetError};
use crate::config::BackendSpec;
use crate::health_check;
use crate::shared::Shared;
use axum::extract::{rejection::JsonRejection, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

type AppState = Arc<Shared>;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = Router::new()
        .route("/backends", get(list).post(add))
        .route("/backends/{addr}", axum::routing::delete(remove))
        .route("/backends/{addr}/drain", post(drain))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn set_error(e: SetError) -> Response {
    match e {
        SetError::Exists(_) => error(StatusCode::CONFLICT, e),
        SetError::Unknown(_) => error(StatusCode::NOT_FOUND, e),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, Box<Response>> {
    s.parse().map_err(|_| {
        let message = format!("{s:?} is not an address like 127.0.0.1:9101");
        Box::new(error(StatusCode::BAD_REQUEST, message))
    })
}

async fn list(State(s): State<AppState>) -> Json<Vec<BackendStatus>> {
    Json(s.backends.snapshot().iter().map(|b| b.status()).collect())
}

async fn add(State(s): State<AppState>, body: Result<Json<BackendSpec>, JsonRejection>) -> Response {
    let Json(spec) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if !(1..=1000).contains(&spec.weight) {
        return error(StatusCode::BAD_REQUEST, "weight must be 1 to 1000");
    }
    match s.add_backend(&spec) {
        Ok(b) => {
            // Probed once right away, so a healthy one takes traffic at once.
            health_check::check_and_record(&b, &s.config.health).await;
            tracing::info!(backend = %spec.addr, healthy = b.is_healthy(), "backend added");
            (StatusCode::CREATED, Json(b.status())).into_response()
        }
        Err(e) => set_error(e),
    }
}

async fn drain(State(s): State<AppState>, Path(addr): Path<String>) -> Response {
    let addr = match parse_addr(&addr) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match s.backends.get(addr) {
        Some(b) => {
            b.drain();
            tracing::info!(backend = %addr, in_flight = b.status().in_flight, "backend draining");
            Json(b.status()).into_response()
        }
        None => set_error(SetError::Unknown(addr)),
    }
}

async fn remove(State(s): State<AppState>, Path(addr): Path<String>) -> Response {
    let addr = match parse_addr(&addr) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match s.remove_backend(addr) {
        Ok(b) => {
            tracing::info!(backend = %addr, "backend removed");
            Json(b.status()).into_response()
        }
        Err(e) => set_error(e),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let backends = s.backends.snapshot();
    let in_flight = backends
        .iter()
        .map(|b| (b.addr, b.in_flight.load(std::sync::atomic::Ordering::Relaxed)));
    let text = s.metrics.render(in_flight);
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    let now = Instant::now();
    if s.backends.snapshot().iter().any(|b| b.is_available(now)) {
        "ready".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "no backend available")
    }
}
