//! What sharding costs and buys, on private PostgreSQL clusters started for
//! the run (one primary per replica set, all on this machine):
//!
//!     cargo run --release -p store-postgres --example sharding [scale|router|reshard|hot|all]
//!
//! - `scale`: writes (an upload made ready, fanned out to ten followers) and
//!   reads (a feed page and a profile) per second from 32 tasks with 1, 2
//!   and 4 replica sets, with the database CPU each costs (the CPU time of
//!   every PostgreSQL process of the sets, from `/proc`); `READ_FIRST=1`
//!   runs the reads first.
//! - `router`: one point read (`photo(id)`) at a time through the plain
//!   router and through the sharded store over 1 and 2 sets.
//! - `reshard`: `ROWS` rows (default 1 000 000: users and photos) on one
//!   set, half of them moved to a second set while 8 tasks upload `RATE`
//!   photos per second (default 500) to the moved shards; the move's time
//!   per million rows, its cutover pause and the uploads' latency during
//!   it.
//! - `hot`: a celebrity with 1000 followers whose feeds are read by 32
//!   tasks, with the hot-key near-cache off and on.

use domain::ports::Store;
use domain::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_postgres::{MoveRequest, PgRouter, RouterConfig, ShardedConfig, ShardedStore};
use test_support::TestPg;

const TASKS: usize = 32;
const RUN: Duration = Duration::from_secs(6);

async fn router(name: &str, pg: &TestPg) -> PgRouter {
    let mut config = RouterConfig::new(vec![pg.primary.url()]);
    config.max_connections = 16;
    config.replica_set = consistency::ReplicaSetId::parse(name).unwrap();
    let router = PgRouter::connect(config).await.unwrap();
    router.migrate().await.unwrap();
    router
}

/// `n` replica sets (`s1`, `s2`, ...) and a sharded store over them.
async fn sets(n: usize, config: ShardedConfig) -> (Vec<TestPg>, ShardedStore) {
    let mut pgs = Vec::new();
    let mut routers = BTreeMap::new();
    for k in 0..n {
        let pg = TestPg::start(0).await;
        let name = format!("s{}", k + 1);
        routers.insert(name.clone(), router(&name, &pg).await);
        pgs.push(pg);
    }
    let store = ShardedStore::connect("s1", routers, config, None).await.unwrap();
    (pgs, store)
}

