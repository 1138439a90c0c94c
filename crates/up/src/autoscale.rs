//! The autoscaler's pure decision core: observations in, a desired replica
//! count (with its reason) out. No I/O and no clock of its own: the loop in
//! `up` samples the queue and the load balancer, passes the time, and
//! applies [`Decision::desired`] through `Orchestrator::scale`.
//!
//! Both tiers follow Kubernetes HPA's rules: a recommendation from the
//! signal against its target, clamped to `[min, max]`; scaling up at once;
//! scaling down only to the highest recommendation seen during the
//! stabilisation window, so a dip does not make the count flap.

use crate::role::MAX_COPIES;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The topology's `[autoscale]` section: one optional table per tier.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSection {
    /// `[autoscale.worker]`; absent: workers keep the topology's count.
    #[serde(default)]
    pub worker: Option<WorkerAutoscale>,
    /// `[autoscale.web]`; absent: web servers keep the topology's count.
    #[serde(default)]
    pub web: Option<WebAutoscale>,
}

impl AutoscaleSection {
    /// Checks every tier present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.worker.as_ref().map_or(Ok(()), WorkerAutoscale::validate)?;
        self.web.as_ref().map_or(Ok(()), WebAutoscale::validate)
    }
}

/// `[autoscale.worker]`: workers sized by queue depth.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerAutoscale {
    /// Fewest workers; 0 allows scale to zero. Default 0.
    pub min: usize,
    /// Most workers, at most 64. Default 8.
    pub max: usize,
    /// Jobs (waiting plus in flight) one worker should carry. Default 10.
    pub target_backlog: u64,
    /// Jobs needed to go from 0 workers to 1. Default 1.
    pub activation: u64,
    /// Down-scale stabilisation window in seconds. Default 30.
    pub stabilization_secs: u64,
    /// How often the loop decides, in milliseconds. Default 1000.
    pub interval_ms: u64,
}

impl Default for WorkerAutoscale {
    fn default() -> Self {
        Self {
            min: 0,
            max: 8,
            target_backlog: 10,
            activation: 1,
            stabilization_secs: 30,
            interval_ms: 1000,
        }
    }
}

/// `[autoscale.web]`: web servers sized by the load balancer's figures. At
/// least one target must be set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebAutoscale {
    /// Fewest servers, at least 1 (the LB needs one). Default 1.
    pub min: usize,
    /// Most servers, at most 64. Default 8.
    pub max: usize,
    /// In-flight requests per server. Default unset.
    pub target_in_flight: Option<f64>,
    /// Requests per second per server. Default unset.
    pub target_rps: Option<f64>,
    /// p99 latency in milliseconds; only ever scales up. Default unset.
    pub target_p99_ms: Option<f64>,
    /// Ratios within `1 ± tolerance` keep the count (as HPA). Default 0.1.
    pub tolerance: f64,
    /// Down-scale stabilisation window in seconds. Default 60.
    pub stabilization_secs: u64,
    /// How often the loop decides, in milliseconds. Default 1000.
    pub interval_ms: u64,
}

impl Default for WebAutoscale {
    fn default() -> Self {
        Self {
            min: 1,
            max: 8,
            target_in_flight: None,
            target_rps: None,
            target_p99_ms: None,
            tolerance: 0.1,
            stabilization_secs: 60,
            interval_ms: 1000,
        }
    }
}

/// A refused autoscale setting, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The full key, e.g. `autoscale.web.min`.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn ensure(ok: bool, key: &'static str, problem: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            problem: problem(),
        })
    }
}

fn bounds(tier: [&'static str; 3], min: usize, max: usize, interval_ms: u64) -> Result<(), ConfigError> {
    let [min_key, max_key, interval_key] = tier;
    ensure(max <= MAX_COPIES, max_key, || {
        format!("{max} is above {MAX_COPIES}")
    })?;
    ensure(min <= max, min_key, || format!("{min} is above max ({max})"))?;
    ensure(interval_ms > 0, interval_key, || "must be at least 1".into())
}

impl WorkerAutoscale {
    /// Refuses settings the decision cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let keys = [
            "autoscale.worker.min",
            "autoscale.worker.max",
            "autoscale.worker.interval_ms",
        ];
        bounds(keys, self.min, self.max, self.interval_ms)?;
        ensure(self.target_backlog > 0, "autoscale.worker.target_backlog", || {
            "must be at least 1 job per worker".into()
        })?;
        ensure(self.activation > 0, "autoscale.worker.activation", || {
            "must be at least 1 job (set min = 1 to always keep a worker)".into()
        })
    }

    /// How often the loop should decide.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

