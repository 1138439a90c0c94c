//! The replication probes, on a primary with one streaming replica.

use crate::helpers::{eventually, spawn_db, spawn_db_with_replicas};
use domain::ports::Store;
use domain::*;
use std::time::Duration;
use store_postgres::{
    current_wal_lsn, format_lsn, is_in_recovery, parse_lsn, replay_lag_ms, replay_lsn, PgStore,
};

#[tokio::test]
async fn a_lone_primary_reports_no_replay() {
    let db = spawn_db().await;
    assert!(!is_in_recovery(&db.pool).await.unwrap());
    assert_eq!(replay_lsn(&db.pool).await.unwrap(), None);
    assert_eq!(replay_lag_ms(&db.pool).await.unwrap(), None);
    let before = current_wal_lsn(&db.pool).await.unwrap();
    assert!(before > 0);
    PgStore::new(db.pool.clone())
        .create_user(&Username::parse("alice").unwrap(), "h")
        .await
        .unwrap();
    let after = current_wal_lsn(&db.pool).await.unwrap();
    assert!(
        after > before,
        "{} then {}",
        format_lsn(before),
        format_lsn(after)
    );
    // Our parse agrees with the server's own arithmetic on LSNs.
    let diff: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
        .bind(format_lsn(after))
        .bind(format_lsn(before))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(diff as u64, after - before);
}

#[tokio::test]
async fn a_replica_replays_the_primary_writes() {
    let db = spawn_db_with_replicas(1).await;
    let replica = store_postgres::connect(&db.pg.replicas[0].url(), 2)
        .await
        .unwrap();
    assert!(is_in_recovery(&replica).await.unwrap());
    assert!(!is_in_recovery(&db.pool).await.unwrap());
    assert!(
        current_wal_lsn(&replica).await.is_err(),
        "a replica has no WAL of its own"
    );

    let primary_store = PgStore::new(db.pool.clone());
    let replica_store = PgStore::new(replica.clone());
    let alice = Username::parse("alice").unwrap();
    let id = primary_store.create_user(&alice, "h").await.unwrap();
    let written = current_wal_lsn(&db.pool).await.unwrap();

    eventually(Duration::from_secs(20), "the replica to replay the write", || {
        let replica = replica.clone();
        async move {
            replay_lsn(&replica)
                .await
                .unwrap()
                .is_some_and(|lsn| lsn >= written)
        }
    })
    .await;
    // Once replayed up to the LSN of a write, the replica shows it.
    assert_eq!(replica_store.user_by_name(&alice).await.unwrap().unwrap().id, id);
    let lag = replay_lag_ms(&replica)
        .await
        .unwrap()
        .expect("a replica that replayed a commit has a lag");
    assert!(lag < 60_000, "lag {lag} ms");
    assert!(replay_lsn(&replica).await.unwrap().unwrap() <= current_wal_lsn(&db.pool).await.unwrap());

    // A replica refuses writes: the store reports it unavailable.
    assert!(matches!(
        replica_store
            .create_user(&Username::parse("bob").unwrap(), "h")
            .await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(parse_lsn(&format_lsn(written)), Some(written));
}
