//! `scalestack bench`: a lean HTTP/1.1 load generator (`bench http`) and a
//! minimal backend (`bench serve`), used to compare the project's load
//! balancer with nginx and HAProxy (see `scripts/bench-lb.sh`), and an
//! origin for caches (`bench origin`: cacheable objects, a slow key, a
//! Zipf-addressed set, requests counted per path), used to compare the CDN
//! edge with Varnish, nginx, Squid and Traffic Server
//! (`scripts/bench-cdn.sh`). `bench queue` measures the job queue port on
//! NATS JetStream against a minimal raw `async-nats` client
//! (`scripts/bench-queue.sh`).
//!
//! The generator speaks HTTP/1.1 on plain tokio `TcpStream`s, reads
//! responses with `proxy_core`'s codec (the LB's), runs one task per
//! keep-alive connection, and records latency in an HDR histogram
//! (microseconds, 3 significant digits). It runs closed loop
//! by default, or open loop at a fixed `--rate` with latency measured from
//! each request's intended start, so a stalled server is charged for the
//! queueing it causes. With `--keys N` its requests spread over N URLs
//! with Zipf-distributed popularity, seeded and deterministic (`keys`).

mod keys;
mod load;
mod origin;
mod parse;
mod queue;
mod report;
mod serve;
mod target;

pub use keys::{KeysError, Zipf, MAX_KEYS};
pub use load::LoadConfig;
pub use origin::{Origin, OriginConfig, COUNT_PATH};
pub use queue::{QueueArgs, QueueMode, QueueReport};
pub use report::{Mode, Report};
pub use serve::{shutdown_signal, ServeConfig, Server};
pub use target::{Target, TargetError};

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

/// `scalestack bench`: load generation and a backend to load.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The `bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Load an HTTP/1.1 URL over keep-alive connections and report throughput and latency.
    Http(HttpArgs),
    /// Run a minimal backend answering every request with 200 and a fixed body.
    Serve(ServeArgs),
    /// Run an origin for caches: cacheable objects, a slow key, a Zipf set, requests counted per path.
    Origin(OriginArgs),
    /// Measure jobs/s through the job queue port on NATS JetStream, or through a raw async-nats client.
    Queue(QueueArgs),
}

/// Options of `bench http`.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// URL to GET, e.g. http://127.0.0.1:8080/ (http:// only, no TLS).
    #[arg(long)]
    pub url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 64, value_parser = parse_at_least_one)]
    pub connections: usize,
    /// Measured duration, e.g. 10s or 1m (warmup excluded).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Open loop at this many requests per second in total; closed loop when absent.
    #[arg(long, short = 'R', value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// OS threads driving the connections (at most --connections).
    #[arg(long, short = 't', default_value_t = 1, value_parser = parse_at_least_one)]
    pub threads: usize,
    /// Load applied before measuring starts; its requests are not recorded.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A request unanswered after this long counts as an error and its connection is replaced.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    /// Spread the requests over N URLs: the URL's path with a key number
    /// 0..N appended (http://h/zipf/ asks for /zipf/0 .. /zipf/N-1).
    #[arg(long, value_parser = parse_at_least_one)]
    pub keys: Option<usize>,
    /// Zipf exponent of the keys' popularity (key 0 the most popular;
    /// 0 is uniform). Default 1.0; needs --keys.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Seed of the key draws: the same seed sends the same keys. Default 1;
    /// needs --keys.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many requests in all (warmup included; in closed
    /// loop each connection sends its even share), or at the end of
    /// --duration if that comes first.
    #[arg(long, value_parser = parse_at_least_one_u64)]
    pub requests: Option<u64>,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

impl HttpArgs {
    /// Validates the options and resolves the URL.
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(
            self.threads <= self.connections,
            "--threads ({}) must not exceed --connections ({})",
            self.threads,
            self.connections
        );
        anyhow::ensure!(
            self.rate != Some(0),
            "--rate must be at least 1 request per second"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be longer than zero");
        anyhow::ensure!(!self.timeout.is_zero(), "--timeout must be longer than zero");
        anyhow::ensure!(self.requests != Some(0), "--requests must be at least 1");
        let keys = match self.keys {
            Some(n) => Some(Zipf::new(n, self.zipf.unwrap_or(1.0), self.seed.unwrap_or(1))?),
            None => {
                anyhow::ensure!(
                    self.zipf.is_none() && self.seed.is_none(),
                    "--zipf and --seed need --keys"
                );
                None
            }
        };
        let target = Target::parse(&self.url)?;
        Ok(LoadConfig {
            target,
            connections: self.connections,
            threads: self.threads,
            duration: self.duration,
            warmup: self.warmup,
            rate: self.rate,
            timeout: self.timeout,
            keys,
            max_requests: self.requests,
        })
    }
}

