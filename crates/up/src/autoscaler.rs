//! The autoscaler's loops: the effectful shell around `autoscale`'s pure
//! decisions. Per tier with an `[autoscale.<tier>]` section, every
//! `interval_ms`: observe (workers: the queue's depth through the queue
//! port; web servers: the load balancer's admin API, in-flight requests and
//! request counts per backend, and its latency histogram for the p99),
//! decide, and apply a change through [`Orchestrator::scale`], the path
//! `ctl scale` takes (so a web server is drained in the LB before it stops,
//! a worker finishes the job in hand). Every decision that changes a count
//! is logged with its reason; the latest of each tier, its history and its
//! figures are exported (`scalestack_up_autoscale_*`) and shown by
//! `ctl autoscale` and the dashboard.

use crate::autoscale::{Decision, Scaler, WebAutoscale, WebObservation, WorkerAutoscale, WorkerObservation};
use crate::{Orchestrator, Role};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Points of history kept per tier (at one per interval: ten minutes at 1 s).
const HISTORY: usize = 600;

/// One point of a tier's history.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// Replicas running when observed.
    pub actual: usize,
    /// Replicas decided.
    pub desired: usize,
    /// The deciding signal per replica.
    pub signal: f64,
}

/// What `ctl autoscale` shows of one tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierState {
    /// The bounds and target, as configured.
    pub min: usize,
    pub max: usize,
    /// The latest decision.
    pub last: Option<Decision>,
    /// Scale operations the autoscaler started, by direction.
    pub scaled_up: u64,
    pub scaled_down: u64,
    /// The last failure to observe or to scale, if the latest round failed.
    pub error: Option<String>,
    /// Recent points, oldest first.
    pub history: VecDeque<Point>,
}

/// Every autoscaled tier's state, shared with the control API.
#[derive(Default)]
pub struct AutoscaleState {
    tiers: Mutex<BTreeMap<Role, TierState>>,
}

impl AutoscaleState {
    /// A copy of every tier's state, by role.
    pub fn snapshot(&self) -> BTreeMap<Role, TierState> {
        self.tiers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, role: Role, f: impl FnOnce(&mut TierState)) {
        if let Some(t) = self
            .tiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&role)
        {
            f(t)
        }
    }

    fn register(&self, role: Role, min: usize, max: usize) {
        self.tiers.lock().unwrap_or_else(|e| e.into_inner()).insert(
            role,
            TierState {
                min,
                max,
                last: None,
                scaled_up: 0,
                scaled_down: 0,
                error: None,
                history: VecDeque::new(),
            },
        );
    }
}

/// Starts a loop per autoscaled tier; they run until the returned tasks
/// are aborted.
pub fn spawn(o: Arc<Orchestrator>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let section = o.topology.autoscale.clone();
    if let Some(policy) = section.worker {
        o.autoscale.register(Role::Worker, policy.min, policy.max);
        tasks.push(tokio::spawn(workers(o.clone(), policy)));
    }
    if let (Some(policy), Some(lb)) = (section.web, o.topology.lb.clone()) {
        o.autoscale.register(Role::Web, policy.min, policy.max);
        tasks.push(tokio::spawn(web(o.clone(), policy, lb.admin_listen)));
    }
    tasks
}

async fn workers(o: Arc<Orchestrator>, policy: WorkerAutoscale) {
    let mut scaler = Scaler::new(policy.clone());
    let mut tick = tokio::time::interval(policy.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = o.supervisor.names_of(Role::Worker).len();
        let depth = match o.queue_depth().await {
            Ok(d) => (d.ready + d.in_flight).max(0) as u64,
            Err(e) => {
                o.autoscale
                    .update(Role::Worker, |t| t.error = Some(format!("queue depth: {e}")));
                continue;
            }
        };
        let decision = scaler.decide(WorkerObservation { depth, current }, Instant::now());
        apply(&o, Role::Worker, decision).await;
    }
}

