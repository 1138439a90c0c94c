//! Online resharding over real replica sets: logical shards moved to a set
//! added at runtime while sign-ups, uploads, follows and reads go on, with
//! every acknowledged write counted afterwards; moves aborted mid-copy and
//! mid-verify; a difference the verify finds rolls a move back; the
//! target's and then a source's primary killed mid-move; a mover killed
//! mid-move and recovered by the next one.

use crate::sharded::{name, router};
use domain::ports::Store;
use domain::shard::ShardedId;
use domain::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store_postgres::{
    Connector, MoveRequest, MoveStatus, PgRouter, RouterConfig, ShardedConfig, ShardedStore,
};
use test_support::TestPg;
use tokio::task::JoinHandle;

/// Connects sets the way a web server would: a migrated router.
fn connector() -> Connector {
    Arc::new(|set: String, nodes: Vec<String>| {
        Box::pin(async move {
            let router = PgRouter::connect(RouterConfig {
                probe_interval_ms: 100,
                replica_set: domain::consistency::ReplicaSetId::parse(&set).unwrap(),
                ..RouterConfig::new(nodes)
            })
            .await?;
            router.migrate().await?;
            Ok(router)
        })
    })
}

fn urls(pg: &TestPg) -> Vec<String> {
    std::iter::once(pg.primary.url())
        .chain(pg.replicas.iter().map(|r| r.url()))
        .collect()
}

/// `s1` and `s2` in the map, `s3` (with `target_replicas`) registered but
/// empty; the store routes, `config` applied.
struct ThreeSets {
    s1: TestPg,
    s2: TestPg,
    s3: TestPg,
    store: ShardedStore,
    config: ShardedConfig,
}

impl ThreeSets {
    async fn start(target_replicas: usize, config: ShardedConfig) -> ThreeSets {
        let (s1, s2, s3) = tokio::join!(TestPg::start(0), TestPg::start(0), TestPg::start(target_replicas));
        let store = open(&s1, &s2, &config).await;
        router("s3", &s3).await; // migrated, as `up` leaves a set it adds
        store.register_set("s3", &urls(&s3)).await.unwrap();
        ThreeSets {
            s1,
            s2,
            s3,
            store,
            config,
        }
    }

    /// Another process's store over the same sets (it knows only s1 and s2).
    async fn another(&self) -> ShardedStore {
        open(&self.s1, &self.s2, &self.config).await
    }

    /// `sql`'s count on each set.
    async fn counts(&self, sql: &str) -> [i64; 3] {
        [
            count(&self.s1, sql).await,
            count(&self.s2, sql).await,
            count(&self.s3, sql).await,
        ]
    }

    /// Starts a move of `range` to `s3` and runs it in the background; the
    /// move as it started, and its run.
    async fn spawn_move(
        &self,
        range: (u16, u16),
    ) -> (MoveStatus, JoinHandle<Result<MoveStatus, StoreError>>) {
        let started = self
            .store
            .start_move(&MoveRequest {
                first: range.0,
                last: range.1,
                to: "s3".into(),
            })
            .await
            .unwrap();
        let (store, id) = (self.store.clone(), started.id);
        (started, tokio::spawn(async move { store.run_move(id).await }))
    }

    /// `end` is a rolled-back move that left everything as it was: the map
    /// untouched, no copy left on the target, the source whole (`s1_users`
    /// users), no trigger, and the site reading and writing `before`.
    async fn assert_as_it_was(&self, end: &MoveStatus, s1_users: i64, before: &[(UserId, PhotoId)]) {
        assert_eq!(end.phase, "aborted", "{end:?}");
        assert_eq!(self.store.map().unwrap().epoch, 1, "the map is untouched");
        assert_eq!(count(&self.s3, USERS).await, 0, "the target's copy is gone");
        assert_eq!(count(&self.s1, USERS).await, s1_users, "the source is whole");
        assert_eq!(self.triggers().await, 0);
        for (user, photo) in before {
            assert!(self.store.photo(*photo).await.unwrap().is_some());
            upload(&self.store, *user).await.unwrap();
        }
    }

    async fn triggers(&self) -> i64 {
        self.counts("SELECT count(*) FROM pg_trigger WHERE tgname = 'scalestack_reshard'")
            .await
            .iter()
            .sum()
    }
}

/// Every user of a set.
const USERS: &str = "SELECT count(*) FROM users";

async fn count(pg: &TestPg, sql: &str) -> i64 {
    pg.primary.psql(sql).await.unwrap().trim().parse().unwrap()
}

