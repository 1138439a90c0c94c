//! What synchronous replication to another site costs per commit, on a
//! private primary and replica started for the run:
//!
//!     cargo run --release -p store-postgres --example sync_replication
//!
//! The replica stands in the other site: its replication connection goes
//! through a `test_support::DelayProxy` that holds every byte `ONE_WAY` ms
//! in each direction (`DELAYS`, default "0 1 5 20": this kernel has no
//! `netem`). For each delay, one-row INSERT commits by 1 and by 8 clients
//! for `SECONDS` (default 5), asynchronous (`synchronous_standby_names =
//! ''`: a commit waits for the primary's disk only; a site lost takes the
//! commits not yet streamed with it) and synchronous (`ANY 1 (replica1)`:
//! a commit also waits until the other site has it on disk; losing a site
//! loses none). Prints commits/s and the p50 / p99 commit latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::{DelayProxy, TestPg};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let delays: Vec<u64> = std::env::var("DELAYS")
        .unwrap_or_else(|_| "0 1 5 20".into())
        .split_whitespace()
        .map(|d| d.parse())
        .collect::<std::result::Result<_, _>>()?;
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pg = TestPg::start(1).await;
    let replica = &pg.replicas[0];
    let pool = store_postgres::connect(&pg.primary.url(), 8).await?;
    sqlx::query("CREATE TABLE bench_commits (id bigserial PRIMARY KEY, pad text NOT NULL)")
        .execute(&pool)
        .await?;
    let direct = replica.psql("SHOW primary_conninfo").await?.trim().to_owned();
    let primary_port = format!("port={}", pg.primary.port());
    println!("| one-way delay | replication | clients | commits/s | p50 ms | p99 ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for delay in delays {
        let proxy = DelayProxy::start(
            SocketAddr::from(([127, 0, 0, 1], pg.primary.port())),
            Duration::from_millis(delay),
        )
        .await;
        // The replica streams through the proxy from now on (its WAL
        // receiver restarts on the new setting).
        let conninfo = direct.replace(&primary_port, &format!("port={}", proxy.addr.port()));
        replica
            .psql(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
            .await?;
        replica.psql("SELECT pg_reload_conf()").await?;
        wait_streaming_through(&pg, proxy.addr).await?;
        for sync in [false, true] {
            let standbys = if sync { "ANY 1 (replica1)" } else { "" };
            pg.primary.set_synchronous_standbys(standbys).await?;
            // The reload is asynchronous: wait until the setting shows.
            loop {
                let (v,): (String,) = sqlx::query_as("SHOW synchronous_standby_names")
                    .fetch_one(&pool)
                    .await?;
                if v == standbys {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for clients in [1, 8] {
                let (rate, p50, p99) = commits(&pool, clients, Duration::from_secs(seconds)).await?;
                println!(
                    "| {delay} ms | {} | {clients} | {rate:.0} | {p50:.2} | {p99:.2} |",
                    if sync { "synchronous" } else { "asynchronous" }
                );
            }
        }
    }
    Ok(())
}

/// Waits until the replica's WAL receiver streams from the proxy's port.
async fn wait_streaming_through(pg: &TestPg, proxy: SocketAddr) -> Result<()> {
    let replica = &pg.replicas[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("streaming|{}", proxy.port());
    loop {
        let seen = replica
            .psql("SELECT status || '|' || sender_port FROM pg_stat_wal_receiver")
            .await?;
        if seen.trim() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the replica does not stream through the proxy: {seen:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `clients` tasks committing one-row INSERTs for `run`: commits/s, p50
/// and p99 latency in ms.
async fn commits(pool: &sqlx::PgPool, clients: usize, run: Duration) -> Result<(f64, f64, f64)> {
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, latencies) = (pool.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while start.elapsed() < run {
                let t = Instant::now();
                sqlx::query("INSERT INTO bench_commits (pad) VALUES ('x')")
                    .execute(&pool)
                    .await?;
                mine.push(t.elapsed());
            }
            latencies.lock().unwrap().extend(mine);
            Ok::<(), sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0;
    Ok((l.len() as f64 / elapsed, at(0.50), at(0.99)))
}
