//! What a sharded store routes by ([`Routing`]): a shard map and a router
//! for every set it names. The map is followed ([`ShardMaps::follow`]); a
//! map that names a set this process has no router for yet (one a move
//! added at runtime) is routed by only once that set's router is connected,
//! from the nodes registered in the catalog's `shard_sets` (migration 0009)
//! through the caller's [`Connector`].
//!
//! Every process reports the epoch it routes by in `shard_map_clients`, at
//! each change and every [`HEARTBEAT`]: a move waits for every live client
//! to route by its new map before it lets writes reach the new set (see
//! `reshard.rs`), and with it its load (`load.rs`).

use super::load::Load;
use crate::router::PgRouter;
use crate::{now_ms, unavailable};
use domain::shard::{LogicalShard, ShardMap};
use domain::StoreError;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a router rereads the shard map when no notification came.
const MAP_POLL: Duration = Duration::from_secs(5);
/// How often a process reports its epoch when nothing changes.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A client not heard of for this long is taken for gone (three missed
/// heartbeats).
pub(crate) const CLIENT_LIVENESS: Duration = Duration::from_secs(15);

/// Builds a migrated router for a replica set from its name and node URLs
/// (the process's own pool sizes, lag ceiling and metrics).
pub type Connector = Arc<
    dyn Fn(String, Vec<String>) -> Pin<Box<dyn Future<Output = Result<PgRouter, StoreError>> + Send>>
        + Send
        + Sync,
>;

/// A shard map and the router of every set it names.
pub(crate) struct Routing {
    pub map: Arc<ShardMap>,
    pub routers: BTreeMap<String, PgRouter>,
}

impl Routing {
    /// The router of the set that holds `shard`.
    pub fn set_for(&self, shard: LogicalShard) -> Result<PgRouter, StoreError> {
        self.router(self.map.set_of(shard))
    }

    /// The router of set `name`.
    pub fn router(&self, name: &str) -> Result<PgRouter, StoreError> {
        self.routers
            .get(name)
            .cloned()
            .ok_or_else(|| unavailable(format!("no router for the replica set {name:?}")))
    }

    /// Every set of the map, in its order.
    pub fn all(&self) -> Vec<PgRouter> {
        self.map
            .sets
            .iter()
            .filter_map(|s| self.routers.get(s).cloned())
            .collect()
    }
}

/// Follows the map on `catalog` and keeps a [`Routing`] for it, starting
/// from the routers the process was configured with (`known`). Returns
/// once the current map is routable, with the name this store reports
/// under. The task ends when every receiver is dropped, and then withdraws
/// the process from `shard_map_clients`.
pub(crate) async fn follow(
    catalog: PgRouter,
    mut known: BTreeMap<String, PgRouter>,
    connector: Option<Connector>,
    load: Arc<Load>,
) -> Result<(watch::Receiver<Arc<Routing>>, String), StoreError> {
    let mut maps = catalog.shard_maps().follow(MAP_POLL).await?;
    let map = maps
        .borrow_and_update()
        .clone()
        .ok_or_else(|| unavailable("no shard map is published"))?;
    let first = routing(map, &mut known, &catalog, connector.as_ref()).await?;
    let client = client_id();
    heartbeat(&catalog, &client, &first.map, &load).await;
    let (tx, rx) = watch::channel(Arc::new(first));
    let name = client.clone();
    tokio::spawn(async move {
        // A map whose set could not be connected yet is tried again at
        // the next heartbeat.
        let mut pending: Option<Arc<ShardMap>> = None;
        loop {
            tokio::select! {
                changed = maps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    pending = maps.borrow_and_update().clone();
                }
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = tx.closed() => break,
            }
            if let Some(map) = pending.take() {
                match routing(Arc::clone(&map), &mut known, &catalog, connector.as_ref()).await {
                    Ok(r) => {
                        tracing::info!(epoch = map.epoch, "routing by a new shard map");
                        tx.send_replace(Arc::new(r));
                    }
                    Err(e) => {
                        tracing::warn!(epoch = map.epoch, error = %e, "cannot route by the new shard map yet");
                        pending = Some(map);
                    }
                }
            }
            let map = Arc::clone(&tx.borrow().map);
            heartbeat(&catalog, &client, &map, &load).await;
        }
        if let Ok(pool) = catalog.primary_pool() {
            let _ = sqlx::query("DELETE FROM shard_map_clients WHERE client = $1")
                .bind(&client)
                .execute(&pool)
                .await;
        }
    });
    Ok((rx, name))
}

