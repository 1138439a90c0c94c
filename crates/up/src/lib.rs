//! `scalestack up`: reads a topology, prepares the shared state, starts every
//! role as a child process (the same binary with another subcommand),
//! restarts children that die, and stops them all cleanly on Ctrl-C.

pub mod supervisor;
pub mod topology;

pub use topology::Topology;

use anyhow::Context;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supervisor::{ChildSpec, Supervisor};

/// The built-in topology used when none is given.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../topologies/single-server.toml");

/// Starts the topology and supervises it until `shutdown` resolves.
///
/// `exe` is the binary started for every child (normally
/// `std::env::current_exe()`).
pub async fn run(topology: Topology, exe: PathBuf, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&topology.data.dir)?;
    let backends = topology.backends(&data_dir);
    // Migrations run once here, before any child, so copies never race them.
    backends::Backends::connect(&backends)
        .await
        .context("preparing the embedded backends")?;
    let run_dir = data_dir.join("run");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

    let mut specs = Vec::new();
    for (name, config) in topology.web_configs(&backends) {
        let path = write_config(&run_dir, &name, &config)?;
        specs.push(ChildSpec::new(
            &name,
            vec!["web".into(), "--config".into(), path.into()],
        ));
    }
    for (name, config) in topology.worker_configs(&backends) {
        let path = write_config(&run_dir, &name, &config)?;
        specs.push(ChildSpec::new(
            &name,
            vec!["worker".into(), "--config".into(), path.into()],
        ));
    }

    let supervisor = Supervisor::start(exe, run_dir, specs);
    let public = topology.public_url();
    let ready = wait_ready(&topology);
    tokio::pin!(shutdown);
    tokio::select! {
        ok = ready => {
            if ok {
                println!("scalestack is up: {public}  (data in {})", data_dir.display());
            } else {
                tracing::warn!("web tier not ready after 60 s; still supervising");
            }
            shutdown.await;
        }
        _ = &mut shutdown => {}
    }
    println!("scalestack: stopping");
    supervisor.stop().await;
    Ok(())
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    // Children get absolute paths so they do not depend on a working directory.
    dir.canonicalize()
        .with_context(|| format!("resolving data directory {}", dir.display()))
}

fn write_config<T: serde::Serialize>(run_dir: &Path, name: &str, config: &T) -> anyhow::Result<PathBuf> {
    let path = run_dir.join(format!("{name}.toml"));
    let text = toml::to_string(config).context("serialising child configuration")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Polls every web server's `/readyz` until all answer 200 (at most 60 s).
async fn wait_ready(topology: &Topology) -> bool {
    let addrs: Vec<_> = topology.web_addrs().collect();
    for _ in 0..600 {
        let mut all = true;
        for addr in &addrs {
            all &= http_ok(*addr, "/readyz").await;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A minimal HTTP/1.1 GET over a fresh connection: true on a 200 answer.
pub async fn http_ok(addr: std::net::SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
