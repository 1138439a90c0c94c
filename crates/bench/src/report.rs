//! The result of a load run: counts, throughput and latency percentiles.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Whether requests follow responses or a fixed schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous answer is read.
    Closed,
    /// Requests are sent at fixed intended times, `rate` per second in total.
    Open,
}

/// What `bench http` reports; `--json` prints exactly these fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Responses received in the measured window (any status).
    pub requests: u64,
    /// Length of the measured window, warmup excluded, in seconds.
    pub seconds: f64,
    /// `requests / seconds`.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 90th percentile latency, microseconds.
    pub p90_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// Largest latency seen, microseconds.
    pub max_us: u64,
    /// Connect, write, read, timeout and protocol errors (each one lost request or failed connect).
    pub errors: u64,
    /// Responses whose status was not 2xx (included in `requests`).
    pub non_2xx: u64,
    /// Closed or open loop.
    pub mode: Mode,
    /// Number of concurrent connections.
    pub connections: usize,
    /// Intended requests per second in open loop; `null` in closed loop.
    pub rate: Option<u64>,
}

impl Report {
    /// Summarises a run from its merged latency histogram (microseconds).
    pub(crate) fn new(
        latency: &Histogram<u64>,
        measured: Duration,
        errors: u64,
        non_2xx: u64,
        mode: Mode,
        connections: usize,
        rate: Option<u64>,
    ) -> Self {
        let requests = latency.len();
        let seconds = measured.as_secs_f64();
        let rps = if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        };
        let quantile = |q: f64| {
            if requests == 0 {
                0
            } else {
                latency.value_at_quantile(q)
            }
        };
        Self {
            requests,
            seconds,
            rps,
            p50_us: quantile(0.5),
            p90_us: quantile(0.9),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: if requests == 0 { 0 } else { latency.max() },
            errors,
            non_2xx,
            mode,
            connections,
            rate,
        }
    }
}

/// Formats microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode, self.rate) {
            (Mode::Open, Some(rate)) => writeln!(
                f,
                "open loop at {rate} req/s over {} connections",
                self.connections
            )?,
            _ => writeln!(f, "closed loop over {} connections", self.connections)?,
        }
        writeln!(
            f,
            "  requests  {} in {:.2} s = {:.1} req/s",
            self.requests, self.seconds, self.rps
        )?;
        writeln!(
            f,
            "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )?;
        write!(f, "  errors    {}  non-2xx {}", self.errors, self.non_2xx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for us in 1..=1000 {
            h.record(us).expect("in range");
        }
        let report = Report::new(&h, Duration::from_secs(2), 1, 2, Mode::Open, 8, Some(500));
        let json = serde_json::to_value(&report).expect("serialises");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "requests",
            "seconds",
            "rps",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "non_2xx",
            "mode",
            "connections",
            "rate",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["requests"], 1000);
        assert_eq!(json["rps"], 500.0);
        assert_eq!(json["mode"], "open");
        assert_eq!(json["p50_us"], 500);
        assert_eq!(json["max_us"], 1000);
    }

    #[test]
    fn empty_run_reports_zeros() {
        let h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let report = Report::new(&h, Duration::ZERO, 3, 0, Mode::Closed, 1, None);
        assert_eq!(
            (report.requests, report.rps, report.p99_us, report.max_us),
            (0, 0.0, 0, 0)
        );
        assert!(serde_json::to_value(&report).expect("serialises")["rate"].is_null());
        assert!(report.to_string().contains("errors    3"));
    }
}
