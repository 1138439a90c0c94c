//! Where the load is, and the defence against a hot key (the seed's
//! celebrity problem).
//!
//! Every request a sharded store routes is counted for its logical shard
//! (one counter each) and, when it is about a user, for that user in a
//! Space-Saving sketch ([`cache::HotKeys`]) that keeps the most requested
//! users in bounded memory and follows the load as it moves (counts halve
//! every [`HOT_HALF_LIFE`]). Each process reports its counts with its
//! routing heartbeat (`shard_map_clients.load`, migration 0010), so
//! `ctl shards` sums every web server's and worker's.
//!
//! The defence: a read about a user who takes at least
//! [`ShardedConfig::hot_share`] of this process's requests is served from
//! a near-cache in the process for [`ShardedConfig::hot_ttl`], so a
//! celebrity's shard gets one such read per process per TTL instead of one
//! per request; the reads that do reach it are spread over its replicas by
//! its router. The price is the TTL's staleness on those reads only (a
//! celebrity's new photo reaches the merged feeds, and a profile's
//! counters move, up to a TTL late).
//!
//! The same counts go to Prometheus ([`Load::register_metrics`]):
//! `shard_requests_total{set}` (requests routed to each set, by the map of
//! the moment), `hot_reads_total{result}` (`near_hit`: answered by the
//! near-cache, `near_load`: read from the set to fill it) and
//! `hot_user_share{user}`, the share of the recent requests of the hottest
//! users (at most five), refreshed at each heartbeat.
//!
//! [`ShardedConfig::hot_share`]: super::ShardedConfig::hot_share
//! [`ShardedConfig::hot_ttl`]: super::ShardedConfig::hot_ttl

use cache::HotKeys;
use domain::shard::{LogicalShard, ShardMap, LOGICAL_SHARDS};
use domain::Profile;
use prometheus::{GaugeVec, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How fast the hot-key sketch forgets: counts halve every 10 s.
pub(crate) const HOT_HALF_LIFE: Duration = Duration::from_secs(10);
/// Users the sketch keeps (any user with more than 1/256 of the requests
/// is surely among them).
const SKETCH_CAPACITY: usize = 256;
/// Logical shards and users a process reports, the busiest first.
const REPORTED: usize = 16;
/// Near-cache entries before the expired ones are swept.
const NEAR_SWEEP_AT: usize = 4096;

/// What the near-cache keeps about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NearKind {
    Photos,
    Profile,
}

/// A value the hot defence keeps.
#[derive(Clone)]
pub(crate) enum Near {
    /// A user's newest ready photo ids, newest first, at most
    /// [`super::HOT_PHOTOS`]; fewer means that is all of them.
    Photos(Arc<Vec<i64>>),
    Profile(Option<Profile>),
}

/// One process's request counters and hot-read near-cache.
pub(crate) struct Load {
    shards: Box<[AtomicU64]>,
    users: HotKeys,
    near: Mutex<HashMap<(NearKind, i64), (Instant, Near)>>,
    loads: cache::SingleFlight<Result<Near, domain::StoreError>>,
    hot_share: f64,
    hot_ttl: Duration,
    /// Reads the near-cache answered, and hot reads that went to the set.
    near_hits: AtomicU64,
    near_loads: AtomicU64,
    metrics: LoadMetrics,
}

/// The Prometheus families of a [`Load`].
struct LoadMetrics {
    requests: IntCounterVec,
    hot_reads: IntCounterVec,
    hot_users: GaugeVec,
}

impl LoadMetrics {
    fn new() -> LoadMetrics {
        let requests = IntCounterVec::new(
            Opts::new("shard_requests_total", "Requests routed to each replica set"),
            &["set"],
        )
        .expect("a valid metric");
        let hot_reads = IntCounterVec::new(
            Opts::new(
                "hot_reads_total",
                "Reads about hot users: near_hit (from the near-cache), near_load (read from the set)",
            ),
            &["result"],
        )
        .expect("a valid metric");
        let hot_users = GaugeVec::new(
            Opts::new(
                "hot_user_share",
                "Share of this process's recent requests of its hottest users",
            ),
            &["user"],
        )
        .expect("a valid metric");
        LoadMetrics {
            requests,
            hot_reads,
            hot_users,
        }
    }
}