/// Options of `bench serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9500")]
    pub listen: SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1, value_parser = parse_at_least_one)]
    pub threads: usize,
    /// Size of every response body in bytes (the default 13 is `Hello, world!`).
    #[arg(long, default_value_t = 13)]
    pub body_bytes: usize,
}

/// Options of `bench origin`.
#[derive(Debug, Clone, clap::Args)]
pub struct OriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9700")]
    pub listen: SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1, value_parser = parse_at_least_one)]
    pub threads: usize,
    /// Body size of /small, bytes.
    #[arg(long, default_value_t = 2048)]
    pub small_bytes: usize,
    /// Body size of /large, bytes.
    #[arg(long, default_value_t = 100 * 1024)]
    pub large_bytes: usize,
    /// Body size of every /zipf/<n> object, bytes.
    #[arg(long, default_value_t = 100 * 1024)]
    pub zipf_bytes: usize,
    /// How long /slow/<name> takes to answer, e.g. 200ms.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub slow: Duration,
    /// max-age of the cacheable answers, seconds.
    #[arg(long, default_value_t = 3600)]
    pub max_age: u64,
}

impl OriginArgs {
    /// The origin's configuration.
    pub fn to_config(&self) -> OriginConfig {
        OriginConfig {
            listen: self.listen,
            small_bytes: self.small_bytes,
            large_bytes: self.large_bytes,
            zipf_bytes: self.zipf_bytes,
            slow: self.slow,
            max_age: self.max_age,
        }
    }
}

/// Runs a `bench` subcommand; builds its own tokio runtime(s), so call it
/// from outside any runtime.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Http(http) => run_http(&http),
        BenchCommand::Serve(serve) => run_serve(&serve),
        BenchCommand::Origin(origin) => run_origin(&origin),
        BenchCommand::Queue(queue) => queue::run_queue(&queue),
    }
}

fn run_http(args: &HttpArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    if !args.json {
        eprintln!(
            "bench: {} for {} (after {} warmup), {} connections on {} thread(s)",
            config.target.url,
            humantime::format_duration(config.duration),
            humantime::format_duration(config.warmup),
            config.connections,
            config.threads
        );
    }
    let report = config.run()?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// A runtime with `threads` workers (the current thread alone for 1).
fn server_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("building the server runtime")
}

fn run_origin(args: &OriginArgs) -> anyhow::Result<()> {
    let runtime = server_runtime(args.threads)?;
    let config = args.to_config();
    runtime.block_on(async {
        let origin = Origin::build(&config).await?;
        eprintln!(
            "bench origin: listening on {} ({} thread(s)); /small {} B, /large {} B, /zipf/<n> {} B, \
             /slow/<name> after {}, counts at {COUNT_PATH}",
            origin.local_addr()?,
            args.threads,
            config.small_bytes,
            config.large_bytes,
            config.zipf_bytes,
            humantime::format_duration(config.slow),
        );
        origin.run_until_stopped(shutdown_signal()).await
    })
}

fn run_serve(args: &ServeArgs) -> anyhow::Result<()> {
    let runtime = server_runtime(args.threads)?;
    let config = ServeConfig {
        listen: args.listen,
        body_bytes: args.body_bytes,
    };
    runtime.block_on(async {
        let server = Server::build(&config).await?;
        eprintln!(
            "bench serve: listening on {} ({} thread(s), {}-byte body)",
            server.local_addr()?,
            args.threads,
            args.body_bytes
        );
        server.run_until_stopped(shutdown_signal()).await
    })
}

/// `humantime` durations such as `500ms`, `10s`, `1m 30s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500ms, 10s or 1m"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

fn parse_at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