async fn web(o: Arc<Orchestrator>, policy: WebAutoscale, admin: SocketAddr) {
    let mut scaler = Scaler::new(policy.clone());
    let mut tick = tokio::time::interval(policy.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<LbSample> = None;
    loop {
        tick.tick().await;
        let sample = match LbSample::take(&o.http, admin).await {
            Ok(s) => s,
            Err(e) => {
                o.autoscale
                    .update(Role::Web, |t| t.error = Some(format!("load balancer: {e}")));
                continue;
            }
        };
        let Some(previous) = last.replace(sample.clone()) else {
            continue; // a rate needs two samples
        };
        let current = o.supervisor.names_of(Role::Web).len();
        let observation = sample.observe(&previous, current);
        let decision = scaler.decide(observation, Instant::now());
        apply(&o, Role::Web, decision).await;
    }
}

/// Records the decision, and scales when it changes the count.
async fn apply(o: &Orchestrator, role: Role, decision: Decision) {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    o.metrics.autoscale.observe(role, &decision);
    o.autoscale.update(role, |t| {
        if t.history.len() == HISTORY {
            t.history.pop_front();
        }
        t.history.push_back(Point {
            at_ms,
            actual: decision.current,
            desired: decision.desired,
            signal: decision.signal,
        });
        t.last = Some(decision.clone());
        t.error = None;
    });
    if !decision.changes() {
        tracing::debug!(role = %role, replicas = decision.current, reason = %decision.reason, "autoscale: no change");
        return;
    }
    let up = decision.desired > decision.current;
    tracing::info!(
        role = %role,
        from = decision.current,
        to = decision.desired,
        signal = decision.signal,
        target = decision.target,
        metric = decision.metric,
        reason = %decision.reason,
        "autoscale: scaling {}",
        if up { "up" } else { "down" }
    );
    o.metrics.autoscale.scaled(role, up);
    o.autoscale
        .update(role, |t| if up { t.scaled_up += 1 } else { t.scaled_down += 1 });
    if let Err(e) = o.scale(role.as_str(), decision.desired).await {
        tracing::warn!(role = %role, error = %e, "autoscale: scaling failed");
        o.autoscale.update(role, |t| t.error = Some(e.to_string()));
    }
}

/// What the load balancer said at one instant.
#[derive(Debug, Clone)]
struct LbSample {
    at: Instant,
    /// In-flight requests over the backends taking traffic.
    in_flight: f64,
    /// Requests sent to any backend so far.
    requests: u64,
    /// The latency histogram summed over backends: (upper bound, count).
    buckets: Vec<(f64, f64)>,
}

impl LbSample {
    async fn take(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<LbSample> {
        #[derive(serde::Deserialize)]
        struct Backend {
            draining: bool,
            in_flight: u64,
            requests: u64,
        }
        let at = Instant::now();
        let timeout = Duration::from_secs(2);
        let backends: Vec<Backend> = http
            .get(format!("http://{admin}/backends"))
            .timeout(timeout)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let metrics = http
            .get(format!("http://{admin}/metrics"))
            .timeout(timeout)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(LbSample {
            at,
            in_flight: backends
                .iter()
                .filter(|b| !b.draining)
                .map(|b| b.in_flight as f64)
                .sum(),
            requests: backends.iter().map(|b| b.requests).sum(),
            buckets: latency_buckets(&metrics),
        })
    }

    /// The observation between `previous` and this sample.
    fn observe(&self, previous: &LbSample, current: usize) -> WebObservation {
        let secs = self.at.duration_since(previous.at).as_secs_f64().max(1e-3);
        // A removed backend's counter leaves the sum: never a negative rate.
        let requests = self.requests.saturating_sub(previous.requests);
        let delta: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = previous
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |(_, n)| *n);
                (le, (n - before).max(0.0))
            })
            .collect();
        WebObservation {
            current,
            in_flight: self.in_flight,
            rps: requests as f64 / secs,
            p99_ms: quantile(&delta, 0.99).map(|s| s * 1000.0),
        }
    }
}

/// `scalestack_lb_backend_latency_seconds_bucket` summed over backends, by
/// upper bound, ascending.
fn latency_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut sums: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("scalestack_lb_backend_latency_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'))
            .and_then(|v| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse().ok()
                }
            });
        let (Some(le), Ok(n)) = (le, value.trim().parse::<f64>()) else {
            continue;
        };
        match sums.iter_mut().find(|(l, _)| *l == le) {
            Some((_, total)) => *total += n,
            None => sums.push((le, n)),
        }
    }
    sums.sort_by(|a, b| a.0.total_cmp(&b.0));
    sums
}

/// The `q` quantile of a cumulative histogram (Prometheus's
/// `histogram_quantile`: linear inside the bucket); `None` when empty.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = n - lower.1;
            let within = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_sum_over_backends() {
        let text = "\
# TYPE scalestack_lb_backend_latency_seconds histogram
scalestack_lb_backend_latency_seconds_bucket{backend=\"a\",le=\"0.01\"} 90
scalestack_lb_backend_latency_seconds_bucket{backend=\"a\",le=\"0.1\"} 99
scalestack_lb_backend_latency_seconds_bucket{backend=\"a\",le=\"+Inf\"} 100
scalestack_lb_backend_latency_seconds_bucket{backend=\"b\",le=\"0.01\"} 10
scalestack_lb_backend_latency_seconds_bucket{backend=\"b\",le=\"0.1\"} 100
scalestack_lb_backend_latency_seconds_bucket{backend=\"b\",le=\"+Inf\"} 100
scalestack_lb_backend_latency_seconds_sum{backend=\"a\"} 3
";
        let b = latency_buckets(text);
        assert_eq!(b, vec![(0.01, 100.0), (0.1, 199.0), (f64::INFINITY, 200.0)]);
        // Rank 198 of 200 lies in (0.01, 0.1]: 98 of its 99.
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 98.0 / 99.0)).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.99), None);
        assert_eq!(quantile(&[(0.1, 1.0), (f64::INFINITY, 5.0)], 0.99), Some(0.1));
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let a = LbSample {
            at: t0,
            in_flight: 0.0,
            requests: 1000,
            buckets: vec![(0.01, 10.0), (f64::INFINITY, 10.0)],
        };
        let b = LbSample {
            at: t0 + Duration::from_secs(2),
            in_flight: 7.0,
            requests: 1400,
            buckets: vec![(0.01, 10.0), (0.5, 0.0), (f64::INFINITY, 110.0)],
        };
        let o = b.observe(&a, 3);
        assert_eq!(o.current, 3);
        assert_eq!(o.in_flight, 7.0);
        assert!((o.rps - 200.0).abs() < 1e-9);
        assert_eq!(o.p99_ms, Some(500.0), "every new request above 0.5 s");
        // A counter that went down (a backend removed) is no negative rate.
        assert_eq!(a.observe(&b, 3).rps, 0.0);
    }
}
