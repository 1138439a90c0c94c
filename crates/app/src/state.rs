//! Shared state of the handlers. Everything in it is either configuration or
//! a handle to a shared tier: the web server itself keeps no user state.

use crate::catalog::Catalog;
use crate::config::WebSettings;
use crate::metrics::Metrics;
use crate::purge::Purger;
use axum::extract::FromRef;
use backends::Backends;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub backends: Backends,
    pub settings: Arc<WebSettings>,
    pub metrics: Arc<Metrics>,
    pub catalog: Catalog,
    /// Purges deleted photos from the CDN edges.
    pub purger: Purger,
    /// The page at `/`, its asset URLs under `media_base_url`.
    pub page: Arc<str>,
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(s: &AppState) -> Self {
        s.metrics.clone()
    }
}
