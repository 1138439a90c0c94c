//! Minimal pingora reverse proxy, used only by `scripts/bench-lb.sh` to compare
//! `scalestack lb` with a pingora-based load balancer. Not part of the workspace.
//!
//!   pingora-lb --listen 127.0.0.1:9603 --backend 127.0.0.1:9500 [--backend ...] --threads N
//!
//! Round robin over the backends, plain HTTP/1.1 on both sides, pingora's
//! default upstream connection pool (keep-alive reuse), no access log, no
//! health check. Runs in the foreground until SIGINT or SIGTERM (both exit at
//! once: SIGTERM's grace period is set to zero).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

const USAGE: &str = "usage: pingora-lb --listen ADDR --backend ADDR [--backend ADDR ...] [--threads N]";

struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Round robin ignores the key; with no health check every backend is eligible.
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no backend available"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

struct Args {
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    threads: usize,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut listen = None;
    let mut backends = Vec::new();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--backend" => {
                let v = value()?;
                backends.push(v.parse().map_err(|e| format!("--backend {v}: {e}"))?);
            }
            "--threads" => {
                let v = value()?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--threads must be a positive number, not '{v}'"))?;
            }
            _ => return Err(format!("unknown argument '{arg}'")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if backends.is_empty() {
        return Err("at least one --backend is required".into());
    }
    Ok(Args {
        listen,
        backends,
        threads,
    })
}

/// Prints pingora's warnings and errors (it logs through the `log` crate) to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "pingora-lb: {} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pingora-lb: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }

    let conf = ServerConf {
        threads: args.threads,
        // SIGTERM is graceful in pingora, with a default grace period of 300 s
        // and a 5 s runtime shutdown after it: stop at once instead (idle
        // keep-alive connections would otherwise hold the runtime open).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let upstreams = match LoadBalancer::<RoundRobin>::try_from_iter(args.backends.iter().copied()) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("pingora-lb: backends: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut proxy = http_proxy_service(&server.configuration, Lb(Arc::new(upstreams)));
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);

    eprintln!(
        "pingora-lb: listening on {} with {} thread(s), backends {:?}",
        args.listen, args.threads, args.backends
    );
    server.run_forever()
}
