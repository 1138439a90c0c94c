//! What `ctl shards` shows: the map, and per replica set its logical
//! shards, its rows, its size and the load its database has taken, read
//! from each set's primary (`pg_stat_database`'s own counters, so the load
//! of every process that uses the set, not only this one's).

use super::ShardedStore;
use crate::unavailable;
use domain::StoreError;
use serde::{Deserialize, Serialize};

/// The shard map and every set's share of the data and the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The map's epoch.
    pub epoch: u64,
    /// Every set of the map, in its order.
    pub sets: Vec<SetReport>,
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
                error: None,
            };
            if let Err(e) = self.fill(&mut report).await {
                report.error = Some(e.to_string());
            }
            sets.push(report);
        }
        Ok(ShardReport {
            epoch: map.epoch,
            sets,
        })
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