async fn open(s1: &TestPg, s2: &TestPg, config: &ShardedConfig) -> ShardedStore {
    let sets = BTreeMap::from([
        ("s1".to_owned(), router("s1", s1).await),
        ("s2".to_owned(), router("s2", s2).await),
    ]);
    ShardedStore::connect("s1", sets, config.clone(), Some(connector()))
        .await
        .unwrap()
}

/// Users `tag0..tagN`, each with one ready photo.
async fn seed(s: &ShardedStore, tag: &str, n: usize) -> Vec<(UserId, PhotoId)> {
    let mut out = Vec::new();
    for i in 0..n {
        let user = s.create_user(&name(tag, i), "h").await.unwrap();
        let photo = upload(s, user).await.unwrap();
        out.push((user, photo));
    }
    out
}

async fn upload(s: &ShardedStore, owner: UserId) -> Result<PhotoId, StoreError> {
    let id = s
        .create_photo(&NewPhoto {
            owner_id: owner,
            caption: None,
            format: ImageFormat::Jpeg,
            width: 1,
            height: 1,
        })
        .await?
        .id;
    s.set_photo_status(id, PhotoStatus::Ready).await?;
    Ok(id)
}

/// The shards `s1` holds in the even map over two sets: 0-4095. The moves
/// take the first half of them.
const MOVED: (u16, u16) = (0, 2047);

fn moved(id: i64) -> bool {
    let shard = ShardedId::from_raw(id).unwrap().shard().get();
    (MOVED.0..=MOVED.1).contains(&shard)
}

