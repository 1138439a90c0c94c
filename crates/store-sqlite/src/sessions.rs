//! The session store port on the SQL database. Tokens are 256 random bits;
//! only their SHA-256 is stored.

use crate::backend;
use async_trait::async_trait;
use domain::ports::SessionStore;
use domain::*;
use sqlx::SqlitePool;
use std::time::Duration;

/// Sessions in the `sessions` table.
#[derive(Clone)]
pub struct SqlSessionStore {
    pool: SqlitePool,
}

impl SqlSessionStore {
    /// Wraps an opened, migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        SqlSessionStore { pool }
    }
}

#[async_trait]
impl SessionStore for SqlSessionStore {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        let token = SessionToken::generate();
        let now = now_millis();
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(token.digest())
            .bind(user.0)
            .bind(now)
            .bind(now + ttl.as_millis() as i64)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        // Opportunistic clean-up of expired rows keeps the table small
        // without a separate sweeper process.
        sqlx::query("DELETE FROM sessions WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(token)
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT user_id, expires_at FROM sessions WHERE token_hash = ? AND expires_at > ?",
        )
        .bind(token.digest())
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(user_id, expires_at_ms)| Session {
            user_id: UserId(user_id),
            expires_at_ms,
        }))
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token.digest())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ports::Store;

    #[tokio::test]
    async fn sessions_live_expire_and_die() {
        let (pool, _d) = crate::test_pool().await;
        let user = crate::SqliteStore::new(pool.clone())
            .create_user(&Username::parse("alice").unwrap(), "h")
            .await
            .unwrap();
        let s = SqlSessionStore::new(pool.clone());
        let t = s.create(user, Duration::from_secs(60)).await.unwrap();
        assert_eq!(t.expose().len(), 64);
        assert_eq!(s.get(&t).await.unwrap().unwrap().user_id, user);
        let t2 = s.create(user, Duration::from_secs(60)).await.unwrap();
        assert_ne!(t, t2);
        s.delete(&t).await.unwrap();
        assert!(s.get(&t).await.unwrap().is_none());
        assert!(s.get(&t2).await.unwrap().is_some());

        let short = s.create(user, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(s.get(&short).await.unwrap().is_none());

        // The raw token is nowhere in the table.
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(stored.iter().all(|h| h != t2.expose()));
    }
}
