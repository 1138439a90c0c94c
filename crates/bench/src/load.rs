//! The load generator: HTTP/1.1 keep-alive connections, one tokio task each,
//! spread over `threads` OS threads that each run a current-thread runtime.
//!
//! Closed loop: a connection sends its next request as soon as the previous
//! response is read. Open loop: request `i` (over all connections) is due at
//! `start + i / rate` and runs on connection `i mod connections`; its latency
//! counts from that intended time, so a server that stalls is charged for the
//! requests queued behind the stall (no coordinated omission, as in wrk2).
//! Every request due before the end is sent unless it can no longer finish
//! within `timeout` of its due time, in which case it counts as an error.
//!
//! With `keys`, each request asks for one of many URLs, drawn from a Zipf
//! distribution as a pure function of the seed and the request's place (its
//! index on its connection in closed loop, in the schedule in open loop),
//! so runs with the same options send the same keys. With `max_requests`
//! the run also ends once that many requests were sent (in closed loop each
//! connection sends its even share, so 100 requests over 100 connections
//! are 100 concurrent requests: a stampede).

use crate::keys::Zipf;
use crate::parse::{Response, ResponseParser};
use crate::report::{Mode, Report};
use crate::target::Target;
use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest latency the histogram tracks exactly; longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Pause after a failed connect, so a refused port does not turn into a busy loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Everything one load run needs, already validated.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The URL to `GET`.
    pub target: Target,
    /// Concurrent keep-alive connections (at least 1).
    pub connections: usize,
    /// OS threads the connections are spread over (at least 1, at most `connections`).
    pub threads: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Time spent loading before measuring starts; its requests are not recorded.
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; closed loop when `None`.
    pub rate: Option<u64>,
    /// How long one request may take before it counts as an error and its connection is replaced.
    pub timeout: Duration,
    /// Spread the requests over this distribution's keys (the key's number
    /// appended to the URL's path); `None`: every request to the URL.
    pub keys: Option<Zipf>,
    /// End the run once this many requests were sent in total (warm-up
    /// included), or at the end of the duration, whichever comes first;
    /// `None`: at the end of the duration.
    pub max_requests: Option<u64>,
}

impl LoadConfig {
    /// Runs the load and returns its report; blocks the calling thread (which
    /// must not be inside a tokio runtime) for about `warmup + duration`.
    pub fn run(&self) -> anyhow::Result<Report> {
        run(self)
    }

    /// Closed or open loop.
    pub fn mode(&self) -> Mode {
        if self.rate.is_some() {
            Mode::Open
        } else {
            Mode::Closed
        }
    }
}

/// The shared, read-only state of a run.
struct Plan {
    config: LoadConfig,
    /// When the warmup begins; the open-loop schedule counts from here.
    start: Instant,
    /// When measuring begins (end of warmup).
    measure_from: Instant,
    /// When no new request is started any more.
    end: Instant,
    /// The request of every key (one, the URL's, without `keys`).
    requests: Vec<Bytes>,
}

/// The stream of key draws of the open-loop schedule; closed-loop
/// connections draw from the stream of their index.
const SCHEDULE_STREAM: u64 = u64::MAX;

impl Plan {
    /// The request to send as request `index` of `stream`.
    fn request(&self, stream: u64, index: u64) -> &Bytes {
        match &self.config.keys {
            Some(keys) => &self.requests[keys.key(stream, index)],
            None => &self.requests[0],
        }
    }

    /// How many requests closed-loop connection `connection` may send.
    fn share(&self, connection: usize) -> Option<u64> {
        let total = self.config.max_requests?;
        let connections = self.config.connections as u64;
        let connection = connection as u64;
        Some(total / connections + u64::from(connection < total % connections))
    }
}