impl WebAutoscale {
    /// Refuses settings the decision cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.min >= 1, "autoscale.web.min", || {
            "must be at least 1: the load balancer needs a server".into()
        })?;
        let keys = [
            "autoscale.web.min",
            "autoscale.web.max",
            "autoscale.web.interval_ms",
        ];
        bounds(keys, self.min, self.max, self.interval_ms)?;
        ensure(
            self.target_in_flight.is_some() || self.target_rps.is_some() || self.target_p99_ms.is_some(),
            "autoscale.web",
            || "set at least one of target_in_flight, target_rps, target_p99_ms".into(),
        )?;
        for (key, target) in [
            ("autoscale.web.target_in_flight", self.target_in_flight),
            ("autoscale.web.target_rps", self.target_rps),
            ("autoscale.web.target_p99_ms", self.target_p99_ms),
        ] {
            if let Some(t) = target {
                ensure(t.is_finite() && t > 0.0, key, || {
                    format!("{t} must be a positive number")
                })?;
            }
        }
        ensure(
            (0.0..1.0).contains(&self.tolerance),
            "autoscale.web.tolerance",
            || format!("{} must be at least 0 and below 1", self.tolerance),
        )
    }

    /// How often the loop should decide.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// What the loop sees of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerObservation {
    /// Jobs ready plus jobs in flight.
    pub depth: u64,
    /// Workers running now.
    pub current: usize,
}

/// What the loop sees of the web tier, from the load balancer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebObservation {
    /// Web servers running now.
    pub current: usize,
    /// In-flight requests, summed over the servers.
    pub in_flight: f64,
    /// Requests per second, summed over the servers.
    pub rps: f64,
    /// The p99 latency in milliseconds; `None` without traffic.
    pub p99_ms: Option<f64>,
}

/// What to do now, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The count to scale to (equal to `current`: nothing to do).
    pub desired: usize,
    /// The count this observation alone asks for.
    pub recommended: usize,
    /// The count running when observed.
    pub current: usize,
    /// A sentence naming the signal and its target.
    pub reason: String,
    /// Which signal decided.
    pub metric: &'static str,
    /// Its value per replica.
    pub signal: f64,
    /// Its target per replica.
    pub target: f64,
}

impl Decision {
    /// Whether the loop should call `scale`.
    pub fn changes(&self) -> bool {
        self.desired != self.current
    }
}

/// A tier's rules: how an observation becomes a recommendation.
pub trait Policy {
    /// What the loop samples for this tier.
    type Observation: Copy;
    /// The down-scale stabilisation window.
    fn stabilization(&self) -> Duration;
    /// The count the observation alone asks for, clamped to `[min, max]`,
    /// as a decision with `desired == recommended`.
    fn recommend(&self, obs: &Self::Observation) -> Decision;
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Clamps `raw` to `[min, max]`, with a note for the reason when it did.
fn clamp(raw: usize, min: usize, max: usize) -> (usize, String) {
    if raw > max {
        (max, format!(" (capped at max {max})"))
    } else if raw < min {
        (min, format!(" (held at min {min})"))
    } else {
        (raw, String::new())
    }
}

impl Policy for WorkerAutoscale {
    type Observation = WorkerObservation;

    fn stabilization(&self) -> Duration {
        Duration::from_secs(self.stabilization_secs)
    }

    fn recommend(&self, obs: &WorkerObservation) -> Decision {
        let (depth, current) = (obs.depth, obs.current);
        let (raw, head) = if current == 0 && depth < self.activation {
            // Scale to zero: a trickle below the activation threshold does
            // not wake a worker.
            (
                0,
                format!("queue depth {depth} below activation {}", self.activation),
            )
        } else {
            // depth >= activation >= 1 when current == 0, so raw >= 1.
            let raw = usize::try_from(depth.div_ceil(self.target_backlog)).unwrap_or(usize::MAX);
            let capacity = self.target_backlog.saturating_mul(current as u64);
            let op = match depth.cmp(&capacity) {
                std::cmp::Ordering::Greater => ">",
                std::cmp::Ordering::Less => "<",
                std::cmp::Ordering::Equal => "=",
            };
            let per = format!(
                "{} per worker × {}",
                self.target_backlog,
                plural(current, "worker")
            );
            (raw, format!("queue depth {depth} {op} {per}"))
        };
        let (recommended, note) = clamp(raw, self.min, self.max);
        Decision {
            desired: recommended,
            recommended,
            current,
            reason: format!("{head}: {}{note}", plural(recommended, "worker")),
            metric: "queue depth per worker",
            signal: depth as f64 / current.max(1) as f64,
            target: self.target_backlog as f64,
        }
    }
}

impl Policy for WebAutoscale {
    type Observation = WebObservation;

