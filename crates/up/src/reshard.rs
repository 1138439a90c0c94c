//! `ctl reshard`: moves logical shards to another replica set, adding one
//! (a managed cluster with its failover controller, like the configured
//! sets) when none is named. The move itself is the sharded store's
//! (`store_postgres::ShardedStore::run_move`), run here in the background;
//! its progress is the move's row, which `GET /api/reshard` returns. A move
//! `up` was running when it died is recovered when it starts again
//! ([`Orchestrator::recover_moves`]).

use crate::Orchestrator;
use domain::shard::{ShardMap, LOGICAL_SHARDS};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use store_postgres::{MoveError, MoveRequest, MoveStatus, ShardedStore};

/// `POST /api/reshard`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshardRequest {
    /// `FIRST-LAST` (or one shard): the logical shards to move. Default:
    /// the upper half of the biggest range of the set holding the most
    /// rows.
    pub shards: Option<String>,
    /// The replica set to move them to. Default: a new managed set.
    pub to: Option<String>,
}

/// Why a reshard request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReshardError {
    /// Refused, nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Something failed on the way (a set that would not start).
    #[error("{0}")]
    Failed(String),
}

impl From<MoveError> for ReshardError {
    fn from(e: MoveError) -> Self {
        match e {
            MoveError::Invalid(m) => ReshardError::Invalid(m),
            MoveError::Store(e) => ReshardError::Failed(e.to_string()),
        }
    }
}

impl Orchestrator {
    fn sharded(&self) -> Result<&ShardedStore, ReshardError> {
        self.shards.get().ok_or_else(|| {
            ReshardError::Invalid(
                "the SQL store is not sharded (or not connected yet): nothing to reshard".into(),
            )
        })
    }

    /// Starts a move (adding a set first when none is named) and runs it in
    /// the background; the move as it starts.
    pub async fn reshard(self: &Arc<Self>, request: ReshardRequest) -> Result<MoveStatus, ReshardError> {
        let store = self.sharded()?.clone();
        let map = store
            .map()
            .ok_or_else(|| ReshardError::Failed("no shard map is published".into()))?;
        let (first, last) = match &request.shards {
            Some(text) => parse_range(text)?,
            None => {
                // The set holding the most rows (users and photos) is split.
                let rows = match store.report().await {
                    Ok(report) => report
                        .sets
                        .iter()
                        .map(|s| (s.name.clone(), s.users + s.photos))
                        .collect(),
                    Err(_) => BTreeMap::new(),
                };
                default_range(&map, &rows)?
            }
        };
        // One request at a time from the check to the move's row (and no
        // scaling meanwhile): two at once would both add a set.
        let _one = self.scaling.lock().await;
        if let Some(running) = store
            .latest_move()
            .await
            .map_err(|e| ReshardError::Failed(e.to_string()))?
            .filter(|m| !m.finished())
        {
            return Err(ReshardError::Invalid(format!(
                "move {} ({}-{} to {}) is unfinished: wait for it, or abort it",
                running.id, running.first_shard, running.last_shard, running.target
            )));
        }
        let to = match request.to {
            Some(to) => to,
            None => self.add_set(&store).await?,
        };
        let started = store.start_move(&MoveRequest { first, last, to }).await?;
        let id = started.id;
        tokio::spawn(async move {
            match store.run_move(id).await {
                Ok(m) => tracing::info!(move_id = id, phase = %m.phase, pause_ms = ?m.pause_ms, "move ended"),
                Err(e) => {
                    tracing::error!(move_id = id, error = %e, "move failed after its switch; `up` finishes it when restarted")
                }
            }
        });
        Ok(started)
    }

    /// The latest move, if any.
    pub async fn reshard_status(&self) -> Result<Option<MoveStatus>, ReshardError> {
        self.sharded()?
            .latest_move()
            .await
            .map_err(|e| ReshardError::Failed(e.to_string()))
    }

    /// Asks the running move to roll back.
    pub async fn reshard_abort(&self) -> Result<MoveStatus, ReshardError> {
        Ok(self.sharded()?.abort_move().await?)
    }

