//! The shard map ([`ShardMap`]) kept durably in PostgreSQL: one row per
//! epoch in `shard_maps` (migration 0005) on the catalog replica set (its
//! primary, so it fails over with the set and is no single point of
//! failure), and followed by every router: `LISTEN` for the notification
//! each publish sends in its transaction, and a poll behind it for the
//! notifications a reconnecting listener missed.
//!
//! Ids that carry their shard are made by the database too ([`next_id`]).
//!
//! Publishing is compare-and-set on the epoch: a map is accepted only as
//! the next epoch after the current one, so two resharding runs racing to
//! change the map cannot both win, and no router ever goes back an epoch.

use crate::{now_ms, unavailable, Pools};
use domain::shard::{LogicalShard, ShardMap, ShardMapError, ShardedId};
use domain::{BackendError, StoreError};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The channel a publish notifies, with the new epoch as its payload.
const CHANNEL: &str = "scalestack_shard_map";
/// Key of the transaction-scoped advisory lock publishers take (ASCII
/// "sclshmap"), so that their check of the current epoch and their insert
/// are one step.
const LOCK_KEY: i64 = 0x7363_6c73_686d_6170;

/// Why a publish was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The map breaks an invariant.
    #[error("invalid shard map: {0}")]
    Invalid(#[from] ShardMapError),
    /// Its epoch is not the next one: another change was published first.
    #[error("epoch {offered} is not the next after {current}: the map changed meanwhile")]
    Stale { offered: u64, current: u64 },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The shard maps in one database (the catalog set's primary).
#[derive(Clone)]
pub struct ShardMaps {
    pools: Pools,
}

impl ShardMaps {
    /// The maps in the migrated database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        ShardMaps {
            pools: Pools::Fixed(pool),
        }
    }

    /// The maps on whichever pool `current` names at each statement (the
    /// catalog set's primary, which a failover moves).
    pub fn on_current(current: impl Fn() -> Result<PgPool, BackendError> + Send + Sync + 'static) -> Self {
        ShardMaps {
            pools: Pools::Current(Arc::new(current)),
        }
    }

    fn pool(&self) -> Result<PgPool, StoreError> {
        self.pools.get().map_err(unavailable)
    }

    /// The newest map, if any was published. A stored map that fails to
    /// parse or to validate is an error, never a map to route by.
    pub async fn current(&self) -> Result<Option<ShardMap>, StoreError> {
        let json: Option<String> =
            sqlx::query_scalar("SELECT map FROM shard_maps ORDER BY epoch DESC LIMIT 1")
                .fetch_optional(&self.pool()?)
                .await
                .map_err(unavailable)?;
        json.map(|j| parse(&j)).transpose()
    }

    /// Publishes `map` as the next epoch (1 when there is none yet) and
    /// notifies the routers, in one transaction.
    pub async fn publish(&self, map: &ShardMap) -> Result<(), PublishError> {
        map.validate()?;
        let json = serde_json::to_string(map).map_err(unavailable)?;
        let epoch = i64::try_from(map.epoch).map_err(|_| PublishError::Stale {
            offered: map.epoch,
            current: 0,
        })?;
        let mut tx = self.pool()?.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let current: i64 = sqlx::query_scalar("SELECT coalesce(max(epoch), 0) FROM shard_maps")
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        if epoch != current + 1 {
            return Err(PublishError::Stale {
                offered: map.epoch,
                current: current as u64,
            });
        }
        sqlx::query(concat!(
            "INSERT INTO shard_maps (epoch, map, created_at) VALUES ($1, $2, ",
            now_ms!(),
            ")"
        ))
        .bind(epoch)
        .bind(&json)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(epoch.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        tracing::info!(epoch, sets = map.sets.len(), "shard map published");
        Ok(())
    }

    /// Follows the map: the receiver holds the newest map (`None` until one
    /// is published) and changes when a newer epoch appears, never to an
    /// older one; a notification brings it at once, a poll every `poll` at
    /// the latest. The listener is in place before the first read, and the
    /// map is read again whenever it reconnects, so no change falls between
    /// a read and a notification. The task ends when every receiver is
    /// dropped.
    pub async fn follow(&self, poll: Duration) -> Result<watch::Receiver<Option<Arc<ShardMap>>>, StoreError> {
        let mut listener = listen(&self.pool()?).await;
        let first = self.current().await?.map(Arc::new);
        let (tx, rx) = watch::channel(first);
        let maps = self.clone();
        tokio::spawn(async move {
            loop {
                // Woken by a notification, a lost connection (sqlx
                // reconnects it; what was sent meanwhile is lost) or the
                // poll, whichever is first; each time the map is read again.
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = notified => if !ok { listener = None },
                    _ = tokio::time::sleep(poll) => {}
                    _ = tx.closed() => return,
                }
                if listener.is_none() {
                    if let Ok(pool) = maps.pool() {
                        listener = listen(&pool).await;
                    }
                }
                match maps.current().await {
                    Ok(Some(map)) => {
                        tx.send_if_modified(|held| {
                            let newer = held.as_ref().is_none_or(|h| h.epoch < map.epoch);
                            if newer {
                                *held = Some(Arc::new(map));
                            }
                            newer
                        });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the shard map"),
                }
            }
        });
        Ok(rx)
    }
}

/// A connection listening for shard map changes, if one can be made now
/// (else the poll alone follows the map until the next try).
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "connecting the shard map listener");
            return None;
        }
    };
    match listener.listen(CHANNEL).await {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::debug!(error = %e, "listening for shard map changes");
            None
        }
    }
}

/// A new id in logical shard `shard`, made by the database behind `pool`
/// (`scalestack_next_id`, migration 0006): its clock and its sequence,
/// shared by every logical shard that database holds.
pub async fn next_id(pool: &PgPool, shard: LogicalShard) -> Result<ShardedId, StoreError> {
    let raw: i64 = sqlx::query_scalar("SELECT scalestack_next_id($1)")
        .bind(i32::from(shard.get()))
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    ShardedId::from_raw(raw).ok_or_else(|| unavailable(format!("scalestack_next_id gave {raw}")))
}

fn parse(json: &str) -> Result<ShardMap, StoreError> {
    let map: ShardMap =
        serde_json::from_str(json).map_err(|e| unavailable(format!("stored shard map: {e}")))?;
    map.validate()
        .map_err(|e| unavailable(format!("stored shard map: {e}")))?;
    Ok(map)
}