/// The routing for `map`, connecting the sets `known` lacks.
async fn routing(
    map: Arc<ShardMap>,
    known: &mut BTreeMap<String, PgRouter>,
    catalog: &PgRouter,
    connector: Option<&Connector>,
) -> Result<Routing, StoreError> {
    for name in &map.sets {
        if known.contains_key(name) {
            continue;
        }
        let router = connect_registered(catalog, connector, name).await?;
        tracing::info!(set = %name, "connected to a replica set the shard map added");
        known.insert(name.clone(), router);
    }
    let routers = map.sets.iter().map(|s| (s.clone(), known[s].clone())).collect();
    Ok(Routing { map, routers })
}

/// A router for set `name`, from its nodes registered in `shard_sets`.
pub(crate) async fn connect_registered(
    catalog: &PgRouter,
    connector: Option<&Connector>,
    name: &str,
) -> Result<PgRouter, StoreError> {
    let connector = connector.ok_or_else(|| {
        unavailable(format!(
            "this process has no router for the replica set {name:?} and cannot connect new sets"
        ))
    })?;
    let nodes: Option<Vec<String>> = sqlx::query_scalar("SELECT nodes FROM shard_sets WHERE name = $1")
        .bind(name)
        .fetch_optional(&catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
    let nodes = nodes.ok_or_else(|| unavailable(format!("the replica set {name:?} is not registered")))?;
    connector(name.to_owned(), nodes).await
}

/// Reports the epoch this process routes by and its load (best effort: a
/// failed report only makes a move wait for the next one).
async fn heartbeat(catalog: &PgRouter, client: &str, map: &ShardMap, load: &Load) {
    let Ok(pool) = catalog.primary_pool() else { return };
    let done = sqlx::query(concat!(
        "INSERT INTO shard_map_clients (client, epoch, seen_at, load) VALUES ($1, $2, ",
        now_ms!(),
        ", $3::jsonb) ON CONFLICT (client) DO UPDATE SET epoch = EXCLUDED.epoch, seen_at = EXCLUDED.seen_at, \
         load = EXCLUDED.load"
    ))
    .bind(client)
    .bind(map.epoch as i64)
    .bind(serde_json::to_string(&load.snapshot(map)).unwrap_or_default())
    .execute(&pool)
    .await;
    if let Err(e) = done {
        tracing::debug!(error = %e, "reporting the routed shard map epoch");
    }
}

/// This store's name in `shard_map_clients`: host, pid and a per-store
/// counter (several stores may live in one process).
fn client_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{host}:{}:{started}:{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Registers (or updates) the nodes of replica set `name` in the catalog,
/// for routers that meet it in a map.
pub(crate) async fn register_set(catalog: &PgRouter, name: &str, nodes: &[String]) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO shard_sets (name, nodes, added_at) VALUES ($1, $2, ",
        now_ms!(),
        ") ON CONFLICT (name) DO UPDATE SET nodes = EXCLUDED.nodes"
    ))
    .bind(name)
    .bind(nodes)
    .execute(&catalog.primary_pool()?)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Whether `e` is a write refused by a move's fence (SQLSTATE SS001 from
/// `scalestack_reshard_guard`), or one PostgreSQL rolled back as the
/// victim of a deadlock (which a move's table locks can take part in,
/// though they give up first): waited out and retried, never returned.
/// (By message: the store's errors carry the database's text, which our
/// clusters give in English.)
pub(crate) fn is_fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m)
        if m.contains("scalestack-reshard-fence") || m.contains("deadlock detected"))
}
