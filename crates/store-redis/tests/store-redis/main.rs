//! The Redis adapters against a real, private redis-server.

mod helpers;

use bytes::Bytes;
use conformance::cache::Claims;
use domain::ports::{Cache, SessionStore};
use domain::UserId;
use helpers::{eventually, RedisServer};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::Duration;
use store_redis::connect;

const MINUTE: Duration = Duration::from_secs(60);

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Every key in the server.
async fn keys(server: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut server.raw().await)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The `Cache` port's battery on Redis: load claims are exclusive across
/// every process that shares the server.
#[tokio::test]
async fn cache_conforms_to_the_cache_port() {
    let server = RedisServer::start().await;
    let (cache, _) = connect(&server.config("t:")).unwrap();
    conformance::cache::run_all(&cache, Claims::Exclusive).await;
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.skips, stats.open), (0, 0, false));
}

/// The battery on a near-cache in front of Redis (what the web tier runs
/// with `near_ttl_ms`): claims go to Redis, so they stay exclusive.
#[tokio::test]
async fn near_cache_over_redis_conforms_to_the_cache_port() {
    let server = RedisServer::start().await;
    let (remote, _) = connect(&server.config("t:")).unwrap();
    let near = cache::NearCache::new(
        cache::CacheConfig::default(),
        Duration::from_secs(2),
        Arc::new(remote),
    );
    conformance::cache::run_all(&near, Claims::Exclusive).await;
}

/// Entries and claims live under the prefix (`<prefix>cache:`,
/// `<prefix>load:`); a healthy server costs no failure.
#[tokio::test]
async fn cache_keys_live_under_the_prefix() {
    let server = RedisServer::start().await;
    let (cache, _) = connect(&server.config("t:")).unwrap();
    cache.ping().await.unwrap();
    cache.set("k", b("v1"), MINUTE).await.unwrap();
    cache.set("bin", b("v2"), MINUTE).await.unwrap();
    assert!(cache.claim_load("k", MINUTE).await);
    assert_eq!(keys(&server).await, ["t:cache:bin", "t:cache:k", "t:load:k"]);
    cache.release_load("k").await;
    cache.delete("k").await.unwrap();
    assert_eq!(keys(&server).await, ["t:cache:bin"]);
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.skips, stats.open), (0, 0, false));
}

#[tokio::test]
async fn cache_entries_expire_with_a_jittered_ttl() {
    let server = RedisServer::start().await;
    let (cache, _) = connect(&server.config("t:")).unwrap();
    // The expiry Redis holds is the TTL ± 10 %, and not the same for all.
    let mut pttls = Vec::new();
    for i in 0..20 {
        let key = format!("long{i}");
        cache.set(&key, b("v"), Duration::from_secs(100)).await.unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("t:cache:{key}"))
            .query_async(&mut server.raw().await)
            .await
            .unwrap();
        pttls.push(pttl);
    }
    // Below by at most the 10 s of slack a slow machine could need.
    assert!(
        pttls.iter().all(|ms| (80_000..=110_000).contains(ms)),
        "{pttls:?}"
    );
    pttls.sort();
    pttls.dedup();
    assert!(pttls.len() > 1, "no jitter: {pttls:?}");
}

#[tokio::test]
async fn prefixes_isolate_deployments() {
    let server = RedisServer::start().await;
    let (a, sessions_a) = connect(&server.config("a:")).unwrap();
    let (b_, sessions_b) = connect(&server.config("b:")).unwrap();
    a.set("k", b("from a"), MINUTE).await.unwrap();
    assert_eq!(b_.get("k").await.unwrap(), None);
    b_.set("k", b("from b"), MINUTE).await.unwrap();
    b_.delete("k").await.unwrap();
    assert_eq!(a.get("k").await.unwrap(), Some(b("from a")));
    // Load claims too.
    assert!(a.claim_load("k", MINUTE).await);
    assert!(b_.claim_load("k", MINUTE).await);
    b_.release_load("k").await;
    assert!(!a.claim_load("k", MINUTE).await);
    a.release_load("k").await;

    let token = sessions_a.create(UserId(1), MINUTE).await.unwrap();
    assert!(sessions_b.get(&token).await.unwrap().is_none());
    assert!(sessions_a.get(&token).await.unwrap().is_some());

    let all = keys(&server).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], "a:cache:k");
    assert!(all[1].starts_with("a:session:"));
}

