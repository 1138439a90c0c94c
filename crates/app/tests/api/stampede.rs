//! Single flight: many requests missing one cache key at once make one
//! store query, through the HTTP API of one web server, and across two web
//! servers sharing a real Redis.

use crate::helpers::{get_text, spawn_app, TestApp};
use async_trait::async_trait;
use domain::ports::Store;
use domain::*;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// The real store, counting `photo` lookups and holding each one until the
/// test opens the gate, so concurrent requests overlap whatever the timing.
struct CountingStore {
    inner: Arc<dyn Store>,
    photo_reads: AtomicUsize,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Store for CountingStore {
    async fn create_user(&self, u: &Username, h: &str) -> Result<UserId, StoreError> {
        self.inner.create_user(u, h).await
    }
    async fn user_by_name(&self, u: &Username) -> Result<Option<User>, StoreError> {
        self.inner.user_by_name(u).await
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.inner.user_by_id(id).await
    }
    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError> {
        self.inner.profile(id).await
    }
    async fn create_photo(&self, p: &NewPhoto) -> Result<Photo, StoreError> {
        self.inner.create_photo(p).await
    }
    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError> {
        self.inner.delete_photo(id).await
    }
    async fn record_photo_job(&self, id: PhotoId, job: i64) -> Result<(), StoreError> {
        self.inner.record_photo_job(id, job).await
    }
    async fn stalled_uploads(&self, before_ms: i64, limit: usize) -> Result<Vec<Photo>, StoreError> {
        self.inner.stalled_uploads(before_ms, limit).await
    }
    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.photo_reads.fetch_add(1, SeqCst);
        drop(self.gate.acquire().await);
        self.inner.photo(id).await
    }
    async fn set_photo_status(&self, id: PhotoId, s: PhotoStatus) -> Result<(), StoreError> {
        self.inner.set_photo_status(id, s).await
    }
    async fn user_photo_ids(&self, o: UserId, p: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.inner.user_photo_ids(o, p).await
    }
    async fn follow(&self, a: UserId, b: UserId) -> Result<(), StoreError> {
        self.inner.follow(a, b).await
    }
    async fn unfollow(&self, a: UserId, b: UserId) -> Result<(), StoreError> {
        self.inner.unfollow(a, b).await
    }
    async fn is_following(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.inner.is_following(a, b).await
    }
    async fn feed_ids(&self, u: UserId, p: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.inner.feed_ids(u, p).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

impl CountingStore {
    /// The app's store, counting photo reads, its gate closed.
    fn gated(app: &TestApp) -> Arc<Self> {
        Arc::new(CountingStore {
            inner: app.backends.store.clone(),
            photo_reads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        })
    }
}

/// Uploads a photo as a new user `name` and waits until it is ready.
async fn ready_photo(app: &TestApp, name: &str) -> i64 {
    let c = app.user(name).await;
    let r = app.upload(&c, imaging::samples::png(64, 64), "p.png", None).await;
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(app.wait_processed(&c, id).await["status"], "ready");
    id
}

#[tokio::test]
async fn a_stampede_on_one_missing_key_makes_one_store_query() {
    let app = spawn_app().await;
    let id = ready_photo(&app, "celebrity").await;

    // A second web server over the same store, with an empty cache.
    let store = CountingStore::gated(&app);
    let mut backends = app.backends.clone();
    backends.store = store.clone();
    backends.cache = Arc::new(cache::InProcessCache::new(cache::CacheConfig::default()));
    let settings = app::WebSettings {
        argon2_memory_kib: 1024,
        ..Default::default()
    };
    let web = app::Application::build_with("127.0.0.1:0".parse().unwrap(), backends, settings)
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", web.port());
    let url = format!("{base}/api/photos/{id}");
    tokio::spawn(web.run_until_stopped(std::future::pending()));

    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..50).map(|_| http.get(&url).send()).collect();
    let requests = tokio::spawn(futures_join(requests));
    // Every request has missed the cache (counted just before it joins the
    // load in flight): only then may the one store query finish.
    let misses = r#"scalestack_cache_requests_total{cache="photo",result="miss"} 50"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_text(&http, &format!("{base}/metrics")).await;
        if m.contains(misses) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every request missed: {m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.gate.add_permits(1);
    for r in requests.await.unwrap() {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(
        store.photo_reads.load(SeqCst),
        1,
        "50 concurrent misses, one store query"
    );
    // Afterwards the entry is cached: no further query.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(store.photo_reads.load(SeqCst), 1);
}

async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Misses of the photo cache a web server's metrics counted.
fn photo_misses(m: &app::metrics::Metrics) -> u64 {
    let text = m.render(None);
    text.lines()
        .find(|l| l.starts_with(r#"scalestack_cache_requests_total{cache="photo",result="miss"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stampede_across_web_servers_sharing_redis_makes_one_store_query() {
    let app = spawn_app().await;
    let id = ready_photo(&app, "star").await;

    let redis = test_support::TestRedis::start().await;
    let store = CountingStore::gated(&app);
    // Two web servers' catalogs: each its own near-cache, one Redis.
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let (remote, _) = store_redis::connect(&store_redis::RedisConfig {
                url: redis.node.url(),
                prefix: "stampede:".into(),
                timeout_ms: 2000,
                ttl_jitter: 0.0,
            })
            .unwrap();
            let near = cache::NearCache::new(
                cache::CacheConfig::default(),
                Duration::from_secs(2),
                Arc::new(remote),
            );
            let metrics = Arc::new(app::metrics::Metrics::new());
            let catalog = app::catalog::Catalog::new(
                store.clone(),
                Arc::new(near),
                metrics.clone(),
                Duration::from_secs(60),
                Duration::from_secs(60),
            );
            (catalog, metrics)
        })
        .collect();
    let mut calls = Vec::new();
    for (catalog, _) in &servers {
        for _ in 0..25 {
            let catalog = catalog.clone();
            calls.push(tokio::spawn(async move { catalog.photo(PhotoId(id)).await }));
        }
    }
    // Every call has missed (counted just before it joins its server's
    // flight); only then may the one store query finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while servers.iter().any(|(_, m)| photo_misses(m) < 25) {
        assert!(std::time::Instant::now() < deadline, "not every call missed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.gate.add_permits(1);
    for call in calls {
        let photo = call.await.unwrap().unwrap().expect("the photo");
        assert_eq!(photo.id, PhotoId(id));
    }
    assert_eq!(
        store.photo_reads.load(SeqCst),
        1,
        "50 concurrent misses on two web servers, one store query"
    );
}
