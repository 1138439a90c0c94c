//! The session store port on PostgreSQL. Tokens are 256 random bits; only
//! their SHA-256 is stored, as in store-sqlite.

use crate::{backend, now_ms};
use async_trait::async_trait;
use domain::ports::SessionStore;
use domain::*;
use sqlx::PgPool;
use std::time::Duration;

/// Sessions in the `sessions` table.
#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
}

impl PgSessionStore {
    /// Wraps a connected, migrated pool.
    pub fn new(pool: PgPool) -> Self {
        PgSessionStore { pool }
    }
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, user: UserId, ttl: Duration) -> Result<SessionToken, BackendError> {
        let token = SessionToken::generate();
        // `now()` is one instant per statement, so both times agree.
        sqlx::query(concat!(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, ",
            now_ms!(),
            ", ",
            now_ms!(),
            " + $3)"
        ))
        .bind(token.digest())
        .bind(user.0)
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        // Opportunistic clean-up of expired rows keeps the table small
        // without a separate sweeper process.
        sqlx::query(concat!("DELETE FROM sessions WHERE expires_at < ", now_ms!()))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(token)
    }

    async fn get(&self, token: &SessionToken) -> Result<Option<Session>, BackendError> {
        let row: Option<(i64, i64)> = sqlx::query_as(concat!(
            "SELECT user_id, expires_at FROM sessions WHERE token_hash = $1 AND expires_at > ",
            now_ms!()
        ))
        .bind(token.digest())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(user_id, expires_at_ms)| Session {
            user_id: UserId(user_id),
            expires_at_ms,
        }))
    }

    async fn delete(&self, token: &SessionToken) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token.digest())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
