//! A primary with streaming replicas: replication, slots, synchronous
//! quorum, and failover after a SIGKILL of the primary.

use crate::helpers::{received_lsn, wait_for};
use engines::postgres::{PgNode, PgOptions};
use test_support::{free_port, TestPg};

#[tokio::test]
async fn writes_on_the_primary_reach_both_replicas() {
    let pg = TestPg::start(2).await;
    pg.primary
        .psql("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); INSERT INTO notes VALUES (1, 'hello')")
        .await
        .unwrap();

    for replica in &pg.replicas {
        wait_for(replica, "SELECT body FROM notes WHERE id = 1", "hello").await;
        assert_eq!(replica.psql("SELECT pg_is_in_recovery()").await.unwrap(), "t");
        let refused = replica
            .psql("INSERT INTO notes VALUES (2, 'no')")
            .await
            .unwrap_err();
        assert!(format!("{refused:#}").contains("read-only"), "{refused:#}");
    }
    assert_eq!(
        pg.primary
            .psql("SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication")
            .await
            .unwrap(),
        "replica1:streaming,replica2:streaming"
    );
    assert_eq!(
        pg.primary
            .psql("SELECT string_agg(slot_name || ':' || slot_type || ':' || active, ',' ORDER BY slot_name) FROM pg_replication_slots")
            .await
            .unwrap(),
        "replica1:physical:true,replica2:physical:true"
    );
    assert_eq!(
        pg.primary.psql("SHOW synchronous_standby_names").await.unwrap(),
        ""
    );
    assert_eq!(
        pg.primary.url(),
        format!("postgres://scalestack@127.0.0.1:{}/scalestack", pg.primary.port())
    );
    // The application's role owns its database.
    assert_eq!(
        pg.primary
            .psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'scalestack'")
            .await
            .unwrap(),
        "scalestack"
    );
}

#[tokio::test]
async fn a_replica_promoted_after_a_primary_crash_is_followed_by_the_other() {
    let pg = TestPg::start(2).await;
    pg.primary
        .psql("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); INSERT INTO notes VALUES (1, 'before')")
        .await
        .unwrap();
    for replica in &pg.replicas {
        wait_for(replica, "SELECT body FROM notes WHERE id = 1", "before").await;
    }

    let old_pid = pg.primary.pid().expect("the primary runs");
    pg.primary.kill9().unwrap();
    assert_eq!(pg.primary.pid(), None, "postmaster {old_pid} survived SIGKILL");
    assert!(pg.primary.psql("SELECT 1").await.is_err());

    // Promote the replica that received the most WAL, as a failover tool
    // would: the other one can then follow its new timeline.
    let (a, b) = (&pg.replicas[0], &pg.replicas[1]);
    let (new_primary, other) = if received_lsn(a).await >= received_lsn(b).await {
        (a, b)
    } else {
        (b, a)
    };
    new_primary.promote().await.unwrap();
    assert_eq!(new_primary.psql("SELECT pg_is_in_recovery()").await.unwrap(), "f");
    other.follow(new_primary).await.unwrap();

    new_primary
        .psql("INSERT INTO notes VALUES (2, 'after')")
        .await
        .unwrap();
    wait_for(
        other,
        "SELECT string_agg(body, ',' ORDER BY id) FROM notes",
        "before,after",
    )
    .await;
    assert_eq!(
        new_primary
            .psql(
                "SELECT string_agg(application_name, ',') FROM pg_stat_replication WHERE state = 'streaming'"
            )
            .await
            .unwrap(),
        other.name()
    );
    assert_eq!(
        other
            .psql("SELECT received_tli FROM pg_stat_wal_receiver")
            .await
            .unwrap(),
        "2"
    );
}

#[tokio::test]
async fn a_synchronous_cluster_waits_for_a_quorum_of_one_replica() {
    let pg = TestPg::start_with(2, true).await;
    assert_eq!(
        pg.primary.psql("SHOW synchronous_standby_names").await.unwrap(),
        "ANY 1 (replica1, replica2)"
    );
    // A replica is a quorum candidate once it has reported a flush position.
    wait_for(
        &pg.primary,
        "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication",
        "replica1:quorum,replica2:quorum",
    )
    .await;
    // A commit returns once a replica has flushed it.
    pg.primary
        .psql("CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1)")
        .await
        .unwrap();
    for replica in &pg.replicas {
        wait_for(replica, "SELECT count(*) FROM notes", "1").await;
    }
}

#[tokio::test]
async fn a_stopped_cluster_is_reused_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("pg");
    let opts = PgOptions::new(free_port());
    let node = PgNode::init_primary("primary", &data_dir, &opts).await.unwrap();
    node.start().await.unwrap();
    node.start().await.unwrap(); // already running: nothing to do
    node.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        .await
        .unwrap();
    node.stop().await.unwrap();
    assert_eq!(node.pid(), None);
    assert!(node.psql("SELECT 1").await.is_err());
    drop(node);

    // As `up` does after a restart: the same directory, another port.
    let opts = PgOptions::new(free_port());
    let node = PgNode::init_primary("primary", &data_dir, &opts).await.unwrap();
    node.start().await.unwrap();
    assert_eq!(node.psql("SELECT v FROM kept").await.unwrap(), "still here");
    assert_eq!(node.psql("SHOW port").await.unwrap(), opts.port.to_string());
}
