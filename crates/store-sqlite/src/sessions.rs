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
    use sha2::{Digest, Sha256};

    async fn user(pool: &SqlitePool) -> UserId {
        crate::SqliteStore::new(pool.clone())
            .create_user(&Username::parse("alice").unwrap(), "h")
            .await
            .unwrap()
    }

    /// The `SessionStore` port's battery.
    #[tokio::test]
    async fn conforms_to_the_session_store_port() {
        let (pool, _d) = crate::test_pool().await;
        let user = user(&pool).await;
        conformance::sessions::run_all(&SqlSessionStore::new(pool), user).await;
    }

    #[tokio::test]
    async fn only_the_sha256_of_a_token_is_stored() {
        let (pool, _d) = crate::test_pool().await;
        let s = SqlSessionStore::new(pool.clone());
        let t = s
            .create(user(&pool).await, Duration::from_secs(60))
            .await
            .unwrap();
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(stored.iter().all(|h| h != t.expose()));
        assert_eq!(stored, [hex::encode(Sha256::digest(t.expose().as_bytes()))]);
    }

    #[tokio::test]
    async fn expired_rows_are_swept_on_create() {
        let (pool, _d) = crate::test_pool().await;
        let user = user(&pool).await;
        let s = SqlSessionStore::new(pool.clone());
        for _ in 0..3 {
            s.create(user, Duration::from_millis(1)).await.unwrap();
        }
        // Swept rows are those that expired before the sweeping create.
        let created_by = now_millis();
        while now_millis() <= created_by + 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s.create(user, Duration::from_secs(60)).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
