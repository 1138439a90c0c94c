//! What `ctl shards` shows: the map, and per replica set its logical
//! shards, its rows, its size and the load its database has taken, read
//! from each set's primary (`pg_stat_database`'s own counters, so the load
//! of every process that uses the set, not only this one's); and where the
//! requests go, summed over what every live process reported with its
//! heartbeat (`load.rs`): per set, the busiest logical shards and the
//! hottest users, and how many hot reads the near-caches answered.

use super::load::ProcessLoad;
use super::routing::CLIENT_LIVENESS;
use super::ShardedStore;
use crate::{now_ms, unavailable};
use domain::ports::Store;
use domain::shard::{LogicalShard, ShardedId};
use domain::{StoreError, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Users [`ShardReport::hot_users`] names.
const HOT_USERS: usize = 5;

/// The shard map and every set's share of the data and the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The map's epoch.
    pub epoch: u64,
    /// Every set of the map, in its order.
    pub sets: Vec<SetReport>,
    /// Processes whose load is summed (the live routers).
    pub processes: u64,
    /// The hottest users over every process's recent requests, most first.
    pub hot_users: Vec<HotUser>,
    /// Hot reads the processes' near-caches answered, and those that went
    /// to a set to fill them.
    pub near_hits: u64,
    pub near_loads: u64,
}

/// A user in [`ShardReport::hot_users`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotUser {
    /// The user's id (a string: 64-bit ids pass JavaScript's numbers).
    pub id: String,
    pub username: Option<String>,
    /// The set that holds the user, and the logical shard.
    pub set: String,
    pub shard: u16,
    /// Recent requests about the user (decayed, summed over processes),
    /// and their share of all recent requests.
    pub requests: u64,
    pub share: f64,
}

/// One replica set in a [`ShardReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    /// The set's name.
    pub name: String,
    /// The logical shard ranges the map gives it, `first-last`.
    pub ranges: Vec<String>,
    /// How many logical shards that is.
    pub logical_shards: u32,
    /// Rows of the tables that follow the shard key.
    pub users: i64,
    pub photos: i64,
    pub follows: i64,
    pub feed_entries: i64,
    /// `pg_database_size` of its primary.
    pub bytes: i64,
    /// Transactions committed on its primary since its statistics began.
    pub commits: i64,
    /// Rows its primary has read (`tup_returned + tup_fetched`).
    pub rows_read: i64,
    /// The logical shards holding the most users and photos, most first
    /// (at most five): `(shard, rows)`.
    pub fullest: Vec<(u16, i64)>,
    /// Requests the processes routed to it since they started.
    pub requests: u64,
    /// Its logical shards that took the most of them, most first (at most
    /// five): `(shard, requests)`.
    pub busiest: Vec<(u16, u64)>,
    /// An error reading the set (its counts are then 0).
    pub error: Option<String>,
}