/// What one connection (and then one thread) measured.
struct Tally {
    latency: Histogram<u64>,
    errors: u64,
    non_2xx: u64,
    /// When the last recorded exchange finished.
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        let latency =
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid");
        Self {
            latency,
            errors: 0,
            non_2xx: 0,
            last_done: None,
        }
    }

    fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds and values are clamped, so this cannot fail.
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        self.non_2xx += other.non_2xx;
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// See [`LoadConfig::run`].
fn run(config: &LoadConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(config.connections >= 1, "connections must be at least 1");
    anyhow::ensure!(
        (1..=config.connections).contains(&config.threads),
        "threads must be between 1 and the number of connections"
    );
    anyhow::ensure!(
        config.rate != Some(0),
        "rate must be at least 1 request per second"
    );

    let requests = match &config.keys {
        Some(keys) => (0..keys.len()).map(|k| config.target.keyed_request(k)).collect(),
        None => vec![config.target.request.clone()],
    };
    // A short delay lets every thread build its runtime before the clock starts.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + config.warmup;
    let plan = Arc::new(Plan {
        config: config.clone(),
        start,
        measure_from,
        end: measure_from + config.duration,
        requests,
    });

    let mut threads = Vec::with_capacity(config.threads);
    for thread in 0..config.threads {
        let plan = Arc::clone(&plan);
        let handle = std::thread::Builder::new()
            .name(format!("bench-load-{thread}"))
            .spawn(move || -> anyhow::Result<Tally> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the load thread's runtime")?;
                runtime.block_on(run_thread(plan, thread))
            })
            .context("spawning a load thread")?;
        threads.push(handle);
    }

    let mut total = Tally::new();
    for handle in threads {
        let tally = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        total.merge(&tally);
    }
    // The window ends at `end`, or later if responses to requests started
    // before `end` were still arriving.
    // A run cut short by `max_requests` ends with its last answer.
    let finished = match (total.last_done, config.max_requests) {
        (Some(done), Some(_)) => done,
        (done, _) => done.map_or(plan.end, |done| done.max(plan.end)),
    };
    let measured = finished.saturating_duration_since(plan.measure_from);
    Ok(Report::new(
        &total.latency,
        measured,
        total.errors,
        total.non_2xx,
        config.mode(),
        config.connections,
        config.rate,
    ))
}

/// Drives this thread's share of the connections: those whose index is
/// `thread` modulo the number of threads.
async fn run_thread(plan: Arc<Plan>, thread: usize) -> anyhow::Result<Tally> {
    let mut tasks = JoinSet::new();
    for connection in (thread..plan.config.connections).step_by(plan.config.threads) {
        let plan = Arc::clone(&plan);
        tasks.spawn(async move { run_connection(&plan, connection).await });
    }
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(&joined.context("a connection task failed")?);
    }
    Ok(total)
}

