//! The SQL store split over several replica sets by logical shard
//! ([`ShardedStore`]): every call goes to the set the shard map names for
//! the logical shard inside the id it is about, through that set's
//! [`PgRouter`] (so each shard has its replicas, its failover and its
//! read-your-writes floor of its own).
//!
//! - **Placement.** A user's logical shard is a hash of the name
//!   ([`LogicalShard::for_username`]); the user's id, photos and feed
//!   entries carry it ([`ShardedId`], made by the set's database), so
//!   everything a user owns lives together and any id reaches its set
//!   without a lookup. Names resolve to ids through [`Usernames`] on the
//!   catalog set (which also holds the shard map, the sessions and the job
//!   queue).
//! - **No joins across sets** (migration 0008): a follow is two rows, one
//!   on each side's shard (`following` on the follower's, `followers` on
//!   the followee's), each written with its user's counter in one
//!   statement. The feed is denormalised: when a photo becomes ready
//!   ([`Store::set_photo_status`], the photo job's last step, retried with
//!   the job) it is fanned out as `feed_entries` on every follower's shard,
//!   one statement per set; a follow back-fills the followee's latest ready
//!   photos ([`ShardedConfig::backfill`]); a feed read is then one query on
//!   the reader's set.
//! - **Celebrities.** A user with [`ShardedConfig::celebrity_followers`]
//!   followers is no longer fanned out: their followers' `following` rows
//!   are marked, and a feed read merges the marked followees' photos in,
//!   one query per set that holds any (so a read touches at most every set
//!   once, whatever the number of followers). Promotion is crash-safe in
//!   three steps on the user's row (0 → 1: fan-out stops; every set's rows
//!   marked; 1 → 2), and a follow that finds a celebrity marks its own row
//!   and finishes a promotion left at 1. A celebrity stays one (no
//!   demotion: hysteresis for free).
//!
//! Ordering arguments (why no photo falls between the fan-out and a
//! follow): a follow writes the `followers` row, then back-fills from the
//! photos; the fan-out marks the photo ready, then reads `followers`. Both
//! pairs run on the followee's primary, so whichever reads second sees the
//! other's write. Unfollow removes both rows and the entries; a fan-out
//! racing it may still write an entry, which the feed read drops (it joins
//! the entries with the reader's `following`).

mod load;
mod report;
mod reshard;
mod routing;

pub use load::ProcessLoad;
pub use report::{HotUser, SetReport, ShardReport};
pub use reshard::{MoveError, MoveRequest, MoveStatus};
pub use routing::Connector;

use crate::router::PgRouter;
use crate::store::{dimension, photo_columns, photo_from_row, upper_bound, user_from_row};
use crate::PgStore;
use crate::{corrupt, now_ms, unavailable, Usernames};
use async_trait::async_trait;
use domain::ports::Store;
use domain::shard::{LogicalShard, ShardMap, ShardedId};
use domain::*;
use routing::Routing;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The policy of a sharded store.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedConfig {
    /// Followers from which a user's photos are merged into feeds at read
    /// time instead of fanned out: 10 000 (a fan-out then writes at most
    /// that many entries, spread over the sets).
    pub celebrity_followers: i64,
    /// How many of a followee's latest ready photos a follow copies into
    /// the follower's feed: 200. Older ones are not in the feed (pages of
    /// the followee's own list still have them).
    pub backfill: i64,
    /// How long a sign-up's claim of a name holds before another sign-up
    /// may take it over (the first died midway): 30 s.
    pub claim_stale_after: Duration,
    /// Rows per batch of a move's copy and catch-up: 2000.
    pub reshard_batch: i64,
    /// The share of this process's recent requests from which a user is
    /// hot, their profile and their photos merged into feeds then served
    /// from a near-cache (see `load.rs`): 0.01. 0 turns the defence off.
    pub hot_share: f64,
    /// How long the near-cache keeps a hot read, the staleness it allows:
    /// 1 s.
    pub hot_ttl: Duration,
}

