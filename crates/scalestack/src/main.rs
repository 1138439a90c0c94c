//! The `scalestack` binary: parses the command line and hands over to the
//! crate of the role asked for. With no subcommand it is `scalestack up`.

use anyhow::Context;

/// mimalloc: the proxy and the web tier allocate per request; glibc's malloc
/// showed up at ~9% of the load balancer's profile, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The "scale from zero to millions of users" architecture, for real.
#[derive(Parser)]
#[command(name = "scalestack", version, about)]
struct Cli {
    /// Log format: `text` or `json`. Log level comes from RUST_LOG (default info).
    #[arg(long, global = true, env = "SCALESTACK_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The value as given on the command line.
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole topology on this machine (the default command).
    Up(UpArgs),
    /// Run one stateless web server (the application).
    Web(WebArgs),
    /// Run one job consumer (photo processing).
    Worker(WorkerArgs),
    /// Run the HTTP load balancer in front of the web tier.
    Lb(LbArgs),
    /// Run a CDN edge: a shared HTTP cache in front of the origin.
    Cdn(CdnArgs),
    /// Run an authoritative geoDNS server for the system's zone.
    Dns(DnsArgs),
    /// Talk to a running `scalestack up`: ps, kill, start, scale.
    Ctl(CtlArgs),
    /// Load generator with latency histograms (no coordinated omission),
    /// and a minimal backend to benchmark proxies against.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct LbArgs {
    /// Configuration file (TOML, the keys of a topology's `[lb]` section
    /// plus `[[backends]]`); without it, defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the public address.
    #[arg(long, env = "SCALESTACK_LB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Overrides the admin address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Adds a backend (repeatable).
    #[arg(long = "backend")]
    backends: Vec<SocketAddr>,
    /// Overrides the worker thread count (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct CdnArgs {
    /// Configuration file (TOML, the keys of `cdn::CdnConfig`); without
    /// it, defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the public address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides the admin address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Overrides the origin (the load balancer or a web server).
    #[arg(long)]
    origin: Option<SocketAddr>,
    /// Overrides the memory tier's size in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Overrides the worker thread count (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct DnsArgs {
    /// Configuration file (TOML, the keys of `dns::DnsConfig`); without
    /// it, defaults (one site on 127.0.0.1).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the UDP and TCP address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides the admin address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Overrides the UDP thread count (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The orchestrator's control API.
    #[arg(long, env = "SCALESTACK_CONTROL_URL", default_value = "http://127.0.0.1:8090")]
    url: String,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// List the processes (engines included) with their state, pid, restarts and site.
    Ps,
    /// Send a signal to a process (default KILL); it stays down until `start`
    /// (a PostgreSQL node is restarted, or failed over from, by `up`).
    Kill {
        name: String,
        /// KILL, TERM or INT.
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Start again a process stopped with `kill`.
    Start { name: String },
    /// Run N copies of a role: `scale web=5` (new web servers join the load
    /// balancer; removed ones are drained first).
    Scale {
        /// ROLE=COUNT, e.g. web=5 or worker=2.
        target: String,
    },
    /// The autoscaled tiers: bounds, replicas running and desired, scale
    /// events and the reason of the latest decision.
    Autoscale,
    /// The shard map (epoch, logical shard ranges per replica set) and each
    /// set's rows, size and load, with its fullest logical shards.
    Shards,
    /// Move logical shards to another replica set while the site runs: copy,
    /// catch up, verify, a short cutover that pauses writes to the moved
    /// shards only, every router switched, then the source cleaned. Without
    /// --to, `up` adds a replica set (s3 after s1, s2) to move them to;
    /// without --shards, the upper half of the biggest range of the set
    /// holding the most rows moves. Follows the move with a progress bar.
    Reshard {
        /// FIRST-LAST (or one logical shard, 0-8191), all on one set.
        #[arg(long, conflicts_with_all = ["status", "abort"])]
        shards: Option<String>,
        /// The replica set to move them to (one of the map's, or one
        /// registered in shard_sets).
        #[arg(long, conflicts_with_all = ["status", "abort"])]
        to: Option<String>,
        /// Start the move and return.
        #[arg(long, conflicts_with_all = ["status", "abort"])]
        no_wait: bool,
        /// Follow the running move (or show how the latest ended).
        #[arg(long, conflicts_with = "abort")]
        status: bool,
        /// Roll the running move back (refused once its routers switched).
        #[arg(long)]
        abort: bool,
    },
    /// Dead jobs: list them, or make one ready again.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The lines every process logged, gathered by the collector (`[logs]`).
    Logs {
        /// A process (`web-1`) or a role (`web`).
        #[arg(long)]
        component: Option<String>,
        /// The least severe level shown: error, warn, info, debug.
        #[arg(long)]
        level: Option<String>,
        /// Lines of this request (its `X-Request-Id`), in every tier.
        #[arg(long)]
        request_id: Option<String>,
        /// Lines mentioning this user (id or name).
        #[arg(long)]
        user: Option<String>,
        /// Lines at or after this time (RFC 3339, as the lines have it).
        #[arg(long)]
        since: Option<String>,
        /// At most this many, the latest.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// Keep printing lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// A whole site of a multi-site topology: fail it (every process
    /// killed at once and held down) or restore it.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
}

#[derive(Subcommand)]
enum SiteCommand {
    /// Kill every process of site NAME at once: its load balancer, edges,
    /// web servers, workers, Redis, name server and database nodes.
    Fail { name: String },
    /// Start them again; its database nodes rejoin as replicas.
    Restore { name: String },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs whose attempts are spent or that failed for good, newest first,
    /// with their last error.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Make dead job ID ready again, with a fresh attempt count.
    Retry { id: i64 },
}

#[derive(clap::Args, Default)]
struct UpArgs {
    /// Topology file (TOML); without it the built-in default (topologies/web-tier.toml).
    #[arg(long, env = "SCALESTACK_TOPOLOGY")]
    topology: Option<PathBuf>,
    /// Overrides `[data] dir` of the topology.
    #[arg(long, env = "SCALESTACK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Runs one site of a multi-site topology alone (its load balancer,
    /// edges, web servers, workers and Redis, on the site's address), the
    /// shared database and the other sites as external.
    #[arg(long)]
    site: Option<String>,
}

#[derive(clap::Args)]
struct WebArgs {
    /// Configuration file as written by `up`; without it, defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the listen address.
    #[arg(long, env = "SCALESTACK_WEB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Overrides the data directory of embedded backends.
    #[arg(long, env = "SCALESTACK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Configuration file as written by `up`; without it, defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the metrics address.
    #[arg(long, env = "SCALESTACK_WORKER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Overrides the data directory of embedded backends.
    #[arg(long, env = "SCALESTACK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn read_config<T: serde::de::DeserializeOwned + Default>(path: Option<&PathBuf>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration {}", path.display()))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}

/// The async runtime: one worker per core (`threads` = 0), a given number
/// of workers, or, for exactly one, a single-threaded runtime that skips
/// the work-stealing machinery altogether.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all().build().context("starting the async runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The children `up` starts are this binary too and read the format from
    // the environment: without this, `--log-format json` given to `up`
    // would reach `up` alone and its children would write text between
    // its JSON lines. Set before any thread exists.
    std::env::set_var("SCALESTACK_LOG_FORMAT", cli.log_format.as_str());
    init_logs(cli.log_format);
    let command = cli.command.unwrap_or(Command::Up(UpArgs::default()));
    // The load balancer sizes its own runtime; every other role takes one
    // worker thread per core.
    match command {
        Command::Lb(args) => {
            // Single-threaded here; the balancer adds a thread per core of
            // its own, each with its own listener (see `lb::LoadBalancer`).
            let config = lb_config(&args)?;
            runtime(1)?.block_on(run_lb(config))
        }
        Command::Cdn(args) => {
            let config = cdn_config(&args)?;
            runtime(1)?.block_on(run_cdn(config))
        }
        // UDP is answered on threads of the server's own; the runtime
        // only carries TCP, health checks and the admin API.
        Command::Dns(args) => {
            let config = dns_config(&args)?;
            runtime(1)?.block_on(run_dns(config))
        }
        // The load generator sizes its own runtimes.
        Command::Bench(args) => bench::run(args),
        command => runtime(0)?.block_on(run(command)),
    }
}

fn lb_config(args: &LbArgs) -> anyhow::Result<lb::LbConfig> {
    let mut config: lb::LbConfig = read_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.admin_listen = admin;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    config.backends.extend(
        args.backends
            .iter()
            .map(|&addr| lb::BackendSpec { addr, weight: 1 }),
    );
    Ok(config)
}

fn cdn_config(args: &CdnArgs) -> anyhow::Result<cdn::CdnConfig> {
    let mut config: cdn::CdnConfig = read_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.admin_listen = admin;
    }
    if let Some(origin) = args.origin {
        config.origin = origin;
    }
    if let Some(mb) = args.memory_mb {
        config.memory_bytes = mb << 20;
        config.max_object_bytes = config.max_object_bytes.min(config.memory_bytes);
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    Ok(config)
}

fn dns_config(args: &DnsArgs) -> anyhow::Result<dns::DnsConfig> {
    let mut config: dns::DnsConfig = read_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.admin_listen = admin;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    Ok(config)
}

async fn run_dns(config: dns::DnsConfig) -> anyhow::Result<()> {
    let server = dns::DnsServer::build(config).await?;
    server.run_until_stopped(shutdown_signal()).await
}

async fn run_cdn(config: cdn::CdnConfig) -> anyhow::Result<()> {
    let edge = cdn::Edge::build(config).await?;
    edge.run_until_stopped(shutdown_signal(), std::time::Duration::from_secs(30))
        .await
}

async fn run_lb(config: lb::LbConfig) -> anyhow::Result<()> {
    let balancer = lb::LoadBalancer::build(config).await?;
    balancer
        .run_until_stopped(shutdown_signal(), std::time::Duration::from_secs(30))
        .await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Lb(_) | Command::Cdn(_) | Command::Dns(_) | Command::Bench(_) => {
            unreachable!("these run on runtimes of their own")
        }
        Command::Ctl(args) => {
            let command = match args.command {
                CtlCommand::Ps => up::ctl::CtlCommand::Ps,
                CtlCommand::Kill { name, signal } => {
                    if up::control::parse_signal(&signal).is_none() {
                        anyhow::bail!("--signal must be KILL, TERM or INT, not {signal:?}");
                    }
                    up::ctl::CtlCommand::Kill { name, signal }
                }
                CtlCommand::Start { name } => up::ctl::CtlCommand::Start { name },
                CtlCommand::Scale { target } => {
                    let (role, count) = up::ctl::parse_scale(&target)?;
                    up::ctl::CtlCommand::Scale { role, count }
                }
                CtlCommand::Autoscale => up::ctl::CtlCommand::Autoscale,
                CtlCommand::Shards => up::ctl::CtlCommand::Shards,
                CtlCommand::Reshard { abort: true, .. } => up::ctl::CtlCommand::ReshardAbort,
                CtlCommand::Reshard { status: true, .. } => up::ctl::CtlCommand::ReshardStatus,
                CtlCommand::Reshard {
                    shards, to, no_wait, ..
                } => up::ctl::CtlCommand::Reshard {
                    shards,
                    to,
                    wait: !no_wait,
                },
                CtlCommand::Jobs {
                    command: JobsCommand::Dead { limit },
                } => up::ctl::CtlCommand::JobsDead { limit },
                CtlCommand::Jobs {
                    command: JobsCommand::Retry { id },
                } => up::ctl::CtlCommand::JobsRetry { id },
                CtlCommand::Site {
                    command: SiteCommand::Fail { name },
                } => up::ctl::CtlCommand::SiteFail { site: name },
                CtlCommand::Logs {
                    component,
                    level,
                    request_id,
                    user,
                    since,
                    limit,
                    follow,
                } => up::ctl::CtlCommand::Logs {
                    filter: up::logs::LogFilter {
                        component,
                        level,
                        request_id,
                        user,
                        since,
                        limit: Some(limit),
                    },
                    follow,
                },
                CtlCommand::Site {
                    command: SiteCommand::Restore { name },
                } => up::ctl::CtlCommand::SiteRestore { site: name },
            };
            up::ctl::run(&args.url, command).await
        }
        Command::Up(args) => {
            let mut topology = match &args.topology {
                Some(path) => up::Topology::load(path)?,
                None => up::Topology::parse(up::DEFAULT_TOPOLOGY)?,
            };
            if let Some(dir) = args.data_dir {
                topology.data.dir = dir;
            }
            if let Some(site) = &args.site {
                topology = topology.for_site(site)?;
            }
            let exe = std::env::current_exe().context("locating the scalestack binary")?;
            up::run(topology, exe, shutdown_signal()).await
        }
        Command::Web(args) => {
            let mut config: app::WebConfig = read_config(args.config.as_ref())?;
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.backends.data_dir = dir;
            }
            let web = app::Application::build(config).await?;
            web.run_until_stopped(shutdown_signal()).await?;
            Ok(())
        }
        Command::Worker(args) => {
            let mut config: worker::WorkerConfig = read_config(args.config.as_ref())?;
            if let Some(listen) = args.metrics_listen {
                config.metrics_listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.backends.data_dir = dir;
            }
            let w = worker::Worker::build(&config).await?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let metrics = w
                .serve_metrics(config.metrics_listen, stopped(rx.clone()))
                .await?;
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            });
            // The job in hand is finished before run_until_stopped returns.
            w.run_until_stopped(stopped(rx)).await;
            let _ = metrics.await;
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}