/// What one process reports (`shard_map_clients.load`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessLoad {
    /// Requests routed, per set of the map it routes by, since it started.
    pub sets: BTreeMap<String, u64>,
    /// Its busiest logical shards: `(shard, requests)` since it started.
    pub shards: Vec<(u16, u64)>,
    /// Its hottest users: `(user id, requests)`, decayed (recent load).
    pub users: Vec<(i64, u64)>,
    /// Requests in the sketch, decayed like the users' counts.
    pub recent: u64,
    /// Hot reads answered by its near-cache, and those that loaded it.
    pub near_hits: u64,
    pub near_loads: u64,
}

impl Load {
    /// `hot_share` 0 turns the defence off (the counting stays).
    pub fn new(hot_share: f64, hot_ttl: Duration) -> Load {
        Load {
            shards: (0..LOGICAL_SHARDS).map(|_| AtomicU64::new(0)).collect(),
            users: HotKeys::new(SKETCH_CAPACITY, HOT_HALF_LIFE),
            near: Mutex::new(HashMap::new()),
            loads: cache::SingleFlight::default(),
            hot_share,
            hot_ttl,
            near_hits: AtomicU64::new(0),
            near_loads: AtomicU64::new(0),
            metrics: LoadMetrics::new(),
        }
    }

    /// Exports the counts into `registry` (see the module documentation).
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        let m = &self.metrics;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.hot_reads.clone()))?;
        registry.register(Box::new(m.hot_users.clone()))
    }

    /// Counts a request for `shard` (held by `set`), about `user` when
    /// there is one.
    pub fn hit(&self, shard: LogicalShard, set: &str, user: Option<i64>) {
        self.shards[usize::from(shard.get())].fetch_add(1, Relaxed);
        self.metrics.requests.with_label_values(&[set]).inc();
        if let Some(user) = user {
            self.users.hit(&user.to_string());
        }
    }

    /// Whether reads about `user` are served from the near-cache now.
    pub fn is_hot(&self, user: i64) -> bool {
        self.hot_share > 0.0 && self.users.is_hot(&user.to_string(), self.hot_share)
    }

    /// The read `kind` about a hot `user` ([`Load::is_hot`]) from the
    /// near-cache, `load`ed (once at a time per key) when it holds none,
    /// and kept for the TTL.
    pub async fn near<F, Fut>(&self, kind: NearKind, user: i64, load: F) -> Result<Near, domain::StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Near, domain::StoreError>>,
    {
        let key = (kind, user);
        if let Some(v) = self.cached(key) {
            self.near_hits.fetch_add(1, Relaxed);
            self.metrics.hot_reads.with_label_values(&["near_hit"]).inc();
            return Ok(v);
        }
        let loaded = self
            .loads
            .run(&format!("{kind:?}:{user}"), || async {
                // A caller that waited on another's load finds it here.
                if let Some(v) = self.cached(key) {
                    return Ok(v);
                }
                self.near_loads.fetch_add(1, Relaxed);
                self.metrics.hot_reads.with_label_values(&["near_load"]).inc();
                let v = load().await?;
                let mut near = self.near.lock().unwrap_or_else(|e| e.into_inner());
                if near.len() >= NEAR_SWEEP_AT {
                    near.retain(|_, (until, _)| *until > Instant::now());
                }
                near.insert(key, (Instant::now() + self.hot_ttl, v.clone()));
                Ok(v)
            })
            .await;
        loaded
    }

    fn cached(&self, key: (NearKind, i64)) -> Option<Near> {
        let near = self.near.lock().unwrap_or_else(|e| e.into_inner());
        near.get(&key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    /// Forgets what the near-cache holds about `user` (this process's
    /// own writes show at once; other processes' within the TTL).
    pub fn forget(&self, user: i64) {
        let mut near = self.near.lock().unwrap_or_else(|e| e.into_inner());
        for kind in [NearKind::Photos, NearKind::Profile] {
            near.remove(&(kind, user));
        }
    }

    /// What this process reports, its sets named by `map`.
    pub fn snapshot(&self, map: &ShardMap) -> ProcessLoad {
        let mut sets: BTreeMap<String, u64> = map.sets.iter().map(|s| (s.clone(), 0)).collect();
        let mut shards = Vec::new();
        for (i, n) in self.shards.iter().enumerate() {
            let n = n.load(Relaxed);
            if n == 0 {
                continue;
            }
            let shard = LogicalShard::new(i as u16).expect("within the logical shards");
            *sets.entry(map.set_of(shard).to_owned()).or_default() += n;
            shards.push((i as u16, n));
        }
        shards.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        shards.truncate(REPORTED);
        let users: Vec<(i64, u64)> = self
            .users
            .top(REPORTED)
            .into_iter()
            .filter_map(|k| Some((k.key.parse().ok()?, k.count)))
            .collect();
        let recent = self.users.total();
        self.metrics.hot_users.reset();
        for (user, n) in users.iter().take(5) {
            let share = *n as f64 / recent.max(1) as f64;
            self.metrics
                .hot_users
                .with_label_values(&[&user.to_string()])
                .set(share);
        }
        ProcessLoad {
            sets,
            shards,
            users,
            recent,
            near_hits: self.near_hits.load(Relaxed),
            near_loads: self.near_loads.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::StoreError;

    fn shard(n: u16) -> LogicalShard {
        LogicalShard::new(n).unwrap()
    }

    #[tokio::test]
    async fn a_hot_users_reads_come_from_the_near_cache_and_a_cold_ones_do_not() {
        let load = Load::new(0.2, Duration::from_secs(60));
        let loads = AtomicU64::new(0);
        let (load, loads) = (&load, &loads);
        let read = |user| {
            let hot = load.is_hot(user);
            async move {
                if !hot {
                    loads.fetch_add(1, Relaxed);
                    return Ok(Near::Photos(Arc::new(vec![user])));
                }
                load.near(NearKind::Photos, user, || async {
                    loads.fetch_add(1, Relaxed);
                    Ok::<_, StoreError>(Near::Photos(Arc::new(vec![user])))
                })
                .await
            }
        };
        // User 7 takes half the requests, users 100.. one each.
        for i in 0..100 {
            load.hit(shard(1), "s1", Some(7));
            load.hit(shard(2), "s1", Some(100 + i));
        }
        for _ in 0..50 {
            read(7).await.unwrap();
        }
        assert_eq!(loads.load(Relaxed), 1, "one load for the hot user");
        for i in 0..10 {
            read(100 + i).await.unwrap();
        }
        assert_eq!(loads.load(Relaxed), 11, "every cold read loads");
        load.forget(7);
        read(7).await.unwrap();
        assert_eq!(loads.load(Relaxed), 12, "forgotten, loaded again");

        let off = Load::new(0.0, Duration::from_secs(60));
        for _ in 0..100 {
            off.hit(shard(1), "s1", Some(7));
        }
        assert!(!off.is_hot(7), "share 0 turns the defence off");
    }

    #[test]
    fn the_snapshot_sums_requests_per_set_and_names_the_busiest() {
        let load = Load::new(0.0, Duration::from_secs(1));
        let map = ShardMap::even(&["s1", "s2"]).unwrap();
        for _ in 0..5 {
            load.hit(shard(10), "s1", Some(1));
        }
        load.hit(shard(5000), "s2", Some(2));
        load.hit(shard(5001), "s2", None);
        let s = load.snapshot(&map);
        assert_eq!(s.sets, BTreeMap::from([("s1".into(), 5), ("s2".into(), 2)]));
        assert_eq!(s.shards[0], (10, 5));
        assert_eq!(s.users[0], (1, 5));
        assert_eq!(s.recent, 6);
    }
}
