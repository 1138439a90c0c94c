//! The photo-sharing application: `scalestack web`, the stateless web tier.
//!
//! Handlers reach every piece of state through the ports in
//! [`backends::Backends`]; nothing a request leaves behind lives in this
//! process except cache entries, which are allowed to vanish.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod error;
pub mod http_cache;
pub mod metrics;
pub mod purge;
mod read_your_writes;
pub mod routes;
pub mod state;

pub use config::{WebConfig, WebSettings};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use backends::Backends;
use catalog::Catalog;
use metrics::Metrics;
use state::AppState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random 128-bit request id, used when the client (or the LB) sent none.
#[derive(Clone, Copy, Default)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("{:032x}", rand::random::<u128>());
        Some(RequestId::new(id.parse().expect("hex is a valid header")))
    }
}

/// Builds the router over already-connected backends.
pub fn router(backends: Backends, settings: WebSettings) -> Router {
    let metrics = Arc::new(Metrics::in_registry(&backends.metrics));
    let catalog = Catalog::new(
        backends.store.clone(),
        backends.cache.clone(),
        metrics.clone(),
        Duration::from_secs(settings.cache_ttl_secs),
        Duration::from_secs(settings.list_cache_ttl_secs),
    );
    let upload_limit = settings.max_body_bytes;
    let json_limit = settings.max_json_bytes;
    let cookie_secure = settings.cookie_secure;
    let purger = purge::Purger::new(
        &settings.cdn_purge_urls,
        purge::RetrySchedule::giving_up_after(settings.cdn_purge_retry_secs),
        metrics.clone(),
    );
    let page = routes::assets::page(settings.media_base()).into();
    let state = AppState {
        backends,
        settings: Arc::new(settings),
        metrics: metrics.clone(),
        catalog,
        purger,
        page,
    };
    use routes::{accounts, assets, ops, photos, social};
    let api = Router::new()
        .route("/api/signup", post(accounts::signup))
        .route("/api/login", post(accounts::login))
        .route("/api/logout", post(accounts::logout))
        .route("/api/me", get(accounts::me))
        .route(
            "/api/photos",
            post(photos::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/api/photos/{id}",
            get(photos::get_photo).delete(photos::delete_photo),
        )
        .route("/api/users/{username}", get(social::profile))
        .route("/api/users/{username}/photos", get(photos::user_photos))
        .route(
            "/api/users/{username}/follow",
            post(social::follow).delete(social::unfollow),
        )
        .route("/api/feed", get(social::feed))
        .layer(DefaultBodyLimit::max(json_limit));
    Router::new()
        .merge(api)
        .route("/media/{*key}", get(photos::media))
        .route("/", get(assets::index))
        .route("/static/{name}", get(assets::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { error::ApiError::NotFound("no such route") })
        .with_state(state)
        // Outside the routes, so an unknown `/api/` path's 404 has it too.
        .layer(axum::middleware::from_fn(http_cache::api_no_store))
        // A layer, not a route layer: requests no route matched (404) count too.
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .layer(axum::middleware::from_fn_with_state(cookie_secure, read_your_writes::layer))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        })
        // One access-log line per request, carrying the LB's X-Request-Id.
        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
}

/// A web server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Connects the backends named in `config` and binds the listener.
    pub async fn build(config: WebConfig) -> anyhow::Result<Self> {
        let backends = Backends::connect(&config.backends).await?;
        Self::build_with(config.listen, backends, config.settings).await
    }

    /// Binds over backends the caller already connected (tests share them).
    /// Settings that [`WebSettings::validate`] refuses are an error.
    pub async fn build_with(
        listen: SocketAddr,
        backends: Backends,
        settings: WebSettings,
    ) -> anyhow::Result<Self> {
        settings
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid web settings: {e}"))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Application {
            listener,
            router: router(backends, settings),
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets the
    /// requests in flight finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "web server listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