    /// Rolls back or finishes a move this `up` (or an earlier one) left
    /// unfinished, in the background.
    pub(crate) fn recover_moves(&self) {
        let Some(store) = self.shards.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            match store.recover_moves().await {
                Ok(Some(m)) => {
                    tracing::warn!(move_id = m.id, phase = %m.phase, "recovered an interrupted move")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "recovering an interrupted move"),
            }
        });
    }

    /// Starts the next managed replica set (`s3` after `s1`, `s2`) and
    /// registers it where the routers find it; its name. The caller holds
    /// `scaling`.
    async fn add_set(&self, store: &ShardedStore) -> Result<String, ReshardError> {
        if !self.topology.needs_managed_postgres() {
            return Err(ReshardError::Invalid(
                "the replica sets are external: name the set to move to (`--to`), registered in shard_sets"
                    .into(),
            ));
        }
        let k = self.clusters().len();
        self.topology
            .with_sets(k + 1)
            .map_err(|e| ReshardError::Invalid(format!("cannot add a replica set: {e:#}")))?;
        let set = self.topology.postgres.set_at(k);
        let name = set.set_name().unwrap_or_default().to_owned();
        self.start_set(&set)
            .await
            .map_err(|e| ReshardError::Failed(format!("starting replica set {name}: {e:#}")))?;
        store
            .register_set(&name, &set.urls())
            .await
            .map_err(|e| ReshardError::Failed(format!("registering replica set {name}: {e}")))?;
        tracing::info!(set = %name, "replica set added");
        Ok(name)
    }
}

/// `FIRST-LAST` or `N`.
fn parse_range(text: &str) -> Result<(u16, u16), ReshardError> {
    let bad = || {
        ReshardError::Invalid(format!(
            "{text:?} is not a range of logical shards: FIRST-LAST or N, within 0-{}",
            LOGICAL_SHARDS - 1
        ))
    };
    let (a, b) = text.trim().split_once('-').unwrap_or((text.trim(), text.trim()));
    let (first, last): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if first > last || last >= LOGICAL_SHARDS {
        return Err(bad());
    }
    Ok((first, last))
}

/// The upper half of the biggest range of the set that holds the most
/// rows (`rows`, by set), then the most logical shards.
fn default_range(map: &ShardMap, rows: &BTreeMap<String, i64>) -> Result<(u16, u16), ReshardError> {
    let counts = map.counts();
    let busiest = counts
        .iter()
        .max_by_key(|(name, n)| {
            (
                rows.get(**name).copied().unwrap_or(0),
                **n,
                std::cmp::Reverse(*name),
            )
        })
        .map(|(name, _)| *name)
        .ok_or_else(|| ReshardError::Failed("the shard map has no set".into()))?;
    let range = map
        .ranges
        .iter()
        .filter(|r| r.set == busiest)
        .max_by_key(|r| r.last.get() - r.first.get())
        .expect("a set with shards has a range");
    let (first, last) = (range.first.get(), range.last.get());
    if first == last {
        return Err(ReshardError::Invalid(format!(
            "{busiest} holds single logical shards only: name the shards to move (--shards)"
        )));
    }
    Ok((first + (last - first).div_ceil(2), last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_range("0-2047").unwrap(), (0, 2047));
        assert_eq!(parse_range(" 17 ").unwrap(), (17, 17));
        for bad in ["", "a-b", "9-3", "0-8192", "-1", "1-2-3"] {
            assert!(matches!(parse_range(bad), Err(ReshardError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn the_default_move_halves_the_busiest_sets_biggest_range() {
        let map = ShardMap::even(&["s1", "s2"]).unwrap();
        let none = BTreeMap::new();
        assert_eq!(default_range(&map, &none).unwrap(), (2048, 4095));
        // The set with the most rows, whatever its share of the shards.
        let rows = BTreeMap::from([("s1".to_owned(), 3), ("s2".to_owned(), 9)]);
        assert_eq!(default_range(&map, &rows).unwrap(), (6144, 8191));
        let three = map
            .moved(
                domain::shard::LogicalShard::new(2048).unwrap(),
                domain::shard::LogicalShard::new(4095).unwrap(),
                "s3",
            )
            .unwrap();
        // s2 now holds the most (4096 against 2048 each).
        assert_eq!(default_range(&three, &none).unwrap(), (6144, 8191));
    }
}
