//! The session store port: store-sqlite's tests, on PostgreSQL.

use crate::helpers::spawn_db;
use domain::ports::{SessionStore, Store};
use domain::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use store_postgres::{PgSessionStore, PgStore};

#[tokio::test]
async fn sessions_live_expire_and_die() {
    let db = spawn_db().await;
    let user = PgStore::new(db.pool.clone())
        .create_user(&Username::parse("alice").unwrap(), "h")
        .await
        .unwrap();
    let s = PgSessionStore::new(db.pool.clone());
    let t = s.create(user, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.expose().len(), 64);
    let got = s.get(&t).await.unwrap().unwrap();
    assert_eq!(got.user_id, user);
    let left = got.expires_at_ms - now_millis();
    assert!((50_000..=61_000).contains(&left), "expires in {left} ms");
    let t2 = s.create(user, Duration::from_secs(60)).await.unwrap();
    assert_ne!(t, t2);
    s.delete(&t).await.unwrap();
    assert!(s.get(&t).await.unwrap().is_none());
    assert!(s.get(&t2).await.unwrap().is_some());
    s.delete(&t).await.unwrap(); // twice is fine

    let short = s.create(user, Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.get(&short).await.unwrap().is_none());

    // Only the SHA-256 of a token is stored; the raw token is nowhere.
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|h| h != t2.expose()));
    assert!(stored.contains(&hex::encode(Sha256::digest(t2.expose().as_bytes()))));

    // A token from a cookie that was never issued.
    let forged = SessionToken::parse(&"ab".repeat(32)).unwrap();
    assert!(s.get(&forged).await.unwrap().is_none());
}

#[tokio::test]
async fn expired_rows_are_swept_on_create() {
    let db = spawn_db().await;
    let user = PgStore::new(db.pool.clone())
        .create_user(&Username::parse("alice").unwrap(), "h")
        .await
        .unwrap();
    let s = PgSessionStore::new(db.pool.clone());
    for _ in 0..3 {
        s.create(user, Duration::from_millis(1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.create(user, Duration::from_secs(60)).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
