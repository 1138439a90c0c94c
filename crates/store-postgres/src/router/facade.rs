//! The routed SQL store: [`Store`] on [`PgRouter`], each call a read or a
//! write run where the [`Policy`] says, with the read-your-writes floor
//! read before a read and raised after a write.

use super::policy::{Candidate, Policy};
use super::PgRouter;
use crate::{parse_lsn, unavailable, PgStore};
use async_trait::async_trait;
use domain::consistency;
use domain::ports::Store;
use domain::*;
use sqlx::PgPool;
use std::future::Future;

impl PgRouter {
    /// Runs a read: on the next usable replica that has replayed the read
    /// floor, else on the primary. A replica that fails the read is marked
    /// down and the read is retried once on the primary (reads are safe to
    /// repeat).
    pub(crate) async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(PgStore) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let inner = &self.inner;
        let candidates = inner.nodes.iter().map(|n| Candidate {
            local: n.local,
            ..Candidate::of(&n.lock_state())
        });
        match inner.policy.read(candidates, consistency::read_floor(&inner.set)) {
            Ok(i) => {
                let node = &inner.nodes[i];
                match f(node.store.clone()).await {
                    Ok(v) => {
                        node.counters.reads.inc();
                        return Ok(v);
                    }
                    Err(error) if Policy::retry_on_primary(&error) => {
                        node.mark_down();
                        node.counters.read_retries.inc();
                        tracing::warn!(node = %node.url, %error, "replica read failed: marked down, retrying on the primary");
                    }
                    Err(error) => return Err(error),
                }
            }
            Err(why) => inner.metrics.fallback(why).inc(),
        }
        let node = inner.primary()?;
        let v = f(node.store.clone()).await?;
        node.counters.reads.inc();
        Ok(v)
    }

    /// Runs a write on the primary, then, inside a consistency scope, notes
    /// its LSN as the scope's read floor. Refused at once without a primary.
    pub(crate) async fn write<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(PgStore) -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let node = self.inner.primary()?;
        let v = f(node.store.clone()).await?;
        node.counters.writes.inc();
        if consistency::in_scope() {
            match wal_insert_lsn(node.store.pool()).await {
                Ok(lsn) => consistency::note_write(&self.inner.set, lsn),
                // The write is done: failing it now would invite a retry
                // that writes twice. The primary is most likely gone, and
                // with it the guarantee.
                Err(error) => {
                    tracing::warn!(node = %node.url, %error, "no LSN after a write: read-your-writes not guaranteed for it")
                }
            }
        }
        Ok(v)
    }
}

/// `pg_current_wal_insert_lsn()` on the primary: the end of everything
/// inserted into the WAL so far, so past every commit that has returned.
async fn wal_insert_lsn(pool: &PgPool) -> Result<u64, StoreError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    parse_lsn(&text).ok_or_else(|| unavailable(format!("unexpected lsn {text:?}")))
}

#[async_trait]
impl Store for PgRouter {
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError> {
        self.write(|s| async move { s.create_user(username, password_hash).await })
            .await
    }

    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError> {
        self.read(|s| async move { s.user_by_name(username).await }).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(|s| async move { s.user_by_id(id).await }).await
    }

    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError> {
        self.read(|s| async move { s.profile(id).await }).await
    }

    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError> {
        self.write(|s| async move { s.create_photo(photo).await }).await
    }

    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError> {
        self.write(|s| async move { s.delete_photo(id).await }).await
    }

    async fn record_photo_job(&self, id: PhotoId, job: i64) -> Result<(), StoreError> {
        self.write(|s| async move { s.record_photo_job(id, job).await })
            .await
    }

    async fn stalled_uploads(&self, before_ms: i64, limit: usize) -> Result<Vec<Photo>, StoreError> {
        // The primary: the rows are recent, and the worker acts on them.
        self.write(|s| async move { s.stalled_uploads(before_ms, limit).await })
            .await
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.read(|s| async move { s.photo(id).await }).await
    }

    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError> {
        self.write(|s| async move { s.set_photo_status(id, status).await })
            .await
    }