impl Default for ShardedConfig {
    fn default() -> Self {
        ShardedConfig {
            celebrity_followers: 10_000,
            backfill: 200,
            claim_stale_after: Duration::from_secs(30),
            reshard_batch: 2000,
            hot_share: 0.01,
            hot_ttl: Duration::from_secs(1),
        }
    }
}

/// [`Store`] over several replica sets (see the module documentation).
/// Cheap to clone.
#[derive(Clone)]
pub struct ShardedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The set that holds the usernames, the shard map, the sessions and
    /// the queue; also one of the sets.
    catalog: PgRouter,
    routing: watch::Receiver<Arc<Routing>>,
    /// Connects the sets a map (or a move's target) adds.
    connector: Option<Connector>,
    config: ShardedConfig,
    /// Requests per logical shard and user; the hot reads' near-cache.
    load: Arc<load::Load>,
    /// The name it reports its epoch and load under.
    client: String,
}

/// How many of a hot user's newest ready photos the near-cache keeps for
/// the feeds that merge them: deeper pages read the set.
const HOT_PHOTOS: i64 = 100;

/// How long a write waits out a move's fence before it fails: 30 s (a
/// cutover pauses the moved shards' writes for far less).
const FENCE_WAIT: Duration = Duration::from_secs(30);

impl ShardedStore {
    /// A store over `sets` (name → router; each migrated), `catalog` being
    /// one of them. Publishes the even map over every set as epoch 1 if no
    /// map exists yet (any number of processes may race to: one wins), then
    /// follows the map; `connector` connects the sets a later map adds
    /// (without one, such a map is not routed by).
    pub async fn connect(
        catalog: &str,
        sets: BTreeMap<String, PgRouter>,
        config: ShardedConfig,
        connector: Option<Connector>,
    ) -> Result<ShardedStore, StoreError> {
        let catalog = sets
            .get(catalog)
            .cloned()
            .ok_or_else(|| unavailable(format!("the catalog set {catalog:?} is not among the sets")))?;
        let maps = catalog.shard_maps();
        if maps.current().await?.is_none() {
            let names: Vec<&str> = sets.keys().map(String::as_str).collect();
            let map = ShardMap::even(&names).map_err(unavailable)?;
            match maps.publish(&map).await {
                Ok(()) | Err(crate::PublishError::Stale { .. }) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        let load = Arc::new(load::Load::new(config.hot_share, config.hot_ttl));
        let (routing, client) =
            routing::follow(catalog.clone(), sets, connector.clone(), load.clone()).await?;
        Ok(ShardedStore {
            inner: Arc::new(Inner {
                catalog,
                routing,
                connector,
                config,
                load,
                client,
            }),
        })
    }

    /// Registers (or updates) the node URLs of replica set `name` in the
    /// catalog, where routers that meet the set in a map find them.
    pub async fn register_set(&self, name: &str, nodes: &[String]) -> Result<(), StoreError> {
        routing::register_set(&self.inner.catalog, name, nodes).await
    }

    /// The map routed by now.
    pub fn map(&self) -> Option<Arc<ShardMap>> {
        Some(Arc::clone(&self.routing().map))
    }

    /// The routers of the map routed by now, by set name.
    pub fn sets(&self) -> BTreeMap<String, PgRouter> {
        self.routing().routers.clone()
    }

    /// The catalog set's router.
    pub fn catalog(&self) -> &PgRouter {
        &self.inner.catalog
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.inner.routing.borrow())
    }

    /// The router of the set that holds `shard` now.
    fn set_for(&self, shard: LogicalShard) -> Result<PgRouter, StoreError> {
        self.routing().set_for(shard)
    }

    /// The router of the set that holds the row with id `id`; `None` for an
    /// id no row can have (negative).
    fn set_of(&self, id: i64) -> Result<Option<PgRouter>, StoreError> {
        ShardedId::from_raw(id)
            .map(|id| self.set_for(id.shard()))
            .transpose()
    }

    /// Counts a request about user `id` (for its shard and in the hot-user
    /// sketch).
    fn count_user(&self, id: i64) {
        if let Some(id) = ShardedId::from_raw(id) {
            self.count(id.shard(), Some(id.raw()));
        }
    }

    /// Counts a request about a row with id `id` (a photo) for its shard.
    fn count_row(&self, id: i64) {
        if let Some(id) = ShardedId::from_raw(id) {
            self.count(id.shard(), None);
        }
    }

    fn count(&self, shard: LogicalShard, user: Option<i64>) {
        let routing = self.inner.routing.borrow();
        self.inner.load.hit(shard, routing.map.set_of(shard), user);
    }

    /// Exports the requests per set and the hot-key defence's counts into
    /// `registry` (`load.rs`).
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        self.inner.load.register_metrics(registry)
    }