fn parse_at_least_one_u64(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

fn parse_rate(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1 request per second".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number of requests per second: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|cli| cli.bench)
    }

    fn http(args: &[&str]) -> HttpArgs {
        match parse(&[&["http"], args].concat()).expect("parses").command {
            BenchCommand::Http(http) => http,
            other => panic!("expected http, got {other:?}"),
        }
    }

    #[test]
    fn http_defaults_and_options() {
        let args = http(&["--url", "http://127.0.0.1:8080/x"]);
        assert_eq!(
            (args.connections, args.threads, args.rate, args.json),
            (64, 1, None, false)
        );
        assert_eq!(
            (args.duration, args.warmup),
            (Duration::from_secs(10), Duration::ZERO)
        );
        let args = http(&[
            "--url",
            "http://127.0.0.1:8080/",
            "--connections",
            "8",
            "--duration",
            "1m 30s",
            "--rate",
            "20000",
            "--threads",
            "2",
            "--warmup",
            "500ms",
            "--json",
        ]);
        assert_eq!(
            (args.connections, args.threads, args.rate, args.json),
            (8, 2, Some(20000), true)
        );
        assert_eq!(
            (args.duration, args.warmup),
            (Duration::from_secs(90), Duration::from_millis(500))
        );
        let config = args.to_config().expect("valid");
        assert_eq!(config.mode(), Mode::Open);
        assert_eq!(config.target.addr.port(), 8080);
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let url = ["--url", "http://127.0.0.1:1/"];
        for (extra, reason) in [
            (&["--rate", "0"][..], "at least 1 request per second"),
            (&["--connections", "0"], "at least 1"),
            (&["--threads", "0"], "at least 1"),
            (&["--duration", "ten seconds"], "invalid duration"),
            (&["--duration", "0s"], "longer than zero"),
            (&["--warmup", "2"], "invalid duration"),
        ] {
            let err = parse(&[&["http"], &url[..], extra].concat())
                .expect_err("rejected")
                .to_string();
            assert!(err.contains(reason), "{extra:?}: {err}");
        }
        let err = http(&["--url", "https://127.0.0.1/"])
            .to_config()
            .expect_err("https")
            .to_string();
        assert!(err.contains("must start with http://"), "{err}");
        let err = http(&["--url", "http://127.0.0.1:1/", "-c", "2", "-t", "3"])
            .to_config()
            .expect_err("threads > connections")
            .to_string();
        assert!(err.contains("must not exceed"), "{err}");
    }

    #[test]
    fn serve_defaults() {
        match parse(&["serve"]).expect("parses").command {
            BenchCommand::Serve(serve) => {
                assert_eq!(serve.listen, "127.0.0.1:9500".parse().expect("addr"));
                assert_eq!((serve.threads, serve.body_bytes), (1, 13));
            }
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn origin_defaults() {
        match parse(&["origin"]).expect("parses").command {
            BenchCommand::Origin(origin) => {
                let config = origin.to_config();
                assert_eq!(config.listen, "127.0.0.1:9700".parse().expect("addr"));
                assert_eq!(
                    (config.small_bytes, config.large_bytes, config.zipf_bytes),
                    (2048, 102_400, 102_400)
                );
                assert_eq!((config.slow, config.max_age), (Duration::from_millis(200), 3600));
            }
            other => panic!("expected origin, got {other:?}"),
        }
        assert!(parse(&["origin", "--slow", "soon"]).is_err());
    }

    #[test]
    fn keys_and_request_limits() {
        let args = http(&["--url", "http://127.0.0.1:1/zipf/", "--keys", "2000"]);
        let config = args.to_config().expect("valid");
        let keys = config.keys.expect("keys");
        assert_eq!((keys.len(), keys.exponent()), (2000, 1.0));
        assert_eq!(config.max_requests, None);
        let args = http(&[
            "--url",
            "http://127.0.0.1:1/zipf/",
            "--keys",
            "10",
            "--zipf",
            "0.8",
            "--seed",
            "9",
            "--requests",
            "100",
        ]);
        let config = args.to_config().expect("valid");
        assert_eq!(config.keys, Some(Zipf::new(10, 0.8, 9).expect("valid")));
        assert_eq!(config.max_requests, Some(100));

        let err = http(&["--url", "http://127.0.0.1:1/", "--zipf", "1"])
            .to_config()
            .expect_err("zipf without keys")
            .to_string();
        assert!(err.contains("need --keys"), "{err}");
        let err = http(&["--url", "http://127.0.0.1:1/", "--keys", "5", "--zipf=-1"])
            .to_config()
            .expect_err("negative exponent")
            .to_string();
        assert!(err.contains("Zipf exponent"), "{err}");
        for bad in [&["--keys", "0"][..], &["--requests", "0"]] {
            let err = parse(&[&["http", "--url", "http://127.0.0.1:1/"][..], bad].concat())
                .expect_err("rejected")
                .to_string();
            assert!(err.contains("at least 1"), "{bad:?}: {err}");
        }
    }
}