    async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.read(|s| async move { s.user_photo_ids(owner, page).await })
            .await
    }

    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        self.write(|s| async move { s.follow(follower, followee).await })
            .await
    }

    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        self.write(|s| async move { s.unfollow(follower, followee).await })
            .await
    }

    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError> {
        self.read(|s| async move { s.is_following(follower, followee).await })
            .await
    }

    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        self.read(|s| async move { s.feed_ids(user, page).await }).await
    }

    /// Routed like a read: while the primary is down (a failover under way)
    /// the store can still serve reads from caught-up replicas, so a web
    /// server stays ready, answering reads and refusing writes quickly.
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|s| async move { s.ping().await }).await
    }

    async fn business(&self, today: i64, days: i64) -> Result<domain::business::BusinessFigures, StoreError> {
        self.read(|s| async move { s.business(today, days).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::router_over;
    use super::super::topology::{NodeRole, NodeState};
    use super::*;

    fn state(role: NodeRole, usable: bool) -> NodeState {
        NodeState {
            role,
            usable,
            ..NodeState::default()
        }
    }

    #[tokio::test]
    async fn without_a_primary_writes_are_refused_at_once() {
        let router = router_over(vec![state(NodeRole::Down, false)], None);
        let (result, written) =
            consistency::scope(None, router.create_user(&Username::parse("ann").unwrap(), "h")).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))));
        assert!(written.is_empty(), "nothing written, no floor raised");
        assert_eq!(router.stats().no_primary, 1);
    }

    #[tokio::test]
    async fn only_the_floor_of_the_routers_own_set_holds_reads_back() {
        let replica = NodeState {
            seen: Some(super::super::election::Observation {
                in_recovery: true,
                timeline: 1,
                wal_lsn: None,
                replay_lsn: Some(100),
                receive_lsn: Some(100),
            }),
            ..state(NodeRole::Replica, true)
        };
        let router = router_over(vec![state(NodeRole::Down, false), replica.clone()], None);
        let other = consistency::ReplicaSetId::parse("eu").unwrap();
        let own = consistency::ReplicaSetId::DEFAULT;
        // Another set's floor: the replica is tried (and, listening to
        // nothing here, fails over to the missing primary).
        let floor = consistency::Positions::at(other, 500);
        let _ = consistency::scope(floor, router.user_by_id(UserId(1))).await;
        assert_eq!(router.stats().replica_read_retries, 1);
        assert_eq!(router.stats().reads_fallback_floor, 0);
        // Its own: the replica (back in the rotation) has not replayed it,
        // so the primary is asked.
        *router.inner.nodes[1].lock_state() = replica;
        let _ = consistency::scope(consistency::Positions::at(own, 500), router.user_by_id(UserId(1))).await;
        assert_eq!(router.stats().reads_fallback_floor, 1);
    }

    #[tokio::test]
    async fn a_read_with_no_usable_replica_falls_back_to_the_primary() {
        let router = router_over(
            vec![state(NodeRole::Fenced, false), state(NodeRole::Down, false)],
            None,
        );
        let result = router.user_by_id(UserId(1)).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "and there is none"
        );
        let stats = router.stats();
        assert_eq!((stats.reads_fallback_no_replica, stats.no_primary), (1, 1));
        assert_eq!(stats.replica_read_retries, 0);
    }

    #[tokio::test]
    async fn a_replica_that_fails_a_read_is_marked_down_and_the_read_retried() {
        // Node 1 is taken for a replica but refuses connections.
        let router = router_over(
            vec![state(NodeRole::Down, false), state(NodeRole::Replica, true)],
            None,
        );
        let result = router.user_by_id(UserId(1)).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "no primary either"
        );
        let stats = router.stats();
        assert_eq!((stats.replica_read_retries, stats.no_primary), (1, 1));
        let status = router.status();
        assert_eq!(
            (status[1].role, status[1].usable, status[1].reads),
            (NodeRole::Down, false, 0)
        );
        // Out of the rotation now: the next read goes straight to the primary.
        let _ = router.user_by_id(UserId(1)).await;
        assert_eq!(router.stats().reads_fallback_no_replica, 1);
    }
}
