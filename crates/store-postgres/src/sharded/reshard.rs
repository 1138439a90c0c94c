//! Online resharding: moving a range of logical shards from the replica set
//! that holds them to another while the site reads and writes them, in
//! Vitess's order (copy, catch up, verify, switch traffic), with the change
//! capture done by a row trigger instead of a replication slot, so the
//! capture survives a failover of the source set (it is ordinary WAL) and
//! needs no `wal_level = logical`.
//!
//! 1. **Prepare.** The target's leftovers in the range are deleted and its
//!    rows marked `away` (nothing but the mover writes them); on the source
//!    the trigger (`scalestack_reshard_guard`, migration 0009) is installed
//!    in `capture` mode: every write to a row of the range logs its key.
//!    Installing a trigger waits for the writes in flight, so every write
//!    that commits later is logged.
//! 2. **Copy** every row of the range, table by table in key order, in
//!    batches (the progress `ctl reshard` draws).
//! 3. **Catch up**: the logged keys are copied again (the row as it is now on
//!    the source, or its deletion), until a pass finds little left; then
//!    every logical shard is **verified** by row count and checksum on both
//!    sides; then, until few changes come in and at most
//!    [`CUTOVER_SHARDS`] shards are in doubt (those the verify found
//!    different, and those changed since), the changes are copied and
//!    those shards verified again, unfenced. A catch-up that does not
//!    converge within [`CATCH_UP_LIMIT`] (writes outpacing it) rolls the
//!    move back rather than fence the range for long.
//! 4. **Cutover.** The range is fenced on both sides (writes to it are
//!    refused with SQLSTATE SS001, which the sharded store waits out and
//!    retries: a pause, not an error; the fence takes a table lock for the
//!    instant it is set, so no write slips past it), the last keys are
//!    copied, the shards still in doubt are verified again, the target's
//!    replicas replay it all, and the map with the range on the target is
//!    published. Once every live router routes by it (each reports its
//!    epoch) the target is unfenced and the source's rows turn `away`. The
//!    pause, fence to unfence, is measured and reported.
//! 5. **Clean**: the source's rows of the range are deleted, the triggers
//!    dropped.
//!
//! Reads never pause: until the map switches they go to the source, which
//! is the live copy, and no write reaches the target before every router
//! has switched, so no read misses a write that came before it.
//!
//! A move is one row of `reshard_moves` on the catalog set, its phase
//! updated at each step: an abort requested before the switch, a failed
//! step, or a restart of whoever ran it ([`ShardedStore::recover_moves`])
//! rolls a move that had not switched back (the target's copy deleted,
//! triggers dropped, the map untouched) and finishes one that had.

use super::routing::CLIENT_LIVENESS;
use super::ShardedStore;
use crate::router::PgRouter;
use crate::{now_ms, unavailable};
use domain::shard::LogicalShard;
use domain::StoreError;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A table that follows the shard key: its shard column and its key.
struct Table {
    name: &'static str,
    shard: &'static str,
    key: &'static [&'static str],
}

/// Every table a move copies, parents first (users before what refers to
/// them).
const TABLES: [Table; 5] = [
    Table {
        name: "users",
        shard: "id",
        key: &["id"],
    },
    Table {
        name: "photos",
        shard: "owner_id",
        key: &["id"],
    },
    Table {
        name: "following",
        shard: "follower_id",
        key: &["follower_id", "followee_id"],
    },
    Table {
        name: "followers",
        shard: "followee_id",
        key: &["followee_id", "follower_id"],
    },
    Table {
        name: "feed_entries",
        shard: "user_id",
        key: &["user_id", "photo_id"],
    },
];

/// Rows per delete batch (copies and catch-ups: the config's).
const BATCH: i64 = 2000;
/// How long a step is retried through transient errors (a set failing
/// over) before the move gives up and rolls back.
const STEP_RETRY: Duration = Duration::from_secs(60);
/// How long the catch-up may run without converging before the move is
/// rolled back (writes outpacing it would otherwise be paused for as long
/// as the last of them take to copy).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// At most this many logical shards are verified again under the fence.
const CUTOVER_SHARDS: usize = 64;

/// How long the cutover waits for the target's replicas and for the routers.
const SWITCH_WAIT: Duration = Duration::from_secs(30);

/// What to move: logical shards `first..=last` (all held by one set) to the
/// replica set `to` (one of the map's, or one registered with
/// [`ShardedStore::register_set`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    pub first: u16,
    pub last: u16,
    pub to: String,
}

