//! The SQL store port on SQLite.

use crate::unavailable;
use async_trait::async_trait;
use domain::ports::Store;
use domain::*;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

/// Users, photos and follows in SQLite.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Wraps an opened, migrated pool (see [`crate::open`]).
    pub fn new(pool: SqlitePool) -> Self {
        SqliteStore { pool }
    }
}

const PHOTO_COLUMNS: &str =
    "p.id, p.owner_id, u.username, p.caption, p.status, p.format, p.width, p.height, p.created_at";

fn photo_from_row(row: &SqliteRow) -> Result<Photo, StoreError> {
    let invalid = |e: Invalid| StoreError::Unavailable(format!("corrupt row: {e}"));
    let caption: Option<String> = row.get(3);
    Ok(Photo {
        id: PhotoId(row.get(0)),
        owner_id: UserId(row.get(1)),
        owner: Username::parse(row.get(2)).map_err(invalid)?,
        caption: caption.map(|c| Caption::parse(&c)).transpose().map_err(invalid)?,
        status: PhotoStatus::parse(row.get(4)).map_err(invalid)?,
        format: ImageFormat::parse(row.get(5)).map_err(invalid)?,
        width: row.get::<i64, _>(6) as u32,
        height: row.get::<i64, _>(7) as u32,
        created_at_ms: row.get(8),
    })
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(row.get(0)),
        username: Username::parse(row.get(1))
            .map_err(|e| StoreError::Unavailable(format!("corrupt row: {e}")))?,
        password_hash: row.get(2),
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The keyset bound of a page: ids strictly below it.
fn upper_bound(page: Page) -> i64 {
    page.before.map_or(i64::MAX, |p| p.0)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, username: &Username, password_hash: &str) -> Result<UserId, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(username.as_str())
        .bind(password_hash)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await
        .map(UserId)
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict
            } else {
                unavailable(e)
            }
        })
    }

    async fn user_by_name(&self, username: &Username) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = ?")
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE id = ?")
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
             FROM users WHERE id = ?",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|row| {
            Ok(Profile {
                id: UserId(row.get(0)),
                username: Username::parse(row.get(1))
                    .map_err(|e| StoreError::Unavailable(format!("corrupt row: {e}")))?,
                followers: row.get(2),
                following: row.get(3),
            })
        })
        .transpose()
    }

    async fn create_photo(&self, photo: &NewPhoto) -> Result<Photo, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO photos (owner_id, caption, status, format, width, height, created_at) \
             VALUES (?, ?, 'processing', ?, ?, ?, ?) RETURNING id",
        )
        .bind(photo.owner_id.0)
        .bind(photo.caption.as_ref().map(|c| c.as_str()))
        .bind(photo.format.as_str())
        .bind(photo.width as i64)
        .bind(photo.height as i64)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
            _ => unavailable(e),
        })?;
        self.photo(PhotoId(id)).await?.ok_or(StoreError::NotFound)
    }

    async fn delete_photo(&self, id: PhotoId) -> Result<Option<DeletedPhoto>, StoreError> {
        // One statement (nothing else references a photo), so no
        // transaction and no lock upgrade.
        let row: Option<(i64, i64, String, Option<i64>)> =
            sqlx::query_as("DELETE FROM photos WHERE id = ? RETURNING id, owner_id, format, job_id")
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
        let done = sqlx::query("UPDATE photos SET job_id = ? WHERE id = ?")
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
        let rows = sqlx::query(&format!(
            "SELECT {PHOTO_COLUMNS} FROM photos p JOIN users u ON u.id = p.owner_id \
             WHERE p.status = 'processing' AND p.job_id IS NULL AND p.created_at < ? \
             ORDER BY p.created_at, p.id LIMIT ?"
        ))
        .bind(before_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(photo_from_row).collect()
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PHOTO_COLUMNS} FROM photos p JOIN users u ON u.id = p.owner_id WHERE p.id = ?"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(photo_from_row).transpose()
    }

    async fn set_photo_status(&self, id: PhotoId, status: PhotoStatus) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE photos SET status = CASE WHEN status = 'ready' AND ?1 = 'failed' THEN status ELSE ?1 END WHERE id = ?2")
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
        sqlx::query_scalar("SELECT id FROM photos WHERE owner_id = ? AND id < ? ORDER BY id DESC LIMIT ?")
            .bind(owner.0)
            .bind(upper_bound(page))
            .bind(page.limit as i64)
            .fetch_all(&self.pool)
            .await
            .map(|ids| ids.into_iter().map(PhotoId).collect())
            .map_err(unavailable)
    }

    async fn follow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO follows (follower_id, followee_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(follower.0)
            .bind(followee.0)
            .bind(now_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unfollow(&self, follower: UserId, followee: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM follows WHERE follower_id = ? AND followee_id = ?")
            .bind(follower.0)
            .bind(followee.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_following(&self, follower: UserId, followee: UserId) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM follows WHERE follower_id = ? AND followee_id = ?")
                .bind(follower.0)
                .bind(followee.0)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn feed_ids(&self, user: UserId, page: Page) -> Result<Vec<PhotoId>, StoreError> {
        sqlx::query_scalar(
            "SELECT p.id FROM photos p JOIN follows f ON f.followee_id = p.owner_id \
             WHERE f.follower_id = ? AND p.status = 'ready' AND p.id < ? ORDER BY p.id DESC LIMIT ?",
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
        let activity: Vec<(i64, i64, i64)> = sqlx::query_as(&ACTIVITY_SQL.replace("{since}", &since))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Store` port's battery (the cases this file and store-postgres
    /// each had a copy of, now shared).
    #[tokio::test]
    async fn conforms_to_the_store_port() {
        let (pool, _d) = crate::test_pool().await;
        conformance::store::run_all(&SqliteStore::new(pool.clone())).await;
        conformance::store::business_figures_count_what_happened(&SqliteStore::new(pool)).await;
    }
}
