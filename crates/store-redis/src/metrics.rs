//! The breaker's state and counters exported to a metrics registry, read
//! from [`RedisStats`] at scrape time.

use crate::client::Client;
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use std::sync::Arc;
use telemetry::{raise_to, Sampled};

/// Registers, for the connection of `client`, `breaker_open` (1 while
/// Redis is considered down), `failures_total` and `skips_total` in
/// `registry`, labelled `tier` (which tier uses this connection: `cache`,
/// `sessions`). A second registration of the same tier is ignored.
pub(crate) fn register(client: &Arc<Client>, registry: &Registry, tier: &str) {
    let opts = |name: &str, help: &str| Opts::new(name, help).const_label("tier", tier);
    let open = IntGauge::with_opts(opts(
        "breaker_open",
        "1 while the circuit breaker in front of Redis is open (Redis considered down)",
    ))
    .expect("valid metric");
    let failures = IntCounter::with_opts(opts(
        "failures_total",
        "Redis calls that failed, timeouts included",
    ))
    .expect("valid metric");
    let skips = IntCounter::with_opts(opts(
        "skips_total",
        "Redis calls skipped because the circuit breaker was open",
    ))
    .expect("valid metric");
    let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
    let _ = registry.register(Box::new(Sampled::new(open, move |g: &IntGauge| {
        g.set(i64::from(c1.stats().open))
    })));
    let _ = registry.register(Box::new(Sampled::new(failures, move |c: &IntCounter| {
        raise_to(c, c2.stats().failures)
    })));
    let _ = registry.register(Box::new(Sampled::new(skips, move |c: &IntCounter| {
        raise_to(c, c3.stats().skips)
    })));
}
