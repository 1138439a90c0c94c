//! The DB router's overhead per query: the same point read (`photo(id)`)
//! through `PgStore` on the primary and through `PgRouter` (which picks a
//! node and, for a replica, checks its lag), on a private primary + 1
//! replica started for the run.
//!
//!     cargo run --release -p store-postgres --example router_overhead
//!
//! Prints the mean and the percentiles per query for each path.

use domain::ports::Store;
use domain::{ImageFormat, NewPhoto, PhotoId, Username};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_postgres::{PgRouter, PgStore, RouterConfig};

const QUERIES: usize = 20_000;

async fn measure(name: &str, store: &dyn Store, id: PhotoId) -> Duration {
    for _ in 0..1000 {
        store.photo(id).await.unwrap();
    }
    let mut samples = Vec::with_capacity(QUERIES);
    let start = Instant::now();
    for _ in 0..QUERIES {
        let t = Instant::now();
        assert!(store.photo(id).await.unwrap().is_some());
        samples.push(t.elapsed());
    }
    let mean = start.elapsed() / QUERIES as u32;
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<28} mean {:>7.1} µs   p50 {:>7.1} µs   p99 {:>7.1} µs",
        mean.as_secs_f64() * 1e6,
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6
    );
    mean
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pg = test_support::TestPg::start(1).await;
    let pool = store_postgres::connect(&pg.primary.url(), 4).await.unwrap();
    store_postgres::migrate(&pool).await.unwrap();
    let direct = PgStore::new(pool);
    let owner = direct
        .create_user(&Username::parse("bench").unwrap(), "hash")
        .await
        .unwrap();
    let photo = direct
        .create_photo(&NewPhoto {
            owner_id: owner,
            caption: None,
            format: ImageFormat::Png,
            width: 1,
            height: 1,
        })
        .await
        .unwrap();
    let mut primary_only = RouterConfig::new(vec![pg.primary.url()]);
    primary_only.max_connections = 4;
    let router_primary = PgRouter::connect(primary_only).await.unwrap();
    let mut with_replica = RouterConfig::new(vec![pg.primary.url(), pg.replicas[0].url()]);
    with_replica.max_connections = 4;
    let router_replica = PgRouter::connect(with_replica).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let base = measure("PgStore (primary)", &direct, photo.id).await;
    let a: Arc<dyn Store> = router_primary.store();
    let routed = measure("PgRouter (primary only)", &*a, photo.id).await;
    let b: Arc<dyn Store> = router_replica.store();
    measure("PgRouter (reads to replica)", &*b, photo.id).await;
    println!(
        "router overhead per query on the same node: {:.1} µs",
        (routed.as_secs_f64() - base.as_secs_f64()) * 1e6
    );
}