/// One connection's loop: connect, exchange requests until the end of the
/// run, and reconnect after an error or a response that closes the connection.
async fn run_connection(plan: &Plan, connection: usize) -> Tally {
    let config = &plan.config;
    let mut tally = Tally::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut schedule = config.rate.map(|rate| Schedule {
        rate,
        next_index: connection as u64,
        stride: config.connections as u64,
        limit: config.max_requests.unwrap_or(u64::MAX),
    });
    // Closed loop: requests sent so far, and how many this connection may send.
    let mut sent = 0u64;
    let share = plan.share(connection).unwrap_or(u64::MAX);
    // When this connection last finished an exchange; a request due before
    // then waited for the connection, i.e. for the server.
    let mut free_since = plan.start;
    // Closed loop too starts with the clock, so that with no warmup every
    // request is recorded.
    tokio::time::sleep_until(plan.start).await;

    'connect: loop {
        let now = Instant::now();
        match &mut schedule {
            None if now >= plan.end || sent >= share => break,
            None => {}
            Some(schedule) => {
                schedule.expire(plan, &mut tally, now);
                if schedule.peek(plan).is_none() {
                    break;
                }
            }
        }
        let mut stream =
            match tokio::time::timeout(config.timeout, TcpStream::connect(config.target.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) | Err(_) => {
                    if Instant::now() >= plan.measure_from {
                        tally.errors += 1;
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            };
        // Requests are small and sent whole: do not let Nagle delay them.
        let _ = stream.set_nodelay(true);
        buf.clear();
        let mut parser = ResponseParser::new();
        free_since = free_since.max(Instant::now());

        loop {
            let (measured_from, deadline, recorded, request) = match &mut schedule {
                None => {
                    let now = Instant::now();
                    if now >= plan.end || sent >= share {
                        break 'connect;
                    }
                    let request = plan.request(connection as u64, sent);
                    sent += 1;
                    (now, now + config.timeout, now >= plan.measure_from, request)
                }
                Some(schedule) => {
                    schedule.expire(plan, &mut tally, Instant::now());
                    let Some(due) = schedule.peek(plan) else {
                        break 'connect;
                    };
                    let request = plan.request(SCHEDULE_STREAM, schedule.next_index);
                    schedule.next_index += schedule.stride;
                    tokio::time::sleep_until(due).await;
                    // A request due while the connection was busy is charged from
                    // its due time; one due while it was idle is charged from when
                    // it was sent, so the timer's millisecond slack (ours, not the
                    // server's) is not counted.
                    let from = if free_since > due { due } else { Instant::now() };
                    (from, due + config.timeout, due >= plan.measure_from, request)
                }
            };

            let exchange =
                tokio::time::timeout_at(deadline, exchange(&mut stream, &mut buf, &mut parser, request))
                    .await;
            let done = Instant::now();
            free_since = done;
            match exchange {
                Ok(Ok(response)) => {
                    if recorded {
                        let us =
                            u64::try_from(done.duration_since(measured_from).as_micros()).unwrap_or(u64::MAX);
                        tally.latency.saturating_record(us.min(MAX_LATENCY_US));
                        if !(200..300).contains(&response.status) {
                            tally.non_2xx += 1;
                        }
                        tally.last_done = Some(done);
                    }
                    if !response.keep_alive {
                        continue 'connect;
                    }
                }
                // The connection's state is unknown after an error or a timeout: replace it.
                Ok(Err(_)) | Err(_) => {
                    if recorded {
                        tally.errors += 1;
                    }
                    continue 'connect;
                }
            }
        }
    }
    tally
}

/// One connection's share of the open-loop schedule.
struct Schedule {
    /// Requests per second over all connections.
    rate: u64,
    /// Overall index of this connection's next request.
    next_index: u64,
    /// Number of connections: the distance between this connection's requests.
    stride: u64,
    /// Requests of the whole schedule: none is due from this index on.
    limit: u64,
}

impl Schedule {
    /// When the next request is due, or `None` once the next one falls after the run.
    fn peek(&self, plan: &Plan) -> Option<Instant> {
        if self.next_index >= self.limit {
            return None;
        }
        let due = plan.start + intended_offset(self.next_index, self.rate);
        (due < plan.end).then_some(due)
    }

    /// Skips requests that could no longer finish within the timeout of their
    /// due time, counting each as an error: a server that falls far behind
    /// loses them, and the run ends at most one timeout after its end.
    fn expire(&mut self, plan: &Plan, tally: &mut Tally, now: Instant) {
        while let Some(due) = self.peek(plan) {
            if due + plan.config.timeout > now {
                break;
            }
            if due >= plan.measure_from {
                tally.errors += 1;
            }
            self.next_index += self.stride;
        }
    }
}

/// When request `index` is due, relative to the start of the run.
fn intended_offset(index: u64, rate: u64) -> Duration {
    let nanos = u128::from(index) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Sends one request and reads its whole response.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    parser: &mut ResponseParser,
    request: &[u8],
) -> std::io::Result<Response> {
    stream.write_all(request).await?;
    loop {
        if let Some(response) = parser.parse(buf)? {
            // Without pipelining nothing may follow a response; drop any stray bytes.
            buf.clear();
            return Ok(response);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(parser.eof()?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_evenly_spaced() {
        assert_eq!(intended_offset(0, 1000), Duration::ZERO);
        assert_eq!(intended_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(intended_offset(3, 4), Duration::from_millis(750));
        assert_eq!(intended_offset(20_000, 20_000), Duration::from_secs(1));
    }
}
