//! The facade that follows the primary for sessions (the job queue does the
//! same with `PgJobQueue::on_current`): each
//! call on whichever node is the primary at that moment (a session must be
//! seen by the next request at once; a claim locks rows, which only a
//! primary can). Without a primary they fail at once.

use super::Inner;
use crate::PgSessionStore;
use async_trait::async_trait;
use domain::ports::SessionStore;
use domain::*;
use std::sync::Arc;
use std::time::Duration;

/// Sessions on whichever node is the primary at each call.
pub(super) struct PrimarySessions {
    pub inner: Arc<Inner>,
}

impl PrimarySessions {
    fn store(&self) -> Result<PgSessionStore, BackendError> {
        Ok(PgSessionStore::new(self.inner.primary()?.store.pool().clone()))
    }
}

#[async_trait]
impl SessionStore for PrimarySessions {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        self.store()?.create(user, ttl).await
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        self.store()?.get(token).await
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        self.store()?.delete(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::router_over;
    use super::super::topology::{NodeRole, NodeState};
    use super::*;

    fn replica() -> NodeState {
        NodeState {
            role: NodeRole::Replica,
            usable: true,
            ..NodeState::default()
        }
    }

    #[tokio::test]
    async fn without_a_primary_sessions_and_the_queue_fail_at_once() {
        let router = router_over(vec![replica(), replica()], None);
        let sessions = router.sessions();
        let queue = router.queue(QueueConfig::default());
        let unavailable = |r: Result<(), BackendError>| matches!(r, Err(BackendError::Unavailable(_)));
        assert!(unavailable(
            sessions.create(UserId(1), Duration::from_secs(1)).await.map(drop)
        ));
        assert!(unavailable(queue.enqueue("photo", b"1").await.map(drop)));
        assert!(unavailable(queue.depth().await.map(drop)));
        assert_eq!(router.stats().no_primary, 3, "each call counted");
        assert_eq!(router.status().iter().map(|s| s.writes).sum::<u64>(), 0);
    }
}
