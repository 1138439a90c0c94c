//! The session store port: the shared battery (`conformance::sessions`) on
//! PostgreSQL, and how this adapter keeps tokens.

use crate::helpers::{spawn_db, TestDb};
use domain::ports::{SessionStore, Store};
use domain::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use store_postgres::{PgSessionStore, PgStore};

async fn user(db: &TestDb, name: &str) -> UserId {
    PgStore::new(db.pool.clone())
        .create_user(&Username::parse(name).unwrap(), "h")
        .await
        .unwrap()
}

#[tokio::test]
async fn conforms_to_the_session_store_port_and_stores_only_token_hashes() {
    let db = spawn_db().await;
    let s = PgSessionStore::new(db.pool.clone());
    conformance::sessions::run_all(&s, user(&db, "alice").await).await;

    // Only the SHA-256 of a token is stored; the raw token is nowhere.
    let t = s
        .create(user(&db, "bob").await, Duration::from_secs(60))
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|h| h != t.expose()));
    assert!(stored.contains(&hex::encode(Sha256::digest(t.expose().as_bytes()))));
}

#[tokio::test]
async fn expired_rows_are_swept_on_create() {
    let db = spawn_db().await;
    let user = user(&db, "alice").await;
    let s = PgSessionStore::new(db.pool.clone());
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
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