/// CPU time (user + system) of every process of these clusters: each
/// postmaster and its children (backends, WAL writer, ...).
fn db_cpu(pgs: &[TestPg]) -> Duration {
    let tick = Duration::from_secs(1) / 100; // USER_HZ
    let postmasters: Vec<u32> = pgs.iter().filter_map(|p| p.primary.pid()).collect();
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // After the command: state, ppid, ..., utime (14th), stime (15th).
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if postmasters.contains(&pid) || postmasters.contains(&ppid) {
            ticks += fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            ticks += fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    tick * ticks as u32
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn ready_photo(store: &ShardedStore, owner: UserId) -> PhotoId {
    let id = store
        .create_photo(&NewPhoto {
            owner_id: owner,
            caption: None,
            format: ImageFormat::Jpeg,
            width: 1,
            height: 1,
        })
        .await
        .unwrap()
        .id;
    store.set_photo_status(id, PhotoStatus::Ready).await.unwrap();
    id
}

/// Runs `op(task, i)` from [`TASKS`] tasks for [`RUN`]; operations per
/// second, and the latencies, sorted.
async fn closed_loop<F, Fut>(op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (op, stop) = (op.clone(), stop.clone());
        tasks.spawn(async move {
            let mut took = Vec::new();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let t = Instant::now();
                op(task, i).await;
                took.push(t.elapsed());
                i += 1;
            }
            took
        });
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    stop.store(true, Relaxed);
    let mut took: Vec<Duration> = tasks.join_all().await.concat();
    let rate = took.len() as f64 / start.elapsed().as_secs_f64();
    took.sort();
    (rate, took)
}

async fn scale() {
    println!("| sets | op | req/s | p50 ms | p99 ms | DB CPU ms/req |");
    println!("|---:|---|---:|---:|---:|---:|");
    for n in [1, 2, 4] {
        let (pgs, store) = sets(n, ShardedConfig::default()).await;
        let mut users = Vec::new();
        for i in 0..200 {
            users.push(
                store
                    .create_user(&Username::parse(&format!("user{i}")).unwrap(), "h")
                    .await
                    .unwrap(),
            );
        }
        for (i, u) in users.iter().enumerate() {
            for k in 1..=10 {
                store.follow(*u, users[(i + k * 7) % users.len()]).await.unwrap();
            }
            ready_photo(&store, *u).await;
        }
        let users = Arc::new(users);
        // READ_FIRST=1 reads before the writes add their rows (and leave
        // their autovacuum and checkpoint work behind).
        let order = match std::env::var("READ_FIRST").as_deref() {
            Ok("1") => [("read", false), ("write", true)],
            _ => [("write", true), ("read", false)],
        };
        for (name, write) in order {
            let cpu = db_cpu(&pgs);
            let (store, users) = (store.clone(), users.clone());
            let (rate, took) = closed_loop(move |task, i| {
                let (store, users) = (store.clone(), users.clone());
                async move {
                    let user = users[(task * 7919 + i * 31) % users.len()];
                    if write {
                        ready_photo(&store, user).await;
                    } else {
                        let page = Page {
                            before: None,
                            limit: 20,
                        };
                        store.feed_ids(user, page).await.unwrap();
                        store.profile(user).await.unwrap();
                    }
                }
            })
            .await;
            let cpu = db_cpu(&pgs) - cpu;
            println!(
                "| {n} | {name} | {rate:.0} | {:.2} | {:.2} | {:.3} |",
                percentile(&took, 0.5).as_secs_f64() * 1e3,
                percentile(&took, 0.99).as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e3 / (rate * RUN.as_secs_f64()),
            );
        }
    }
}

async fn router_cost() {
    const QUERIES: usize = 20_000;
    let (_one_pg, one) = sets(1, ShardedConfig::default()).await;
    let (_two_pgs, two) = sets(2, ShardedConfig::default()).await;
    let owner = one
        .create_user(&Username::parse("router").unwrap(), "h")
        .await
        .unwrap();
    let photo_one = ready_photo(&one, owner).await;
    let owner = two
        .create_user(&Username::parse("router").unwrap(), "h")
        .await
        .unwrap();
    let photo_two = ready_photo(&two, owner).await;
    println!("| path | mean µs | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    let paths: [(&str, Arc<dyn Store>, PhotoId); 3] = [
        ("PgRouter (unsharded)", one.sets()["s1"].store(), photo_one),
        ("ShardedStore, 1 set", Arc::new(one.clone()), photo_one),
        ("ShardedStore, 2 sets", Arc::new(two.clone()), photo_two),
    ];
    for (name, store, photo) in paths {
        for _ in 0..1000 {
            store.photo(photo).await.unwrap();
        }
        let mut took = Vec::with_capacity(QUERIES);
        let start = Instant::now();
        for _ in 0..QUERIES {
            let t = Instant::now();
            assert!(store.photo(photo).await.unwrap().is_some());
            took.push(t.elapsed());
        }
        let mean = start.elapsed() / QUERIES as u32;
        took.sort();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            mean.as_secs_f64() * 1e6,
            percentile(&took, 0.5).as_secs_f64() * 1e6,
            percentile(&took, 0.99).as_secs_f64() * 1e6
        );
    }
}