    fn stabilization(&self) -> Duration {
        Duration::from_secs(self.stabilization_secs)
    }

    fn recommend(&self, obs: &WebObservation) -> Decision {
        // No server should not happen (min >= 1); size as if at min.
        let current = if obs.current == 0 { self.min } else { obs.current };
        let n = current as f64;
        // (ratio, metric, value per server, target per server)
        let mut driver: Option<(f64, &'static str, f64, f64)> = None;
        let mut consider = |ratio: f64, metric, value, target| {
            if ratio.is_finite() && driver.is_none_or(|(r, ..)| ratio > r) {
                driver = Some((ratio, metric, value, target));
            }
        };
        for (metric, total, target) in [
            (
                "in-flight requests per server",
                obs.in_flight,
                self.target_in_flight,
            ),
            ("requests/s per server", obs.rps, self.target_rps),
        ] {
            if let Some(t) = target {
                let per = total.max(0.0) / n;
                consider(per / t, metric, per, t);
            }
        }
        // p99 only ever asks for more servers: a fast tier says nothing
        // about how few servers would stay fast.
        if let (Some(p99), Some(t)) = (obs.p99_ms, self.target_p99_ms) {
            if p99 > t {
                consider(p99 / t, "p99 ms", p99, t);
            }
        }
        let servers = plural(current, "web server");
        let (raw, head, metric, signal, target) = match driver {
            // Only a p99 target, and p99 within it (or unknown).
            None => {
                let p99 = obs.p99_ms.unwrap_or(0.0);
                let t = self.target_p99_ms.unwrap_or(0.0);
                let head = format!("p99 ms {p99:.1} within target {t} × {servers}");
                (current, head, "p99 ms", p99, t)
            }
            Some((ratio, metric, value, t)) => {
                let within = (ratio - 1.0).abs() <= self.tolerance;
                // The epsilon keeps 3 × (2/3) at 2, not 3.
                let raw = if within {
                    current
                } else {
                    (n * ratio - 1e-9).ceil().max(0.0) as usize
                };
                let op = if within {
                    format!("within {:.0}% of", self.tolerance * 100.0)
                } else if ratio > 1.0 {
                    ">".into()
                } else {
                    "<".into()
                };
                (
                    raw,
                    format!("{metric} {value:.1} {op} target {t} × {servers}"),
                    metric,
                    value,
                    t,
                )
            }
        };
        let (recommended, note) = clamp(raw, self.min, self.max);
        Decision {
            desired: recommended,
            recommended,
            current: obs.current,
            reason: format!("{head}: {}{note}", plural(recommended, "web server")),
            metric,
            signal,
            target,
        }
    }
}

/// One tier's autoscaler: its policy and the recommendations seen during
/// the stabilisation window. Time is passed in, never read.
#[derive(Debug, Clone)]
pub struct Scaler<P: Policy> {
    policy: P,
    history: VecDeque<(Instant, usize)>,
}

/// The workers' autoscaler.
pub type WorkerScaler = Scaler<WorkerAutoscale>;
/// The web tier's autoscaler.
pub type WebScaler = Scaler<WebAutoscale>;

impl<P: Policy> Scaler<P> {
    /// A scaler with an empty history (the first decision may scale down
    /// at once: nothing higher has been seen).
    pub fn new(policy: P) -> Self {
        Self {
            policy,
            history: VecDeque::new(),
        }
    }