/// A move and how far it got (a row of `reshard_moves`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    pub id: i64,
    pub first_shard: i32,
    pub last_shard: i32,
    pub source: String,
    pub target: String,
    /// `copying`, `catching_up`, `cutover`, `switched`, `cleaning`, `done`,
    /// `aborted`.
    pub phase: String,
    /// Rows of the range on the source when the copy began.
    pub rows_total: i64,
    pub rows_copied: i64,
    /// Logged keys copied again.
    pub rows_replayed: i64,
    /// Rows compared by the verify.
    pub rows_verified: i64,
    /// Source rows deleted after the switch.
    pub rows_deleted: i64,
    /// The epoch of the map that switched the range.
    pub epoch_after: Option<i64>,
    /// How long writes to the range were paused at the cutover.
    pub pause_ms: Option<i64>,
    pub abort_requested: bool,
    /// Why it was rolled back.
    pub error: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for MoveStatus {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(MoveStatus {
            id: row.try_get("id")?,
            first_shard: row.try_get("first_shard")?,
            last_shard: row.try_get("last_shard")?,
            source: row.try_get("source")?,
            target: row.try_get("target")?,
            phase: row.try_get("phase")?,
            rows_total: row.try_get("rows_total")?,
            rows_copied: row.try_get("rows_copied")?,
            rows_replayed: row.try_get("rows_replayed")?,
            rows_verified: row.try_get("rows_verified")?,
            rows_deleted: row.try_get("rows_deleted")?,
            epoch_after: row.try_get("epoch_after")?,
            pause_ms: row.try_get("pause_ms")?,
            abort_requested: row.try_get("abort_requested")?,
            error: row.try_get("error")?,
            started_at: row.try_get("started_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

impl MoveStatus {
    /// Whether the move is over (done or rolled back).
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "aborted")
    }
}

/// Why a move could not start or be aborted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MoveError {
    /// The request makes no sense now (bad range, same set, a move
    /// running, nothing to abort).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a step stopped: an abort asked for, or an error.
enum Stop {
    Abort,
    Failed(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Failed(e)
    }
}

impl ShardedStore {
    /// Records a move (not started: see [`ShardedStore::run_move`]). Refused
    /// while another move is unfinished, for a range split over several
    /// sets, or to the set that holds it.
    pub async fn start_move(&self, request: &MoveRequest) -> Result<MoveStatus, MoveError> {
        let invalid = MoveError::Invalid;
        let (first, last) = match (LogicalShard::new(request.first), LogicalShard::new(request.last)) {
            (Some(f), Some(l)) if f <= l => (f, l),
            _ => {
                return Err(invalid(format!(
                    "{}-{} is not a range of logical shards (0-8191)",
                    request.first, request.last
                )))
            }
        };
        let map = self.routing().map.clone();
        let source = map.set_of(first).to_owned();
        if let Some(other) = (first.get()..=last.get())
            .map(|n| map.set_of(LogicalShard::new(n).expect("in range")))
            .find(|s| *s != source)
        {
            return Err(invalid(format!(
                "shards {first}-{last} are held by {source:?} and {other:?}: move one set's at a time"
            )));
        }
        if source == request.to {
            return Err(invalid(format!(
                "shards {first}-{last} are already on {source:?}"
            )));
        }
        self.target_router(&request.to)
            .await
            .map_err(|e| invalid(format!("cannot reach the target set {:?}: {e}", request.to)))?;
        let pool = self.inner.catalog.primary_pool()?;
        sqlx::query_as(concat!(
            "INSERT INTO reshard_moves (first_shard, last_shard, source, target, phase, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'copying', ",
            now_ms!(),
            ", ",
            now_ms!(),
            ") RETURNING *"
        ))
        .bind(i32::from(first.get()))
        .bind(i32::from(last.get()))
        .bind(&source)
        .bind(&request.to)
        .fetch_one(&pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => invalid(
                "another move is unfinished: wait for it, or abort it".into(),
            ),
            _ => unavailable(e).into(),
        })
    }

    /// The latest move, finished or not.
    pub async fn latest_move(&self) -> Result<Option<MoveStatus>, StoreError> {
        sqlx::query_as("SELECT * FROM reshard_moves ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.inner.catalog.primary_pool()?)
            .await
            .map_err(unavailable)
    }

    /// Asks the unfinished move to roll back (it does between two batches;
    /// refused once it has switched).
    pub async fn abort_move(&self) -> Result<MoveStatus, MoveError> {
        let moved: Option<MoveStatus> = sqlx::query_as(
            "UPDATE reshard_moves SET abort_requested = true \
             WHERE phase IN ('copying', 'catching_up', 'cutover') RETURNING *",
        )
        .fetch_optional(&self.inner.catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
        match moved {
            Some(m) => Ok(m),
            None => Err(MoveError::Invalid(
                "no move can be aborted: none runs, or it has switched already".into(),
            )),
        }
    }

    /// Runs move `id` to its end: done, or rolled back (an abort asked for,
    /// or a step that kept failing), which the returned status says.
    pub async fn run_move(&self, id: i64) -> Result<MoveStatus, StoreError> {
        let mv = self.load_move(id).await?;
        let result = match mv.phase.as_str() {
            "copying" | "catching_up" | "cutover" => self.forward(&mv).await,
            "switched" | "cleaning" => self.finish(&mv).await.map_err(Stop::Failed),
            _ => return Ok(mv),
        };
        match result {
            Ok(()) => {}
            Err(Stop::Abort) => self.roll_back(&mv, None).await?,
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, move_id = id, "move failed");
                let current = self.load_move(id).await?;
                if matches!(current.phase.as_str(), "switched" | "cleaning") {
                    return Err(e);
                }
                self.roll_back(&mv, Some(e.to_string())).await?;
            }
        }
        self.load_move(id).await
    }

    /// Recovers the move a crash interrupted, if any: one that had switched
    /// (its map is published) is finished, any other is rolled back.
    pub async fn recover_moves(&self) -> Result<Option<MoveStatus>, StoreError> {
        let Some(mv) = self.latest_move().await? else {
            return Ok(None);
        };
        if mv.finished() {
            return Ok(None);
        }
        let switched = self.routing().map.set_of(shard(mv.first_shard)?) == mv.target;
        if switched && !matches!(mv.phase.as_str(), "switched" | "cleaning") {
            self.set_phase(mv.id, "switched").await?;
        }
        if switched || matches!(mv.phase.as_str(), "switched" | "cleaning") {
            self.finish(&mv).await?;
        } else {
            self.roll_back(&mv, Some("interrupted before its cutover".into()))
                .await?;
        }
        self.load_move(mv.id).await.map(Some)
    }

    async fn load_move(&self, id: i64) -> Result<MoveStatus, StoreError> {
        sqlx::query_as("SELECT * FROM reshard_moves WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.inner.catalog.primary_pool()?)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)
    }

    /// The router of the set `name`: the map's, or a registered set's.
    async fn target_router(&self, name: &str) -> Result<PgRouter, StoreError> {
        if let Ok(r) = self.routing().router(name) {
            return Ok(r);
        }
        super::routing::connect_registered(&self.inner.catalog, self.inner.connector.as_ref(), name).await
    }

    async fn set_phase(&self, id: i64, phase: &str) -> Result<(), StoreError> {
        self.update(id, "phase = $2", phase).await
    }

    /// `UPDATE reshard_moves SET <set>, updated_at = now WHERE id = $1`.
    async fn update<T>(&self, id: i64, set: &str, value: T) -> Result<(), StoreError>
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        let sql = format!(
            "UPDATE reshard_moves SET {set}, updated_at = {} WHERE id = $1",
            now_ms!()
        );
        sqlx::query(&sql)
            .bind(id)
            .bind(value)
            .execute(&self.inner.catalog.primary_pool()?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// An abort asked for is a [`Stop::Abort`].
    async fn check_abort(&self, id: i64) -> Result<(), Stop> {
        let asked: bool = sqlx::query_scalar("SELECT abort_requested FROM reshard_moves WHERE id = $1")
            .bind(id)
            .fetch_one(&self.inner.catalog.primary_pool()?)
            .await
            .map_err(unavailable)?;
        if asked {
            Err(Stop::Abort)
        } else {
            Ok(())
        }
    }

    /// Prepare, copy, catch up, verify, cut over, clean.
    async fn forward(&self, mv: &MoveStatus) -> Result<(), Stop> {
        let source = self.routing().router(&mv.source)?;
        let target = self.target_router(&mv.target).await?;
        let (first, last) = (mv.first_shard, mv.last_shard);
        let id = mv.id;
        let batch = self.inner.config.reshard_batch.max(1);
        if mv.phase == "copying" {
            retry(|| async {
                let pool = target.primary_pool()?;
                install(&pool, id, first, last, "away").await?;
                delete_range(&pool, first, last).await.map(drop)
            })
            .await?;
            retry(|| async { install(&source.primary_pool()?, id, first, last, "capture").await }).await?;
            let total = retry(|| async { count_range(&source.primary_pool()?, first, last).await }).await?;
            self.update(id, "rows_total = $2", total).await?;
            self.copy(id, &source, &target, first, last).await?;
            self.set_phase(id, "catching_up").await?;
        }
        // Catch up until a pass copies little.
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        let few = batch as u64 / 4;
        let mut replayed = 0;
        loop {
            self.check_abort(id).await?;
            let (n, _) = retry(|| replay(&source, &target, batch)).await?;
            replayed += n;
            self.update(id, "rows_replayed = $2", replayed as i64).await?;
            if n < few {
                break;
            }
            converging(deadline, n)?;
        }
        // The whole range verified. Then, until few changes come in and few
        // shards are in doubt, the changes are copied and their shards
        // verified again, unfenced: the fence is held only for the last.
        let (verified, mut suspect) = retry(|| verify(&source, &target, first, last, None)).await?;
        self.update(id, "rows_verified = $2", verified).await?;
        loop {
            self.check_abort(id).await?;
            let (n, shards) = retry(|| replay(&source, &target, batch)).await?;
            replayed += n;
            self.update(id, "rows_replayed = $2", replayed as i64).await?;
            suspect.extend(shards);
            if n < few && suspect.len() <= CUTOVER_SHARDS {
                break;
            }
            converging(deadline, n)?;
            let shards: Vec<i32> = suspect.iter().copied().collect();
            let (n, still) = retry(|| verify(&source, &target, first, last, Some(&shards))).await?;
            self.update(id, "rows_verified = rows_verified + $2", n).await?;
            suspect = still;
        }
        self.check_abort(id).await?;

        // Cutover.
        self.set_phase(id, "cutover").await?;
        let paused = Instant::now();
        retry(|| async { set_mode(&target.primary_pool()?, id, "fence", false).await }).await?;
        retry(|| async { set_mode(&source.primary_pool()?, id, "fence", true).await }).await?;
        let fenced = async {
            // The shards changed since the last pass, and those in doubt.
            let (n, shards) = retry(|| replay(&source, &target, batch)).await?;
            replayed += n;
            suspect.extend(shards);
            if !suspect.is_empty() {
                let shards: Vec<i32> = suspect.iter().copied().collect();
                let (n, still) = retry(|| verify(&source, &target, first, last, Some(&shards))).await?;
                self.update(id, "rows_verified = rows_verified + $2", n).await?;
                if !still.is_empty() {
                    return Err(Stop::Failed(unavailable(format!(
                        "source and target differ on logical shards {still:?} after the catch-up"
                    ))));
                }
            }
            self.update(id, "rows_replayed = $2", replayed as i64).await?;
            self.check_abort(id).await?;
            wait_replicas(&target).await;
            Ok(())
        }
        .await;
        // (A stop here is rolled back: the source unfenced first.)
        fenced?;
        let map = self.routing().map.clone();
        let next = map
            .moved(shard(first)?, shard(last)?, &mv.target)
            .map_err(unavailable)?;
        self.inner
            .catalog
            .shard_maps()
            .publish(&next)
            .await
            .map_err(unavailable)?;
        sqlx::query(concat!(
            "UPDATE reshard_moves SET phase = 'switched', epoch_after = $2, updated_at = ",
            now_ms!(),
            " WHERE id = $1"
        ))
        .bind(id)
        .bind(next.epoch as i64)
        .execute(&self.inner.catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
        self.switch(id, &source, &target, next.epoch, Some(paused))
            .await?;
        let mv = self.load_move(id).await?;
        self.finish(&mv).await?;
        Ok(())
    }

    /// After the map switched: wait for every router, unfence the target,
    /// turn the source's rows `away`.
    async fn switch(
        &self,
        id: i64,
        source: &PgRouter,
        target: &PgRouter,
        epoch: u64,
        paused: Option<Instant>,
    ) -> Result<(), StoreError> {
        self.wait_routers(epoch).await;
        retry(|| async { set_mode(&source.primary_pool()?, id, "away", false).await }).await?;
        retry(|| async { uninstall(&target.primary_pool()?, id).await }).await?;
        if let Some(paused) = paused {
            let ms = paused.elapsed().as_millis() as i64;
            self.update(id, "pause_ms = $2", ms).await?;
            tracing::info!(
                move_id = id,
                pause_ms = ms,
                epoch,
                "move switched: writes resumed on the target"
            );
        }
        Ok(())
    }

    /// Finishes a switched move: the switch (again: idempotent), then the
    /// source's rows deleted and its trigger dropped.
    async fn finish(&self, mv: &MoveStatus) -> Result<(), StoreError> {
        let source = self.target_router(&mv.source).await?;
        let target = self.target_router(&mv.target).await?;
        let id = mv.id;
        if mv.phase == "switched" {
            let epoch = mv.epoch_after.unwrap_or(self.routing().map.epoch as i64) as u64;
            self.switch(id, &source, &target, epoch, None).await?;
            self.set_phase(id, "cleaning").await?;
        }
        let (first, last) = (mv.first_shard, mv.last_shard);
        let deleted = retry(|| async { delete_range(&source.primary_pool()?, first, last).await }).await?;
        retry(|| async { uninstall(&source.primary_pool()?, id).await }).await?;
        sqlx::query(concat!(
            "UPDATE reshard_moves SET phase = 'done', rows_deleted = $2, updated_at = ",
            now_ms!(),
            ", finished_at = ",
            now_ms!(),
            " WHERE id = $1"
        ))
        .bind(id)
        .bind(deleted)
        .execute(&self.inner.catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
        tracing::info!(move_id = id, "move done");
        Ok(())
    }

    /// Rolls a move that has not switched back: the target's copy deleted,
    /// the triggers dropped on both sides, the map untouched.
    async fn roll_back(&self, mv: &MoveStatus, error: Option<String>) -> Result<(), StoreError> {
        let id = mv.id;
        let (first, last) = (mv.first_shard, mv.last_shard);
        if let Ok(source) = self.target_router(&mv.source).await {
            retry(|| async { uninstall(&source.primary_pool()?, id).await }).await?;
        }
        if let Ok(target) = self.target_router(&mv.target).await {
            retry(|| async {
                let pool = target.primary_pool()?;
                delete_range(&pool, first, last).await?;
                uninstall(&pool, id).await
            })
            .await?;
        }
        sqlx::query(concat!(
            "UPDATE reshard_moves SET phase = 'aborted', error = $2, updated_at = ",
            now_ms!(),
            ", finished_at = ",
            now_ms!(),
            " WHERE id = $1"
        ))
        .bind(id)
        .bind(error.as_deref().unwrap_or("aborted"))
        .execute(&self.inner.catalog.primary_pool()?)
        .await
        .map_err(unavailable)?;
        tracing::info!(move_id = id, ?error, "move rolled back");
        Ok(())
    }

    /// Copies every row of the range, table by table in key order.
    async fn copy(
        &self,
        id: i64,
        source: &PgRouter,
        target: &PgRouter,
        first: i32,
        last: i32,
    ) -> Result<(), Stop> {
        let mut copied: i64 = 0;
        let batch = self.inner.config.reshard_batch.max(1);
        for table in &TABLES {
            let mut after: Option<serde_json::Value> = None;
            loop {
                self.check_abort(id).await?;
                let rows: Vec<serde_json::Value> = retry(|| async {
                    let key = table.key.join(", ");
                    let sql = format!(
                        "SELECT to_jsonb(t) FROM {name} t WHERE {shard} BETWEEN $1 AND $2 {after} \
                         ORDER BY {key} LIMIT {batch}",
                        name = table.name,
                        shard = shard_expr(table.shard),
                        after = match after {
                            None => String::new(),
                            Some(_) => format!(
                                "AND ({key}) > (SELECT {key} FROM jsonb_populate_record(NULL::{name}, $3))",
                                name = table.name
                            ),
                        }
                    );
                    let mut query = sqlx::query_scalar(&sql).bind(first).bind(last);
                    if let Some(after) = &after {
                        query = query.bind(after);
                    }
                    query
                        .fetch_all(&source.primary_pool()?)
                        .await
                        .map_err(unavailable)
                })
                .await?;
                let Some(tail) = rows.last().cloned() else { break };
                let batch = serde_json::Value::Array(rows);
                // A row whose user is not on the target yet (signed up
                // after the users were copied) waits for the catch-up: the
                // user's creation and the row were both logged, parents
                // first.
                let owned = match table.name {
                    "users" => "true".to_owned(),
                    _ => format!("EXISTS (SELECT 1 FROM users u WHERE u.id = r.{})", table.shard),
                };
                retry(|| async {
                    let mut tx = bypass(&target.primary_pool()?).await?;
                    sqlx::query(&format!(
                        "INSERT INTO {name} SELECT r.* FROM jsonb_populate_recordset(NULL::{name}, $1) r \
                         WHERE {owned} ON CONFLICT DO NOTHING",
                        name = table.name
                    ))
                    .bind(&batch)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    tx.commit().await.map_err(unavailable)
                })
                .await?;
                copied += batch.as_array().map_or(0, |a| a.len() as i64);
                self.update(id, "rows_copied = $2", copied).await?;
                after = Some(tail);
            }
        }
        Ok(())
    }

    /// Waits until every live router routes by `epoch` (at most
    /// [`SWITCH_WAIT`]: a router that does not report by then is taken for
    /// gone).
    async fn wait_routers(&self, epoch: u64) {
        let deadline = Instant::now() + SWITCH_WAIT;
        loop {
            let behind: Result<i64, StoreError> = async {
                sqlx::query_scalar(concat!(
                    "SELECT count(*) FROM shard_map_clients WHERE epoch < $1 AND seen_at > ",
                    now_ms!(),
                    " - $2"
                ))
                .bind(epoch as i64)
                .bind(CLIENT_LIVENESS.as_millis() as i64)
                .fetch_one(&self.inner.catalog.primary_pool()?)
                .await
                .map_err(unavailable)
            }
            .await;
            match behind {
                Ok(0) => return,
                Ok(n) if Instant::now() > deadline => {
                    tracing::warn!(
                        behind = n,
                        epoch,
                        "routers still behind the new map: switching without them"
                    );
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!(error = %e, epoch, "cannot tell which routers switched");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

/// The logical shard of a column holding a sharded id.
fn shard_expr(column: &str) -> String {
    format!("(({column} >> 10) & 8191)")
}

fn shard(n: i32) -> Result<LogicalShard, StoreError> {
    u16::try_from(n)
        .ok()
        .and_then(LogicalShard::new)
        .ok_or_else(|| unavailable(format!("{n} is not a logical shard")))
}

/// Runs `step` until it succeeds, for at most [`STEP_RETRY`] (transient
/// errors: a set failing over, a connection lost).
async fn retry<T, F, Fut>(step: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + STEP_RETRY;
    loop {
        match step().await {
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "move step failed: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done => return done,
        }
    }
}

/// A transaction whose writes the move's triggers let through.
async fn bypass(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query("SET LOCAL scalestack.reshard = 'on'")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    Ok(tx)
}

/// A transaction that takes the tables' locks for a trigger or a fence:
/// it gives up (and is retried) after [`LOCK_WAIT`] rather than hold the
/// locks it has while it waits for the others. The app's statements lock
/// the tables in their own orders (a follow: `following`, then `users`),
/// so a lock taken table by table and held could deadlock with one, and
/// the deadlock detector (after 1 s) might pick the app's write as its
/// victim; it never runs before this gives up.
async fn locking(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_WAIT.as_millis()))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    Ok(tx)
}

/// How long a move waits for a table lock before it lets go and tries
/// again.
const LOCK_WAIT: Duration = Duration::from_millis(100);

/// Marks the range `mode` in the database behind `pool` and installs the
/// trigger on every table (which waits for the writes in flight).
async fn install(pool: &PgPool, id: i64, first: i32, last: i32, mode: &str) -> Result<(), StoreError> {
    let mut tx = locking(pool).await?;
    sqlx::query(
        "INSERT INTO reshard_ranges (move_id, first, last, mode) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (move_id) DO UPDATE SET mode = EXCLUDED.mode",
    )
    .bind(id)
    .bind(first)
    .bind(last)
    .bind(mode)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query("DELETE FROM reshard_log")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    for t in &TABLES {
        let args: Vec<String> = std::iter::once(t.shard)
            .chain(t.key.iter().copied())
            .map(|c| format!("'{c}'"))
            .collect();
        sqlx::query(&format!(
            "CREATE OR REPLACE TRIGGER scalestack_reshard BEFORE INSERT OR UPDATE OR DELETE ON {} \
             FOR EACH ROW EXECUTE FUNCTION scalestack_reshard_guard({})",
            t.name,
            args.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)
}

/// Drops the move's range and the triggers, and empties the log.
async fn uninstall(pool: &PgPool, id: i64) -> Result<(), StoreError> {
    let mut tx = locking(pool).await?;
    sqlx::query("DELETE FROM reshard_ranges WHERE move_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    for t in &TABLES {
        sqlx::query(&format!(
            "DROP TRIGGER IF EXISTS scalestack_reshard ON {}",
            t.name
        ))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    sqlx::query("DELETE FROM reshard_log")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)
}

/// Changes the range's mode. With `lock`, first takes every table's lock
/// that conflicts with writes, so the writes in flight finish before the
/// new mode applies and none started after sees the old one.
async fn set_mode(pool: &PgPool, id: i64, mode: &str, lock: bool) -> Result<(), StoreError> {
    let mut tx = locking(pool).await?;
    if lock {
        let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        sqlx::query(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            names.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    sqlx::query("UPDATE reshard_ranges SET mode = $2 WHERE move_id = $1")
        .bind(id)
        .bind(mode)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)
}

/// Rows of the range in every table.
async fn count_range(pool: &PgPool, first: i32, last: i32) -> Result<i64, StoreError> {
    let mut total = 0;
    for t in &TABLES {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE {} BETWEEN $1 AND $2",
            t.name,
            shard_expr(t.shard)
        ))
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
        total += n;
    }
    Ok(total)
}

/// Deletes the rows of the range, children first, in batches (the move's
/// own writes: through the triggers).
async fn delete_range(pool: &PgPool, first: i32, last: i32) -> Result<i64, StoreError> {
    let mut deleted = 0;
    for t in TABLES.iter().rev() {
        loop {
            let mut tx = bypass(pool).await?;
            let n = sqlx::query(&format!(
                "DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE {shard} BETWEEN $1 AND $2 LIMIT {BATCH}))",
                name = t.name,
                shard = shard_expr(t.shard)
            ))
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
            tx.commit().await.map_err(unavailable)?;
            deleted += n as i64;
            if n == 0 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Fails the move when the catch-up has run past [`CATCH_UP_LIMIT`]
/// without converging (its last pass copied `n` changes).
fn converging(deadline: Instant, n: u64) -> Result<(), Stop> {
    if Instant::now() < deadline {
        return Ok(());
    }
    Err(Stop::Failed(unavailable(format!(
        "the writes to the range outpace the catch-up ({n} changes in its last pass after {} s): \
         rolled back rather than pause them for long; move it when they slow down, or a smaller range",
        CATCH_UP_LIMIT.as_secs()
    ))))
}

/// Copies again every row whose key the source logged before this pass
/// began, then forgets those log entries; the number of keys and the
/// logical shards they were in. Bounded by the log as it stood at the
/// start, so a pass ends under any write rate (what is logged meanwhile is
/// the next pass's, or the cutover's).
async fn replay(
    source: &PgRouter,
    target: &PgRouter,
    batch: i64,
) -> Result<(u64, BTreeSet<i32>), StoreError> {
    let source = source.primary_pool()?;
    let target = target.primary_pool()?;
    let bound: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM reshard_log")
        .fetch_one(&source)
        .await
        .map_err(unavailable)?;
    let mut done = 0;
    let mut shards = BTreeSet::new();
    loop {
        let entries: Vec<(i64, String, i32, serde_json::Value)> = sqlx::query_as(&format!(
            "SELECT seq, tbl, shard, key FROM reshard_log WHERE seq <= $1 ORDER BY seq LIMIT {batch}"
        ))
        .bind(bound)
        .fetch_all(&source)
        .await
        .map_err(unavailable)?;
        if entries.is_empty() {
            return Ok((done, shards));
        }
        // Exactly the entries read: a sequence number is taken before its
        // transaction commits, so an entry below the last one read may
        // still commit after the read, and must stay for the next pass.
        let seqs: Vec<i64> = entries.iter().map(|(seq, ..)| *seq).collect();
        shards.extend(entries.iter().map(|(_, _, shard, _)| *shard));
        // Keys by table, each once, in log order.
        let mut keys: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
        for (_, tbl, _, key) in &entries {
            let list = keys.entry(tbl.as_str()).or_default();
            if !list.contains(key) {
                list.push(key.clone());
            }
        }
        // Each logged row as it is now on the source: written over the
        // target's copy, or, gone from the source, deleted from it
        // (children first; the rest parents first).
        let mut now: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
        for t in &TABLES {
            let Some(list) = keys.get(t.name) else { continue };
            let rows: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t) FROM {name} t WHERE ({key}) IN (SELECT {key} FROM {keys})",
                name = t.name,
                key = t.key.join(", "),
                keys = keys_of(t),
            ))
            .bind(serde_json::Value::Array(list.clone()))
            .fetch_all(&source)
            .await
            .map_err(unavailable)?;
            now.insert(t.name, rows);
        }
        let mut tx = bypass(&target).await?;
        for t in TABLES.iter().rev() {
            let Some(list) = keys.get(t.name) else { continue };
            let present = &now[t.name];
            let gone: Vec<serde_json::Value> = list
                .iter()
                .filter(|k| !present.iter().any(|row| has_key(row, k)))
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            sqlx::query(&format!(
                "DELETE FROM {name} WHERE ({key}) IN (SELECT {key} FROM {keys})",
                name = t.name,
                key = t.key.join(", "),
                keys = keys_of(t),
            ))
            .bind(serde_json::Value::Array(gone))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        for t in &TABLES {
            let Some(rows) = now.remove(t.name).filter(|r| !r.is_empty()) else {
                continue;
            };
            let columns: Vec<&String> = match &rows[0] {
                serde_json::Value::Object(o) => o.keys().filter(|c| !t.key.contains(&c.as_str())).collect(),
                _ => Vec::new(),
            };
            let update = if columns.is_empty() {
                "NOTHING".to_owned()
            } else {
                let cols: Vec<&str> = columns.iter().map(|c| c.as_str()).collect();
                let excluded: Vec<String> = cols.iter().map(|c| format!("EXCLUDED.{c}")).collect();
                format!("UPDATE SET ({}) = ROW({})", cols.join(", "), excluded.join(", "))
            };
            sqlx::query(&format!(
                "INSERT INTO {name} SELECT * FROM jsonb_populate_recordset(NULL::{name}, $1) \
                 ON CONFLICT ({key}) DO {update}",
                name = t.name,
                key = t.key.join(", "),
            ))
            .bind(serde_json::Value::Array(rows))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        sqlx::query("DELETE FROM reshard_log WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&source)
            .await
            .map_err(unavailable)?;
        done += keys.values().map(|k| k.len() as u64).sum::<u64>();
    }
}

/// The keys bound as `$1` (a JSON array of key objects), as a relation.
fn keys_of(t: &Table) -> String {
    let types: Vec<String> = t.key.iter().map(|c| format!("{c} bigint")).collect();
    format!("jsonb_to_recordset($1) AS k({})", types.join(", "))
}

/// Whether `row` has the key `key` (an object of the key's columns).
fn has_key(row: &serde_json::Value, key: &serde_json::Value) -> bool {
    match key {
        serde_json::Value::Object(k) => k.iter().all(|(c, v)| row.get(c) == Some(v)),
        _ => false,
    }
}

/// Compares every logical shard of the range (or of `only`) on both sides:
/// per table, its row count and the sum of its rows' hashes. The rows
/// compared, and the shards that differ.
async fn verify(
    source: &PgRouter,
    target: &PgRouter,
    first: i32,
    last: i32,
    only: Option<&[i32]>,
) -> Result<(i64, BTreeSet<i32>), StoreError> {
    let source = source.primary_pool()?;
    let target = target.primary_pool()?;
    let mut rows = 0;
    let mut differ = BTreeSet::new();
    for t in &TABLES {
        // Two statements, not one with `$3 IS NULL OR`: a plan for a few
        // shards must use the shard index, not scan the range.
        let only_these = match only {
            Some(_) => format!("AND {} = ANY($3)", shard_expr(t.shard)),
            None => "AND $3::int[] IS NULL".to_owned(),
        };
        let sql = format!(
            "SELECT {s}::int, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text \
             FROM {name} t WHERE {s} BETWEEN $1 AND $2 {only_these} GROUP BY 1",
            s = shard_expr(t.shard),
            name = t.name
        );
        let sums = |pool: PgPool| {
            let sql = sql.clone();
            async move {
                let rows: Vec<(i32, i64, String)> = sqlx::query_as(&sql)
                    .bind(first)
                    .bind(last)
                    .bind(only)
                    .fetch_all(&pool)
                    .await
                    .map_err(unavailable)?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(|(s, n, h)| (s, (n, h)))
                        .collect::<BTreeMap<_, _>>(),
                )
            }
        };
        let (a, b) = tokio::try_join!(sums(source.clone()), sums(target.clone()))?;
        rows += a.values().map(|(n, _)| n).sum::<i64>();
        for shard in a.keys().chain(b.keys()) {
            if a.get(shard) != b.get(shard) {
                differ.insert(*shard);
            }
        }
    }
    Ok((rows, differ))
}

/// Waits (at most [`SWITCH_WAIT`]) until every replica `target` reads from
/// has replayed what its primary holds now, so no read on the target after
/// the switch misses the copy.
async fn wait_replicas(target: &PgRouter) {
    let Ok(primary) = target.primary_pool() else {
        return;
    };
    let Ok(lsn) = crate::current_wal_lsn(&primary).await else {
        return;
    };
    let deadline = Instant::now() + SWITCH_WAIT;
    for replica in target.replica_pools() {
        while Instant::now() < deadline {
            match crate::replay_lsn(&replica).await {
                Ok(Some(r)) if r >= lsn => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => break,
            }
        }
    }
}