    /// Like [`ShardedStore::set_of`] for a row that must exist.
    fn set_of_existing(&self, id: i64) -> Result<PgRouter, StoreError> {
        self.set_of(id)?.ok_or(StoreError::NotFound)
    }

    /// `ids` grouped by the set that holds them.
    fn by_set(
        &self,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<BTreeMap<String, (PgRouter, Vec<i64>)>, StoreError> {
        let routing = self.routing();
        let mut groups: BTreeMap<String, (PgRouter, Vec<i64>)> = BTreeMap::new();
        for id in ids {
            let Some(id) = ShardedId::from_raw(id) else {
                continue;
            };
            let name = routing.map.set_of(id.shard());
            match groups.get_mut(name) {
                Some(group) => group.1.push(id.raw()),
                None => {
                    groups.insert(name.to_owned(), (routing.router(name)?, vec![id.raw()]));
                }
            }
        }
        Ok(groups)
    }

    /// Runs the write `f` on the primary of the set that holds `id`'s
    /// logical shard. While a move fences that shard it waits (for the
    /// routing to change, or a moment) and runs `f` again on whichever set
    /// holds it then: a cutover pauses writes, it does not fail them.
    async fn write_at<T, F, Fut>(&self, id: i64, f: F) -> Result<T, StoreError>
    where
        F: Fn(PgStore) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        self.fenced(|| self.set_of_existing(id), f).await
    }