async fn reshard() {
    let env = |name: &str, default: i64| {
        std::env::var(name)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    let rows = env("ROWS", 1_000_000);
    // Uploads per second to the moved shards during the move (8 tasks).
    let rate = env("RATE", 500).max(1) as u64;
    let (pgs, store) = sets(2, ShardedConfig::default()).await;
    // rows/2 users and rows/2 photos on s1's logical shards 0-4095, every
    // id unique with its shard inside (see domain::shard).
    let users = rows / 2;
    let t = Instant::now();
    pgs[0]
        .primary
        .psql(&format!(
            "INSERT INTO users (id, username, password_hash, created_at) \
             SELECT ((g / 1024 + 1) << 23) | ((g % 4096) << 10) | (g % 1024), 'user' || g, 'h', 0 \
             FROM generate_series(0, {users} - 1) g; \
             INSERT INTO photos (id, owner_id, caption, status, format, width, height, created_at) \
             SELECT ((g / 1024 + 1 + 100000000) << 23) | ((g % 4096) << 10) | (g % 1024), \
             ((g / 1024 + 1) << 23) | ((g % 4096) << 10) | (g % 1024), NULL, 'ready', 'jpeg', 1, 1, 0 \
             FROM generate_series(0, {users} - 1) g; ANALYZE"
        ))
        .await
        .unwrap();
    println!("seeded {rows} rows in {:.1?}", t.elapsed());
    // Uploads to users of the moved range (shards 2048-4095) during the move.
    let owners: Arc<Vec<UserId>> = Arc::new(
        (0..4096i64)
            .filter(|g| g % 4096 >= 2048)
            .take(512)
            .map(|g| UserId(((g / 1024 + 1) << 23) | ((g % 4096) << 10) | (g % 1024)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for task in 0..8 {
        let (store, owners, stop) = (store.clone(), owners.clone(), stop.clone());
        writers.spawn(async move {
            let (mut took, mut failed) = (Vec::new(), 0);
            let mut i = task;
            let mut tick = tokio::time::interval(Duration::from_micros(8_000_000 / rate));
            while !stop.load(Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let done = store
                    .create_photo(&NewPhoto {
                        owner_id: owners[i % owners.len()],
                        caption: None,
                        format: ImageFormat::Jpeg,
                        width: 1,
                        height: 1,
                    })
                    .await;
                took.push(t.elapsed());
                failed += usize::from(done.is_err());
                i += 8;
            }
            (took, failed)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let started = store
        .start_move(&MoveRequest {
            first: 2048,
            last: 4095,
            to: "s2".into(),
        })
        .await
        .unwrap();
    let done = store.run_move(started.id).await.unwrap();
    let took = t.elapsed();
    stop.store(true, Relaxed);
    let results = writers.join_all().await;
    let failed: usize = results.iter().map(|(_, f)| f).sum();
    let mut lat: Vec<Duration> = results.into_iter().flat_map(|(t, _)| t).collect();
    lat.sort();
    let moved = done.rows_copied + done.rows_replayed;
    println!(
        "move {}: {}{}",
        done.id,
        done.phase,
        done.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    println!(
        "moved {} rows (+{} replayed, {} verified, {} deleted) in {took:.1?}: {:.1} s per million rows; \
         writes to the moved shards paused {} ms at the cutover",
        done.rows_copied,
        done.rows_replayed,
        done.rows_verified,
        done.rows_deleted,
        took.as_secs_f64() * 1e6 / moved.max(1) as f64,
        done.pause_ms.unwrap_or(-1),
    );
    println!(
        "{} uploads to the moved shards during the move, {failed} failed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}

async fn hot() {
    let (pgs, store) = sets(
        2,
        ShardedConfig {
            celebrity_followers: 50,
            ..ShardedConfig::default()
        },
    )
    .await;
    let star = store
        .create_user(&Username::parse("star").unwrap(), "h")
        .await
        .unwrap();
    let mut fans = Vec::new();
    for i in 0..1000 {
        let fan = store
            .create_user(&Username::parse(&format!("fan{i}")).unwrap(), "h")
            .await
            .unwrap();
        store.follow(fan, star).await.unwrap();
        fans.push(fan);
    }
    for _ in 0..30 {
        ready_photo(&store, star).await;
    }
    let fans = Arc::new(fans);
    println!(
        "| hot-key defence | feed reads/s | p50 ms | p99 ms | DB reads per feed read | DB CPU ms/read |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, share) in [("off", 0.0), ("on", 0.01)] {
        let reader = ShardedStore::connect(
            "s1",
            store.sets(),
            ShardedConfig {
                hot_share: share,
                ..ShardedConfig::default()
            },
            None,
        )
        .await
        .unwrap();
        let reads =
            |s: &ShardedStore| -> u64 { s.sets().values().flat_map(|r| r.status()).map(|n| n.reads).sum() };
        let (db_reads, cpu) = (reads(&reader), db_cpu(&pgs));
        let (r, f) = (reader.clone(), fans.clone());
        let (rate, took) = closed_loop(move |task, i| {
            let (r, f) = (r.clone(), f.clone());
            async move {
                let page = Page {
                    before: None,
                    limit: 20,
                };
                r.feed_ids(f[(task * 7919 + i) % f.len()], page).await.unwrap();
            }
        })
        .await;
        let n = rate * RUN.as_secs_f64();
        println!(
            "| {name} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.3} |",
            percentile(&took, 0.5).as_secs_f64() * 1e3,
            percentile(&took, 0.99).as_secs_f64() * 1e3,
            (reads(&reader) - db_reads) as f64 / n,
            (db_cpu(&pgs) - cpu).as_secs_f64() * 1e3 / n,
        );
    }
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    // One query at a time measures best without cross-thread wake-ups.
    if matches!(what.as_str(), "router" | "all") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(router_cost());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    if matches!(what.as_str(), "scale" | "all") {
        rt.block_on(scale());
    }
    if matches!(what.as_str(), "reshard" | "all") {
        rt.block_on(reshard());
    }
    if matches!(what.as_str(), "hot" | "all") {
        rt.block_on(hot());
    }
}