#[tokio::test]
async fn a_move_under_load_loses_no_acknowledged_write() {
    let t = ThreeSets::start(
        1,
        ShardedConfig {
            reshard_batch: 100,
            ..ShardedConfig::default()
        },
    )
    .await;
    let before = seed(&t.store, "old", 120).await;
    for w in before.windows(2) {
        t.store.follow(w[0].0, w[1].0).await.unwrap();
    }
    // The load runs through another process's store, which learns of s3
    // from the catalog when the map names it.
    let web = Arc::new(t.another().await);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (web, stop, before) = (Arc::clone(&web), Arc::clone(&stop), before.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                let step = async {
                    let user = web.create_user(&name("new", i), "h").await?;
                    let photo = upload(&web, user).await?;
                    let followee = before[i % before.len()].0;
                    web.follow(user, followee).await?;
                    Ok::<_, StoreError>((user, photo, followee))
                };
                match step.await {
                    Ok(done) => acked.push(done),
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    let reader = {
        let (web, stop, before) = (Arc::clone(&web), Arc::clone(&stop), before.clone());
        tokio::spawn(async move {
            let (mut reads, mut misses) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (i, (user, photo)) in before.iter().enumerate().step_by(7) {
                    let found = web.user_by_name(&name("old", i)).await.map(|u| u.map(|u| u.id));
                    let pic = web.photo(*photo).await.map(|p| p.is_some());
                    if found.as_ref().ok() != Some(&Some(*user)) || pic.as_ref().ok() != Some(&true) {
                        misses.push(format!("user {} {found:?}, photo {} {pic:?}", user.0, photo.0));
                    }
                    reads += 2;
                }
            }
            (reads, misses)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = t
        .store
        .start_move(&MoveRequest {
            first: MOVED.0,
            last: MOVED.1,
            to: "s3".into(),
        })
        .await
        .unwrap();
    let clock = std::time::Instant::now();
    let done = t.store.run_move(started.id).await.unwrap();
    let took = clock.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    let (reads, misses) = reader.await.unwrap();
    println!(
        "move of shards {}-{} to s3: {} rows copied, {} replayed, {} verified in {took:?}; \
         writes paused {} ms at the cutover; {} sign-up+upload+follow acknowledged, {} failed; \
         {reads} reads, {} missed",
        MOVED.0,
        MOVED.1,
        done.rows_copied,
        done.rows_replayed,
        done.rows_verified,
        done.pause_ms.unwrap_or(-1),
        acked.len(),
        failed.len(),
        misses.len()
    );
    assert_eq!(done.phase, "done", "{done:?}");
    assert!(done.pause_ms.is_some());
    assert!(
        failed.is_empty(),
        "writes pause at the cutover, they do not fail: {failed:?}"
    );
    assert!(
        misses.is_empty(),
        "no read misses what existed before it: {misses:?}"
    );
    assert!(
        acked.iter().any(|(u, _, _)| moved(u.0)),
        "the load wrote to the moved shards"
    );

    // Every acknowledged write is there, through either store, once.
    let map = web.map().unwrap();
    assert_eq!(map.epoch, 2);
    assert_eq!(map.set_of(domain::shard::LogicalShard::new(0).unwrap()), "s3");
    let old = before.iter().map(|&(u, p)| (u, p, u));
    for (user, photo, followee) in acked.iter().copied().chain(old) {
        for s in [&t.store, &*web] {
            assert!(s.user_by_id(user).await.unwrap().is_some(), "user {}", user.0);
            let p = s.photo(photo).await.unwrap().expect("the photo");
            assert_eq!(p.status, PhotoStatus::Ready);
        }
        if user != followee {
            assert!(web.is_following(user, followee).await.unwrap());
        }
    }
    let total: i64 = t.counts(USERS).await.iter().sum();
    assert_eq!(
        total as usize,
        acked.len() + before.len(),
        "no user row twice, none lost"
    );
    let in_range = "SELECT count(*) FROM users WHERE ((id >> 10) & 8191) BETWEEN 0 AND 2047";
    assert_eq!(count(&t.s1, in_range).await, 0, "the source was cleaned");
    assert!(count(&t.s3, in_range).await > 0);
    assert_eq!(
        count(
            &t.s1,
            "SELECT count(*) FROM photos WHERE ((owner_id >> 10) & 8191) BETWEEN 0 AND 2047"
        )
        .await,
        0
    );
    assert_eq!(t.triggers().await, 0, "the move's triggers are gone");
    // Feeds followed the move: the followers of a moved user see its photo.
    let (first, _) = before[0];
    let (_, second_photo) = before[1];
    let page = Page {
        before: None,
        limit: 50,
    };
    assert!(t
        .store
        .feed_ids(first, page)
        .await
        .unwrap()
        .contains(&second_photo));
}

#[tokio::test]
async fn a_move_aborted_mid_copy_leaves_everything_as_it_was() {
    let t = ThreeSets::start(
        0,
        ShardedConfig {
            reshard_batch: 5,
            ..ShardedConfig::default()
        },
    )
    .await;
    let before = seed(&t.store, "ab", 150).await;
    let (s1_users, s3_users) = (count(&t.s1, USERS).await, count(&t.s3, USERS).await);
    assert_eq!(s3_users, 0);
    let (_, run) = t.spawn_move(MOVED).await;
    // A second move is refused while this one is unfinished.
    assert!(t
        .store
        .start_move(&MoveRequest {
            first: 5000,
            last: 5001,
            to: "s3".into()
        })
        .await
        .is_err());
    wait_copying(&t.store).await;
    t.store.abort_move().await.unwrap();
    let end = run.await.unwrap().unwrap();
    t.assert_as_it_was(&end, s1_users, &before).await;
}

#[tokio::test]
async fn a_mover_killed_mid_move_is_rolled_back_by_the_next_then_a_move_succeeds() {
    let t = ThreeSets::start(
        0,
        ShardedConfig {
            reshard_batch: 5,
            ..ShardedConfig::default()
        },
    )
    .await;
    seed(&t.store, "crash", 150).await;
    let (_, run) = t.spawn_move(MOVED).await;
    wait_copying(&t.store).await;
    // The mover dies where it stands (as `up` killed mid-move would).
    run.abort();
    let _ = run.await;
    assert!(count(&t.s3, USERS).await > 0, "a partial copy was left");
    // The next process to start recovers it.
    let next = t.another().await;
    let recovered = next.recover_moves().await.unwrap().expect("an unfinished move");
    assert_eq!(recovered.phase, "aborted");
    assert_eq!(count(&t.s3, USERS).await, 0);
    assert_eq!(t.triggers().await, 0);
    assert!(
        next.recover_moves().await.unwrap().is_none(),
        "nothing left to recover"
    );
    // A move from that clean state goes through.
    let again = next
        .start_move(&MoveRequest {
            first: MOVED.0,
            last: MOVED.1,
            to: "s3".into(),
        })
        .await
        .unwrap();
    let done = next.run_move(again.id).await.unwrap();
    assert_eq!(done.phase, "done", "{done:?}");
    assert!(count(&t.s3, USERS).await > 0);
}

/// Waits until the latest move has copied rows and is still copying.
async fn wait_copying(store: &ShardedStore) {
    loop {
        let now = store.latest_move().await.unwrap().unwrap();
        if now.rows_copied > 0 {
            assert_eq!(
                now.phase, "copying",
                "the copy ended before the test could act: {now:?}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A row the copy already wrote is changed on the target behind the move's
/// back (as a bug or a stray writer would): the verify finds the logical
/// shard that differs, again after the fence, and the move is rolled back
/// with the reason; the map, the source and the site are as they were.
#[tokio::test]
async fn a_difference_the_verify_finds_rolls_the_move_back() {
    let t = ThreeSets::start(
        0,
        ShardedConfig {
            reshard_batch: 5,
            ..ShardedConfig::default()
        },
    )
    .await;
    let before = seed(&t.store, "ver", 150).await;
    let s1_users = count(&t.s1, USERS).await;
    let (_, run) = t.spawn_move(MOVED).await;
    wait_copying(&t.store).await;
    t.s3.primary
        .psql(
            "BEGIN; SET LOCAL scalestack.reshard = 'on'; \
             UPDATE users SET followers_count = followers_count + 1000 \
             WHERE id = (SELECT min(id) FROM users); COMMIT",
        )
        .await
        .unwrap();
    let end = run.await.unwrap().unwrap();
    assert!(
        end.error.as_deref().unwrap_or("").contains("differ"),
        "the reason is kept: {end:?}"
    );
    t.assert_as_it_was(&end, s1_users, &before).await;
}

/// `kill -9` of the target set's primary mid-copy, then of the source's
/// in the next move: each move waits for its set to come back (restarted
/// here as its failover controller would) and completes, every row where
/// the new map says, exactly once.
#[tokio::test]
async fn a_replica_set_killed_mid_move_is_waited_for_and_the_move_completes() {
    let t = ThreeSets::start(
        0,
        ShardedConfig {
            reshard_batch: 5,
            ..ShardedConfig::default()
        },
    )
    .await;
    let seeded = seed(&t.store, "kill", 200).await;
    let total: i64 = t.counts(USERS).await.iter().sum();
    for (range, source, victim) in [
        ((MOVED.0, MOVED.1), "s1", "target s3"),
        ((4096, 6143), "s2", "source s2"),
    ] {
        let (started, run) = t.spawn_move(range).await;
        assert_eq!(started.source, source);
        wait_copying(&t.store).await;
        let node = if victim.starts_with("target") {
            &t.s3.primary
        } else {
            &t.s2.primary
        };
        node.kill9().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.start().await.unwrap();
        let end = run.await.unwrap().unwrap();
        assert_eq!(end.phase, "done", "{victim} killed mid-copy: {end:?}");
        println!(
            "{victim} killed mid-copy and restarted 1 s later: move of {}-{} done, {} rows copied, paused {:?} ms",
            range.0, range.1, end.rows_copied, end.pause_ms
        );
    }
    let after = t.counts(USERS).await;
    assert_eq!(
        after.iter().sum::<i64>(),
        total,
        "no user lost or doubled: {after:?}"
    );
    let on = |range: (u16, u16)| {
        format!(
            "SELECT count(*) FROM users WHERE ((id >> 10) & 8191) BETWEEN {} AND {}",
            range.0, range.1
        )
    };
    assert_eq!(count(&t.s1, &on(MOVED)).await, 0);
    assert_eq!(count(&t.s2, &on((4096, 6143))).await, 0);
    for (user, photo) in &seeded {
        assert!(t.store.photo(*photo).await.unwrap().is_some());
        assert!(t.store.user_by_id(*user).await.unwrap().is_some());
    }
}

/// An abort asked for while the verify runs: the move is held inside its
/// verify (a lock on the target's `feed_entries`, the last table it
/// compares and one the copy never wrote, as these users have no feed),
/// the abort is requested, the lock let go: the verify ends, the move
/// rolls back, and everything is as it was.
#[tokio::test]
async fn a_move_aborted_mid_verify_leaves_everything_as_it_was() {
    let t = ThreeSets::start(
        0,
        ShardedConfig {
            reshard_batch: 50,
            ..ShardedConfig::default()
        },
    )
    .await;
    let before = seed(&t.store, "mv", 150).await;
    let s1_users = count(&t.s1, USERS).await;
    let (_, run) = t.spawn_move(MOVED).await;
    wait_copying(&t.store).await;
    let target = store_postgres::connect(&t.s3.primary.url(), 2).await.unwrap();
    let mut hold = target.begin().await.unwrap();
    sqlx::query("LOCK TABLE feed_entries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    // Until the verify waits on it.
    crate::helpers::eventually(
        Duration::from_secs(30),
        "the verify to wait on the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%hashtextextended%feed_entries%'",
            )
            .fetch_one(&target)
            .await
            .unwrap();
            waiting > 0
        },
    )
    .await;
    let asked = t.store.abort_move().await.unwrap();
    assert_eq!(asked.phase, "catching_up", "asked while verifying: {asked:?}");
    hold.commit().await.unwrap();
    let end = run.await.unwrap().unwrap();
    t.assert_as_it_was(&end, s1_users, &before).await;
}
