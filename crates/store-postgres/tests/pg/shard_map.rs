//! The durable shard map: publishing is compare-and-set by epoch, and every
//! router follows it without a restart.

use crate::helpers::spawn_db;
use domain::shard::{LogicalShard, ShardMap};
use std::sync::Arc;
use std::time::Duration;
use store_postgres::{PublishError, ShardMaps};
use tokio::sync::watch;

fn shard(n: u16) -> LogicalShard {
    LogicalShard::new(n).unwrap()
}

/// Waits until `follower` holds epoch `epoch`.
async fn until_epoch(follower: &mut watch::Receiver<Option<Arc<ShardMap>>>, epoch: u64) -> Arc<ShardMap> {
    let held = tokio::time::timeout(
        Duration::from_secs(10),
        follower.wait_for(|m| m.as_ref().is_some_and(|m| m.epoch == epoch)),
    )
    .await
    .unwrap_or_else(|_| panic!("the follower never reached epoch {epoch}"))
    .unwrap();
    held.clone().unwrap()
}

#[tokio::test]
async fn maps_are_published_by_epoch_and_followed_by_another_process() {
    let db = spawn_db().await;
    let maps = ShardMaps::new(db.pool.clone());
    assert_eq!(maps.current().await.unwrap(), None);
    // A router of another process, following before anything is
    // published. Its poll is an hour: changes reach it by notification.
    let other = ShardMaps::new(db.second_pool().await);
    let mut follower = other.follow(Duration::from_secs(3600)).await.unwrap();
    assert!(follower.borrow().is_none());

    let m1 = ShardMap::even(&["s0", "s1"]).unwrap();
    maps.publish(&m1).await.unwrap();
    assert_eq!(*until_epoch(&mut follower, 1).await, m1);
    assert_eq!(maps.current().await.unwrap(), Some(m1.clone()));

    // Two changes raced from epoch 1: the first published wins, the
    // other is stale, and nobody goes back an epoch.
    let m2 = m1.moved(shard(0), shard(99), "s2").unwrap();
    let rival = m1.moved(shard(100), shard(199), "s3").unwrap();
    maps.publish(&m2).await.unwrap();
    assert!(matches!(
        other.publish(&rival).await,
        Err(PublishError::Stale {
            offered: 2,
            current: 2
        })
    ));
    assert!(matches!(
        maps.publish(&m1).await,
        Err(PublishError::Stale {
            offered: 1,
            current: 2
        })
    ));
    let held = until_epoch(&mut follower, 2).await;
    assert_eq!((held.set_of(shard(50)), held.set_of(shard(150))), ("s2", "s0"));

    // A broken map is refused before it reaches the database.
    let mut broken = m2.moved(shard(0), shard(9), "s0").unwrap();
    broken.ranges.pop();
    assert!(matches!(
        maps.publish(&broken).await,
        Err(PublishError::Invalid(_))
    ));
    assert_eq!(maps.current().await.unwrap(), Some(m2));
}

/// A change whose notification never came (written without one, as a
/// listener that was reconnecting would miss it) reaches the follower by
/// its poll.
#[tokio::test]
async fn a_follower_that_missed_a_notification_catches_up_by_polling() {
    let db = spawn_db().await;
    let maps = ShardMaps::new(db.pool.clone());
    let m1 = ShardMap::even(&["s0"]).unwrap();
    maps.publish(&m1).await.unwrap();
    let mut follower = maps.follow(Duration::from_millis(200)).await.unwrap();
    assert_eq!(follower.borrow().as_ref().map(|m| m.epoch), Some(1));
    let m2 = m1.moved(shard(4096), shard(8191), "s1").unwrap();
    sqlx::query("INSERT INTO shard_maps (epoch, map, created_at) VALUES (2, $1, 0)")
        .bind(serde_json::to_string(&m2).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(*until_epoch(&mut follower, 2).await, m2);
}

/// The database makes ids in the sharded layout: each names the logical
/// shard asked for and the database's time, they grow with time, and
/// concurrent callers never get the same one; a shard out of range is
/// refused.
#[tokio::test]
async fn the_database_makes_ids_that_name_their_shard() {
    let db = spawn_db().await;
    let before = domain::now_millis();
    let id = store_postgres::next_id(&db.pool, shard(8191)).await.unwrap();
    assert_eq!(id.shard(), shard(8191));
    assert!(
        (before - 1000..=domain::now_millis() + 1000).contains(&id.unix_ms()),
        "{}",
        id.unix_ms()
    );
    let later = store_postgres::next_id(&db.pool, shard(0)).await.unwrap();
    assert!(later.unix_ms() >= id.unix_ms());

    // 4 pools (4 processes) x 250 ids at once, over three shards.
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..4u16 {
        let pool = db.second_pool().await;
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..250u16 {
                let s = shard((p * 250 + i) % 3);
                let id = store_postgres::next_id(&pool, s).await.unwrap();
                assert_eq!(id.shard(), s);
                ids.push(id);
            }
            ids
        });
    }
    let mut all = std::collections::HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        for id in ids.unwrap() {
            assert!(all.insert(id), "{id:?} twice");
        }
    }
    assert_eq!(all.len(), 1000);

    let err = sqlx::query_scalar::<_, i64>("SELECT scalestack_next_id(8192)")
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in 0..8191"), "{err}");
}