impl ShardedStore {
    /// The report of every set of the current map (an unreachable set
    /// carries its error instead of failing the report).
    pub async fn report(&self) -> Result<ShardReport, StoreError> {
        let map = self
            .map()
            .ok_or_else(|| unavailable("no shard map is published"))?;
        let mut sets = Vec::new();
        for name in &map.sets {
            let ranges: Vec<String> = map
                .ranges
                .iter()
                .filter(|r| &r.set == name)
                .map(|r| format!("{}-{}", r.first, r.last))
                .collect();
            let mut report = SetReport {
                name: name.clone(),
                ranges,
                logical_shards: map.counts().get(name.as_str()).copied().unwrap_or(0),
                users: 0,
                photos: 0,
                follows: 0,
                feed_entries: 0,
                bytes: 0,
                commits: 0,
                rows_read: 0,
                fullest: Vec::new(),
                requests: 0,
                busiest: Vec::new(),
                error: None,
            };
            if let Err(e) = self.fill(&mut report).await {
                report.error = Some(e.to_string());
            }
            sets.push(report);
        }
        let loads = self.process_loads().await?;
        let mut shards: BTreeMap<u16, u64> = BTreeMap::new();
        let mut users: BTreeMap<i64, u64> = BTreeMap::new();
        let (mut recent, mut near_hits, mut near_loads) = (0, 0, 0);
        for load in &loads {
            for (set, n) in &load.sets {
                if let Some(report) = sets.iter_mut().find(|s| &s.name == set) {
                    report.requests += n;
                }
            }
            for &(shard, n) in &load.shards {
                *shards.entry(shard).or_default() += n;
            }
            for &(user, n) in &load.users {
                *users.entry(user).or_default() += n;
            }
            recent += load.recent;
            near_hits += load.near_hits;
            near_loads += load.near_loads;
        }
        let mut shards: Vec<(u16, u64)> = shards.into_iter().collect();
        shards.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (shard, n) in shards {
            let Some(shard_id) = LogicalShard::new(shard) else {
                continue;
            };
            if let Some(report) = sets.iter_mut().find(|s| s.name == map.set_of(shard_id)) {
                if report.busiest.len() < 5 {
                    report.busiest.push((shard, n));
                }
            }
        }
        let mut users: Vec<(i64, u64)> = users.into_iter().collect();
        users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        users.truncate(HOT_USERS);
        let mut hot_users = Vec::new();
        for (id, requests) in users {
            let Some(sharded) = ShardedId::from_raw(id) else {
                continue;
            };
            let username = match self.user_by_id(UserId(id)).await {
                Ok(user) => user.map(|u| u.username.to_string()),
                Err(_) => None,
            };
            hot_users.push(HotUser {
                id: id.to_string(),
                username,
                set: map.set_of(sharded.shard()).to_owned(),
                shard: sharded.shard().get(),
                requests,
                share: requests as f64 / recent.max(1) as f64,
            });
        }
        Ok(ShardReport {
            epoch: map.epoch,
            sets,
            processes: loads.len() as u64,
            hot_users,
            near_hits,
            near_loads,
        })
    }

    /// What every other live process reported with its last heartbeat,
    /// and this one's load as of now.
    async fn process_loads(&self) -> Result<Vec<ProcessLoad>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(concat!(
            "SELECT load::text FROM shard_map_clients WHERE load IS NOT NULL AND client <> $2 AND seen_at > ",
            now_ms!(),
            " - $1"
        ))
        .bind(CLIENT_LIVENESS.as_millis() as i64)
        .bind(&self.inner.client)
        .fetch_all(&self.inner.catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
        let mut loads: Vec<ProcessLoad> = rows
            .into_iter()
            .filter_map(|(text,)| serde_json::from_str(&text).ok())
            .collect();
        if let Some(map) = self.map() {
            loads.push(self.inner.load.snapshot(&map));
        }
        Ok(loads)
    }

    async fn fill(&self, report: &mut SetReport) -> Result<(), StoreError> {
        let pool = self.routing().router(&report.name)?.primary_pool()?;
        let (users, photos, follows, feed_entries, bytes, commits, rows_read): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM photos), \
                 (SELECT count(*) FROM following), (SELECT count(*) FROM feed_entries), \
                 pg_database_size(current_database()), d.xact_commit, d.tup_returned + d.tup_fetched \
                 FROM pg_stat_database d WHERE d.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .map_err(unavailable)?;
        let fullest: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT shard, count(*) AS n FROM ( \
             SELECT ((id >> 10) & 8191)::int AS shard FROM users \
             UNION ALL SELECT ((id >> 10) & 8191)::int FROM photos) s \
             GROUP BY shard ORDER BY n DESC, shard LIMIT 5",
        )
        .fetch_all(&pool)
        .await
        .map_err(unavailable)?;
        *report = SetReport {
            users,
            photos,
            follows,
            feed_entries,
            bytes,
            commits,
            rows_read,
            fullest: fullest.into_iter().map(|(s, n)| (s as u16, n)).collect(),
            ..report.clone()
        };
        Ok(())
    }
}
