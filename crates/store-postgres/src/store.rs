//! The SQL store port on PostgreSQL.

use crate::{corrupt, now_ms, unavailable};
use async_trait::async_trait;
use domain::ports::Store;
use domain::*;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

/// Users, photos and follows in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Wraps a connected, migrated pool (see [`crate::connect`] and
    /// [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        PgStore { pool }
    }

    /// The pool behind the store.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Written out as a macro so the queries that use it stay `&'static str`.
macro_rules! photo_columns {
    () => {
        "p.id, p.owner_id, u.username, p.caption, p.status, p.format, p.width, p.height, p.created_at"
    };
}
pub(crate) use photo_columns;

pub(crate) fn photo_from_row(row: &PgRow) -> Result<Photo, StoreError> {
    let caption: Option<String> = row.get(3);
    Ok(Photo {
        id: PhotoId(row.get(0)),
        owner_id: UserId(row.get(1)),
        owner: Username::parse(row.get(2)).map_err(corrupt)?,
        caption: caption.map(|c| Caption::parse(&c)).transpose().map_err(corrupt)?,
        status: PhotoStatus::parse(row.get(4)).map_err(corrupt)?,
        format: ImageFormat::parse(row.get(5)).map_err(corrupt)?,
        width: row.get::<i32, _>(6) as u32,
        height: row.get::<i32, _>(7) as u32,
        created_at_ms: row.get(8),
    })
}

pub(crate) fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(row.get(0)),
        username: Username::parse(row.get(1)).map_err(corrupt)?,
        password_hash: row.get(2),
    })
}

/// The keyset bound of a page: ids strictly below it.
pub(crate) fn upper_bound(page: Page) -> i64 {
    page.before.map_or(i64::MAX, |p| p.0)
}

/// A dimension as the INTEGER column stores it. The pixel limit keeps real
/// images far below `i32::MAX`; anything above is refused, not wrapped.
pub(crate) fn dimension(px: u32) -> Result<i32, StoreError> {
    i32::try_from(px).map_err(|_| unavailable(format!("dimension {px} out of range")))
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError> {
        sqlx::query_scalar(concat!(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, ",
            now_ms!(),
            ") RETURNING id"
        ))
        .bind(username.as_str())
        .bind(password_hash)
        .fetch_one(&self.pool)
        .await
        .map(UserId)
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
            _ => unavailable(e),
        })
    }

    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = $1")
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn profile(&self, id: UserId) -> Result<Option<Profile>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, \
             (SELECT count(*) FROM follows WHERE followee_id = users.id), \
             (SELECT count(*) FROM follows WHERE follower_id = users.id) \
             FROM users WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|row| {
            Ok(Profile {
                id: UserId(row.get(0)),
                username: Username::parse(row.get(1)).map_err(corrupt)?,
                followers: row.get(2),
                following: row.get(3),
            })
        })
        .transpose()
    }

    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError> {
        // One statement inserts and reads back with the owner's name, so the
        // answer cannot come from a replica that has not seen the insert.
        let row = sqlx::query(concat!(
            "WITH p AS (INSERT INTO photos (owner_id, caption, status, format, width, height, created_at) \
             VALUES ($1, $2, 'processing', $3, $4, $5, ",
            now_ms!(),
            ") RETURNING *) SELECT ",
            photo_columns!(),
            " FROM p JOIN users u ON u.id = p.owner_id"
        ))
        .bind(photo.owner_id.0)
        .bind(photo.caption.as_ref().map(|c| c.as_str()))
        .bind(photo.format.as_str())
        .bind(dimension(photo.width)?)
        .bind(dimension(photo.height)?)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
            _ => unavailable(e),
        })?;
        photo_from_row(&row)
    }

    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError> {
        // One statement: nothing else references a photo.
        let row: Option<(i64, i64, String, Option<i64>)> =
            sqlx::query_as("DELETE FROM photos WHERE id = $1 RETURNING id, owner_id, format, job_id")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.map(|(id, owner, format, job)| {
            Ok(DeletedPhoto {
                id: PhotoId(id),
                owner_id: UserId(owner),
                format: ImageFormat::parse(&format)
                    .map_err(|e| StoreError::Unavailable(format!("corrupt row: {e}")))?,
                jobs: job.into_iter().collect(),
            })
        })
        .transpose()
    }

    async fn record_photo_job(&self, id: PhotoId, job: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE photos SET job_id = $1 WHERE id = $2")
            .bind(job)
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn stalled_uploads(&self, before_ms: i64, limit: usize) -> Result<Vec<Photo>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            photo_columns!(),
            " FROM photos p JOIN users u ON u.id = p.owner_id \
             WHERE p.status = 'processing' AND p.job_id IS NULL AND p.created_at < $1 \
             ORDER BY p.created_at, p.id LIMIT $2"
        ))
        .bind(before_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(photo_from_row).collect()
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            photo_columns!(),
            " FROM photos p JOIN users u ON u.id = p.owner_id WHERE p.id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(photo_from_row).transpose()
    }

    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE photos SET status = CASE WHEN status = 'ready' AND $1 = 'failed' THEN status ELSE $1 END WHERE id = $2")
            .bind(status.as_str())
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn user_photo_ids(&self, owner: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        sqlx::query_scalar("SELECT id FROM photos WHERE owner_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3")
            .bind(owner.0)
            .bind(upper_bound(page))
            .bind(page.limit as i64)
            .fetch_all(&self.pool)
            .await
            .map(|ids| ids.into_iter().map(PhotoId).collect())
            .map_err(unavailable)
    }

    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO follows (follower_id, followee_id, created_at) VALUES ($1, $2, ",
            now_ms!(),
            ") ON CONFLICT DO NOTHING"
        ))
        .bind(follower.0)
        .bind(followee.0)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2")
            .bind(follower.0)
            .bind(followee.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM follows WHERE follower_id = $1 AND followee_id = $2)",
        )
        .bind(follower.0)
        .bind(followee.0)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        sqlx::query_scalar(
            "SELECT p.id FROM photos p JOIN follows f ON f.followee_id = p.owner_id \
             WHERE f.follower_id = $1 AND p.status = 'ready' AND p.id < $2 ORDER BY p.id DESC LIMIT $3",
        )
        .bind(user.0)
        .bind(upper_bound(page))
        .bind(page.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map(|ids| ids.into_iter().map(PhotoId).collect())
        .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn business(&self, today: i64, days: i64) -> Result<domain::business::BusinessFigures, StoreError> {
        use domain::business::{BusinessFigures, ACTIVITY_SQL, UPLOADS_SQL};
        let since = BusinessFigures::since_ms(today, days).to_string();
        let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        let activity: Vec<(i64, i64, i32)> = sqlx::query_as(&ACTIVITY_SQL.replace("{since}", &since))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let uploads: Vec<(i64, i64)> = sqlx::query_as(&UPLOADS_SQL.replace("{since}", &since))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let activity: Vec<(i64, i64, bool)> = activity.into_iter().map(|(u, d, s)| (u, d, s == 1)).collect();
        Ok(BusinessFigures::from_activity(
            users, today, days, &activity, &uploads,
        ))
    }
}