    /// Runs the write `f` on `set`'s primary, waiting out a move's fence
    /// like [`ShardedStore::write_at`] (for statements every set runs).
    async fn write_on<T, F, Fut>(&self, set: &PgRouter, f: F) -> Result<T, StoreError>
    where
        F: Fn(PgStore) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        self.fenced(|| Ok(set.clone()), f).await
    }

    /// Runs `f` on the primary of the set `resolve` names, again (resolved
    /// again) while a move's fence refuses it, for at most [`FENCE_WAIT`].
    async fn fenced<T, R, F, Fut>(&self, resolve: R, f: F) -> Result<T, StoreError>
    where
        R: Fn() -> Result<PgRouter, StoreError>,
        F: Fn(PgStore) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let deadline = tokio::time::Instant::now() + FENCE_WAIT;
        loop {
            match resolve()?.write(&f).await {
                Err(e) if routing::is_fenced(&e) && tokio::time::Instant::now() < deadline => {
                    self.fence_pause().await
                }
                done => return done,
            }
        }
    }

    /// Runs the write `f` once per set with the `ids` it holds, waiting out
    /// a move's fence like [`ShardedStore::write_at`] (the fenced ids are
    /// grouped again by the routing of the next try).
    async fn write_grouped<F, Fut>(&self, ids: Vec<i64>, f: F) -> Result<(), StoreError>
    where
        F: Fn(PgStore, Vec<i64>) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        let deadline = tokio::time::Instant::now() + FENCE_WAIT;
        let mut todo = ids;
        while !todo.is_empty() {
            let mut fenced = Vec::new();
            for (router, ids) in self.by_set(std::mem::take(&mut todo))?.into_values() {
                match router.write(|s| f(s, ids.clone())).await {
                    Err(e) if routing::is_fenced(&e) && tokio::time::Instant::now() < deadline => {
                        fenced.extend(ids)
                    }
                    other => other?,
                }
            }
            if !fenced.is_empty() {
                self.fence_pause().await;
            }
            todo = fenced;
        }
        Ok(())
    }

    /// Waits for the routing to change, or 20 ms.
    async fn fence_pause(&self) {
        let mut routing = self.inner.routing.clone();
        routing.borrow_and_update();
        let _ = tokio::time::timeout(Duration::from_millis(20), routing.changed()).await;
    }

    fn usernames(pool: &PgPool) -> Usernames {
        Usernames::new(pool.clone())
    }

    /// A hot `owner`'s ready photos older than `before`, the newest
    /// `limit`, from the near-cache; `None` when `owner` is not hot or the
    /// page is deeper than the cache keeps.
    async fn hot_photos(&self, owner: i64, before: i64, limit: i64) -> Result<Option<Vec<i64>>, StoreError> {
        let load = &self.inner.load;
        if !load.is_hot(owner) {
            return Ok(None);
        }
        let set = self.set_of_existing(owner)?;
        let newest = load
            .near(load::NearKind::Photos, owner, || async {
                let ids: Vec<i64> = set
                    .read(|s| async move {
                        sqlx::query_scalar(
                            "SELECT id FROM photos WHERE owner_id = $1 AND status = 'ready' \
                             ORDER BY id DESC LIMIT $2",
                        )
                        .bind(owner)
                        .bind(HOT_PHOTOS)
                        .fetch_all(s.pool())
                        .await
                        .map_err(unavailable)
                    })
                    .await?;
                Ok(load::Near::Photos(Arc::new(ids)))
            })
            .await?;
        let load::Near::Photos(newest) = newest else {
            unreachable!("a photos key holds photos")
        };
        let page: Vec<i64> = newest
            .iter()
            .copied()
            .filter(|id| *id < before)
            .take(limit as usize)
            .collect();
        // Complete when the page is full or the cache holds all there is.
        let complete = page.len() as i64 == limit || (newest.len() as i64) < HOT_PHOTOS;
        Ok(complete.then_some(page))
    }

    /// Writes `photo`'s entry into the feed of each of its owner's
    /// followers, unless the owner is a celebrity or the photo is not ready
    /// (deleted meanwhile). Idempotent: a retried job writes nothing twice.
    async fn fan_out(&self, photo: PhotoId) -> Result<(), StoreError> {
        let set = self.set_of_existing(photo.0)?;
        // On the primary: the followers must be those as of now (see the
        // ordering argument in the module documentation).
        let row: Option<(i64, i16, Vec<i64>)> = set
            .write(|s| async move {
                sqlx::query_as(
                    "SELECT p.owner_id, u.celebrity, \
                     coalesce((SELECT array_agg(follower_id) FROM followers WHERE followee_id = p.owner_id), '{}') \
                     FROM photos p JOIN users u ON u.id = p.owner_id WHERE p.id = $1 AND p.status = 'ready'",
                )
                .bind(photo.0)
                .fetch_optional(s.pool())
                .await
                .map_err(unavailable)
            })
            .await?;
        let Some((owner, celebrity, followers)) = row else {
            return Ok(());
        };
        self.inner.load.forget(owner);
        if celebrity != 0 {
            return Ok(());
        }
        self.write_grouped(followers, |s, users| async move {
            sqlx::query(
                "INSERT INTO feed_entries (user_id, photo_id, author_id) \
                 SELECT u, $2, $3 FROM unnest($1::bigint[]) AS u ON CONFLICT DO NOTHING",
            )
            .bind(&users)
            .bind(photo.0)
            .bind(owner)
            .execute(s.pool())
            .await
            .map(drop)
            .map_err(unavailable)
        })
        .await
    }

    /// Makes `user` a celebrity, or finishes a promotion a crash left
    /// half done: fan-out stops (state 1), every follower's row is marked
    /// on every set, then state 2.
    async fn promote(&self, user: UserId) -> Result<(), StoreError> {
        self.write_at(user.0, |s| async move {
            exec(
                s.pool(),
                "UPDATE users SET celebrity = 1 WHERE id = $1 AND celebrity = 0",
                user.0,
            )
            .await
        })
        .await?;
        for router in self.routing().all() {
            self.write_on(&router, |s| async move {
                exec(
                    s.pool(),
                    "UPDATE following SET celebrity = true WHERE followee_id = $1 AND NOT celebrity",
                    user.0,
                )
                .await
            })
            .await?;
        }
        self.write_at(user.0, |s| async move {
            exec(s.pool(), "UPDATE users SET celebrity = 2 WHERE id = $1", user.0).await
        })
        .await?;
        tracing::info!(
            user = user.0,
            "promoted to celebrity: photos merged into feeds at read time"
        );
        Ok(())
    }
}