/// The `SessionStore` port's battery on Redis (any user id: Redis does not
/// know the users table).
#[tokio::test]
async fn sessions_conform_to_the_session_store_port() {
    let server = RedisServer::start().await;
    let (_, sessions) = connect(&server.config("t:")).unwrap();
    conformance::sessions::run_all(&sessions, UserId(7)).await;
}

/// Redis holds a session's expiry itself, under the SHA-256 of its token:
/// the raw token is nowhere, not in the key, not in the value.
#[tokio::test]
async fn sessions_are_stored_under_the_token_hash_with_their_expiry() {
    let server = RedisServer::start().await;
    let (_, sessions) = connect(&server.config("t:")).unwrap();
    let t = sessions.create(UserId(7), MINUTE).await.unwrap();
    let all = keys(&server).await;
    assert_eq!(all.len(), 1);
    let mut raw = server.raw().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&all[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=60_000).contains(&pttl), "{pttl}");
    let hash = all[0].strip_prefix("t:session:").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(hash, t.expose());
    assert_eq!(hash, t.digest());
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&all[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&value).contains(t.expose()));
    sessions.delete(&t).await.unwrap();
    assert!(keys(&server).await.is_empty());
}

/// SQLite sessions (the durable store of `LayeredSessions`) with users
/// `alice` and `bob`.
async fn sql_sessions(dir: &tempfile::TempDir) -> (Arc<store_sqlite::SqlSessionStore>, Vec<UserId>) {
    use domain::ports::Store;
    let pool = store_sqlite::open(&dir.path().join("s.db")).await.unwrap();
    let users = store_sqlite::SqliteStore::new(pool.clone());
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let username = domain::Username::parse(name).unwrap();
        ids.push(users.create_user(&username, "hash").await.unwrap());
    }
    (Arc::new(store_sqlite::SqlSessionStore::new(pool)), ids)
}

/// The battery on Redis in front of SQL, and what the layering adds while
/// both are up: SQL holds the truth, a logout reaches both.
#[tokio::test]
async fn layered_sessions_conform_to_the_session_store_port() {
    let server = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (durable, ids) = sql_sessions(&dir).await;
    let (_, fast) = connect(&server.config("l:")).unwrap();
    let sessions = store_redis::LayeredSessions::new(fast.clone(), durable.clone(), MINUTE);
    conformance::sessions::run_all(&sessions, ids[0]).await;

    let t = sessions.create(ids[1], MINUTE).await.unwrap();
    assert!(durable.get(&t).await.unwrap().is_some(), "SQL holds the truth");
    assert!(fast.get(&t).await.unwrap().is_some(), "Redis holds a copy");
    sessions.delete(&t).await.unwrap();
    assert!(durable.get(&t).await.unwrap().is_none());
    assert!(fast.get(&t).await.unwrap().is_none());
}

/// Awaits a call that must give up on its own (its timeout) rather than
/// hang; the 30 s here only turns a hang into a failure, it measures nothing.
async fn no_hang<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call hung instead of timing out")
}