    /// The tier's settings.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Decides from one observation taken at `now` (calls must not go back
    /// in time).
    pub fn decide(&mut self, obs: P::Observation, now: Instant) -> Decision {
        let mut decision = self.policy.recommend(&obs);
        let (recommended, current) = (decision.recommended, decision.current);
        let window = self.policy.stabilization();
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > window)
        {
            self.history.pop_front();
        }
        let peak = self.history.iter().map(|&(_, r)| r).max().unwrap_or(0);
        self.history.push_back((now, recommended));
        // Up at once; down at once only when nothing higher was seen.
        if recommended < current && peak > recommended {
            decision.desired = peak.min(current);
            decision.reason = format!(
                "stabilising: recommendation {recommended} but {peak} seen in the last {} s ({})",
                window.as_secs(),
                decision.reason
            );
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    fn workers(depth: u64, current: usize) -> WorkerObservation {
        WorkerObservation { depth, current }
    }

    fn web(current: usize, in_flight: f64, rps: f64, p99_ms: Option<f64>) -> WebObservation {
        WebObservation {
            current,
            in_flight,
            rps,
            p99_ms,
        }
    }

    fn in_flight_10() -> WebAutoscale {
        WebAutoscale {
            target_in_flight: Some(10.0),
            ..WebAutoscale::default()
        }
    }

    /// Feeds a depth trace once a second, applying each decision as the loop
    /// would; returns the counts and the number of scale events.
    fn run(scaler: &mut WorkerScaler, trace: &[u64], start: usize) -> (Vec<usize>, usize) {
        let t0 = Instant::now();
        let (mut current, mut events, mut counts) = (start, 0, vec![]);
        for (s, &depth) in trace.iter().enumerate() {
            let d = scaler.decide(workers(depth, current), at(t0, s as u64));
            if d.changes() {
                events += 1;
                current = d.desired;
            }
            counts.push(current);
        }
        (counts, events)
    }

    #[test]
    fn worker_burst_scales_up_at_once_to_max() {
        let mut s = Scaler::new(WorkerAutoscale::default());
        let d = s.decide(workers(1000, 1), Instant::now());
        assert_eq!((d.desired, d.recommended), (8, 8));
        assert_eq!(
            d.reason,
            "queue depth 1000 > 10 per worker × 1 worker: 8 workers (capped at max 8)"
        );
        assert_eq!((d.signal, d.target), (1000.0, 10.0));
    }

    #[test]
    fn worker_reason_names_signal_and_target() {
        let d = Scaler::new(WorkerAutoscale::default()).decide(workers(57, 3), Instant::now());
        assert_eq!(d.desired, 6);
        assert_eq!(d.reason, "queue depth 57 > 10 per worker × 3 workers: 6 workers");
    }

    #[test]
    fn drain_back_to_min_only_after_the_window() {
        let mut s = Scaler::new(WorkerAutoscale::default());
        let t0 = Instant::now();
        assert_eq!(s.decide(workers(80, 2), t0).desired, 8);
        for sec in 1..=30 {
            let d = s.decide(workers(0, 8), at(t0, sec));
            assert_eq!(d.desired, 8, "at {sec} s");
            assert_eq!(d.recommended, 0);
        }
        let d = s.decide(workers(0, 8), at(t0, 30));
        assert!(
            d.reason
                .starts_with("stabilising: recommendation 0 but 8 seen in the last 30 s"),
            "{}",
            d.reason
        );
        assert_eq!(s.decide(workers(0, 8), at(t0, 31)).desired, 0);
    }

    #[test]
    fn down_steps_to_the_window_peak_below_current() {
        let mut s = Scaler::new(WorkerAutoscale::default());
        let t0 = Instant::now();
        s.decide(workers(40, 4), t0);
        // 8 running (set by hand), peak 4 seen: go down to 4, not to 1.
        let d = s.decide(workers(5, 8), at(t0, 1));
        assert_eq!((d.desired, d.recommended), (4, 1));
    }

    #[test]
    fn no_flapping_when_depth_oscillates_around_a_threshold() {
        // 25 asks for 3 workers, 35 for 4: two minutes of oscillation, then
        // a drain.
        let mut trace: Vec<u64> = (0..120).map(|i| if i % 2 == 0 { 25 } else { 35 }).collect();
        trace.extend([0; 60]);
        let (counts, events) = run(&mut Scaler::new(WorkerAutoscale::default()), &trace, 3);
        assert_eq!(events, 2, "{counts:?}");
        assert_eq!(counts[119], 4);
        assert_eq!(*counts.last().unwrap(), 0);
        // Without a window the same trace flaps on every sample.
        let flappy = WorkerAutoscale {
            stabilization_secs: 0,
            ..WorkerAutoscale::default()
        };
        let (_, events) = run(&mut Scaler::new(flappy), &trace, 3);
        assert!(events > 100, "{events}");
    }

    #[test]
    fn scale_to_zero_and_activation() {
        let cfg = WorkerAutoscale {
            activation: 5,
            stabilization_secs: 0,
            ..WorkerAutoscale::default()
        };
        let mut s = Scaler::new(cfg);
        let t0 = Instant::now();
        let d = s.decide(workers(4, 0), t0);
        assert_eq!(d.desired, 0);
        assert_eq!(d.reason, "queue depth 4 below activation 5: 0 workers");
        assert_eq!(s.decide(workers(5, 0), at(t0, 1)).desired, 1);
        // The threshold gates 0 → 1 only: a running worker stays for 2 jobs.
        assert_eq!(s.decide(workers(2, 1), at(t0, 2)).desired, 1);
        assert_eq!(s.decide(workers(0, 1), at(t0, 3)).desired, 0);
    }

    #[test]
    fn worker_clamping() {
        let cfg = WorkerAutoscale {
            min: 2,
            max: 4,
            ..WorkerAutoscale::default()
        };
        let now = Instant::now();
        let d = Scaler::new(cfg.clone()).decide(workers(0, 0), now);
        assert_eq!(d.desired, 2);
        assert!(d.reason.ends_with("(held at min 2)"), "{}", d.reason);
        assert_eq!(Scaler::new(cfg).decide(workers(u64::MAX, 3), now).desired, 4);
        let off = WorkerAutoscale {
            max: 0,
            ..WorkerAutoscale::default()
        };
        assert_eq!(Scaler::new(off).decide(workers(100, 0), now).desired, 0);
    }

    #[test]
    fn web_tolerance_keeps_the_count() {
        let now = Instant::now();
        // 10.5 per server against 10: within 10 %.
        let d = Scaler::new(in_flight_10()).decide(web(4, 42.0, 0.0, None), now);
        assert_eq!((d.desired, d.changes()), (4, false));
        assert_eq!(
            d.reason,
            "in-flight requests per server 10.5 within 10% of target 10 × 4 web servers: 4 web servers"
        );
        let d = Scaler::new(in_flight_10()).decide(web(4, 60.0, 0.0, None), now);
        assert_eq!(d.desired, 6);
        let strict = WebAutoscale {
            tolerance: 0.0,
            ..in_flight_10()
        };
        assert_eq!(
            Scaler::new(strict).decide(web(4, 42.0, 0.0, None), now).desired,
            5
        );
    }

    #[test]
    fn web_ceil_is_exact_and_takes_the_highest_ratio() {
        let now = Instant::now();
        let cfg = WebAutoscale {
            target_rps: Some(100.0),
            ..in_flight_10()
        };
        // in-flight 20/3 per server (ratio 2/3), rps 100 per server (1.0).
        assert_eq!(
            Scaler::new(in_flight_10())
                .decide(web(3, 20.0, 0.0, None), now)
                .desired,
            2
        );
        let d = Scaler::new(cfg).decide(web(3, 20.0, 600.0, None), now);
        assert_eq!(
            (d.desired, d.metric, d.signal, d.target),
            (6, "requests/s per server", 200.0, 100.0)
        );
    }

    #[test]
    fn web_scales_down_after_the_window_to_min() {
        let mut s = Scaler::new(in_flight_10());
        let t0 = Instant::now();
        assert_eq!(s.decide(web(4, 40.0, 0.0, None), t0).desired, 4);
        let d = s.decide(web(4, 1.0, 0.0, None), at(t0, 60));
        assert_eq!((d.desired, d.recommended), (4, 1));
        assert_eq!(s.decide(web(4, 1.0, 0.0, None), at(t0, 61)).desired, 1);
    }

    #[test]
    fn p99_drives_up_but_never_down() {
        let now = Instant::now();
        let cfg = WebAutoscale {
            target_rps: Some(100.0),
            target_p99_ms: Some(200.0),
            ..WebAutoscale::default()
        };
        // 75 rps per server would keep 3 of 4, but p99 is twice its target.
        let d = Scaler::new(cfg.clone()).decide(web(4, 0.0, 300.0, Some(400.0)), now);
        assert_eq!((d.desired, d.metric), (8, "p99 ms"));
        // A fast tier does not hold servers the rate does not need.
        assert_eq!(
            Scaler::new(cfg.clone())
                .decide(web(4, 0.0, 100.0, Some(20.0)), now)
                .desired,
            1
        );
        // Nor does it remove servers the rate needs.
        assert_eq!(
            Scaler::new(cfg)
                .decide(web(4, 0.0, 400.0, Some(20.0)), now)
                .desired,
            4
        );
        // p99 alone: fast keeps the count, slow adds.
        let p99 = WebAutoscale {
            target_p99_ms: Some(200.0),
            ..WebAutoscale::default()
        };
        assert_eq!(
            Scaler::new(p99.clone())
                .decide(web(4, 0.0, 0.0, Some(20.0)), now)
                .desired,
            4
        );
        assert_eq!(
            Scaler::new(p99.clone())
                .decide(web(4, 0.0, 0.0, None), now)
                .desired,
            4
        );
        assert_eq!(
            Scaler::new(p99)
                .decide(web(4, 0.0, 0.0, Some(300.0)), now)
                .desired,
            6
        );
    }

    #[test]
    fn web_with_no_server_goes_to_min() {
        let cfg = WebAutoscale {
            min: 2,
            ..in_flight_10()
        };
        let d = Scaler::new(cfg).decide(web(0, 0.0, 0.0, None), Instant::now());
        assert_eq!((d.desired, d.current, d.changes()), (2, 0, true));
    }

    #[test]
    fn validation_names_the_key() {
        let web = "[web]\ntarget_in_flight = 10\n";
        for (text, key) in [
            ("[worker]\nmin = 3\nmax = 2", "autoscale.worker.min"),
            ("[worker]\nmax = 65", "autoscale.worker.max"),
            ("[worker]\ntarget_backlog = 0", "autoscale.worker.target_backlog"),
            ("[worker]\nactivation = 0", "autoscale.worker.activation"),
            ("[worker]\ninterval_ms = 0", "autoscale.worker.interval_ms"),
            ("[web]\nmax = 4", "autoscale.web"),
            (&format!("{web}min = 0"), "autoscale.web.min"),
            (&format!("{web}min = 9"), "autoscale.web.min"),
            (&format!("{web}max = 100"), "autoscale.web.max"),
            (&format!("{web}tolerance = 1.0"), "autoscale.web.tolerance"),
            (&format!("{web}tolerance = -0.1"), "autoscale.web.tolerance"),
            (&format!("{web}target_rps = 0"), "autoscale.web.target_rps"),
            (
                &format!("{web}target_p99_ms = nan"),
                "autoscale.web.target_p99_ms",
            ),
            (&format!("{web}interval_ms = 0"), "autoscale.web.interval_ms"),
        ] {
            let section: AutoscaleSection = toml::from_str(text).unwrap();
            assert_eq!(section.validate().unwrap_err().key, key, "{text}");
        }
        let e = WebAutoscale {
            min: 0,
            ..in_flight_10()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "autoscale.web.min: must be at least 1: the load balancer needs a server"
        );
        assert_eq!(WorkerAutoscale::default().validate(), Ok(()));
        assert_eq!(in_flight_10().validate(), Ok(()));
    }

    #[test]
    fn toml_shape() {
        #[derive(Deserialize)]
        struct File {
            autoscale: AutoscaleSection,
        }
        let text = "[autoscale.worker]\nmax = 16\ntarget_backlog = 5\n\n\
                    [autoscale.web]\nmin = 2\ntarget_rps = 200\ntarget_p99_ms = 250.5\n";
        let s = toml::from_str::<File>(text).unwrap().autoscale;
        s.validate().unwrap();
        let w = s.worker.unwrap();
        assert_eq!(
            w,
            WorkerAutoscale {
                max: 16,
                target_backlog: 5,
                ..WorkerAutoscale::default()
            }
        );
        assert_eq!(w.interval(), Duration::from_secs(1));
        let web = s.web.unwrap();
        assert_eq!(
            (web.min, web.max, web.target_rps, web.target_p99_ms),
            (2, 8, Some(200.0), Some(250.5))
        );
        assert_eq!(
            (web.target_in_flight, web.tolerance, web.stabilization_secs),
            (None, 0.1, 60)
        );
        assert_eq!(
            toml::from_str::<File>("[autoscale]\n").unwrap().autoscale,
            AutoscaleSection::default()
        );
        let err = toml::from_str::<File>("[autoscale.worker]\nmaximum = 3\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("maximum"), "{err}");
        assert!(toml::from_str::<File>("[autoscale.gpu]\n").is_err());
        let empty_web = toml::from_str::<File>("[autoscale.web]\n").unwrap().autoscale;
        assert_eq!(empty_web.validate().unwrap_err().key, "autoscale.web");
    }
}