/// Runs `sql` with `id` as its one parameter.
async fn exec(pool: &PgPool, sql: &'static str, id: i64) -> Result<u64, StoreError> {
    sqlx::query(sql)
        .bind(id)
        .execute(pool)
        .await
        .map(|d| d.rows_affected())
        .map_err(unavailable)
}

/// Sorts `ids` newest first, drops repeats and keeps `limit`.
fn newest(mut ids: Vec<i64>, limit: u32) -> Vec<PhotoId> {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    ids.truncate(limit as usize);
    ids.into_iter().map(PhotoId).collect()
}

#[async_trait]
impl Store for ShardedStore {
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError> {
        let shard = LogicalShard::for_username(username.as_str());
        self.count(shard, None);
        let set = self.set_for(shard)?;
        let id = UserId(crate::next_id(&set.primary_pool()?, shard).await?.raw());
        let name = username.as_str();
        let stale = self.inner.config.claim_stale_after;
        self.inner
            .catalog
            .write(|s| async move { Self::usernames(s.pool()).claim(name, id, stale).await })
            .await?;
        // The claim is ours, so a row of this name on the shard is an
        // orphan of a sign-up that died before activating it (never
        // resolvable, so it owns nothing): it is replaced.
        let inserted = self
            .write_at(id.0, |s| async move {
                sqlx::query(concat!(
                    "INSERT INTO users (id, username, password_hash, created_at) VALUES ($1, $2, $3, ",
                    now_ms!(),
                    ") ON CONFLICT (username) DO UPDATE SET id = EXCLUDED.id, \
                     password_hash = EXCLUDED.password_hash, created_at = EXCLUDED.created_at"
                ))
                .bind(id.0)
                .bind(name)
                .bind(password_hash)
                .execute(s.pool())
                .await
                .map_err(unavailable)
            })
            .await;
        if let Err(e) = inserted {
            let released = self
                .inner
                .catalog
                .write(|s| async move { Self::usernames(s.pool()).release(name, id).await })
                .await;
            if let Err(r) = released {
                tracing::warn!(error = %r, username = name, "releasing the claim of a failed sign-up (taken over once stale)");
            }
            return Err(e);
        }
        self.inner
            .catalog
            .write(|s| async move { Self::usernames(s.pool()).activate(name, id).await })
            .await
            // Our claim went stale and was taken over: the other sign-up has
            // the name.
            .map_err(|e| match e {
                StoreError::NotFound => StoreError::Conflict,
                e => e,
            })?;
        Ok(id)
    }

    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError> {
        let name = username.as_str();
        let id = self
            .inner
            .catalog
            .read(|s| async move { Self::usernames(s.pool()).resolve(name).await })
            .await?;
        match id {
            Some(id) => self.user_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.count_user(id.0);
        let Some(set) = self.set_of(id.0)? else {
            return Ok(None);
        };
        let row = set
            .read(|s| async move {
                sqlx::query("SELECT id, username, password_hash FROM users WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(unavailable)
            })
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError> {
        self.count_user(id.0);
        let Some(set) = self.set_of(id.0)? else {
            return Ok(None);
        };
        let read = || async {
            let row: Option<(i64, String, i64, i64)> = set
                .read(|s| async move {
                    sqlx::query_as(
                        "SELECT id, username, followers_count, following_count FROM users WHERE id = $1",
                    )
                    .bind(id.0)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(unavailable)
                })
                .await?;
            row.map(|(id, name, followers, following)| {
                Ok(Profile {
                    id: UserId(id),
                    username: Username::parse(&name).map_err(corrupt)?,
                    followers,
                    following,
                })
            })
            .transpose()
        };
        let load = &self.inner.load;
        if !load.is_hot(id.0) {
            return read().await;
        }
        match load
            .near(load::NearKind::Profile, id.0, || async {
                read().await.map(load::Near::Profile)
            })
            .await?
        {
            load::Near::Profile(p) => Ok(p),
            load::Near::Photos(_) => unreachable!("a profile's key holds a profile"),
        }
    }

    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError> {
        let owner = ShardedId::from_raw(photo.owner_id.0).ok_or(StoreError::NotFound)?;
        self.count_user(owner.raw());
        let (width, height) = (dimension(photo.width)?, dimension(photo.height)?);
        let row = self
            .write_at(owner.raw(), |s| async move {
                sqlx::query(concat!(
                    "WITH p AS (INSERT INTO photos (id, owner_id, caption, status, format, width, height, created_at) \
                     VALUES (scalestack_next_id($6), $1, $2, 'processing', $3, $4, $5, ",
                    now_ms!(),
                    ") RETURNING *) SELECT ",
                    photo_columns!(),
                    " FROM p JOIN users u ON u.id = p.owner_id"
                ))
                .bind(photo.owner_id.0)
                .bind(photo.caption.as_ref().map(|c| c.as_str()))
                .bind(photo.format.as_str())
                .bind(width)
                .bind(height)
                .bind(i32::from(owner.shard().get()))
                .fetch_one(s.pool())
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
                    _ => unavailable(e),
                })
            })
            .await?;
        photo_from_row(&row)
    }

    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError> {
        if ShardedId::from_raw(id.0).is_none() {
            return Ok(None);
        }
        self.count_row(id.0);
        let gone = self
            .write_at(id.0, |s| async move { s.delete_photo(id).await })
            .await?;
        if let Some(gone) = &gone {
            self.inner.load.forget(gone.owner_id.0);
            for router in self.routing().all() {
                self.write_on(&router, |s| async move {
                    exec(s.pool(), "DELETE FROM feed_entries WHERE photo_id = $1", id.0).await
                })
                .await?;
            }
        }
        Ok(gone)
    }

    async fn record_photo_job(&self, id: PhotoId, job: i64) -> Result<(), StoreError> {
        self.count_row(id.0);
        self.write_at(id.0, |s| async move { s.record_photo_job(id, job).await })
            .await
    }

    async fn stalled_uploads(&self, before_ms: i64, limit: usize) -> Result<Vec<Photo>, StoreError> {
        let mut all = Vec::new();
        for router in self.routing().all() {
            all.extend(
                router
                    .write(|s| async move { s.stalled_uploads(before_ms, limit).await })
                    .await?,
            );
        }
        // A move's two copies of the same rows (the target while it
        // fills, the source until it is cleaned) give one photo.
        all.sort_by_key(|p| (p.created_at_ms, p.id));
        all.dedup_by_key(|p| p.id);
        all.truncate(limit);
        Ok(all)
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.count_row(id.0);
        let Some(set) = self.set_of(id.0)? else {
            return Ok(None);
        };
        set.read(|s| async move { s.photo(id).await }).await
    }

    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError> {
        self.count_row(id.0);
        self.write_at(id.0, |s| async move { s.set_photo_status(id, status).await })
            .await?;
        if status == PhotoStatus::Ready {
            self.fan_out(id).await?;
        }
        Ok(())
    }

    async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.count_user(owner.0);
        let Some(set) = self.set_of(owner.0)? else {
            return Ok(vec![]);
        };
        set.read(|s| async move { s.user_photo_ids(owner, page).await })
            .await
    }

    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        for id in [follower.0, followee.0] {
            ShardedId::from_raw(id).ok_or(StoreError::NotFound)?;
            self.count_user(id);
            self.inner.load.forget(id);
        }
        self.write_at(follower.0, |s| async move {
            sqlx::query(concat!(
                "WITH ins AS (INSERT INTO following (follower_id, followee_id, created_at) VALUES ($1, $2, ",
                now_ms!(),
                ") ON CONFLICT DO NOTHING RETURNING 1) \
                 UPDATE users SET following_count = following_count + (SELECT count(*) FROM ins) WHERE id = $1"
            ))
            .bind(follower.0)
            .bind(followee.0)
            .execute(s.pool())
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
                _ => unavailable(e),
            })
        })
        .await?;
        let counted: Option<(i64, i16)> = self
            .write_at(followee.0, |s| async move {
                sqlx::query_as(concat!(
                    "WITH ins AS (INSERT INTO followers (followee_id, follower_id, created_at) VALUES ($1, $2, ",
                    now_ms!(),
                    ") ON CONFLICT DO NOTHING RETURNING 1) \
                     UPDATE users SET followers_count = followers_count + (SELECT count(*) FROM ins) \
                     WHERE id = $1 RETURNING followers_count, celebrity"
                ))
                .bind(followee.0)
                .bind(follower.0)
                .fetch_optional(s.pool())
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
                    _ => unavailable(e),
                })
            })
            .await?;
        let (followers, celebrity) = counted.ok_or(StoreError::NotFound)?;
        if celebrity != 0 || followers >= self.inner.config.celebrity_followers {
            self.write_at(follower.0, |s| async move {
                sqlx::query(
                    "UPDATE following SET celebrity = true WHERE follower_id = $1 AND followee_id = $2",
                )
                .bind(follower.0)
                .bind(followee.0)
                .execute(s.pool())
                .await
                .map_err(unavailable)
            })
            .await?;
            if celebrity != 2 {
                self.promote(followee).await?;
            }
            return Ok(());
        }
        // Back-fill, read on the followee's primary after its followers row
        // (see the ordering argument).
        let backfill = self.inner.config.backfill;
        let recent: Vec<i64> = self
            .write_at(followee.0, |s| async move {
                sqlx::query_scalar(
                    "SELECT id FROM photos WHERE owner_id = $1 AND status = 'ready' ORDER BY id DESC LIMIT $2",
                )
                .bind(followee.0)
                .bind(backfill)
                .fetch_all(s.pool())
                .await
                .map_err(unavailable)
            })
            .await?;
        if !recent.is_empty() {
            let recent = &recent;
            self.write_at(follower.0, |s| async move {
                sqlx::query(
                    "INSERT INTO feed_entries (user_id, photo_id, author_id) \
                     SELECT $1, p, $3 FROM unnest($2::bigint[]) AS p ON CONFLICT DO NOTHING",
                )
                .bind(follower.0)
                .bind(recent)
                .bind(followee.0)
                .execute(s.pool())
                .await
                .map_err(unavailable)
            })
            .await?;
        }
        Ok(())
    }

    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        if ShardedId::from_raw(follower.0).is_none() || ShardedId::from_raw(followee.0).is_none() {
            return Ok(());
        }
        for id in [follower.0, followee.0] {
            self.count_user(id);
            self.inner.load.forget(id);
        }
        self
            .write_at(followee.0, |s| async move {
                sqlx::query(
                    "WITH del AS (DELETE FROM followers WHERE followee_id = $1 AND follower_id = $2 RETURNING 1) \
                     UPDATE users SET followers_count = followers_count - (SELECT count(*) FROM del) WHERE id = $1",
                )
                .bind(followee.0)
                .bind(follower.0)
                .execute(s.pool())
                .await
                .map_err(unavailable)
            })
            .await?;
        self.write_at(follower.0, |s| async move {
            sqlx::query(
                "WITH del AS (DELETE FROM following WHERE follower_id = $1 AND followee_id = $2 RETURNING 1), \
                 gone AS (DELETE FROM feed_entries WHERE user_id = $1 AND author_id = $2) \
                 UPDATE users SET following_count = following_count - (SELECT count(*) FROM del) WHERE id = $1",
            )
            .bind(follower.0)
            .bind(followee.0)
            .execute(s.pool())
            .await
            .map_err(unavailable)
        })
        .await?;
        Ok(())
    }

    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError> {
        self.count_user(follower.0);
        let Some(mine) = self.set_of(follower.0)? else {
            return Ok(false);
        };
        mine.read(|s| async move {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM following WHERE follower_id = $1 AND followee_id = $2)",
            )
            .bind(follower.0)
            .bind(followee.0)
            .fetch_one(s.pool())
            .await
            .map_err(unavailable)
        })
        .await
    }

    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.count_user(user.0);
        let Some(mine) = self.set_of(user.0)? else {
            return Ok(vec![]);
        };
        let before = upper_bound(page);
        let limit = i64::from(page.limit);
        // The fanned-out entries of followees still followed (an entry a
        // racing fan-out wrote after an unfollow is dropped here), and the
        // celebrities followed, whose photos are merged in below.
        let (mut ids, celebrities): (Vec<i64>, Vec<i64>) = mine
            .read(|s| async move {
                let ids = sqlx::query_scalar(
                    "SELECT e.photo_id FROM feed_entries e JOIN following f \
                     ON f.follower_id = e.user_id AND f.followee_id = e.author_id AND NOT f.celebrity \
                     WHERE e.user_id = $1 AND e.photo_id < $2 ORDER BY e.photo_id DESC LIMIT $3",
                )
                .bind(user.0)
                .bind(before)
                .bind(limit)
                .fetch_all(s.pool())
                .await
                .map_err(unavailable)?;
                let celebrities = sqlx::query_scalar(
                    "SELECT followee_id FROM following WHERE follower_id = $1 AND celebrity",
                )
                .bind(user.0)
                .fetch_all(s.pool())
                .await
                .map_err(unavailable)?;
                Ok((ids, celebrities))
            })
            .await?;
        // A hot celebrity's newest photos come from the near-cache; the
        // others' (and pages deeper than it keeps) from their sets.
        let mut cold = Vec::new();
        for owner in celebrities {
            self.count_user(owner);
            match self.hot_photos(owner, before, limit).await? {
                Some(hot) => ids.extend(hot),
                None => cold.push(owner),
            }
        }
        for (router, owners) in self.by_set(cold)?.into_values() {
            let owners = &owners;
            ids.extend(
                router
                    .read(|s| async move {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT id FROM photos WHERE owner_id = ANY($1) AND status = 'ready' AND id < $2 \
                             ORDER BY id DESC LIMIT $3",
                        )
                        .bind(owners)
                        .bind(before)
                        .bind(limit)
                        .fetch_all(s.pool())
                        .await
                        .map_err(unavailable)
                    })
                    .await?,
            );
        }
        Ok(newest(ids, page.limit))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        for router in self.routing().all() {
            router.ping().await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ShardedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedStore")
            .field("sets", &self.routing().map.sets)
            .field("epoch", &self.map().map(|m| m.epoch))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_feeds_are_newest_first_without_repeats() {
        let ids = newest(vec![3, 9, 5, 9, 1, 7], 4);
        assert_eq!(ids, vec![PhotoId(9), PhotoId(7), PhotoId(5), PhotoId(3)]);
    }
}
