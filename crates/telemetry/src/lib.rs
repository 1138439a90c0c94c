//! Metrics plumbing shared by every process: one [`Registry`] per process,
//! and per component (the web routes, the DB router, the Redis client, ...)
//! a `prometheus::Registry` of its own whose metric names carry the
//! component's prefix, as linkerd2-proxy hands each layer a sub-registry.
//! A component builder is handed its registry and registers what it
//! counts there; the process's `/metrics` renders every component's
//! metrics together ([`Registry::render`]).
//!
//! Values that a component already keeps in its own counters (stats structs
//! read on demand) are exported with [`Sampled`], which reads them at scrape
//! time instead of copying every change into a metric.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::TextEncoder;
use std::sync::{Arc, Mutex};

/// The metrics of one process: the registries handed to its components.
/// Cheap to clone; clones share the components.
#[derive(Clone, Default)]
pub struct Registry {
    components: Arc<Mutex<Vec<prometheus::Registry>>>,
}

impl Registry {
    /// A registry with no component yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry for one component: every metric registered in it is named
    /// `<prefix>_<name>` and is rendered with the rest of the process's.
    /// An empty prefix is allowed (names are then used as given).
    ///
    /// # Panics
    /// If `prefix` is not a valid metric name prefix (a programming error).
    pub fn component(&self, prefix: &str) -> prometheus::Registry {
        let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
        let registry = prometheus::Registry::new_custom(prefix, None).expect("a valid metric prefix");
        self.lock().push(registry.clone());
        registry
    }

    /// Every metric family of every component, sorted by name. Families of
    /// one name registered by two components are merged.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut all: Vec<MetricFamily> = Vec::new();
        for family in self.lock().iter().flat_map(prometheus::Registry::gather) {
            match all.iter_mut().find(|f| f.get_name() == family.get_name()) {
                Some(existing) => existing.mut_metric().extend(family.get_metric().iter().cloned()),
                None => all.push(family),
            }
        }
        all.sort_by(|a, b| a.get_name().cmp(b.get_name()));
        all
    }

    /// The Prometheus text exposition of [`Registry::gather`].
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.gather())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<prometheus::Registry>> {
        // Pushes and reads of a Vec cannot leave it inconsistent.
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A collector whose values are read when it is scraped: `update` copies a
/// component's own counters into `inner` (gauges `set`, counters
/// `inc_by` the difference) just before `inner` is collected.
pub struct Sampled<C, F> {
    inner: C,
    update: F,
}

impl<C: Collector, F: Fn(&C) + Send + Sync> Sampled<C, F> {
    /// Wraps `inner`; register the result instead of `inner`.
    pub fn new(inner: C, update: F) -> Self {
        Sampled { inner, update }
    }
}

impl<C: Collector, F: Fn(&C) + Send + Sync> Collector for Sampled<C, F> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.update)(&self.inner);
        self.inner.collect()
    }
}

/// Raises a counter to `total`, a monotonic count kept elsewhere (a counter
/// can only go up; a smaller `total`, after a reset, leaves it as it is).
pub fn raise_to(counter: &prometheus::IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge, Opts};
    use std::sync::atomic::{AtomicI64, Ordering};

    #[test]
    fn components_render_together_with_their_prefixes() {
        let registry = Registry::new();
        let web = registry.component("scalestack");
        let router = registry.component("scalestack_router");
        let requests = IntCounter::new("requests_total", "requests").unwrap();
        web.register(Box::new(requests.clone())).unwrap();
        let reads = IntCounter::new("reads_total", "reads").unwrap();
        router.register(Box::new(reads.clone())).unwrap();
        requests.inc();
        reads.inc_by(3);
        let text = registry.render();
        assert!(text.contains("scalestack_requests_total 1"), "{text}");
        assert!(text.contains("scalestack_router_reads_total 3"), "{text}");
        // The same name in two components is one family, not two.
        let other = registry.component("scalestack");
        let more =
            IntCounter::with_opts(Opts::new("requests_total", "requests").const_label("copy", "2")).unwrap();
        other.register(Box::new(more)).unwrap();
        assert_eq!(text_families(&registry, "scalestack_requests_total"), 1);
    }

    fn text_families(registry: &Registry, name: &str) -> usize {
        registry.render().matches(&format!("# TYPE {name} ")).count()
    }

    #[test]
    fn sampled_values_are_read_at_scrape_time() {
        let registry = Registry::new();
        let source = Arc::new(AtomicI64::new(5));
        let seen = source.clone();
        let gauge = IntGauge::new("open", "open").unwrap();
        registry
            .component("breaker")
            .register(Box::new(Sampled::new(gauge, move |g: &IntGauge| {
                g.set(seen.load(Ordering::Relaxed))
            })))
            .unwrap();
        assert!(registry.render().contains("breaker_open 5"));
        source.store(7, Ordering::Relaxed);
        assert!(registry.render().contains("breaker_open 7"));
    }

    #[test]
    fn raise_to_never_lowers_a_counter() {
        let c = IntCounter::new("c", "c").unwrap();
        raise_to(&c, 4);
        raise_to(&c, 2);
        assert_eq!(c.get(), 4);
        raise_to(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