/// Redis dies (SIGKILL): calls fail instead of hanging, then fail fast
/// while the breaker is open; Redis comes back on the same port: calls
/// succeed again after the back-off, with the (unpersisted) data gone.
#[tokio::test]
async fn cache_survives_redis_being_killed_and_restarted() {
    let mut server = RedisServer::start().await;
    let (cache, sessions) = connect(&server.config("t:")).unwrap();
    cache.set("k", b("v"), MINUTE).await.unwrap();
    let token = sessions.create(UserId(1), MINUTE).await.unwrap();

    server.kill().await;
    assert!(no_hang(cache.get("k")).await.is_err());
    let stats = cache.stats();
    assert!(stats.open);
    assert_eq!(stats.failures, 1);

    // While open, calls are refused without touching the network; session
    // errors are errors too (not "no session").
    assert!(cache.set("k", b("v"), MINUTE).await.is_err());
    assert!(cache.delete("k").await.is_err());
    assert!(sessions.get(&token).await.is_err());
    let stats = cache.stats();
    assert_eq!(stats.skips, 3, "{stats:?}");
    assert_eq!(sessions.stats(), stats);

    // Still down after the first back-off: the probe fails, the breaker
    // stays open, and no call ever takes longer than the deadline.
    eventually("a probe fails", || async {
        assert!(no_hang(cache.get("k")).await.is_err());
        (cache.stats().failures > 1).then_some(())
    })
    .await;
    assert!(cache.stats().open);

    server.restart().await;
    let value = eventually("the cache recovers", || async { cache.get("k").await.ok() }).await;
    // The data did not survive (no persistence): a miss, as a cache may.
    assert_eq!(value, None);
    assert!(!cache.stats().open);
    cache.set("k", b("again"), MINUTE).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(b("again")));
    assert!(sessions.get(&token).await.unwrap().is_none());
    let stats = cache.stats();
    assert!(stats.skips >= 3 && stats.failures >= 2, "{stats:?}");
}

/// Redis hangs (SIGSTOP: the kernel still accepts connections, nothing
/// answers): calls time out instead of hanging, then fail fast; once Redis
/// resumes, calls succeed again and the data is still there.
#[tokio::test]
async fn cache_times_out_on_a_hung_redis() {
    let server = RedisServer::start().await;
    let (cache, _) = connect(&server.config("t:")).unwrap();
    cache.set("k", b("v"), MINUTE).await.unwrap();

    server.signal(Signal::SIGSTOP);
    assert!(no_hang(cache.get("k")).await.is_err());
    assert!(cache.stats().open);
    assert!(cache.get("k").await.is_err());
    assert_eq!(cache.stats().skips, 1);

    server.signal(Signal::SIGCONT);
    let value = eventually("the cache recovers", || async { cache.get("k").await.ok() }).await;
    assert_eq!(value, Some(b("v")));
    assert!(!cache.stats().open);
}

/// Sessions in Redis over SQL: a Redis death logs nobody out; a logout
/// while Redis is unreachable is refused (rather than leaving a Redis copy
/// that would keep the token working); after Redis restarts empty, sessions
/// are read from SQL and copied back.
#[tokio::test]
async fn layered_sessions_survive_redis_and_logout_stays_safe() {
    let mut server = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (durable, ids) = sql_sessions(&dir).await;
    let (_, fast) = connect(&server.config("l:")).unwrap();
    let sessions = store_redis::LayeredSessions::new(fast, durable.clone(), MINUTE);

    let alice = sessions.create(ids[0], MINUTE).await.unwrap();
    let bob = sessions.create(ids[1], MINUTE).await.unwrap();
    assert!(
        durable.get(&alice).await.unwrap().is_some(),
        "SQL holds the truth"
    );

    server.kill().await;
    assert_eq!(sessions.get(&alice).await.unwrap().unwrap().user_id, ids[0]);
    assert!(
        sessions.delete(&bob).await.is_err(),
        "no logout while Redis cannot be reached"
    );
    assert!(
        sessions.get(&bob).await.unwrap().is_some(),
        "a refused logout changed nothing"
    );

    server.restart().await;
    assert_eq!(sessions.get(&bob).await.unwrap().unwrap().user_id, ids[1]);
    eventually("logout works once Redis is back", || async {
        sessions.delete(&bob).await.ok()
    })
    .await;
    assert!(sessions.get(&bob).await.unwrap().is_none());
    assert!(durable.get(&bob).await.unwrap().is_none());
}
