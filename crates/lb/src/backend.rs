//! Backends, their live state (health, ejection, drain, in-flight) and the
//! set of them that changes at runtime.

use crate::config::{BackendSpec, OutlierConfig};
use crate::metrics::BackendMetrics;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// One upstream server.
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests sent and not yet answered in full.
    pub in_flight: AtomicU64,
    /// Verdict of the active health checks.
    healthy: AtomicBool,
    draining: AtomicBool,
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    outlier: Mutex<OutlierState>,
    /// Smooth weighted round robin's running weight.
    pub(crate) current_weight: AtomicI64,
    pub metrics: BackendMetrics,
}

#[derive(Default)]
struct OutlierState {
    consecutive_failures: u32,
    /// Every failure of the current streak was a transport failure.
    only_transport_failures: bool,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// What a request to a backend came to, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Ok,
    /// The connection was refused, or broke before an answer: the
    /// process is likely gone (and a passing health check means it is back).
    TransportFailed,
    /// A 5xx or a timeout: the process is up but failing.
    Failed,
}

/// A backend as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
    pub draining: bool,
    pub ejected: bool,
    pub in_flight: u64,
    pub requests: u64,
    pub errors: u64,
}

impl Backend {
    /// A backend that is not yet known to be healthy: it gets traffic after
    /// its first passed health check.
    pub fn new(spec: &BackendSpec, metrics: BackendMetrics) -> Self {
        Backend {
            addr: spec.addr,
            weight: spec.weight.max(1),
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            current_weight: AtomicI64::new(0),
            metrics,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Stops new requests from going here; in-flight ones finish.
    pub fn drain(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.lock_outlier().ejected_until.is_some_and(|t| t > now)
    }

    /// Healthy, not draining, not ejected: may take new requests.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected(now)
    }

    fn lock_outlier(&self) -> std::sync::MutexGuard<'_, OutlierState> {
        self.outlier.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an active check; returns the new health if it changed.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.check_failures.store(0, Relaxed);
            {
                // A process that dropped connections and now passes its
                // check has been restarted: its ejection is over. (An
                // ejection for 5xx or timeouts stands: a passing check with
                // failing requests is exactly what passive ejection is for.)
                let mut o = self.lock_outlier();
                if o.ejected_until.is_some() && o.only_transport_failures {
                    o.ejected_until = None;
                }
            }
            let passes = self.check_passes.fetch_add(1, Relaxed) + 1;
            if passes >= rise && !self.healthy.swap(true, Relaxed) {
                // A backend back from the dead starts with a clean slate:
                // an ejection from before it died must not keep it out.
                *self.lock_outlier() = OutlierState::default();
                self.metrics.healthy.set(1);
                return Some(true);
            }
        } else {
            self.check_passes.store(0, Relaxed);
            let failures = self.check_failures.fetch_add(1, Relaxed) + 1;
            if failures >= fall && self.healthy.swap(false, Relaxed) {
                self.metrics.healthy.set(0);
                return Some(false);
            }
        }
        None
    }

    /// Records a request's result for passive ejection. Returns the
    /// ejection length if this result ejected the backend.
    pub fn record_result(&self, result: RequestResult, config: &OutlierConfig) -> Option<Duration> {
        let mut o = self.lock_outlier();
        if result == RequestResult::Ok {
            o.consecutive_failures = 0;
            return None;
        }
        let transport = result == RequestResult::TransportFailed;
        o.only_transport_failures = transport && (o.consecutive_failures == 0 || o.only_transport_failures);
        o.consecutive_failures += 1;
        if o.consecutive_failures < config.consecutive_failures {
            return None;
        }
        o.consecutive_failures = 0;
        // The back-off grows with ejections in a row; one that ended longer
        // ago than the longest ejection is forgotten.
        let forgotten = Duration::from_millis(config.max_ejection_ms);
        if o.ejected_until
            .is_some_and(|until| Instant::now().saturating_duration_since(until) > forgotten)
        {
            o.ejections = 0;
        }
        let factor = 1u64 << o.ejections.min(20);
        let ms = config
            .base_ejection_ms
            .saturating_mul(factor)
            .min(config.max_ejection_ms);
        o.ejections += 1;
        o.ejected_until = Some(Instant::now() + Duration::from_millis(ms));
        self.metrics.ejections.inc();
        Some(Duration::from_millis(ms))
    }

    /// What the admin API shows.
    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            addr: self.addr,
            weight: self.weight,
            healthy: self.is_healthy(),
            draining: self.is_draining(),
            ejected: self.is_ejected(Instant::now()),
            in_flight: self.in_flight.load(Relaxed),
            requests: self.metrics.requests.get(),
            errors: self.metrics.errors_total(),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Relaxed);
    }
}

/// Counts a request in flight for as long as it lives.
pub struct InFlight(pub Arc<Backend>);

