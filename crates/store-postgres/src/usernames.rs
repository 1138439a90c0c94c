//! The global username lookup of a sharded store (`usernames`, migration
//! 0007): which user id, and so which logical shard, a name belongs to. It
//! lives on the catalog replica set (its primary for writes), so it fails
//! over with that set and is no single point of failure.
//!
//! A sign-up is three steps across two databases: [`Usernames::claim`] the
//! name here, create the user on its shard, [`Usernames::activate`] the
//! claim. Only active names resolve. A sign-up that died after its claim
//! leaves a `claimed` row, which a later claim of the same name takes over
//! once it is older than the grace given (so a name is never lost to a
//! crash); one that failed cleanly gives its claim back with
//! [`Usernames::release`].

use crate::{now_ms, unavailable};
use domain::{StoreError, UserId};
use sqlx::PgPool;
use std::time::Duration;

/// The username lookup in one database (the catalog set's primary).
#[derive(Clone)]
pub struct Usernames {
    pool: PgPool,
}

impl Usernames {
    /// The lookup in the migrated database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Usernames { pool }
    }

    /// Claims `username` for the new user `user`: [`StoreError::Conflict`]
    /// if the name is active, or claimed less than `stale_after` ago (a
    /// sign-up in progress). An older claim is taken over.
    pub async fn claim(&self, username: &str, user: UserId, stale_after: Duration) -> Result<(), StoreError> {
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(concat!(
            "INSERT INTO usernames (username, user_id, state, claimed_at) VALUES ($1, $2, 'claimed', ",
            now_ms!(),
            ") ON CONFLICT (username) DO UPDATE \
             SET user_id = EXCLUDED.user_id, claimed_at = EXCLUDED.claimed_at \
             WHERE usernames.state = 'claimed' AND usernames.claimed_at < EXCLUDED.claimed_at - $3"
        ))
        .bind(username)
        .bind(user.0)
        .bind(stale_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            // The user id is taken by another name: a caller's bug, or an
            // id reused; either way this claim must not pass.
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
            _ => unavailable(e),
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    /// Makes `user`'s claim of `username` resolvable: [`StoreError::NotFound`]
    /// if the claim is not (or no longer) theirs.
    pub async fn activate(&self, username: &str, user: UserId) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE usernames SET state = 'active' WHERE username = $1 AND user_id = $2")
            .bind(username)
            .bind(user.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Gives back `user`'s unfinished claim of `username` (its sign-up
    /// failed); an active name or someone else's claim stays.
    pub async fn release(&self, username: &str, user: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM usernames WHERE username = $1 AND user_id = $2 AND state = 'claimed'")
            .bind(username)
            .bind(user.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The user an active `username` belongs to.
    pub async fn resolve(&self, username: &str) -> Result<Option<UserId>, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM usernames WHERE username = $1 AND state = 'active'")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(id.map(UserId))
    }
}