impl InFlight {
    pub fn new(b: Arc<Backend>) -> Self {
        b.in_flight.fetch_add(1, Relaxed);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The current backends. Readers take a cheap snapshot; writers replace it.
#[derive(Default)]
pub struct BackendSet {
    inner: RwLock<Arc<Vec<Arc<Backend>>>>,
    version: AtomicU64,
}

/// Why a change to the set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("backend {0} already exists")]
    Exists(SocketAddr),
    #[error("no backend {0}")]
    Unknown(SocketAddr),
}

impl BackendSet {
    /// The backends as of now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bumped on every change (lets the hash ring know when to rebuild).
    pub fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }

    /// The backends and the version they are, read together (the version
    /// is bumped under the write lock): a hash ring built from this list is
    /// never tagged with a newer version than its own.
    pub fn versioned_snapshot(&self) -> (Arc<Vec<Arc<Backend>>>, u64) {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (guard.clone(), self.version.load(Relaxed))
    }

    pub fn get(&self, addr: SocketAddr) -> Option<Arc<Backend>> {
        self.snapshot().iter().find(|b| b.addr == addr).cloned()
    }

    pub fn add(&self, backend: Backend) -> Result<Arc<Backend>, SetError> {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if guard.iter().any(|b| b.addr == backend.addr) {
            return Err(SetError::Exists(backend.addr));
        }
        let backend = Arc::new(backend);
        let mut next = (**guard).clone();
        next.push(backend.clone());
        *guard = Arc::new(next);
        self.version.fetch_add(1, Relaxed);
        Ok(backend)
    }

    /// Removes a backend; requests already sent to it finish normally.
    pub fn remove(&self, addr: SocketAddr) -> Result<Arc<Backend>, SetError> {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let pos = guard
            .iter()
            .position(|b| b.addr == addr)
            .ok_or(SetError::Unknown(addr))?;
        let mut next = (**guard).clone();
        let removed = next.remove(pos);
        *guard = Arc::new(next);
        self.version.fetch_add(1, Relaxed);
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let spec = BackendSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
        };
        Backend::new(&spec, crate::metrics::Metrics::new().backend(spec.addr))
    }

    #[test]
    fn rise_and_fall() {
        let b = backend();
        assert!(!b.is_healthy());
        assert_eq!(b.record_check(true, 2, 2), None);
        assert_eq!(b.record_check(true, 2, 2), Some(true));
        assert_eq!(b.record_check(false, 2, 2), None);
        assert_eq!(
            b.record_check(true, 2, 2),
            None,
            "a pass resets the failure count"
        );
        assert_eq!(b.record_check(false, 2, 2), None);
        assert_eq!(b.record_check(false, 2, 2), Some(false));
    }

    #[test]
    fn ejection_grows_and_is_capped() {
        let b = backend();
        let c = OutlierConfig {
            consecutive_failures: 2,
            base_ejection_ms: 10_000,
            max_ejection_ms: 25_000,
        };
        assert_eq!(b.record_result(RequestResult::Failed, &c), None);
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_secs(10))
        );
        assert!(b.is_ejected(Instant::now()));
        assert_eq!(
            b.record_result(RequestResult::Ok, &c),
            None,
            "a success resets the count"
        );
        b.record_result(RequestResult::Failed, &c);
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_secs(20))
        );
        b.record_result(RequestResult::Failed, &c);
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_secs(25))
        );
        // Recovery through the active check clears the ejection.
        b.record_check(false, 1, 1);
        b.record_check(true, 1, 1);
        assert!(!b.is_ejected(Instant::now()));
    }

    #[test]
    fn an_old_ejection_is_forgotten() {
        let b = backend();
        let c = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_ms: 10,
            max_ejection_ms: 20,
        };
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_millis(20))
        );
        // Well past the end of the last ejection plus the longest one.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            b.record_result(RequestResult::Failed, &c),
            Some(Duration::from_millis(10)),
            "starts over"
        );
    }

    #[test]
    fn a_passing_check_ends_only_an_ejection_for_transport_failures() {
        let c = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_ms: 60_000,
            max_ejection_ms: 60_000,
        };
        let b = backend();
        b.record_check(true, 1, 1);
        b.record_result(RequestResult::Failed, &c);
        b.record_check(true, 1, 1);
        assert!(
            b.is_ejected(Instant::now()),
            "5xx ejection stands although /readyz passes"
        );
        let b = backend();
        b.record_check(true, 1, 1);
        b.record_result(RequestResult::TransportFailed, &c);
        assert!(b.is_ejected(Instant::now()));
        b.record_check(true, 1, 1);
        assert!(
            !b.is_ejected(Instant::now()),
            "restarted process is back at the next check"
        );
    }

    #[test]
    fn set_changes() {
        let set = BackendSet::default();
        set.add(backend()).unwrap();
        assert_eq!(
            set.add(backend()).err(),
            Some(SetError::Exists("127.0.0.1:1".parse().unwrap()))
        );
        let v = set.version();
        set.remove("127.0.0.1:1".parse().unwrap()).unwrap();
        assert!(set.version() > v);
        assert!(set.snapshot().is_empty());
    }
}
